"""What a signature is: the tensor conventions of a loss slot, in one object.

A :class:`Signature` holds everything autoloss knows about one kind of loss input, so a
new signature (rotated boxes, 3D boxes, ...) is one module in this package plus its tests:

* the **inputs** a loss takes (names, shapes, dtypes), checked with clear errors; most
  have one row per sample, a few hold per-class constants of the dataset (``per_class``:
  class counts, class frequencies), which become columns broadcast over the rows;
* the **columns**: per-element tensors that compiled code receives, computed from the
  inputs by ``prepare`` (under autograd they keep their graph, which the eager path of a
  compiled loss uses), and ``export_columns``, the same in TorchScript source for an
  exported module;
* the **terminals**: named expressions over the columns (``iou``, ``enclose``, ``p``, ...),
  written in the same expression language as the losses, so the compiler differentiates
  through them in closed form and an export can inline them; their physical dimensions
  are inferred from the columns' ``units``;
* the signature-level **parameters** (``eps``);
* the **inputs its users need**: random (``sample``, ``sample_near``) and degenerate ones
  for the filters and tests, a ladder of worsening predictions (``convergence``) for the
  convergence filter, a one-parameter sweep (``curve``) for the report's plots, a perfect
  prediction (``perfect``) for the zero-at-optimum property, and how a dense detector
  feeds it (``from_detector``: the proxies' box-regression slots accept every signature
  that has one).

Terminals are computed once per batch and shared by every candidate the population
evaluator scores on that batch.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .. import units as _units
from ..errors import SignatureError
from ..expr import Expr, Param
from ..parse import parse
from ..units import Dim

Tensor = torch.Tensor


@dataclass(frozen=True)
class Input:
    name: str
    shape: str  # for messages and docs, e.g. "(N, 4)"
    doc: str
    optional: bool = False
    #: one value per class, shared by every row (a dataset constant such as class counts):
    #: not sliced with the rows; the signature's ``sample`` returns such inputs only when
    #: called with ``per_class=True``
    per_class: bool = False


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


@dataclass(frozen=True)
class Curve:
    """One prediction swept towards its target, for the loss curves of a report.

    ``inputs`` hold the n steps as rows; the plot shows the loss against ``x`` (labelled
    ``xlabel``) and its derivative along the sweep (named ``sweep``): the gradient with
    respect to the prediction, summed against ``direction`` (d prediction / d sweep)."""

    inputs: tuple
    x: Tensor
    xlabel: str
    sweep: str
    direction: Tensor


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
    #: which input each column's gradient flows to: an index, a tuple of indices for a
    #: column computed from several inputs (rbox's intersection area), None: no gradient
    column_input: tuple[Optional[int] | tuple[int, ...], ...]
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
    #: the TorchScript glue of an exported module: the parameter list of its ``_columns``
    #: function (e.g. ``"pred: Tensor, target: Tensor"``) and its body, which checks the
    #: shapes and returns the columns as ``prepare`` does (differentiably)
    export_columns: tuple[str, str] = ("", "")
    #: () -> module-level TorchScript functions the glue calls (rbox: the rotated-box
    #: geometry), as text read from their own module when an export is written, so the
    #: shipped code is the code the search ran; None: the glue needs none
    export_helpers: Optional[Callable[[], str]] = None
    #: (steps, m, generator) -> inputs of ``len(steps)`` blocks of ``m`` rows, block k a
    #: prediction at distance steps[k] from its target (0: perfect, 1: far); None: the
    #: convergence filter skips the signature
    convergence: Optional[Callable[..., tuple]] = None
    #: (n) -> a :class:`Curve`: one prediction swept over n steps towards its target, for
    #: the loss curves of a report; None: no curve
    curve: Optional[Callable[[int], "Curve"]] = None
    #: sampled inputs -> the same targets with a perfect prediction; None: no such thing
    perfect: Optional[Callable[[tuple], tuple]] = None
    #: (ltrb, points, gt_boxes, stride) -> the loss's inputs for a dense detector that
    #: predicts left/top/right/bottom distances from anchor points; None: not a box loss
    from_detector: Optional[Callable[..., tuple]] = None
    #: the columns that carry per-class constants (from ``per_class`` inputs, broadcast
    #: over the rows, no gradient). A search's default terminals leave them out: a proxy
    #: that does not pass the constants sees their defaults
    class_columns: tuple[str, ...] = ()
    #: (probe inputs, the candidate's values on them) -> why the values are not admissible
    #: for this signature, or None; the filters run it on the random and degenerate probes
    #: (rank: a smoothed step is >= 0 and vanishes far below). None: no such check
    screen: Optional[Callable[..., Optional[str]]] = None
    #: a signature whose expression is one piece of a set-level loss (rank: the smoothed
    #: step): the class of that loss, ``"module:Class"`` (rank:
    #: ``"autoloss.ranksurrogate:RankLoss"``), built as ``Class(compiled, **options)`` by
    #: :func:`autoloss.zoo.slot_loss` (options: a search space slot's ``set_level`` table),
    #: named, not imported, since it is built on the compiler; "": the compiled expression
    #: is the loss
    set_level: str = ""
    #: the slot signature that set-level loss fills (rank: "sigmoid", a classification
    #: slot); a proxy slot taking that signature takes this one too
    fills: str = ""

    @property
    def definitions(self) -> dict[str, Expr]:
        return {n: t.definition for n, t in self.terminals.items() if t.definition is not None}

    @functools.cached_property
    def column_sources(self) -> tuple[tuple[int, ...], ...]:
        """The inputs each column's gradient flows to (``column_input`` as tuples; empty:
        none). A column needs a gradient when any of its inputs does."""
        return tuple(() if i is None else (i,) if isinstance(i, int) else tuple(i)
                     for i in self.column_input)

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

    def input_units(self, index: int) -> tuple[Dim, ...]:
        """The dimension of each entry of input ``index``'s last axis (for the unit probe
        of a gradient with respect to it): the columns taken from it alone, in the order
        of their gradient buffer."""
        slots = sorted((j or 0, k) for k, (sources, (_, j)) in
                       enumerate(zip(self.column_sources, self.grad_slots))
                       if sources == (index,))
        return tuple(self.dims[self.columns[k]] for _, k in slots)

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
    def call_inputs(self) -> str:
        """The inputs as a call's argument list, e.g. ``"pred, target"``."""
        return ", ".join(i.name for i in self.inputs)

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


