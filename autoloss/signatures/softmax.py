"""``softmax``: softmax classification over C classes, background an explicit class.

The columns are the log-probability of the labelled class (gathered by a small vectorized
core with its own backward) and the optional quality (IoU) of the sample's box.
"""
from __future__ import annotations

import torch

from ..errors import SignatureError
from .base import Curve, Input, Prepared, Signature, logsoftmax_backward, need, terminals

Tensor = torch.Tensor


def prepare(loss: str, logits: Tensor, labels: Tensor, quality=None) -> Prepared:
    need(logits.dim() == 2 and logits.shape[1] >= 1, loss, "logits",
         "a 2-D tensor of shape (N, C)", logits)
    need(logits.is_floating_point(), loss, "logits", "a floating-point tensor", logits)
    need(labels.dim() == 1 and labels.shape[0] == logits.shape[0], loss, "labels",
         f"a 1-D tensor of shape ({logits.shape[0]},) matching logits", labels)
    need(not labels.is_floating_point() and labels.dtype != torch.bool, loss, "labels",
         "an integer tensor of class indices", labels, "convert with .long()")
    n, c = logits.shape
    if labels.numel() and bool(((labels < 0) | (labels >= c)).any()):
        raise SignatureError(f"{loss}: 'labels' must lie in [0, {c}) (C = {c} classes, "
                             f"background included), got min {labels.min().item()}, "
                             f"max {labels.max().item()}")
    if quality is None:
        q = torch.ones(n, dtype=logits.dtype, device=logits.device)
    else:
        need(quality.shape == (n,), loss, "quality", f"a 1-D tensor of shape ({n},)", quality)
        need(quality.is_floating_point(), loss, "quality", "a floating-point tensor", quality)
        q = quality.to(logits.dtype)
    index = labels.long()
    logp_all = torch.log_softmax(logits, dim=1)
    logp = logp_all.gather(1, index[:, None])[:, 0]
    return Prepared([logp, q], (logits, labels, quality), (n,), [(n,)] * 2,
                    {"logp_all": logp_all, "index": [index]})


def backward(prep: Prepared, grads):
    d_logits = logsoftmax_backward(prep, grads, 1)
    d_quality = grads[1] if prep.inputs[2] is not None else None
    return [d_logits, None, d_quality]


EXPORT_COLUMNS = ("logits: Tensor, labels: Tensor, quality: Optional[Tensor] = None", '''\
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, C) and labels (N,), got {list(logits.shape)} and {list(labels.shape)}")
    logp = torch.log_softmax(logits, 1).gather(1, labels.long().unsqueeze(1)).squeeze(1)
    if quality is None:
        q = torch.ones_like(logp)
    else:
        q = quality.to(logp.dtype)
    return [logp, q]''')


def sample(n: int, generator=None, dtype=torch.float64, device="cpu", classes=5):
    logits = torch.randn(n, classes, generator=generator, dtype=dtype) * 2
    labels = torch.randint(0, classes, (n,), generator=generator)
    quality = torch.rand(n, generator=generator, dtype=dtype)
    return logits.to(device), labels.to(device), quality.to(device)


def degenerate(dtype=torch.float64):
    x = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    return x, torch.tensor([0, 0, 2]), torch.tensor([1.0, 0.0, 0.5], dtype=dtype)


def convergence(steps, m: int, generator):
    """Confident right logits (+3 / -3) blended into random ones by the step."""
    dt = torch.float64
    k, s = len(steps), torch.tensor(steps, dtype=dt).repeat_interleave(m)
    c = 4
    labels = torch.randint(0, c, (m,), generator=generator)
    onehot = torch.nn.functional.one_hot(labels, c).to(dt)
    logits = (onehot * 6.0 - 3.0).repeat(k, 1) * (1 - s[:, None]) + \
        torch.randn(m, c, generator=generator, dtype=dt).repeat(k, 1) * s[:, None]
    return logits, labels.repeat(k), torch.ones(k * m, dtype=dt)


def curve(n: int) -> Curve:
    """The labelled class's logit from -6 to 6 beside two classes at 0."""
    x = torch.linspace(-6, 6, n, dtype=torch.float64)
    logits = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], 1)
    direction = torch.zeros_like(logits)
    direction[:, 0] = 1.0
    return Curve((logits, torch.zeros(n, dtype=torch.long)), torch.softmax(logits, 1)[:, 0],
                 "p of the labelled class", "logit", direction)


def perfect(inputs):
    logits, labels, _ = inputs
    x = torch.full_like(logits, -40.0)
    x[torch.arange(len(labels)), labels] = 40.0
    return x, labels, torch.rand(len(labels), dtype=logits.dtype)


SIGNATURE = Signature(
    name="softmax",
    doc="Softmax classification over C classes (background is an explicit class).",
    inputs=(Input("logits", "(N, C)", "class logits"),
            Input("labels", "(N,)", "integer class index in [0, C)"),
            Input("quality", "(N,)", "optional IoU of the sample's box (1 where omitted; "
                                     "pass 1 for background samples)", optional=True)),
    output="(N,)",
    columns=("logp", "q"),
    terminals=terminals(
        {"logp": "log-probability of the labelled class, log softmax(x)_y",
         "q": "quality (IoU of the sample's box), 1 where not given"},
        [("p", "exp(logp)", "probability of the labelled class")], {}),
    params={},
    prepare=prepare,
    backward=backward,
    column_input=(0, 2),
    grad_slots=((0, None), (1, None)),
    sample=sample,
    degenerate=degenerate,
    export_columns=EXPORT_COLUMNS,
    convergence=convergence,
    curve=curve,
    perfect=perfect,
)
