"""Every signature against the signature contract (``autoloss.signatures.testing``)."""
from __future__ import annotations

import pytest

from autoloss.signatures import SIGNATURES
from autoloss.signatures.testing import SignatureContract

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


@pytest.fixture(params=sorted(SIGNATURES))
def signature_name(request):
    return request.param


class TestEverySignature(SignatureContract):
    @pytest.fixture(autouse=True)
    def _name(self, signature_name):
        self.name = signature_name


def test_the_design_signatures_run_the_contract():
    """The parametrized suite above covers every registered signature; these must be."""
    assert {"box", "coord", "rbox", "sigmoid", "softmax", "dist"} <= set(SIGNATURES)
