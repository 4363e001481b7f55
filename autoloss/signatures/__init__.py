"""Loss signatures: one module per signature, each ending in its ``SIGNATURE``.

Adding a signature is one module here, its line in :data:`SIGNATURES`, and its tests (the
``SignatureContract`` suite in ``tests/test_signatures.py`` runs against every signature).
See :mod:`autoloss.signatures.base` for what a signature holds.
"""
from __future__ import annotations

from ..errors import UnknownNameError, did_you_mean
from . import box, coord, dist, rank, rbox, sigmoid, softmax
from .base import Input, Prepared, Signature, Terminal

BOX = box.SIGNATURE
COORD = coord.SIGNATURE
SIGMOID = sigmoid.SIGNATURE
SOFTMAX = softmax.SIGNATURE
DIST = dist.SIGNATURE
RBOX = rbox.SIGNATURE
RANK = rank.SIGNATURE

SIGNATURES: dict[str, Signature] = {s.name: s for s in (BOX, COORD, SIGMOID, SOFTMAX, DIST,
                                                        RBOX, RANK)}

__all__ = ["BOX", "COORD", "DIST", "RANK", "RBOX", "SIGMOID", "SIGNATURES", "SOFTMAX", "Input",
           "Prepared", "Signature", "Terminal", "box_regression", "filling", "get"]


def get(name: str) -> Signature:
    try:
        return SIGNATURES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown signature {name!r}; {did_you_mean(name, SIGNATURES)}"
        ) from None


def box_regression() -> tuple[str, ...]:
    """The signatures a dense detector's box-regression slot accepts (``from_detector``)."""
    return tuple(n for n, s in SIGNATURES.items() if s.from_detector is not None)


def filling(accepted) -> tuple[str, ...]:
    """``accepted`` slot signatures and those whose set-level losses fill one of them
    (a ``sigmoid`` classification slot also takes ``rank``: the ranking surrogates)."""
    accepted = tuple(accepted)
    return accepted + tuple(n for n, s in SIGNATURES.items()
                            if s.fills and s.fills in accepted and n not in accepted)
