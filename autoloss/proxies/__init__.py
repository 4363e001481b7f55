"""Proxy detection tasks: cheap, deterministic stand-ins that score candidate losses.

Built in: ``boxsim`` (DIoU-paper regression simulation), ``rboxsim`` (the same with
rotated boxes), ``clssim`` and
``clssim_quality`` (dense imbalanced classification), ``digits`` (a small FCOS-style
detector scored with COCO mAP). Any ``module:function`` names a user's own trainer.
See :mod:`autoloss.proxies.base` for the contract.
"""
from __future__ import annotations

from typing import Any

from .base import (CandidateFailure, Metrics, Proxy, Pruned, check_losses, slot_signatures)
from .custom import CustomProxy, proxy

__all__ = ["get", "names", "Proxy", "Metrics", "CandidateFailure", "Pruned", "proxy",
           "CustomProxy", "check_losses", "slot_signatures"]


def names() -> list[str]:
    return ["boxsim", "rboxsim", "clssim", "clssim_quality", "digits"]


def get(name: str, **options: Any) -> Proxy:
    """A proxy by name (``boxsim``, ``clssim``, ``digits``, ...) or ``module:function``."""
    from ..errors import UnknownNameError, did_you_mean

    if name == "boxsim":
        from .boxsim import BoxSim

        return BoxSim(**options)
    if name == "rboxsim":
        from .rboxsim import RBoxSim

        return RBoxSim(**options)
    if name in ("clssim", "clssim_quality"):
        from .clssim import ClsSim

        return ClsSim(quality=name == "clssim_quality", **options)
    if name == "digits":
        from .digits import Digits

        return Digits(**options)
    if ":" in name:
        return CustomProxy.load(name, **options)
    raise UnknownNameError(f"unknown proxy {name!r}; {did_you_mean(name, names())}, or a "
                           "'module:function' naming your own trainer")
