"""Loss signatures: the tensor conventions of a loss slot and the terminals derived from them.

A signature fixes

* the **inputs** a loss takes (names, shapes, dtypes), checked with clear errors;
* the **columns**: per-element tensors that compiled code receives (computed from the
  inputs by ``prepare``; under autograd they keep their graph, which the eager path of a
  compiled loss uses). For ``box`` they are
  the eight box coordinates; for ``sigmoid`` and ``coord`` the inputs themselves
  (elementwise over every entry); for ``softmax`` and ``dist`` the log-probabilities that
  a small vectorized core gathers from the logits (with its hand-written backward);
* the **terminals**: named expressions over the columns (``iou``, ``enclose``, ``p``, ...),
  written in the same expression language as the losses, so the compiler differentiates
  through them in closed form and an export can inline them;
* the signature-level **parameters** (``eps``).

Terminals are computed once per batch and shared by every candidate the population
evaluator scores on that batch.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from . import units as _units
from .errors import SignatureError, UnknownNameError, did_you_mean
from .expr import Expr, Param
from .parse import parse
from .units import Dim

Tensor = torch.Tensor


@dataclass(frozen=True)
class Input:
    name: str
    shape: str  # for messages and docs, e.g. "(N, 4)"
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class Terminal:
    name: str
    definition: Optional[Expr]  # None for columns
    doc: str
    text: str = ""


@dataclass
class Prepared:
    """Columns of one batch plus what the backward of the core needs.

    Every column has the same leading dimension (rows), so compiled code can run over
    row chunks. ``grad_shapes`` are the shapes of the gradient buffers the fused forward
    fills (see ``Signature.grad_slots``).
    """

    columns: list[Tensor]
    inputs: tuple
    out_shape: tuple
    grad_shapes: list[tuple]
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Signature:
    name: str
    doc: str
    inputs: tuple[Input, ...]
    output: str
    columns: tuple[str, ...]
    terminals: dict[str, Terminal]
    params: dict[str, Param]
    prepare: Callable[..., Prepared]
    #: maps filled gradient buffers (already scaled by the incoming gradient) to input grads
    backward: Callable[[Prepared, list[Optional[Tensor]]], list[Optional[Tensor]]]
    #: which input each column's gradient flows to (index), None: no gradient
    column_input: tuple[Optional[int], ...]
    #: where each column's gradient is written: (buffer, column of the buffer or None: all)
    grad_slots: tuple[tuple[int, Optional[int]], ...]
    sample: Callable[..., tuple]
    #: inputs at the edges of the domain (identical, disjoint, nested boxes; saturated logits)
    degenerate: Callable[..., tuple] = lambda dtype=torch.float64: ()
    #: physical dimensions of the columns and parameters (others are dimensionless); the
    #: terminals' are inferred from their definitions
    units: dict[str, Dim] = field(default_factory=dict)
    #: what the loss must be (a box loss: dimensionless, unchanged when the image is scaled)
    loss_unit: Dim = _units.DIMENSIONLESS
    #: (inputs..., s, shift) -> the inputs scaled by s and translated (the numeric unit
    #: probe); None where no input has a length
    rescale: Optional[Callable[..., tuple]] = None
    #: like ``sample``, with every prediction close to its target (where a detector spends
    #: most of its training); None: ``sample`` is that already
    sample_near: Optional[Callable[..., tuple]] = None

    @property
    def definitions(self) -> dict[str, Expr]:
        return {n: t.definition for n, t in self.terminals.items() if t.definition is not None}

    @functools.cached_property
    def buffer_columns(self) -> tuple[tuple[int, ...], ...]:
        """The columns whose gradients each gradient buffer gathers (from ``grad_slots``)."""
        count = 1 + max(b for b, _ in self.grad_slots)
        return tuple(tuple(k for k, (b, _) in enumerate(self.grad_slots) if b == buffer)
                     for buffer in range(count))

    @functools.cached_property
    def dims(self) -> dict[str, Dim]:
        """The dimension of every column and terminal (inferred through the definitions)."""
        out = {n: self.units.get(n, _units.DIMENSIONLESS) for n in self.columns}
        memo: dict = {}
        for name, t in self.terminals.items():
            if t.definition is not None:
                out[name] = _units.infer(t.definition, out, self.param_units, memo)
        return out

    @property
    def param_units(self) -> dict[str, Dim]:
        return {n: self.units[n] for n in self.params if n in self.units}

    @property
    def has_units(self) -> bool:
        """Whether any input has a dimension (a unit check can fail)."""
        return self.rescale is not None

    def unit_error(self, expression: Expr, params: Optional[dict[str, Dim]] = None
                   ) -> Optional[str]:
        """Why ``expression`` is not a well-dimensioned loss of this signature, or None."""
        return _units.check(expression, self.dims, {**self.param_units, **(params or {})},
                           self.loss_unit)

    @property
    def names(self) -> list[str]:
        """Every name an expression of this signature may use (columns and terminals)."""
        return list(self.columns) + [n for n in self.terminals if n not in self.columns]

    def check(self, args: Sequence, loss: str = "loss") -> tuple:
        """Validate call arguments; returns them with optional ones filled by ``None``."""
        n_req = sum(not i.optional for i in self.inputs)
        if not n_req <= len(args) <= len(self.inputs):
            names = ", ".join(i.name + ("=None" if i.optional else "") for i in self.inputs)
            raise SignatureError(
                f"{loss} ({self.name} signature) takes ({names}), got {len(args)} argument(s)"
            )
        args = tuple(args) + (None,) * (len(self.inputs) - len(args))
        for spec, value in zip(self.inputs, args):
            if value is None:
                if not spec.optional:
                    raise SignatureError(f"{loss}: argument {spec.name!r} is required")
                continue
            if not isinstance(value, torch.Tensor):
                raise SignatureError(
                    f"{loss}: argument {spec.name!r} must be a torch.Tensor of shape "
                    f"{spec.shape}, got {type(value).__name__}"
                )
        return args


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _need(cond: bool, loss: str, arg: str, expected: str, got: Tensor, fix: str = ""):
    if not cond:
        raise SignatureError(
            f"{loss}: argument {arg!r} must be {expected}, got shape {_shape(got)} "
            f"dtype {str(got.dtype).replace('torch.', '')}" + (f"; {fix}" if fix else "")
        )


def _float_pair(loss, a_name, a, b_name, b, width):
    for name, t in ((a_name, a), (b_name, b)):
        _need(t.dim() == 2 and (width is None or t.shape[1] == width), loss, name,
              f"a 2-D tensor of shape (N, {width if width else 'C'})", t)
        _need(t.is_floating_point(), loss, name, "a floating-point tensor", t,
              "convert with .float()")
    if a.shape != b.shape:
        raise SignatureError(
            f"{loss}: {a_name!r} and {b_name!r} must have the same shape, got {_shape(a)} and "
            f"{_shape(b)}; nothing is broadcast"
        )
    if a.dtype != b.dtype:
        raise SignatureError(f"{loss}: {a_name!r} and {b_name!r} must have the same dtype, "
                             f"got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise SignatureError(f"{loss}: {a_name!r} and {b_name!r} are on different devices "
                             f"({a.device} and {b.device})")


def _terminals(columns: dict[str, str], derived: list[tuple[str, str, str]],
               params: dict[str, Param]) -> dict[str, Terminal]:
    table = {n: Terminal(n, None, doc) for n, doc in columns.items()}
    for name, text, doc in derived:
        definition = parse(text, table.keys(), params, where=f"terminal {name!r}")
        table[name] = Terminal(name, definition, doc, text)
    return table


# ------------------------------------------------------------------------------------ box
_EPS = Param("eps", 1e-7)

_BOX_COLUMNS = {
    "px1": "predicted box x1", "py1": "predicted box y1",
    "px2": "predicted box x2", "py2": "predicted box y2",
    "tx1": "target box x1", "ty1": "target box y1",
    "tx2": "target box x2", "ty2": "target box y2",
}

_BOX_TERMINALS = [
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


def _box_prepare(loss: str, pred: Tensor, target: Tensor) -> Prepared:
    _float_pair(loss, "pred", pred, "target", target, 4)
    # strided views: the compiled loss makes each row chunk contiguous while it is in cache
    columns = list(pred.unbind(1)) + list(target.unbind(1))
    return Prepared(columns, (pred, target), (pred.shape[0],), [tuple(pred.shape)] * 2)


def _identity_backward(prep: Prepared, grads):
    return list(grads)


def _sample_boxes(n: int, generator=None, dtype=torch.float64, device="cpu"):
    def boxes():
        c = torch.rand(n, 2, generator=generator, dtype=dtype) * 20
        wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 8 + 0.5
        return torch.cat([c - wh / 2, c + wh / 2], 1).to(device)

    target = boxes()
    pred = target + torch.randn(n, 4, generator=generator, dtype=dtype).to(device) * 2
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:] - 0.1), pred[:, 2:]], 1)
    return pred, target


def _sample_near_boxes(n: int, generator=None, dtype=torch.float64, device="cpu"):
    """Targets as ``_sample_boxes``; predictions with the centre moved by about a tenth of
    the size and each side scaled by about exp(+-0.15): IoU mostly 0.5-0.95."""
    _, target = _sample_boxes(n, generator, dtype)
    wh = target[:, 2:] - target[:, :2]
    c = (target[:, :2] + target[:, 2:]) / 2
    c = c + torch.randn(n, 2, generator=generator, dtype=dtype) * 0.1 * wh
    wh = wh * torch.exp(torch.randn(n, 2, generator=generator, dtype=dtype) * 0.15)
    return torch.cat([c - wh / 2, c + wh / 2], 1).to(device), target.to(device)


def _degenerate_boxes(dtype=torch.float64):
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


def _rescale_boxes(pred: Tensor, target: Tensor, s: float, shift: float):
    offset = torch.tensor([shift, -0.6 * shift, shift, -0.6 * shift], dtype=pred.dtype)
    return pred * s + offset, target * s + offset


BOX = Signature(
    name="box",
    doc="Axis-aligned boxes (x1, y1, x2, y2) in absolute coordinates; one loss per box pair.",
    inputs=(Input("pred", "(N, 4)", "predicted boxes, xyxy"),
            Input("target", "(N, 4)", "target boxes, xyxy")),
    output="(N,)",
    columns=tuple(_BOX_COLUMNS),
    terminals=_terminals(_BOX_COLUMNS, _BOX_TERMINALS, {"eps": _EPS}),
    params={"eps": _EPS},
    prepare=_box_prepare,
    backward=_identity_backward,
    column_input=(0, 0, 0, 0, 1, 1, 1, 1),
    grad_slots=((0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)),
    sample=_sample_boxes,
    degenerate=_degenerate_boxes,
    units={**{c: _units.POSITION for c in _BOX_COLUMNS}, "eps": _units.FREE},
    rescale=_rescale_boxes,
    sample_near=_sample_near_boxes,
)


# ---------------------------------------------------------------------------------- coord
_COORD_COLUMNS = {"pred": "predicted value (raw or encoded delta)", "target": "target value"}
_COORD_TERMINALS = [
    ("d", "pred - target", "difference d = pred - target"),
    ("ad", "abs(d)", "absolute difference |d|"),
]


def _coord_prepare(loss: str, pred: Tensor, target: Tensor) -> Prepared:
    _float_pair(loss, "pred", pred, "target", target, 4)
    return Prepared([pred, target], (pred, target), tuple(pred.shape),
                    [tuple(pred.shape)] * 2)


def _sample_coord(n: int, generator=None, dtype=torch.float64, device="cpu"):
    target = torch.randn(n, 4, generator=generator, dtype=dtype)
    pred = target + torch.randn(n, 4, generator=generator, dtype=dtype) * 1.5
    return pred.to(device), target.to(device)


def _degenerate_coord(dtype=torch.float64):
    p = torch.tensor([[0.0, 1.0, -1.0, 50.0], [1e-9, -1e-9, 0.0, -50.0]], dtype=dtype)
    t = torch.tensor([[0.0, 1.0, 1.0, -50.0], [0.0, 0.0, 0.0, 50.0]], dtype=dtype)
    return p, t


COORD = Signature(
    name="coord",
    doc="Elementwise regression of 4 coordinates (raw or encoded deltas); one loss per entry.",
    inputs=(Input("pred", "(N, 4)", "predicted values"),
            Input("target", "(N, 4)", "target values")),
    output="(N, 4)",
    columns=tuple(_COORD_COLUMNS),
    terminals=_terminals(_COORD_COLUMNS, _COORD_TERMINALS, {}),
    params={},
    prepare=_coord_prepare,
    backward=_identity_backward,
    column_input=(0, 1),
    grad_slots=((0, None), (1, None)),
    sample=_sample_coord,
    degenerate=_degenerate_coord,
)


# -------------------------------------------------------------------------------- sigmoid
_SIGMOID_COLUMNS = {"x": "logit", "t": "target in [0, 1]: one-hot, or the IoU at the positive class"}
_SIGMOID_TERMINALS = [
    ("p", "sigmoid(x)", "predicted probability"),
    ("y", "t > 0", "binary label [t > 0]"),
]


def _sigmoid_prepare(loss: str, logits: Tensor, target: Tensor) -> Prepared:
    _float_pair(loss, "logits", logits, "target", target, None)
    if target.numel():
        low, high = (v.item() for v in torch.aminmax(target.detach()))
        if not 0 <= low <= high <= 1:  # NaN fails it too
            raise SignatureError(
                f"{loss}: argument 'target' must hold values in [0, 1] (one-hot or IoU "
                f"quality), got min {low:g}, max {high:g}")
    return Prepared([logits, target], (logits, target), tuple(logits.shape),
                    [tuple(logits.shape)] * 2)


def _sample_sigmoid(n: int, generator=None, dtype=torch.float64, device="cpu", classes=4):
    logits = torch.randn(n, classes, generator=generator, dtype=dtype) * 2.5
    label = torch.randint(0, classes + 1, (n,), generator=generator)
    quality = torch.rand(n, generator=generator, dtype=dtype) * 0.9 + 0.05
    target = torch.zeros(n, classes + 1, dtype=dtype)
    target[torch.arange(n), label] = torch.where(torch.arange(n) % 2 == 0, 1.0, quality).to(dtype)
    return logits.to(device), target[:, :classes].contiguous().to(device)


def _degenerate_sigmoid(dtype=torch.float64):
    x = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 50.0], [0.0, 0.0, -50.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.3], [0.0, 1.0, 0.0]], dtype=dtype)
    return x, t


SIGMOID = Signature(
    name="sigmoid",
    doc="Per-class sigmoid classification; targets one-hot or soft (IoU at the positive class).",
    inputs=(Input("logits", "(N, C)", "class logits"),
            Input("target", "(N, C)", "targets in [0, 1]")),
    output="(N, C)",
    columns=tuple(_SIGMOID_COLUMNS),
    terminals=_terminals(_SIGMOID_COLUMNS, _SIGMOID_TERMINALS, {}),
    params={},
    prepare=_sigmoid_prepare,
    backward=_identity_backward,
    column_input=(0, 1),
    grad_slots=((0, None), (1, None)),
    sample=_sample_sigmoid,
    degenerate=_degenerate_sigmoid,
)


# -------------------------------------------------------------------------------- softmax
def _gather_logsoftmax(logits: Tensor, index: Tensor):
    logp_all = torch.log_softmax(logits, dim=1)
    return logp_all.gather(1, index[:, None])[:, 0], logp_all


def _softmax_prepare(loss: str, logits: Tensor, labels: Tensor, quality=None) -> Prepared:
    _need(logits.dim() == 2 and logits.shape[1] >= 1, loss, "logits",
          "a 2-D tensor of shape (N, C)", logits)
    _need(logits.is_floating_point(), loss, "logits", "a floating-point tensor", logits)
    _need(labels.dim() == 1 and labels.shape[0] == logits.shape[0], loss, "labels",
          f"a 1-D tensor of shape ({logits.shape[0]},) matching logits", labels)
    _need(not labels.is_floating_point() and labels.dtype != torch.bool, loss, "labels",
          "an integer tensor of class indices", labels, "convert with .long()")
    n, c = logits.shape
    if labels.numel() and bool(((labels < 0) | (labels >= c)).any()):
        raise SignatureError(f"{loss}: 'labels' must lie in [0, {c}) (C = {c} classes, "
                             f"background included), got min {labels.min().item()}, "
                             f"max {labels.max().item()}")
    if quality is None:
        q = torch.ones(n, dtype=logits.dtype, device=logits.device)
    else:
        _need(quality.shape == (n,), loss, "quality", f"a 1-D tensor of shape ({n},)", quality)
        _need(quality.is_floating_point(), loss, "quality", "a floating-point tensor", quality)
        q = quality.to(logits.dtype)
    logp, logp_all = _gather_logsoftmax(logits, labels.long())
    return Prepared([logp, q], (logits, labels, quality), (n,), [(n,)] * 2,
                    {"logp_all": logp_all, "index": [labels.long()]})


def _logsoftmax_backward(prep: Prepared, grads, gathered: int):
    """d/dlogits of sum_k g_k * logsoftmax(x)[idx_k] = sum_k g_k onehot_k - softmax * sum_k g_k."""
    gs = grads[:gathered]
    if all(g is None for g in gs):
        return None
    gs = [g if g is not None else torch.zeros_like(prep.columns[0]) for g in gs]
    total = gs[0]
    for g in gs[1:]:
        total = total + g
    out = -prep.extra["logp_all"].exp() * total[:, None]
    for g, idx in zip(gs, prep.extra["index"]):
        out.scatter_add_(1, idx[:, None], g[:, None])
    return out


def _softmax_backward(prep: Prepared, grads):
    d_logits = _logsoftmax_backward(prep, grads, 1)
    d_quality = grads[1] if prep.inputs[2] is not None else None
    return [d_logits, None, d_quality]


def _sample_softmax(n: int, generator=None, dtype=torch.float64, device="cpu", classes=5):
    logits = torch.randn(n, classes, generator=generator, dtype=dtype) * 2
    labels = torch.randint(0, classes, (n,), generator=generator)
    quality = torch.rand(n, generator=generator, dtype=dtype)
    return logits.to(device), labels.to(device), quality.to(device)


def _degenerate_softmax(dtype=torch.float64):
    x = torch.tensor([[50.0, -50.0, 0.0], [-50.0, 50.0, 0.0], [0.0, 0.0, 0.0]], dtype=dtype)
    return x, torch.tensor([0, 0, 2]), torch.tensor([1.0, 0.0, 0.5], dtype=dtype)


SOFTMAX = Signature(
    name="softmax",
    doc="Softmax classification over C classes (background is an explicit class).",
    inputs=(Input("logits", "(N, C)", "class logits"),
            Input("labels", "(N,)", "integer class index in [0, C)"),
            Input("quality", "(N,)", "optional IoU of the sample's box (1 where omitted; "
                                     "pass 1 for background samples)", optional=True)),
    output="(N,)",
    columns=("logp", "q"),
    terminals=_terminals(
        {"logp": "log-probability of the labelled class, log softmax(x)_y",
         "q": "quality (IoU of the sample's box), 1 where not given"},
        [("p", "exp(logp)", "probability of the labelled class")], {}),
    params={},
    prepare=_softmax_prepare,
    backward=_softmax_backward,
    column_input=(0, 2),
    grad_slots=((0, None), (1, None)),
    sample=_sample_softmax,
    degenerate=_degenerate_softmax,
)


# ----------------------------------------------------------------------------------- dist
def _dist_prepare(loss: str, logits: Tensor, target: Tensor) -> Prepared:
    _need(logits.dim() == 2 and logits.shape[1] >= 2, loss, "logits",
          "a 2-D tensor of shape (N, B) with B >= 2 bins", logits)
    _need(logits.is_floating_point(), loss, "logits", "a floating-point tensor", logits)
    n, b = logits.shape
    _need(target.shape == (n,), loss, "target", f"a 1-D tensor of shape ({n},)", target)
    _need(target.is_floating_point(), loss, "target", "a floating-point tensor", target)
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


def _dist_backward(prep: Prepared, grads):
    reordered = [grads[2], grads[3]]
    d_logits = _logsoftmax_backward(prep, reordered, 2)
    return [d_logits, grads[0]]


def _sample_dist(n: int, generator=None, dtype=torch.float64, device="cpu", bins=17):
    logits = torch.randn(n, bins, generator=generator, dtype=dtype) * 2
    target = torch.rand(n, generator=generator, dtype=dtype) * (bins - 1.01)
    return logits.to(device), target.to(device)


def _degenerate_dist(dtype=torch.float64):
    x = torch.tensor([[50.0, -50.0, 0.0, 0.0], [-50.0, 50.0, -50.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                     dtype=dtype)
    return x, torch.tensor([0.0, 1.0, 2.999], dtype=dtype)


DIST = Signature(
    name="dist",
    doc="A discrete distribution over B bins regressing a continuous target (DFL).",
    inputs=(Input("logits", "(N, B)", "bin logits"),
            Input("target", "(N,)", "continuous target in [0, B - 1)")),
    output="(N,)",
    columns=("y", "yl", "logp_l", "logp_r"),
    terminals=_terminals(
        {"y": "continuous target", "yl": "left bin floor(y) (no gradient)",
         "logp_l": "log-probability of the left bin", "logp_r": "log-probability of the right bin"},
        [("wl", "yl + 1 - y", "weight of the left bin"),
         ("wr", "y - yl", "weight of the right bin"),
         ("pl", "exp(logp_l)", "probability of the left bin"),
         ("pr", "exp(logp_r)", "probability of the right bin")], {}),
    params={},
    prepare=_dist_prepare,
    backward=_dist_backward,
    column_input=(1, None, 0, 0),
    grad_slots=((0, None), (1, None), (2, None), (3, None)),
    sample=_sample_dist,
    degenerate=_degenerate_dist,
)


SIGNATURES: dict[str, Signature] = {s.name: s for s in (BOX, COORD, SIGMOID, SOFTMAX, DIST)}


def get(name: str) -> Signature:
    try:
        return SIGNATURES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown signature {name!r}; {did_you_mean(name, SIGNATURES)}"
        ) from None
