"""``boxsim``: the bounding-box regression simulation of the DIoU paper.

Zheng, Wang, Liu, Li, Ye, Ren, *Distance-IoU Loss*, AAAI 2020, section "Simulation
experiment": 7 target boxes of area 1 centred at (10, 10) with aspect ratios 1:4 ... 4:1;
anchors centred at 5,000 points drawn uniformly in a disc of radius 3 around (10, 10), each
with 7 scales (areas 0.5 ... 2) and the same 7 aspect ratios; every anchor regresses every
target, 5000 x 7 x 7 x 7 = 1,715,000 cases, with B = (x, y, w, h) for 200 iterations (the
steps, their calibration and ``unit``: :mod:`autoloss.proxies.simulation`). The error is
sum |B - G| over all cases and coordinates. ``scale`` subsamples the disc points.
"""
from __future__ import annotations

import torch

from .geometry import aligned_iou, xywh_to_xyxy
from .simulation import STEPS, Simulation, Step, disc_points  # noqa: F401 - STEPS, Step: API

ASPECTS = (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)
AREAS = (0.5, 2 / 3, 0.75, 1.0, 4 / 3, 1.5, 2.0)
CENTRE = 10.0
RADIUS = 3.0
POINTS = 5000
#: the loss whose gradient scale sets the paper's steps in calibrated mode
REFERENCE = "giou"


def cases(scale: float = 1.0, seed: int = 0, dtype=torch.float32, unit: float = 1.0):
    """Anchors and targets as (x, y, w, h) rows: ``round(5000 scale) * 343`` cases.

    Every coordinate is multiplied by ``unit`` (in float64, before the cast to ``dtype``).
    """
    cx, cy = disc_points(scale, seed, CENTRE, RADIUS, POINTS).unbind(1)
    n = len(cx)
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


class BoxSim(Simulation):
    """The DIoU-paper regression simulation (see the module docstring).

    ``BoxSim(step="calibrated" | "fixed", unit=1.0)``; from the command line
    ``autoloss eval --proxy boxsim --option step=fixed --option unit=64``.
    """

    name = "boxsim"
    slots = {"reg": "box"}
    default_scale = 0.1
    reference = REFERENCE
    lengths = (True,) * 4

    def cases(self, scale, seed, dtype):
        return cases(scale, seed, dtype, self.unit)

    def loss_inputs(self, boxes, targets):
        return xywh_to_xyxy(boxes), xywh_to_xyxy(targets)

    def iou(self, boxes, targets):
        with torch.no_grad():
            return aligned_iou(xywh_to_xyxy(boxes), xywh_to_xyxy(targets))

    def error(self, boxes, targets, iou):
        return float((boxes - targets).abs().sum(dtype=torch.float64))
