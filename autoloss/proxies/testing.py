"""The proxy contract as a test suite, shipped so any proxy (yours too) can run it.

Subclass :class:`ProxyContract` in a pytest module and fill in the class attributes::

    class TestMyTrainer(ProxyContract):
        proxy_name = "mypackage.train:train"
        losses = {"reg": "giou"}
        budget = 20
        nan_loss = ("reg", "box", "log(iou - 2)")
"""
from __future__ import annotations

import math
from typing import Optional

import pytest

from ..evaluate import resolve_loss
from ..signatures import SIGNATURES
from . import get
from .base import CandidateFailure, Metrics, Pruned, slot_signatures


class ProxyContract:
    proxy_name: str = ""
    options: dict = {}
    losses: dict[str, str] = {}
    budget: int = 10
    scale: Optional[float] = None
    #: (slot, signature, expression) of a loss that turns non-finite on this proxy
    nan_loss: tuple[str, str, str] = ("", "", "")

    def proxy(self):
        return get(self.proxy_name, **self.options)

    def compiled(self, proxy):
        return {slot: resolve_loss(text, slot_signatures(proxy, slot), slot)
                for slot, text in self.losses.items()}

    def run(self, seed=0, report=None, losses=None):
        proxy = self.proxy()
        return proxy.run(losses or self.compiled(proxy), budget=self.budget, seed=seed,
                         report=report, scale=self.scale)

    def test_declares_slots_metric_and_direction(self):
        proxy = self.proxy()
        assert proxy.slots and all(
            set(slot_signatures(proxy, s)) <= set(SIGNATURES) for s in proxy.slots)
        assert isinstance(proxy.metric, str) and proxy.metric
        assert proxy.direction in ("minimize", "maximize")
        assert proxy.default_budget > 0

    def test_returns_metrics_and_reports_progress(self):
        steps = []
        result = self.run(report=lambda step, value: steps.append((step, value)))
        proxy = self.proxy()
        assert isinstance(result, Metrics)
        assert result.metric == proxy.metric and result.direction == proxy.direction
        assert math.isfinite(result.value)
        assert steps, "the proxy never called report()"
        assert [s for s, _ in steps] == sorted(s for s, _ in steps)
        assert all(0 < s <= self.budget for s, _ in steps)
        assert all(math.isfinite(v) for _, v in steps)

    def test_same_seed_same_result(self):
        a, b = self.run(seed=3), self.run(seed=3)
        assert a.value == b.value
        assert a.extra == b.extra

    def test_report_can_prune(self):
        def prune(step, value):
            raise Pruned("stop")

        with pytest.raises(Pruned):
            self.run(report=prune)

    def test_non_finite_candidate_fails_cleanly_with_a_reason(self):
        slot, signature, text = self.nan_loss
        proxy = self.proxy()
        losses = self.compiled(proxy)
        losses[slot] = resolve_loss(f"{signature}:{text}", slot_signatures(proxy, slot), slot)
        with pytest.raises(CandidateFailure) as err:
            self.run(losses=losses)
        assert err.value.reason

    def test_missing_or_unknown_slot_is_a_clear_error(self):
        proxy = self.proxy()
        losses = self.compiled(proxy)
        losses["nope"] = next(iter(losses.values()))
        with pytest.raises(Exception, match="unknown \\['nope'\\]"):
            proxy.run(losses, budget=1)
        with pytest.raises(Exception, match="missing"):
            proxy.run({}, budget=1)
