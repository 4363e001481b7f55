"""``sigmoid``: per-class sigmoid classification, one loss per (sample, class) entry.

Targets are one-hot, or soft: the IoU of the sample's box at its positive class (QFL, VFL).
Two optional inputs hold per-class constants of the training set, for the re-weighting
losses that need them: ``counts`` (samples per class: class-balanced loss) and ``freq``
(the fraction of training images that contain the class: equalization loss). Each becomes
a column broadcast over the rows (``count``, ``freq``: the value of the element's class),
with no gradient; omitted, it is 1 for every class, which makes every class alike (equal
counts) and none rare (frequency 1), so such a loss reduces to its unweighted form.
"""
from __future__ import annotations

import math

import torch

from ..errors import SignatureError
from .base import (Curve, Input, Prepared, Signature, float_pair, identity_backward, need,
                   terminals)

Tensor = torch.Tensor

COLUMNS = {"x": "logit", "t": "target in [0, 1]: one-hot, or the IoU at the positive class",
           "count": "number of training samples of the element's class (input counts, "
                    "broadcast over the rows; 1 where not given)",
           "freq": "fraction of training images that contain the element's class (input "
                   "freq, broadcast over the rows; 1 where not given)"}
TERMINALS = [
    ("p", "sigmoid(x)", "predicted probability"),
    ("y", "t > 0", "binary label [t > 0]"),
]


#: the per-class inputs: name -> (what the values must be, the check)
_PER_CLASS = {
    "counts": ("positive (samples per class; a class with none has no effective number)",
               lambda low, high: 0 < low <= high < math.inf),
    "freq": ("in [0, 1] (the fraction of training images that contain the class)",
             lambda low, high: 0 <= low <= high <= 1),
}


def prepare(loss: str, logits: Tensor, target: Tensor, counts=None, freq=None) -> Prepared:
    float_pair(loss, "logits", logits, "target", target, None)
    if target.numel():
        low, high = (v.item() for v in torch.aminmax(target.detach()))
        if not 0 <= low <= high <= 1:  # NaN fails it too
            raise SignatureError(
                f"{loss}: argument 'target' must hold values in [0, 1] (one-hot or IoU "
                f"quality), got min {low:g}, max {high:g}")
    shape = tuple(logits.shape)
    columns = [logits, target] + [_per_class(loss, name, value, logits)
                                  for name, value in (("counts", counts), ("freq", freq))]
    return Prepared(columns, (logits, target, counts, freq), shape, [shape] * 4)


def _per_class(loss: str, name: str, value, logits: Tensor) -> Tensor:
    """A per-class input as a column: checked, detached, broadcast over the rows (a view);
    1 for every class where not given."""
    if value is None:
        return logits.new_ones(()).expand(logits.shape)
    classes = logits.shape[1]
    need(value.dim() == 1 and value.shape[0] == classes, loss, name,
         f"a 1-D tensor of shape ({classes},), one value per class", value)
    need(value.dtype != torch.bool and not value.is_complex(), loss, name,
         "a real tensor (integer or floating point)", value)
    if value.device != logits.device:
        raise SignatureError(f"{loss}: {name!r} and 'logits' are on different devices "
                             f"({value.device} and {logits.device})")
    column = value.detach().to(logits.dtype)
    what, ok = _PER_CLASS[name]
    if column.numel():
        low, high = (v.item() for v in torch.aminmax(column))
        if not ok(low, high):  # NaN fails it too
            raise SignatureError(f"{loss}: argument {name!r} must hold values {what}, got "
                                 f"min {low:g}, max {high:g}")
    return column.expand(logits.shape)


EXPORT_COLUMNS = ("logits: Tensor, target: Tensor, counts: Optional[Tensor] = None, "
                  "freq: Optional[Tensor] = None", '''\
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got {list(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have logits' shape {list(logits.shape)}, got {list(target.shape)}")
    classes = logits.shape[1]
    per_class: List[Tensor] = []
    for name, value in (("counts", counts), ("freq", freq)):
        if value is None:
            per_class.append(torch.ones(1, dtype=logits.dtype, device=logits.device).expand_as(logits))
        elif value.dim() != 1 or value.shape[0] != classes:
            raise ValueError(f"{name} must have shape ({classes},), one value per class, got {list(value.shape)}")
        else:
            per_class.append(value.detach().to(logits.dtype).expand_as(logits))
    return [logits, target] + per_class''')


def sample(n: int, generator=None, dtype=torch.float64, device="cpu", classes=4,
           per_class=False):
    """Half the rows one-hot, half soft (IoU 0.05-0.95); a fifth of them background.

    With ``per_class``, also long-tailed per-class constants: counts from 1 to 10^4 and
    image frequencies from 10^-4 to 0.1, log-spaced, shuffled over the classes (drawn after
    the rows: the rows are those of the same call without them)."""
    logits = torch.randn(n, classes, generator=generator, dtype=dtype) * 2.5
    label = torch.randint(0, classes + 1, (n,), generator=generator)
    quality = torch.rand(n, generator=generator, dtype=dtype) * 0.9 + 0.05
    target = torch.zeros(n, classes + 1, dtype=dtype)
    target[torch.arange(n), label] = torch.where(torch.arange(n) % 2 == 0, 1.0, quality).to(dtype)
    rows = (logits.to(device), target[:, :classes].contiguous().to(device))
    if not per_class:
        return rows
    counts = torch.logspace(0, 4, classes, dtype=dtype).round()
    freq = torch.logspace(-4, -1, classes, dtype=dtype)
    counts = counts[torch.randperm(classes, generator=generator)]
    freq = freq[torch.randperm(classes, generator=generator)]
    return rows + (counts.to(device), freq.to(device))


def degenerate(dtype=torch.float64):
    """Saturated and zero logits against one-hot, soft and all-zero (background) rows; a
    class seen once, one seen a million times; frequencies 0, 1 and one just rare."""
    x = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 50.0], [0.0, 0.0, -50.0],
                      [50.0, -50.0, 0.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
                     dtype=dtype)
    counts = torch.tensor([1.0, 1e6, 3.0], dtype=dtype)
    freq = torch.tensor([0.0, 1.0, 1e-3], dtype=dtype)
    return x, t, counts, freq


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
    """Saturated logits on the binary labels (a soft target's optimum is not saturated);
    per-class constants kept."""
    t = (inputs[1] > 0).to(inputs[1].dtype)
    return ((t * 2 - 1) * 40.0, t) + tuple(inputs[2:])


SIGNATURE = Signature(
    name="sigmoid",
    doc="Per-class sigmoid classification; targets one-hot or soft (IoU at the positive class).",
    inputs=(Input("logits", "(N, C)", "class logits"),
            Input("target", "(N, C)", "targets in [0, 1]"),
            Input("counts", "(C,)", "optional training samples per class (class-balanced "
                                    "loss); 1 for every class where omitted",
                  optional=True, per_class=True),
            Input("freq", "(C,)", "optional fraction of training images that contain each "
                                  "class (equalization loss); 1 for every class where omitted",
                  optional=True, per_class=True)),
    output="(N, C)",
    columns=tuple(COLUMNS),
    terminals=terminals(COLUMNS, TERMINALS, {}),
    params={},
    prepare=prepare,
    backward=identity_backward,
    column_input=(0, 1, None, None),
    grad_slots=((0, None), (1, None), (2, None), (3, None)),
    sample=sample,
    degenerate=degenerate,
    export_columns=EXPORT_COLUMNS,
    convergence=convergence,
    curve=curve,
    perfect=perfect,
    class_columns=("count", "freq"),
)
