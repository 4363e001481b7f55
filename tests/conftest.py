"""Shared fixtures: inputs per signature, degenerate cases, perfect predictions."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from autoloss import zoo  # noqa: E402
from autoloss.signatures import get as get_signature  # noqa: E402

#: the zoo ids that are expressions (kinds E and B: compiled, exported, probed); the
#: set-level ones (kind S) are hand-written functions, tested in test_ranking.py
ZOO_IDS = [i for i in zoo.names() if zoo.get(i).compiles]
SET_LEVEL_IDS = [i for i in zoo.names() if not zoo.get(i).compiles]


def sample(signature: str, n: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(get_signature(signature).sample(n, g, dtype=dtype))


def float_inputs(inputs):
    """Indices of the floating-point inputs (the differentiable ones)."""
    return [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def degenerate(signature: str, dtype=torch.float64):
    """Inputs at the edges of the domain: the cases losses are most often wrong on."""
    return get_signature(signature).degenerate(dtype)


def perfect(signature: str, n: int = 16, seed: int = 0, dtype=torch.float64):
    """A prediction equal to its target (saturated logits for classification), or None."""
    sig = get_signature(signature)
    return None if sig.perfect is None else sig.perfect(sample(signature, n, seed, dtype))


@pytest.fixture(params=ZOO_IDS)
def zoo_id(request):
    return request.param
