"""Shared fixtures: inputs per signature, degenerate cases, perfect predictions."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)

from autoloss import zoo  # noqa: E402
from autoloss.expr import variables  # noqa: E402
from autoloss.signatures import get as get_signature  # noqa: E402

#: the zoo ids that are expressions (kinds E and B: compiled, exported, probed); the
#: set-level ones (kind S) are hand-written functions, tested in test_ranking.py; the
#: hand-written batch-level modules (state, sampling masks) in test_stateful.py and
#: test_sampling.py
ZOO_IDS = [i for i in zoo.names() if zoo.get(i).compiles]
SET_LEVEL_IDS = [i for i in zoo.names() if zoo.get(i).kind == "S"]
MODULE_IDS = [i for i in zoo.names() if zoo.get(i).module]


def sample(signature: str, n: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(get_signature(signature).sample(n, g, dtype=dtype))


def reads_per_class(loss_id: str) -> bool:
    """Whether a zoo loss reads per-class constants (class counts, frequencies)."""
    spec = zoo.get(loss_id)
    return bool(set(get_signature(spec.signature).class_columns) & variables(spec.expression))


def zoo_sample(loss_id: str, n: int, seed: int = 0, dtype=torch.float64):
    """The inputs of a zoo loss: its signature's sample, with the per-class constants when
    the loss reads them (the rows are the same either way)."""
    sig = get_signature(zoo.get(loss_id).signature)
    g = torch.Generator().manual_seed(seed)
    extra = {"per_class": True} if reads_per_class(loss_id) else {}
    return tuple(sig.sample(n, g, dtype=dtype, **extra))


def row_inputs(signature: str) -> list[int]:
    """Indices of the inputs with one row per sample (not the per-class constants)."""
    return [k for k, i in enumerate(get_signature(signature).inputs) if not i.per_class]


def float_inputs(inputs):
    """Indices of the floating-point inputs (the differentiable ones)."""
    return [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def degenerate(signature: str, dtype=torch.float64):
    """Inputs at the edges of the domain: the cases losses are most often wrong on."""
    return get_signature(signature).degenerate(dtype)


def perfect(signature: str, n: int = 16, seed: int = 0, dtype=torch.float64,
            loss_id: str = ""):
    """A prediction equal to its target (saturated logits for classification), or None;
    with ``loss_id``, from that loss's inputs (per-class constants included)."""
    sig = get_signature(signature)
    if sig.perfect is None:
        return None
    return sig.perfect(zoo_sample(loss_id, n, seed, dtype) if loss_id
                       else sample(signature, n, seed, dtype))


@pytest.fixture(params=ZOO_IDS)
def zoo_id(request):
    return request.param
