"""``sigmoid``: per-class sigmoid classification, one loss per (sample, class) entry.

Targets are one-hot, or soft: the IoU of the sample's box at its positive class (QFL, VFL).
"""
from __future__ import annotations

import torch

from ..errors import SignatureError
from .base import (Curve, Input, Prepared, Signature, float_pair, identity_backward,
                   terminals)

Tensor = torch.Tensor

COLUMNS = {"x": "logit", "t": "target in [0, 1]: one-hot, or the IoU at the positive class"}
TERMINALS = [
    ("p", "sigmoid(x)", "predicted probability"),
    ("y", "t > 0", "binary label [t > 0]"),
]


def prepare(loss: str, logits: Tensor, target: Tensor) -> Prepared:
    float_pair(loss, "logits", logits, "target", target, None)
    if target.numel():
        low, high = (v.item() for v in torch.aminmax(target.detach()))
        if not 0 <= low <= high <= 1:  # NaN fails it too
            raise SignatureError(
                f"{loss}: argument 'target' must hold values in [0, 1] (one-hot or IoU "
                f"quality), got min {low:g}, max {high:g}")
    return Prepared([logits, target], (logits, target), tuple(logits.shape),
                    [tuple(logits.shape)] * 2)


EXPORT_COLUMNS = ("logits: Tensor, target: Tensor", '''\
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {list(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have logits' shape {list(logits.shape)}, got {list(target.shape)}")
    return [logits, target]''')


def sample(n: int, generator=None, dtype=torch.float64, device="cpu", classes=4):
    """Half the rows one-hot, half soft (IoU 0.05-0.95); a fifth of them background."""
    logits = torch.randn(n, classes, generator=generator, dtype=dtype) * 2.5
    label = torch.randint(0, classes + 1, (n,), generator=generator)
    quality = torch.rand(n, generator=generator, dtype=dtype) * 0.9 + 0.05
    target = torch.zeros(n, classes + 1, dtype=dtype)
    target[torch.arange(n), label] = torch.where(torch.arange(n) % 2 == 0, 1.0, quality).to(dtype)
    return logits.to(device), target[:, :classes].contiguous().to(device)


def degenerate(dtype=torch.float64):
    x = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 50.0], [0.0, 0.0, -50.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.3], [0.0, 1.0, 0.0]], dtype=dtype)
    return x, t


def convergence(steps, m: int, generator):
    """The right answer at logit +-4, moved by 8 towards the wrong one times the step."""
    dt = torch.float64
    k, s = len(steps), torch.tensor(steps, dtype=dt).repeat_interleave(m)
    c = 3
    y = torch.zeros(m, c, dtype=dt)
    y[torch.arange(m), torch.randint(0, c, (m,), generator=generator)] = 1.0
    base = (y * 2 - 1) * 4.0
    return base.repeat(k, 1) - s[:, None] * 8.0 * (y.repeat(k, 1) * 2 - 1), y.repeat(k, 1)


def curve(n: int) -> Curve:
    """One logit from -6 to 6 against a positive target."""
    x = torch.linspace(-6, 6, n, dtype=torch.float64)[:, None]
    return Curve((x, torch.ones_like(x)), torch.sigmoid(x[:, 0]), "p (target y = 1)", "logit",
                 torch.ones_like(x))


def perfect(inputs):
    """Saturated logits on the binary labels (a soft target's optimum is not saturated)."""
    t = (inputs[1] > 0).to(inputs[1].dtype)
    return (t * 2 - 1) * 40.0, t


SIGNATURE = Signature(
    name="sigmoid",
    doc="Per-class sigmoid classification; targets one-hot or soft (IoU at the positive class).",
    inputs=(Input("logits", "(N, C)", "class logits"),
            Input("target", "(N, C)", "targets in [0, 1]")),
    output="(N, C)",
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
)
