"""``box``: axis-aligned boxes (x1, y1, x2, y2) in absolute coordinates, one loss per pair.

The columns are the eight coordinates (strided views of the inputs); every geometric
quantity of the IoU family is a terminal. Coordinates are positions: a box loss must not
change when the image is scaled or shifted (``units``, ``rescale``).
"""
from __future__ import annotations

import torch

from .. import units
from ..expr import Param
from .base import (Curve, Input, Prepared, Signature, float_pair, identity_backward,
                   terminals)

Tensor = torch.Tensor

EPS = Param("eps", 1e-7)

COLUMNS = {
    "px1": "predicted box x1", "py1": "predicted box y1",
    "px2": "predicted box x2", "py2": "predicted box y2",
    "tx1": "target box x1", "ty1": "target box y1",
    "tx2": "target box x2", "ty2": "target box y2",
}

TERMINALS = [
    ("pw", "px2 - px1", "predicted width"),
    ("ph", "py2 - py1", "predicted height"),
    ("tw", "tx2 - tx1", "target width"),
    ("th", "ty2 - ty1", "target height"),
    ("parea", "pw * ph", "predicted area"),
    ("tarea", "tw * th", "target area"),
    ("iw", "relu(min(px2, tx2) - max(px1, tx1))", "intersection width"),
    ("ih", "relu(min(py2, ty2) - max(py1, ty1))", "intersection height"),
    ("inter", "iw * ih", "intersection area I"),
    ("union", "parea + tarea - inter", "union area U"),
    ("iou", "inter / (union + eps)", "intersection over union"),
    ("cw", "max(px2, tx2) - min(px1, tx1)", "enclosing-box width"),
    ("ch", "max(py2, ty2) - min(py1, ty1)", "enclosing-box height"),
    ("enclose", "cw * ch", "enclosing-box area C"),
    ("diag2", "cw ** 2 + ch ** 2", "squared enclosing-box diagonal c^2"),
    ("pcx", "(px1 + px2) / 2", "predicted centre x"),
    ("pcy", "(py1 + py2) / 2", "predicted centre y"),
    ("tcx", "(tx1 + tx2) / 2", "target centre x"),
    ("tcy", "(ty1 + ty2) / 2", "target centre y"),
    ("dx", "tcx - pcx", "centre offset x (target - pred)"),
    ("dy", "tcy - pcy", "centre offset y (target - pred)"),
    ("rho2", "dx ** 2 + dy ** 2", "squared centre distance rho^2"),
]


def prepare(loss: str, pred: Tensor, target: Tensor) -> Prepared:
    float_pair(loss, "pred", pred, "target", target, 4)
    # strided views: the compiled loss makes each row chunk contiguous while it is in cache
    columns = list(pred.unbind(1)) + list(target.unbind(1))
    return Prepared(columns, (pred, target), (pred.shape[0],), [tuple(pred.shape)] * 2)


EXPORT_COLUMNS = ("pred: Tensor, target: Tensor", '''\
    if pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"pred must have shape (N, 4), got {list(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {list(pred.shape)}, got {list(target.shape)}")
    return list(pred.unbind(1)) + list(target.unbind(1))''')


def _from_centres(c: Tensor, wh: Tensor) -> Tensor:
    return torch.cat([c - wh / 2, c + wh / 2], 1)


def sample(n: int, generator=None, dtype=torch.float64, device="cpu"):
    """Targets of size 0.5-8.5 within a 20 x 20 field, predictions moved by about 2."""
    c = torch.rand(n, 2, generator=generator, dtype=dtype) * 20
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 8 + 0.5
    target = _from_centres(c, wh).to(device)
    pred = target + torch.randn(n, 4, generator=generator, dtype=dtype).to(device) * 2
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:] - 0.1), pred[:, 2:]], 1)
    return pred, target


