"""``boxsim``: the bounding-box regression simulation of the DIoU paper.

Zheng, Wang, Liu, Li, Ye, Ren, *Distance-IoU Loss*, AAAI 2020, section "Simulation
experiment": 7 target boxes of area 1 centred at (10, 10) with aspect ratios 1:4 ... 4:1;
anchors centred at 5,000 points drawn uniformly in a disc of radius 3 around (10, 10), each
with 7 scales (areas 0.5 ... 2) and the same 7 aspect ratios; every anchor regresses every
target, 5000 x 7 x 7 x 7 = 1,715,000 cases. For T iterations (200)::

    B <- B - eta * (2 - IoU) * dL/dB,   eta = 0.1, then 0.01 after 0.8 T, 0.001 after 0.9 T

with B = (x, y, w, h) and the gradient from autograd through the candidate loss. The error
is sum |B - G| over all cases and coordinates; the primary metric is the area under the
error curve divided by the initial error (lower is better: fast and complete convergence),
the final error ratio is reported too. ``scale`` subsamples the disc points.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import torch

from .base import Metrics, check_losses, finite, no_report, seeded
from .geometry import aligned_iou, xywh_to_xyxy

ASPECTS = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)
AREAS = (0.5, 2 / 3, 0.75, 1.0, 4 / 3, 1.5, 2.0)
CENTRE = 10.0
RADIUS = 3.0
POINTS = 5000


def cases(scale: float = 1.0, seed: int = 0, dtype=torch.float32):
    """Anchors and targets as (x, y, w, h) rows: ``round(5000 scale) * 343`` cases."""
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
    return anchors.reshape(-1, 4).to(dtype), targets.reshape(-1, 4).to(dtype)


class BoxSim:
    """The DIoU-paper regression simulation (see the module docstring)."""

    name = "boxsim"
    slots = {"reg": "box"}
    metric = "error_auc"
    direction = "minimize"
    #: plain gradient steps: a loss and a multiple of it train differently
    gradient_scale_matters = True
    default_budget = 200
    default_scale = 0.1
    report_every = 40  # each report is a storage write and a pruning decision

    def run(self, losses: Mapping[str, Callable], budget: Optional[int] = None, seed: int = 0,
            report=None, scale: Optional[float] = None, dtype=torch.float32) -> Metrics:
        check_losses(self, losses)
        loss = losses["reg"]
        report = report or no_report
        steps = int(budget or self.default_budget)
        scale = self.default_scale if scale is None else float(scale)
        anchors, targets = cases(scale, seed, dtype)
        target_xyxy = xywh_to_xyxy(targets)
        boxes = anchors.clone()

        def error(b):
            return float((b - targets).abs().sum(dtype=torch.float64))

        e0 = error(boxes)
        curve = [e0]
        area = 0.0
        for t in range(1, steps + 1):
            eta = 0.1 if t <= 0.8 * steps else 0.01 if t <= 0.9 * steps else 0.001
            b = boxes.detach().requires_grad_(True)
            value = loss(xywh_to_xyxy(b), target_xyxy, reduction="sum")
            finite(value, f"the loss at iteration {t}")
            (grad,) = torch.autograd.grad(value, b)
            with torch.no_grad():
                scale_iou = (2 - aligned_iou(xywh_to_xyxy(boxes), target_xyxy)).unsqueeze(1)
                boxes = boxes - eta * scale_iou * grad
            e = error(boxes)
            finite(e, f"the regression error at iteration {t}")
            if e > 1e3 * e0:
                from .base import CandidateFailure

                raise CandidateFailure(f"regression exploded at iteration {t}: error {e:.3g} "
                                       f"= {e / e0:.3g} x the initial error")
            area += (curve[-1] + e) / 2
            curve.append(e)
            if t % self.report_every == 0 or t == steps:
                report(t, area / (t * e0))
        auc = area / (steps * e0)
        return Metrics(self.metric, auc, self.direction,
                       extra={"final_error_ratio": curve[-1] / e0, "initial_error": e0,
                              "final_error": curve[-1], "cases": float(len(boxes))},
                       curve=list(enumerate(curve)))
