"""``boxsim``: the bounding-box regression simulation of the DIoU paper.

Zheng, Wang, Liu, Li, Ye, Ren, *Distance-IoU Loss*, AAAI 2020, section "Simulation
experiment": 7 target boxes of area 1 centred at (10, 10) with aspect ratios 1:4 ... 4:1;
anchors centred at 5,000 points drawn uniformly in a disc of radius 3 around (10, 10), each
with 7 scales (areas 0.5 ... 2) and the same 7 aspect ratios; every anchor regresses every
target, 5000 x 7 x 7 x 7 = 1,715,000 cases. For T iterations (200)::

    B <- B - eta_t * (2 - IoU) * dL/dB,   eta_t = c * unit**2 * (0.1, then 0.01 after 0.8 T,
                                                                 0.001 after 0.9 T)

with B = (x, y, w, h) and the gradient from autograd through the candidate loss. The error
is sum |B - G| over all cases and coordinates; the primary metric is the area under the
error curve divided by the initial error (lower is better: fast and complete convergence),
the final error ratio is reported too. ``scale`` subsamples the disc points.

``step`` sets the step scale c:

- ``"calibrated"`` (the default): c = G_giou / G_loss, where G is the mean over the cases of
  the L2 norm of the per-case gradient dL/dB at the anchors (iteration 1). GIoU keeps the
  paper's steps exactly (c = 1), and k * L trains like L for every k > 0, as it does for a
  user who tunes the loss weight: the metric does not reward a candidate for multiplying
  itself by a constant. A loss with no gradient at the anchors fails the run.
- ``"fixed"``: c = 1, the paper's fixed steps; a multiple k > 1 of a loss converges faster
  (or explodes: 10 x GIoU does).

``unit`` multiplies every anchor and target coordinate (centres and sizes): ``unit=64``
is the same simulation with boxes of about 64 pixels around (640, 640). A step of the
gradient of a scale-invariant loss (GIoU, DIoU, ...) is measured in 1 / length, hence the
``unit**2`` in eta_t: such losses score the same at every unit (the metric is a ratio of
errors), and a loss with a length inside a nonlinearity does not.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Optional

import torch

from ..errors import AutolossError, did_you_mean
from .base import (CandidateFailure, Metrics, check_losses, finite, gradient_scale, no_report,
                   seeded)
from .geometry import aligned_iou, xywh_to_xyxy

ASPECTS = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)
AREAS = (0.5, 2 / 3, 0.75, 1.0, 4 / 3, 1.5, 2.0)
CENTRE = 10.0
RADIUS = 3.0
POINTS = 5000
STEPS = ("calibrated", "fixed")
#: the loss whose gradient scale sets the paper's steps in calibrated mode
REFERENCE = "giou"

Step = Literal["calibrated", "fixed"]


def cases(scale: float = 1.0, seed: int = 0, dtype=torch.float32, unit: float = 1.0):
    """Anchors and targets as (x, y, w, h) rows: ``round(5000 scale) * 343`` cases.

    Every coordinate is multiplied by ``unit`` (in float64, before the cast to ``dtype``).
    """
    n = max(1, round(POINTS * scale))
    g = seeded(seed)
    radius = RADIUS * torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    cx, cy = CENTRE + radius * torch.cos(angle), CENTRE + radius * torch.sin(angle)
    aspects = torch.tensor(ASPECTS, dtype=torch.float64)
    areas = torch.tensor(AREAS, dtype=torch.float64)
    # anchor shapes: 7 areas x 7 aspect ratios (w / h)
    aw = torch.sqrt(areas[:, None] * aspects[None, :]).reshape(-1)
    ah = torch.sqrt(areas[:, None] / aspects[None, :]).reshape(-1)
    tw, th = torch.sqrt(aspects), 1 / torch.sqrt(aspects)
    # point x anchor shape x target
    shape = (n, 49, 7)
    anchors = torch.stack([cx[:, None, None].expand(shape), cy[:, None, None].expand(shape),
                           aw[None, :, None].expand(shape), ah[None, :, None].expand(shape)], -1)
    targets = torch.stack([torch.full(shape, CENTRE, dtype=torch.float64),
                           torch.full(shape, CENTRE, dtype=torch.float64),
                           tw[None, None, :].expand(shape), th[None, None, :].expand(shape)], -1)
    return ((anchors * unit).reshape(-1, 4).to(dtype),
            (targets * unit).reshape(-1, 4).to(dtype))


def gradient(loss: Callable, boxes: torch.Tensor, target_xyxy: torch.Tensor,
             what: str) -> torch.Tensor:
    """The gradient of the summed loss at ``boxes`` (x, y, w, h): one row per case."""
    b = boxes.detach().requires_grad_(True)
    value = loss(xywh_to_xyxy(b), target_xyxy, reduction="sum")
    finite(value, what)
    (grad,) = torch.autograd.grad(value, b)
    return grad


_reference_scales: dict[tuple, float] = {}


def reference_scale(scale: float, seed: int, unit: float, dtype) -> float:
    """G for the GIoU loss at the anchors of ``cases(scale, seed, dtype, unit)`` (cached)."""
    key = (float(scale), int(seed), float(unit), dtype)
    if key not in _reference_scales:
        from .. import zoo

        anchors, targets = cases(scale, seed, dtype, unit)
        grad = gradient(zoo.compiled(REFERENCE), anchors, xywh_to_xyxy(targets),
                        f"the {REFERENCE} reference loss")
        _reference_scales[key] = gradient_scale(grad)
    return _reference_scales[key]


class BoxSim:
    """The DIoU-paper regression simulation (see the module docstring).

    ``BoxSim(step="calibrated" | "fixed", unit=1.0)``; from the command line
    ``autoloss eval --proxy boxsim --option step=fixed --option unit=64``.
    """

    name = "boxsim"
    slots = {"reg": "box"}
    metric = "error_auc"
    direction = "minimize"
    #: the default (calibrated) step: a multiple of a loss trains the same. Set per
    #: instance: True with ``step="fixed"``, where a loss and its multiple train differently
    gradient_scale_matters = False
    default_budget = 200
    default_scale = 0.1
    report_every = 40  # each report is a storage write and a pruning decision

    def __init__(self, step: Step = "calibrated", unit: float = 1.0):
        if step not in STEPS:
            raise AutolossError(
                f"boxsim: unknown step {step!r}; {did_you_mean(str(step), STEPS)} "
                "('calibrated': the paper's steps scaled by GIoU's gradient over the "
                "candidate's, so a multiple of a loss trains the same; 'fixed': the paper's "
                "steps as they are)")
        if (isinstance(unit, bool) or not isinstance(unit, (int, float))
                or not math.isfinite(unit) or unit <= 0):
            raise AutolossError(f"boxsim: unit must be a positive length that multiplies every "
                                f"box coordinate (1: the paper's unit boxes, 64: boxes of "
                                f"about 64 pixels), got {unit!r}")
        self.step = step
        self.unit = float(unit)
        self.gradient_scale_matters = step == "fixed"

    def __repr__(self) -> str:
        return f"BoxSim(step={self.step!r}, unit={self.unit:g})"

    def run(self, losses: Mapping[str, Callable], budget: Optional[int] = None, seed: int = 0,
            report=None, scale: Optional[float] = None, dtype=torch.float32) -> Metrics:
        check_losses(self, losses)
        loss = losses["reg"]
        report = report or no_report
        steps = int(budget or self.default_budget)
        scale = self.default_scale if scale is None else float(scale)
        unit = self.unit
        anchors, targets = cases(scale, seed, dtype, unit)
        target_xyxy = xywh_to_xyxy(targets)
        boxes = anchors.clone()

        def error(b):
            return float((b - targets).abs().sum(dtype=torch.float64))

        e0 = error(boxes)
        curve = [e0]
        area = 0.0
        extra = {}
        for t in range(1, steps + 1):
            grad = gradient(loss, boxes, target_xyxy, f"the loss at iteration {t}")
            if t == 1:
                step_scale, extra = self._calibrate(grad, scale, seed, dtype)
            eta = 0.1 if t <= 0.8 * steps else 0.01 if t <= 0.9 * steps else 0.001
            eta = eta * unit ** 2 * step_scale
            with torch.no_grad():
                scale_iou = (2 - aligned_iou(xywh_to_xyxy(boxes), target_xyxy)).unsqueeze(1)
                boxes = boxes - eta * scale_iou * grad
            e = error(boxes)
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
                      "final_error": curve[-1], "cases": float(len(boxes)), "unit": unit})
        return Metrics(self.metric, auc, self.direction, extra=extra,
                       curve=list(enumerate(curve)))

    def _calibrate(self, grad: torch.Tensor, scale: float, seed: int,
                   dtype) -> tuple[float, dict[str, float]]:
        """The step scale c (1 with fixed steps) and what to record of it."""
        g = gradient_scale(grad)
        if self.step == "fixed":
            return 1.0, {"step_scale": 1.0, "grad_norm": g}
        if not math.isfinite(g):
            raise CandidateFailure(f"the gradient at the start is non-finite (mean norm {g}): "
                                   "nothing to calibrate the step with")
        if g == 0:
            raise CandidateFailure("zero gradient at the start: nothing to calibrate the step "
                                   "with (the loss does not move any anchor)")
        g_ref = reference_scale(scale, seed, self.unit, dtype)
        c = g_ref / g
        if not math.isfinite(c) or c == 0:
            raise CandidateFailure(f"the gradient at the start ({g:.3g}, mean norm per case) is "
                                   f"too far from {REFERENCE}'s ({g_ref:.3g}) to calibrate "
                                   "the step with")
        return c, {"step_scale": c, "grad_norm": g, "grad_norm_reference": g_ref}
