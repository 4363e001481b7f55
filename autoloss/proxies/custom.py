"""Your own trainer as a proxy: any ``module:function``.

The function receives the compiled losses (one per slot, each called like a zoo loss:
``loss(pred, target, reduction="sum")``), the budget, the seed and a ``report(step,
value)`` callback, and returns either a :class:`~autoloss.proxies.base.Metrics` or a dict
whose first key is the primary metric. Declare the slots, the metric and its direction with
the :func:`proxy` decorator::

    from autoloss.proxies import proxy

    @proxy(slots={"reg": "box"}, metric="iou", direction="maximize", budget=100)
    def train(losses, budget, seed, report):
        ...
        return {"iou": mean_iou}
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from typing import Callable, Mapping, Optional

from ..errors import AutolossError
from .base import CandidateFailure, Metrics, check_losses, no_report


def proxy(*, slots: Mapping[str, str | tuple], metric: str, direction: str = "maximize",
          budget: int = 100):
    """Declare a function as a proxy: its loss slots (slot -> signature), metric, direction."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")

    def wrap(fn: Callable) -> Callable:
        fn.autoloss_proxy = {"slots": dict(slots), "metric": metric, "direction": direction,
                             "budget": int(budget)}
        return fn

    return wrap


class CustomProxy:
    """Wraps a user's trainer function into the proxy contract."""

    def __init__(self, fn: Callable, name: str, **options):
        spec = getattr(fn, "autoloss_proxy", None)
        if spec is None:
            raise AutolossError(
                f"{name}: decorate the function with @autoloss.proxies.proxy(slots={{...}}, "
                "metric=..., direction=...) so autoloss knows its loss slots and metric")
        params = inspect.signature(fn).parameters
        missing = {"losses", "budget", "seed", "report"} - set(params)
        if missing:
            raise AutolossError(f"{name}: the trainer must accept (losses, budget, seed, report); "
                                f"missing {sorted(missing)}")
        self.fn = fn
        self.name = name
        self.slots = spec["slots"]
        self.metric = spec["metric"]
        self.direction = spec["direction"]
        self.default_budget = spec["budget"]
        self.options = options

    @classmethod
    def load(cls, target: str, **options) -> "CustomProxy":
        module_name, _, attr = target.partition(":")
        if not module_name or not attr:
            raise AutolossError(f"proxy {target!r}: expected 'module:function'")
        try:
            with _importable(os.getcwd()):  # like `python -m`, the current folder
                module = importlib.import_module(module_name)
        except ImportError as err:
            raise AutolossError(f"proxy {target!r}: cannot import {module_name!r} ({err}); run "
                                "from the folder that holds it or install it") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise AutolossError(f"proxy {target!r}: {module_name} has no function {attr!r}")
        return cls(fn, target, **options)

    def run(self, losses, budget: Optional[int] = None, seed: int = 0, report=None,
            scale: Optional[float] = None) -> Metrics:
        check_losses(self, losses)
        kwargs = dict(self.options)
        if scale is not None and "scale" in inspect.signature(self.fn).parameters:
            kwargs["scale"] = scale
        result = self.fn(losses=losses, budget=int(budget or self.default_budget), seed=seed,
                         report=report or no_report, **kwargs)
        if isinstance(result, Metrics):
            return result
        if not isinstance(result, Mapping) or self.metric not in result:
            raise AutolossError(f"proxy {self.name!r} must return Metrics or a dict holding "
                                f"{self.metric!r}, got {result!r}")
        value = float(result[self.metric])
        if value != value:
            raise CandidateFailure(f"the trainer returned {self.metric} = nan")
        extra = {k: float(v) for k, v in result.items() if k != self.metric}
        return Metrics(self.metric, value, self.direction, extra=extra)


@contextlib.contextmanager
def _importable(folder: str):
    """``folder`` on ``sys.path`` for the block only (autoloss changes no global state)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