def shape_text(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def need(cond: bool, loss: str, arg: str, expected: str, got: Tensor, fix: str = ""):
    if not cond:
        raise SignatureError(
            f"{loss}: argument {arg!r} must be {expected}, got shape {shape_text(got)} "
            f"dtype {str(got.dtype).replace('torch.', '')}" + (f"; {fix}" if fix else "")
        )


def float_pair(loss, a_name, a, b_name, b, width):
    for name, t in ((a_name, a), (b_name, b)):
        need(t.dim() == 2 and (width is None or t.shape[1] == width), loss, name,
              f"a 2-D tensor of shape (N, {width if width else 'C'})", t)
        need(t.is_floating_point(), loss, name, "a floating-point tensor", t,
              "convert with .float()")
    if a.shape != b.shape:
        raise SignatureError(
            f"{loss}: {a_name!r} and {b_name!r} must have the same shape, got {shape_text(a)} and "
            f"{shape_text(b)}; nothing is broadcast"
        )
    if a.dtype != b.dtype:
        raise SignatureError(f"{loss}: {a_name!r} and {b_name!r} must have the same dtype, "
                             f"got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise SignatureError(f"{loss}: {a_name!r} and {b_name!r} are on different devices "
                             f"({a.device} and {b.device})")


def terminals(columns: dict[str, str], derived: list[tuple[str, str, str]],
               params: dict[str, Param]) -> dict[str, Terminal]:
    table = {n: Terminal(n, None, doc) for n, doc in columns.items()}
    for name, text, doc in derived:
        definition = parse(text, table.keys(), params, where=f"terminal {name!r}")
        table[name] = Terminal(name, definition, doc, text)
    return table




def identity_backward(prep: Prepared, grads):
    """The columns are the inputs (or views of them): their gradients are the inputs'."""
    return list(grads)


def logsoftmax_backward(prep: Prepared, grads, gathered: int):
    """d/dlogits of sum_k g_k * logsoftmax(x)[idx_k] = sum_k g_k onehot_k - softmax * sum_k g_k.

    ``prep.extra`` holds ``logp_all`` (the whole log-softmax) and ``index`` (the gathered
    column of each of the first ``gathered`` gradients)."""
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
