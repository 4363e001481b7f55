"""The proxy contract: what every proxy task (built in or a user's trainer) provides.

A proxy scores one loss per slot under a budget and a seed::

    proxy = get("boxsim")
    proxy.slots                      # {"reg": "box"}: slot -> signature
    metrics = proxy.run({"reg": loss}, budget=200, seed=0, report=callback, scale=0.1)
    metrics.value, metrics.direction # the primary metric and "minimize" / "maximize"

Call order: ``run`` calls ``report(step, value)`` with increasing steps as it goes (an
Optuna pruner or a Ray scheduler may stop the trial by raising :class:`Pruned` from the
callback), then returns :class:`Metrics`. The same seed gives the same result. A loss that
produces NaN/inf, or explodes, ends the run with :class:`CandidateFailure` and a reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Protocol, runtime_checkable

import torch

from ..errors import AutolossError

Direction = Literal["minimize", "maximize"]
Report = Callable[[int, float], None]


class CandidateFailure(AutolossError):
    """The candidate loss broke the run (non-finite values, divergence); ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Pruned(AutolossError):
    """Raised by a ``report`` callback to stop a run early (pruner, scheduler)."""


@dataclass
class Metrics:
    """Result of a proxy run: one primary metric with its direction, plus extras."""

    metric: str
    value: float
    direction: Direction
    extra: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {self.metric: self.value}
        out.update(self.extra)
        return out

    def better(self, other: "Metrics") -> bool:
        return self.value < other.value if self.direction == "minimize" else self.value > other.value


@runtime_checkable
class Proxy(Protocol):
    """What a proxy task provides (see the module docstring for the call order)."""

    name: str
    slots: Mapping[str, str]
    metric: str
    direction: Direction
    default_budget: int

    def run(self, losses: Mapping[str, Callable], budget: Optional[int] = None, seed: int = 0,
            report: Optional[Report] = None, scale: Optional[float] = None) -> Metrics:
        ...


def no_report(step: int, value: float) -> None:
    return None


def check_losses(proxy: Proxy, losses: Mapping[str, Callable]) -> None:
    """Every slot filled, no unknown slot, and each loss of the slot's signature."""
    missing = set(proxy.slots) - set(losses)
    unknown = set(losses) - set(proxy.slots)
    if missing or unknown:
        raise AutolossError(
            f"proxy {proxy.name!r} takes losses for slots {sorted(proxy.slots)} "
            f"({', '.join(f'{k}: {v}' for k, v in proxy.slots.items())})"
            + ("; " if missing or unknown else "")
            + (f"missing {sorted(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {sorted(unknown)}" if unknown else ""))
    for slot, loss in losses.items():
        sig = getattr(getattr(loss, "signature", None), "name", None)
        accepted = slot_signatures(proxy, slot)
        if sig is not None and sig not in accepted:
            raise AutolossError(f"proxy {proxy.name!r}: slot {slot!r} takes a "
                                f"{' or '.join(repr(a) for a in accepted)} loss, got a {sig!r} loss")


def per_positive(loss: Callable, *inputs, num_pos: float) -> torch.Tensor:
    """The loss normalised as its paper normalises it in a detector: summed over the batch
    and divided by the number of positives (RetinaNet's normalisation, the default), by the
    number of elements (``loss.normaliser == "elements"``: GHM's total) or of samples, the
    rows (``"samples"``: EQL, EQLv2, Seesaw); a loss that normalises itself over the whole
    batch (a set-level loss such as AP-Loss: ``loss.normalised``), its value as it is."""
    normaliser = getattr(loss, "normaliser", "positives")
    if getattr(loss, "normalised", False) or normaliser == "elements":
        return loss(*inputs, reduction="mean")
    if normaliser == "samples":
        return loss(*inputs, reduction="sum") / max(1, len(inputs[0]))
    return loss(*inputs, reduction="sum") / num_pos


def slot_signatures(proxy: Proxy, slot: str) -> tuple[str, ...]:
    """The signatures a slot accepts (a slot may take several, e.g. box or coord), and
    those whose set-level losses fill one of them (a ``sigmoid`` slot takes ``rank``: see
    ``Signature.fills``)."""
    from ..signatures import filling

    value = proxy.slots[slot]
    return filling((value,) if isinstance(value, str) else tuple(value))


def gradient_scale(grad: torch.Tensor) -> float:
    """How strongly a loss pulls: the mean over the rows of the L2 norm of each row's
    gradient (boxsim's step calibration; the transfer stage's weights)."""
    return float(grad.reshape(len(grad), -1).norm(dim=1).mean(dtype=torch.float64))


def finite(value: torch.Tensor | float, what: str) -> float:
    """The value as a float, or a CandidateFailure naming what went non-finite."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        raise CandidateFailure(f"{what} became {v} (non-finite)")
    return v


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))
