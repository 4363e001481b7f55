"""``rboxsim``: the DIoU paper's regression simulation with rotated boxes.

The simulation of :mod:`autoloss.proxies.boxsim` with an angle (the steps, their calibration
and ``unit``: :mod:`autoloss.proxies.simulation`). 49 target boxes of area 1 centred at
(10, 10): 7 aspect ratios from 1:4 to 4:1 (the square and the near-square 1:1.2 and 1.2:1
among them) at 7 angles across the whole period of a rectangle (pi), two of them within
0.03 rad of the boundary +-pi/2 of the le90 convention. Anchors at points drawn uniformly in
a disc of radius 3 around (10, 10), each with 36 shapes: 3 areas (0.5, 1, 2) x 3 aspect
ratios (1:2, 1:1, 2:1) x 4 angles (-pi/4, 0, pi/4, pi/2). Every anchor regresses every
target (1,764 cases per point) with B = (x, y, w, h, theta): the steps move the centre and
sizes by ``unit**2`` times their gradient and the angle by its gradient (a step of a
scale-invariant loss then moves lengths by a length and the angle by an angle, whatever the
unit). Sizes are kept at least 1e-3 * unit after each step (a rectangle with a negative side
is the same rectangle; the simulation keeps one parametrisation).

The error is sum (1 - RIoU) over the cases, RIoU the exact rotated IoU
(:mod:`autoloss.rotated`): an angle off by pi, or a near-square box with width and height
exchanged and its angle off by pi/2, is no error; the steps are scaled by (2 - RIoU).
``scale`` subsamples the disc points (default 0.005: 25 points, 44,100 cases). The
calibrated step's reference is ``rotated_giou``.
"""
from __future__ import annotations

import math

import torch

from ..rotated import iou as rotated_iou
from .simulation import Simulation, disc_points

ASPECTS = (1 / 4, 1 / 2, 1 / 1.2, 1.0, 1.2, 2.0, 4.0)
ANGLES = (-math.pi / 2 + 0.03, -math.pi / 3, -math.pi / 8, 0.0, math.pi / 5, math.pi / 3,
          math.pi / 2 - 0.03)
ANCHOR_AREAS = (0.5, 1.0, 2.0)
ANCHOR_ASPECTS = (1 / 2, 1.0, 2.0)
ANCHOR_ANGLES = (-math.pi / 4, 0.0, math.pi / 4, math.pi / 2)
CENTRE = 10.0
RADIUS = 3.0
POINTS = 5000
MIN_SIZE = 1e-3
#: the loss whose gradient scale sets the paper's steps in calibrated mode
REFERENCE = "rotated_giou"


def _shapes(areas, aspects, angles) -> torch.Tensor:
    """(w, h, theta) rows of every area x aspect (w / h) x angle."""
    a, r, t = torch.meshgrid(torch.tensor(areas, dtype=torch.float64),
                             torch.tensor(aspects, dtype=torch.float64),
                             torch.tensor(angles, dtype=torch.float64), indexing="ij")
    return torch.stack([torch.sqrt(a * r), torch.sqrt(a / r), t], -1).reshape(-1, 3)


def cases(scale: float = 1.0, seed: int = 0, dtype=torch.float32, unit: float = 1.0):
    """Anchors and targets as (x, y, w, h, theta) rows: ``round(5000 scale) * 1764`` cases.

    Centres and sizes are multiplied by ``unit`` (in float64, before the cast to ``dtype``).
    """
    centres = disc_points(scale, seed, CENTRE, RADIUS, POINTS)
    n = len(centres)
    anchor_shapes = _shapes(ANCHOR_AREAS, ANCHOR_ASPECTS, ANCHOR_ANGLES)
    target_shapes = _shapes((1.0,), ASPECTS, ANGLES)
    a, t = len(anchor_shapes), len(target_shapes)
    shape = (n, a, t)
    anchors = torch.cat([centres[:, None, None, :].expand(*shape, 2),
                         anchor_shapes[None, :, None, :].expand(*shape, 3)], -1)
    targets = torch.cat([torch.full((*shape, 2), CENTRE, dtype=torch.float64),
                         target_shapes[None, None, :, :].expand(*shape, 3)], -1)
    units = torch.tensor([unit] * 4 + [1.0], dtype=torch.float64)
    return ((anchors * units).reshape(-1, 5).to(dtype),
            (targets * units).reshape(-1, 5).to(dtype))


class RBoxSim(Simulation):
    """The DIoU-paper regression simulation with rotated boxes (see the module docstring).

    ``RBoxSim(step="calibrated" | "fixed", unit=1.0)``; from the command line
    ``autoloss eval --proxy rboxsim --loss reg=kld --option unit=64``.
    """

    name = "rboxsim"
    slots = {"reg": "rbox"}
    default_scale = 0.005
    reference = REFERENCE
    lengths = (True,) * 4 + (False,)

    def cases(self, scale, seed, dtype):
        return cases(scale, seed, dtype, self.unit)

    def iou(self, boxes, targets):
        with torch.no_grad():
            return rotated_iou(boxes, targets)

    def error(self, boxes, targets, iou):
        return float((1 - iou).sum(dtype=torch.float64))

    def project(self, boxes):
        boxes[:, 2:4].clamp_(min=MIN_SIZE * self.unit)
