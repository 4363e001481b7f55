"""``dist``: a discrete distribution over B bins regressing a continuous target (DFL).

The columns are the target, its left bin (no gradient) and the log-probabilities of the
two bins around it, gathered by a small vectorized core with its own backward.
"""
from __future__ import annotations

import torch

from ..errors import SignatureError
from .base import Input, Prepared, Signature, logsoftmax_backward, need, terminals

Tensor = torch.Tensor


def prepare(loss: str, logits: Tensor, target: Tensor) -> Prepared:
    need(logits.dim() == 2 and logits.shape[1] >= 2, loss, "logits",
         "a 2-D tensor of shape (N, B) with B >= 2 bins", logits)
    need(logits.is_floating_point(), loss, "logits", "a floating-point tensor", logits)
    n, b = logits.shape
    need(target.shape == (n,), loss, "target", f"a 1-D tensor of shape ({n},)", target)
    need(target.is_floating_point(), loss, "target", "a floating-point tensor", target)
    if target.numel() and bool(((target < 0) | (target >= b - 1)).any()):
        raise SignatureError(
            f"{loss}: 'target' must lie in [0, B - 1) = [0, {b - 1}) for B = {b} bins, got min "
            f"{target.min().item():g}, max {target.max().item():g}; clamp it, e.g. "
            f"target.clamp(max={b - 1} - 0.01) as ultralytics does"
        )
    y = target.to(logits.dtype)
    yl = y.floor()
    left = yl.long()
    logp_all = torch.log_softmax(logits, dim=1)
    logp_l = logp_all.gather(1, left[:, None])[:, 0]
    logp_r = logp_all.gather(1, left[:, None] + 1)[:, 0]
    return Prepared([y, yl, logp_l, logp_r], (logits, target), (n,), [(n,)] * 4,
                    {"logp_all": logp_all, "index": [left, left + 1]})


def backward(prep: Prepared, grads):
    d_logits = logsoftmax_backward(prep, [grads[2], grads[3]], 2)
    return [d_logits, grads[0]]


EXPORT_COLUMNS = ("logits: Tensor, target: Tensor", '''\
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, B) and target (N,), got {list(logits.shape)} and {list(target.shape)}")
    y = target.to(logits.dtype)
    yl = torch.floor(y).detach()
    left = yl.long().unsqueeze(1)
    logp_all = torch.log_softmax(logits, 1)
    return [y, yl, logp_all.gather(1, left).squeeze(1), logp_all.gather(1, left + 1).squeeze(1)]''')


def sample(n: int, generator=None, dtype=torch.float64, device="cpu", bins=17):
    logits = torch.randn(n, bins, generator=generator, dtype=dtype) * 2
    target = torch.rand(n, generator=generator, dtype=dtype) * (bins - 1.01)
    return logits.to(device), target.to(device)


def degenerate(dtype=torch.float64):
    x = torch.tensor([[50.0, -50.0, 0.0, 0.0], [-50.0, 50.0, -50.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                     dtype=dtype)
    return x, torch.tensor([0.0, 1.0, 2.999], dtype=dtype)


def convergence(steps, m: int, generator):
    """The ideal two-bin distribution blended into a flat one by the step."""
    dt = torch.float64
    k, s = len(steps), torch.tensor(steps, dtype=dt).repeat_interleave(m)
    b = 8
    target = torch.rand(m, generator=generator, dtype=dt) * (b - 1.5) + 0.2
    left = target.floor().long()
    wl = left + 1 - target
    ideal = torch.full((m, b), 1e-4, dtype=dt)
    ideal[torch.arange(m), left] = wl
    ideal[torch.arange(m), left + 1] = 1 - wl
    flat = torch.full((m, b), 1.0 / b, dtype=dt)
    mix = (1 - s[:, None]) * ideal.repeat(k, 1) + s[:, None] * flat.repeat(k, 1)
    return mix.log(), target.repeat(k)


SIGNATURE = Signature(
    name="dist",
    doc="A discrete distribution over B bins regressing a continuous target (DFL).",
    inputs=(Input("logits", "(N, B)", "bin logits"),
            Input("target", "(N,)", "continuous target in [0, B - 1)")),
    output="(N,)",
    columns=("y", "yl", "logp_l", "logp_r"),
    terminals=terminals(
        {"y": "continuous target", "yl": "left bin floor(y) (no gradient)",
         "logp_l": "log-probability of the left bin", "logp_r": "log-probability of the right bin"},
        [("wl", "yl + 1 - y", "weight of the left bin"),
         ("wr", "y - yl", "weight of the right bin"),
         ("pl", "exp(logp_l)", "probability of the left bin"),
         ("pr", "exp(logp_r)", "probability of the right bin")], {}),
    params={},
    prepare=prepare,
    backward=backward,
    column_input=(1, None, 0, 0),
    grad_slots=((0, None), (1, None), (2, None), (3, None)),
    sample=sample,
    degenerate=degenerate,
    export_columns=EXPORT_COLUMNS,
    convergence=convergence,
)