def sample_near(n: int, generator=None, dtype=torch.float64, device="cpu"):
    """Targets as ``sample``; predictions with the centre moved by about a tenth of the size
    and each side scaled by about exp(+-0.15): IoU mostly 0.5-0.95."""
    _, target = sample(n, generator, dtype)
    wh = target[:, 2:] - target[:, :2]
    c = (target[:, :2] + target[:, 2:]) / 2
    c = c + torch.randn(n, 2, generator=generator, dtype=dtype) * 0.1 * wh
    wh = wh * torch.exp(torch.randn(n, 2, generator=generator, dtype=dtype) * 0.15)
    return _from_centres(c, wh).to(device), target.to(device)


def degenerate(dtype=torch.float64):
    t = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 7, dtype=dtype)
    p = torch.tensor([
        [0.0, 0.0, 2.0, 2.0],        # identical
        [1.0, 1.0, 1.0, 1.0],        # zero-area prediction inside the target
        [5.0, 5.0, 7.0, 8.0],        # disjoint
        [0.5, 0.5, 1.5, 1.5],        # nested inside
        [-1.0, -1.0, 3.0, 3.0],      # nesting the target
        [2.0, 0.0, 4.0, 2.0],        # adjacent (touching edge)
        [1.0, -3.0, 1.5, 9.0],       # thin and crossing
    ], dtype=dtype)
    return p, t


def rescale(pred: Tensor, target: Tensor, s: float, shift: float):
    offset = torch.tensor([shift, -0.6 * shift, shift, -0.6 * shift], dtype=pred.dtype,
                          device=pred.device)
    return pred * s + offset, target * s + offset


def convergence(steps, m: int, generator):
    """Each prediction's centre moved by up to its size and its sides stretched by up to e,
    both by the step (x1 < x2 throughout)."""
    dt = torch.float64
    k, s = len(steps), torch.tensor(steps, dtype=dt).repeat_interleave(m)
    target = sample(m, generator, dtype=dt)[1]
    c = (target[:, :2] + target[:, 2:]) / 2
    wh = target[:, 2:] - target[:, :2]
    offset = (torch.rand(m, 4, generator=generator, dtype=dt) - 0.5) * 2.0 * wh.repeat(1, 2)
    stretch = torch.exp((torch.rand(m, 2, generator=generator, dtype=dt) - 0.5) * 2.0)
    cc = c.repeat(k, 1) + s[:, None] * offset[:, :2].repeat(k, 1)
    ww = wh.repeat(k, 1) * stretch.repeat(k, 1) ** s[:, None]
    return _from_centres(cc, ww), target.repeat(k, 1)


def curve(n: int) -> Curve:
    """A unit box sliding sideways onto its target: IoU = (1 - s) / (1 + s)."""
    dt = torch.float64
    s = torch.linspace(0.98, 0.0, n, dtype=dt)
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=dt).repeat(n, 1)
    zero = torch.zeros_like(s)
    return Curve((target + torch.stack([s, zero, s, zero], 1), target), (1 - s) / (1 + s),
                 "IoU (a unit box sliding sideways onto its target)", "shift",
                 torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dt).repeat(n, 1))


def perfect(inputs):
    return inputs[1].clone(), inputs[1]


def from_detector(ltrb: Tensor, points: Tensor, gt_boxes: Tensor, stride: float):
    """The decoded predicted boxes against the ground truth."""
    return torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], 1), gt_boxes


SIGNATURE = Signature(
    name="box",
    doc="Axis-aligned boxes (x1, y1, x2, y2) in absolute coordinates; one loss per box pair.",
    inputs=(Input("pred", "(N, 4)", "predicted boxes, xyxy"),
            Input("target", "(N, 4)", "target boxes, xyxy")),
    output="(N,)",
    columns=tuple(COLUMNS),
    terminals=terminals(COLUMNS, TERMINALS, {"eps": EPS}),
    params={"eps": EPS},
    prepare=prepare,
    backward=identity_backward,
    column_input=(0, 0, 0, 0, 1, 1, 1, 1),
    grad_slots=((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)),
    sample=sample,
    degenerate=degenerate,
    units={**{c: units.POSITION for c in COLUMNS}, "eps": units.FREE},
    rescale=rescale,
    sample_near=sample_near,
    export_columns=EXPORT_COLUMNS,
    convergence=convergence,
    curve=curve,
    perfect=perfect,
    from_detector=from_detector,
)
