"""The regression simulation of the DIoU paper, for any box parametrisation.

Zheng, Wang, Liu, Li, Ye, Ren, *Distance-IoU Loss*, AAAI 2020, section "Simulation
experiment": anchors at points around the targets regress every target for T iterations
(200)::

    B <- B - eta_t * (2 - IoU) * M dL/dB,   eta_t = c * (0.1, then 0.01 after 0.8 T,
                                                     0.001 after 0.9 T)

with the gradient from autograd through the candidate loss. M is the metric of the box
parameters: ``unit**2`` for a coordinate that is a length or a position (a step of the
gradient of a scale-invariant loss is measured in 1 / length), 1 for an angle. The primary
metric is the area under the error curve over the initial error (lower: fast and complete
convergence); the final error ratio is reported too.

``step`` sets c:

- ``"calibrated"`` (the default): c = G_ref / G_loss, where G is the mean over the cases of
  the norm of the per-case gradient M^(1/2) dL/dB at the anchors (iteration 1) and ``ref`` the
  simulation's reference loss (GIoU and its rotated form keep the paper's steps exactly, c = 1),
  so k * L trains like L for every k > 0, as it does for a user who tunes the loss weight:
  the metric does not reward a candidate for multiplying itself by a constant. A loss with
  no gradient at the anchors fails the run.
- ``"fixed"``: c = 1, the paper's fixed steps; a multiple k > 1 of a loss converges faster
  (or explodes: 10 x GIoU does).

``unit`` multiplies every length and position of the anchors and targets: ``unit=64`` is
the same simulation with boxes of about 64 pixels. Scale-invariant losses score the same at
every unit (the metric is a ratio of errors); a loss with a length inside a nonlinearity
does not.

A subclass (:class:`~autoloss.proxies.boxsim.BoxSim`,
:class:`~autoloss.proxies.rboxsim.RBoxSim`) says what the cases are, how the loss sees the
boxes, the IoU that scales the steps and the error.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Optional

import torch

from ..errors import AutolossError, did_you_mean
from .base import (CandidateFailure, Metrics, check_losses, finite, gradient_scale, no_report,
                   seeded)

STEPS = ("calibrated", "fixed")

Step = Literal["calibrated", "fixed"]

_REFERENCE_SCALES: dict[tuple, float] = {}


def disc_points(scale: float, seed: int, centre: float, radius: float,
                points: int) -> torch.Tensor:
    """``round(points * scale)`` anchor centres drawn uniformly in a disc (float64, (n, 2))."""
    n = max(1, round(points * scale))
    g = seeded(seed)
    r = radius * torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    return torch.stack([centre + r * torch.cos(angle), centre + r * torch.sin(angle)], 1)


class Simulation:
    """The regression simulation (see the module docstring); subclasses fill in the boxes."""

    name: str
    slots: dict[str, str]
    metric = "error_auc"
    direction = "minimize"
    #: the default (calibrated) step: a multiple of a loss trains the same. Set per
    #: instance: True with ``step="fixed"``, where a loss and its multiple train differently
    gradient_scale_matters = False
    default_budget = 200
    default_scale = 0.1
    report_every = 40  # each report is a storage write and a pruning decision
    #: the zoo loss whose gradient scale sets the paper's steps in calibrated mode
    reference: str
    #: which coordinates of a box row are lengths or positions (scaled by ``unit``)
    lengths: tuple[bool, ...]

    def __init__(self, step: Step = "calibrated", unit: float = 1.0):
        if step not in STEPS:
            raise AutolossError(
                f"{self.name}: unknown step {step!r}; {did_you_mean(str(step), STEPS)} "
                f"('calibrated': the paper's steps scaled by {self.reference}'s gradient over "
                "the candidate's, so a multiple of a loss trains the same; 'fixed': the "
                "paper's steps as they are)")
        if (isinstance(unit, bool) or not isinstance(unit, (int, float))
                or not math.isfinite(unit) or unit <= 0):
            raise AutolossError(f"{self.name}: unit must be a positive length that multiplies "
                                f"every box coordinate (1: the paper's unit boxes, 64: boxes "
                                f"of about 64 pixels), got {unit!r}")
        self.step = step
        self.unit = float(unit)
        self.gradient_scale_matters = step == "fixed"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(step={self.step!r}, unit={self.unit:g})"

    # -- what a subclass says ---------------------------------------------------------------
    def cases(self, scale: float, seed: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors, targets): one row of box parameters per case, at ``self.unit``."""
        raise NotImplementedError

    def loss_inputs(self, boxes: torch.Tensor, targets: torch.Tensor) -> tuple:
        """The loss's (pred, target) for the box parameters."""
        return boxes, targets

    def iou(self, boxes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-case IoU (no gradient)."""
        raise NotImplementedError

    def error(self, boxes: torch.Tensor, targets: torch.Tensor, iou: torch.Tensor) -> float:
        raise NotImplementedError

    def project(self, boxes: torch.Tensor) -> None:
        """Keep the boxes in their parametrisation after a step (in place)."""

    # -- the simulation ---------------------------------------------------------------------
    def metric_scale(self, dtype) -> torch.Tensor:
        """M^(1/2): ``unit`` for a length or a position, 1 for an angle."""
        return torch.tensor([self.unit if k else 1.0 for k in self.lengths], dtype=dtype)

    def gradient(self, loss: Callable, boxes: torch.Tensor, targets: torch.Tensor,
                 what: str) -> torch.Tensor:
        """The gradient of the summed loss at ``boxes``: one row per case."""
        b = boxes.detach().requires_grad_(True)
        value = loss(*self.loss_inputs(b, targets), reduction="sum")
        finite(value, what)
        (grad,) = torch.autograd.grad(value, b)
        return grad

    def reference_scale(self, scale: float, seed: int, dtype) -> float:
        """G of the reference loss at the anchors of ``cases(scale, seed, dtype)`` (cached)."""
        key = (self.name, float(scale), int(seed), self.unit, dtype)
        cache = _REFERENCE_SCALES
        if key not in cache:
            from .. import zoo

            anchors, targets = self.cases(scale, seed, dtype)
            grad = self.gradient(zoo.compiled(self.reference), anchors, targets,
                                 f"the {self.reference} reference loss")
            cache[key] = gradient_scale(grad * self.metric_scale(dtype))
        return cache[key]

    def run(self, losses: Mapping[str, Callable], budget: Optional[int] = None, seed: int = 0,
            report=None, scale: Optional[float] = None, dtype=torch.float32) -> Metrics:
        check_losses(self, losses)
        (loss,) = losses.values()
        report = report or no_report
        steps = int(budget or self.default_budget)
        scale = self.default_scale if scale is None else float(scale)
        anchors, targets = self.cases(scale, seed, dtype)
        metric = self.metric_scale(dtype) ** 2
        boxes = anchors.clone()
        iou = self.iou(boxes, targets)
        e0 = self.error(boxes, targets, iou)
        curve = [e0]
        area = 0.0
        extra = {}
        for t in range(1, steps + 1):
            grad = self.gradient(loss, boxes, targets, f"the loss at iteration {t}")
            if t == 1:
                step_scale, extra = self._calibrate(grad, scale, seed, dtype)
            eta = 0.1 if t <= 0.8 * steps else 0.01 if t <= 0.9 * steps else 0.001
            with torch.no_grad():
                boxes = boxes - (eta * step_scale) * (2 - iou).unsqueeze(1) * metric * grad
                self.project(boxes)
            iou = self.iou(boxes, targets)
            e = self.error(boxes, targets, iou)
            finite(e, f"the regression error at iteration {t}")
            if e > 1e3 * e0:
                raise CandidateFailure(f"regression exploded at iteration {t}: error {e:.3g} "
                                       f"= {e / e0:.3g} x the initial error")
            area += (curve[-1] + e) / 2
            curve.append(e)
            if t % self.report_every == 0 or t == steps:
                report(t, area / (t * e0))
        auc = area / (steps * e0)
        extra.update({"final_error_ratio": curve[-1] / e0, "initial_error": e0,
                      "final_error": curve[-1], "cases": float(len(boxes)),
                      "unit": self.unit})
        return Metrics(self.metric, auc, self.direction, extra=extra,
                       curve=list(enumerate(curve)))

    def _calibrate(self, grad: torch.Tensor, scale: float, seed: int,
                   dtype) -> tuple[float, dict[str, float]]:
        """The step scale c (1 with fixed steps) and what to record of it."""
        g = gradient_scale(grad * self.metric_scale(dtype))
        if self.step == "fixed":
            return 1.0, {"step_scale": 1.0, "grad_norm": g}
        if not math.isfinite(g):
            raise CandidateFailure(f"the gradient at the start is non-finite (mean norm {g}): "
                                   "nothing to calibrate the step with")
        if g == 0:
            raise CandidateFailure("zero gradient at the start: nothing to calibrate the step "
                                   "with (the loss does not move any anchor)")
        g_ref = self.reference_scale(scale, seed, dtype)
        c = g_ref / g
        if not math.isfinite(c) or c == 0:
            raise CandidateFailure(f"the gradient at the start ({g:.3g}, mean norm per case) is "
                                   f"too far from {self.reference}'s ({g_ref:.3g}) to calibrate "
                                   "the step with")
        return c, {"step_scale": c, "grad_norm": g, "grad_norm_reference": g_ref}
