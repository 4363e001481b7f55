"""``coord``: elementwise regression of 4 coordinates (raw values or encoded deltas).

The loss of each entry depends on that entry only (smooth L1, balanced L1, ...). A dense
detector feeds it its left/top/right/bottom distances divided by the stride.
"""
from __future__ import annotations

import torch

from .base import (Curve, Input, Prepared, Signature, float_pair, identity_backward,
                   terminals)

Tensor = torch.Tensor

COLUMNS = {"pred": "predicted value (raw or encoded delta)", "target": "target value"}
TERMINALS = [
    ("d", "pred - target", "difference d = pred - target"),
    ("ad", "abs(d)", "absolute difference |d|"),
]


def prepare(loss: str, pred: Tensor, target: Tensor) -> Prepared:
    float_pair(loss, "pred", pred, "target", target, 4)
    return Prepared([pred, target], (pred, target), tuple(pred.shape), [tuple(pred.shape)] * 2)


EXPORT_COLUMNS = ("pred: Tensor, target: Tensor", '''\
    if pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"pred must have shape (N, 4), got {list(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target must have pred's shape {list(pred.shape)}, got {list(target.shape)}")
    return [pred, target]''')


def sample(n: int, generator=None, dtype=torch.float64, device="cpu"):
    target = torch.randn(n, 4, generator=generator, dtype=dtype)
    pred = target + torch.randn(n, 4, generator=generator, dtype=dtype) * 1.5
    return pred.to(device), target.to(device)


def degenerate(dtype=torch.float64):
    p = torch.tensor([[0.0, 1.0, -1.0, 50.0], [1e-9, -1e-9, 0.0, -50.0]], dtype=dtype)
    t = torch.tensor([[0.0, 1.0, 1.0, -50.0], [0.0, 0.0, 0.0, 50.0]], dtype=dtype)
    return p, t


def convergence(steps, m: int, generator):
    """Each entry moved by up to 1 from its target, times the step."""
    dt = torch.float64
    k, s = len(steps), torch.tensor(steps, dtype=dt).repeat_interleave(m)
    target = torch.randn(m, 4, generator=generator, dtype=dt)
    offset = (torch.rand(m, 4, generator=generator, dtype=dt) - 0.5) * 2.0
    tgt = target.repeat(k, 1)
    return tgt + s[:, None] * offset.repeat(k, 1), tgt


def curve(n: int) -> Curve:
    """Every entry at d = pred - target from -3 to 3; the gradient of one entry."""
    d = torch.linspace(-3, 3, n, dtype=torch.float64)[:, None].repeat(1, 4)
    direction = torch.zeros_like(d)
    direction[:, 0] = 1.0
    return Curve((d, torch.zeros_like(d)), d[:, 0], "d = pred - target", "pred", direction)


def perfect(inputs):
    return inputs[1].clone(), inputs[1]


def from_detector(ltrb: Tensor, points: Tensor, gt_boxes: Tensor, stride: float):
    """The distances from each anchor point to the box's sides, in strides."""
    gt_ltrb = torch.cat([points - gt_boxes[:, :2], gt_boxes[:, 2:] - points], 1)
    return ltrb / stride, gt_ltrb / stride


SIGNATURE = Signature(
    name="coord",
    doc="Elementwise regression of 4 coordinates (raw or encoded deltas); one loss per entry.",
    inputs=(Input("pred", "(N, 4)", "predicted values"),
            Input("target", "(N, 4)", "target values")),
    output="(N, 4)",
    columns=tuple(COLUMNS),
    terminals=terminals(COLUMNS, TERMINALS, {}),
    params={},
    prepare=prepare,
    backward=identity_backward,
    column_input=(0, 1),
    grad_slots=((0, None), (1, None)),
    sample=sample,
    degenerate=degenerate,
    export_columns=EXPORT_COLUMNS,
    convergence=convergence,
    curve=curve,
    perfect=perfect,
    from_detector=from_detector,
)
