"""Compile an expression of a signature into a fast torch loss with a closed-form gradient.

Pipeline (each step a pure function of the previous):

1. ``canonical`` (canon.py): the canonical form; its hash keys the compile cache;
2. ``rewrite_stable``: numerically stable rewrites (``log(sigmoid(x)) -> logsigmoid(x)``);
3. in search mode, partial ops are replaced by guarded total ones (``ops.Op.guard``);
4. ``lower``: back to cheap ops (``-``, ``/``);
5. terminals are inlined down to the signature's columns, and ``autodiff.vjp`` derives
   the gradient with respect to every column that needs one;
6. emission rewrites of the value and gradient expressions: ``fuse_bce`` (the BCE pattern
   to torch's fused kernel) and ``share_logsigmoid`` (one transcendental pass for
   ``logsigmoid(z)`` and ``logsigmoid(-z)``);
7. ``codegen.function`` writes straight-line torch source for value and gradient with
   common subexpressions shared and temporaries reused in place; the source is registered
   with ``linecache`` so tracebacks show it, and executed once.

A :class:`CompiledLoss` then runs the fused forward (value and gradient in one sweep)
inside a custom ``torch.autograd.Function``; backward is a multiply by the incoming
gradient plus the signature's (tiny) core backward.
"""
from __future__ import annotations

import collections
import functools
import itertools
import linecache
import math
import threading
from typing import Literal, Mapping, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from . import autodiff, canon, codegen, ops, runtime
from . import expr as E
from .errors import (ExpressionError, SignatureError, UnknownNameError, did_you_mean,
                     require_kind)
from .expr import Call, Const, Expr, Param, Var
from .signatures import Signature
from .signatures import get as get_signature

Mode = Literal["exact", "search"]
Backend = Literal["eager", "inductor"]
Reduction = Literal["none", "mean", "sum"]

_NAMESPACE = {"torch": torch, "math": math, "Tensor": torch.Tensor, "Optional": Optional,
              "Tuple": tuple, "List": list, **runtime.BATCH}
_COUNTER = itertools.count()


# ------------------------------------------------------------------------------ pipeline
def guard(root: Expr, memo: Optional[dict[Expr, Expr]] = None) -> Expr:
    """Search mode: replace every partial op by its guarded total form."""

    def fn(node: Expr, ch) -> Expr:
        node = node.rebuild(ch)
        if type(node) is Call:
            spec = ops.REGISTRY[node.op]
            if spec.guard is not None:
                return spec.guard(*node.args)
        return node

    return E.transform(root, fn, memo)


@functools.lru_cache(maxsize=64)
def terminal_table(signature: Signature, bound: tuple = ()) -> tuple[dict, dict]:
    """Terminal definitions inlined down to columns (``bound``: parameters made constants),
    and the map from each inlined definition back to its terminal name."""
    values = dict(bound)

    def bind(node: Expr, ch) -> Expr:
        if type(node) is Param and node.name in values:
            return Const(values[node.name])
        return node.rebuild(ch)

    defs = {k: E.transform(v, bind) for k, v in signature.definitions.items()}
    table = {name: autodiff.inline(Var(name), defs) for name in defs}
    names: dict[Expr, str] = {}
    for name, node in table.items():
        names.setdefault(node, name)
    return table, names


class Pipeline:
    """From a candidate expression to its evaluable DAG over the signature's columns.

    1. canonical form, 2. numerically stable rewrites, 3. guards (search mode),
    4. lowering to cheap ops, 5. terminals inlined. Every step is memoized per node, so a
    pipeline reused across a population does the shared subtrees (zoo seeds) once.

    Args:
        bind: signature parameters to make constants in the terminals (the population
            evaluator binds ``eps``; a compiled loss keeps it a runtime argument).
        canonicalizer: one to share (its memo) with other users of the same expressions.
    """

    def __init__(self, signature: Signature, mode: Mode = "exact",
                 bind: Optional[Mapping[str, float]] = None,
                 canonicalizer: Optional[canon.Canonicalizer] = None):
        if mode not in ("exact", "search"):
            raise ValueError(f"mode must be 'exact' or 'search', got {mode!r}")
        self.signature = signature
        self.mode = mode
        self.canonicalizer = canonicalizer or canon.Canonicalizer()
        self._rewrite: dict = {}
        self._guard: dict = {}
        self._lower: dict = {}
        self._link: dict = {}
        self.table, self.names = terminal_table(signature, tuple(sorted((bind or {}).items())))

    def body(self, expression: Expr) -> Expr:
        """Canonical, stable, (guarded,) lowered form over terminals."""
        body = canon.rewrite_stable(self.canonicalizer(expression), self.signature.definitions,
                                    self._rewrite)
        if self.mode == "search":
            body = guard(body, self._guard)
        return canon.lower(body, self._lower)

    def link(self, body: Expr) -> Expr:
        """Inline the terminals: the DAG over columns."""
        table = self.table

        def fn(node: Expr, ch) -> Expr:
            if type(node) is Var and node.name in table:
                return table[node.name]
            return node.rebuild(ch)

        return E.transform(body, fn, self._link)

    def graph(self, expression: Expr) -> Expr:
        return self.link(self.body(expression))


def batch_nodes(root: Expr) -> list[Expr]:
    """The batch-level nodes (``ops.Op.batch``) of a DAG, arguments before their users."""
    return [n for n in E.postorder(root)
            if type(n) is Call and ops.REGISTRY[n.op].batch]


def split_batch(graph: Expr, taken) -> tuple[Expr, tuple[tuple[str, Expr], ...]]:
    """Split a DAG over columns into its batch-level terms and the elementwise rest.

    Each batch-level node becomes a new column ``batch0``, ``batch1``, ... (a name not in
    ``taken``) of the returned graph; the terms come back as (column name, node over the
    original columns), to be evaluated once over the whole batch, without gradient, before
    the (chunked) elementwise part. No gradient flows through a batch op (its ``grad`` is
    None), so the closed-form gradient of the rest is unchanged by the split.
    """
    found = batch_nodes(graph)
    if not found:
        return graph, ()
    for node in found:
        problem = ops.REGISTRY[node.op].validate
        problem = problem(*node.args) if problem is not None else None
        if problem:
            raise ExpressionError(f"{node.op}(): {problem}")
    taken = set(taken)
    names: dict[Expr, str] = {}
    i = 0
    for node in found:
        while f"batch{i}" in taken:
            i += 1
        names[node] = f"batch{i}"
        i += 1
    mapping = {node: Var(name) for node, name in names.items()}

    def fn(node: Expr, ch) -> Expr:
        return mapping[node] if node in mapping else node.rebuild(ch)

    return E.transform(graph, fn), tuple((name, node) for node, name in names.items())


def prepare(expression: Expr, signature: Signature, mode: Mode = "exact") -> Expr:
    """Canonical, stable, (guarded,) lowered form of ``expression`` over terminals."""
    return Pipeline(signature, mode).body(expression)


def check_names(expression: Expr, signature: Signature, where: str = "expression") -> None:
    allowed = set(signature.names)
    unknown = E.variables(expression) - allowed
    if unknown:
        name = sorted(unknown)[0]
        raise ExpressionError(f"{where}: {name!r} is not a terminal of the {signature.name!r} "
                              f"signature; {did_you_mean(name, allowed)}")
    for p in E.params(expression).values():
        if p.name in allowed:
            raise ExpressionError(f"{where}: parameter {p.name!r} shadows a terminal of the "
                                  f"{signature.name!r} signature; rename it")
        codegen.check_identifier(p.name, "parameter")


def reduce(loss: torch.Tensor, reduction: str = "none", weight: Optional[torch.Tensor] = None,
           avg_factor: Optional[float] = None) -> torch.Tensor:
    """torchvision/mmdetection reduction (:func:`runtime.reduce`, which exports ship too),
    its errors raised as :class:`SignatureError`."""
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise SignatureError(f"weight must be a tensor, got {type(weight).__name__}")
    try:
        return runtime.reduce(loss, reduction, weight, avg_factor)
    except ValueError as err:
        raise SignatureError(str(err)) from None


# -------------------------------------------------------------------------- the function
class CompiledLoss:
    """A loss expression of a signature, compiled to torch.

    Call it with the signature's inputs: ``loss(pred, target, reduction="mean")``.
    Parameters (``gamma``, ``eps``, ...) are keyword arguments with the defaults of the
    expression. ``source`` holds the generated code.
    """

    #: what a detector divides the summed loss by (``catalog.NORMALISERS``; a zoo entry's
    #: own, set by ``zoo.compiled``): proxies read it through ``per_positive``
    normaliser = "positives"

    def __init__(self, expression: Expr, signature: Signature | str, *, name: str = "loss",
                 mode: Mode = "exact", doc: str = "", backend: Backend = "eager",
                 kind: str = "E"):
        require_kind(kind, "the compiler")
        signature = get_signature(signature) if isinstance(signature, str) else signature
        codegen.check_identifier(name, "loss name")
        check_names(expression, signature, where=f"loss {name!r}")
        self.name = name
        self.signature = signature
        self.expression = expression
        self.mode = mode
        self.doc = doc
        if backend not in ("eager", "inductor"):
            raise ValueError(f"backend must be 'eager' or 'inductor', got {backend!r}")
        self.backend = backend
        params = dict(signature.params)
        params.update(E.params(expression))
        self.params: dict[str, Param] = params
        self.defaults = {k: p.default for k, p in params.items()}
        self.hash = canon.canonical_hash(expression, salt=f"{signature.name}:{mode}")
        pipeline = Pipeline(signature, mode)
        self.body = pipeline.body(expression)
        #: the elementwise part over the columns and the batch columns (``batch_terms``)
        self.graph, self.batch_terms = split_batch(
            pipeline.link(self.body), set(signature.names) | set(params))
        #: the generated functions' tensor inputs: the signature's columns, then one column
        #: per batch-level term (computed by :meth:`batch_columns`, no gradient)
        self.columns = tuple(signature.columns) + tuple(n for n, _ in self.batch_terms)
        self.names = pipeline.names
        self._prepass = None
        self._functions: dict[tuple, object] = {}
        self._gradients: dict[tuple, list] = {}
        self._sources: dict[tuple, str] = {}
        self._lock = threading.Lock()

    # -- code ------------------------------------------------------------------------------
    def gradients(self, needs: Sequence[bool]) -> list[Optional[Expr]]:
        """Closed-form gradient expressions of the columns that ``needs`` (None: zero)."""
        key = tuple(bool(n) for n in needs)
        if key not in self._gradients:
            self._gradients[key] = self._derive(key)
        return self._gradients[key]

    def _derive(self, needs: Sequence[bool]) -> list[Optional[Expr]]:
        wrt = [c for c, need in zip(self.signature.columns, needs) if need]
        adj = autodiff.vjp(self.graph, wrt)
        memo: dict = {}
        out = []
        for c, need in zip(self.signature.columns, needs):
            g = canon.factor(adj[c], memo) if need else None
            out.append(None if g is None or (type(g) is Const and g.value == 0.0) else g)
        return out

    def outputs(self, needs: Sequence[bool]) -> list[tuple[str, Optional[Expr]]]:
        """What the generated function returns: the loss, then (when any column ``needs``
        one) the gradient of every column, None where not needed or identically zero, with
        the emission rewrites applied (BCE fused, logsigmoid pairs shared)."""
        if not any(needs):
            return [("loss", self.graph)]
        outputs = [("loss", self.graph)] + [
            (f"d_{c}", g) for c, g in zip(self.signature.columns, self.gradients(needs))]
        shared = canon.share_logsigmoid(canon.fuse_bce([e for _, e in outputs if e is not None]))
        it = iter(shared)
        return [(label, None if e is None else next(it)) for label, e in outputs]

    def source_for(self, needs: Sequence[bool]) -> str:
        key = tuple(bool(n) for n in needs)
        if key not in self._sources:
            sig = self.signature
            outputs = self.outputs(key)
            if any(key):
                fname = f"{self.name}_vjp"
                doc = (f"{self.name} and its gradient with respect to "
                       f"{', '.join(c for c, n in zip(sig.columns, key) if n)}.")
            else:
                fname = self.name
                doc = f"{self.name}: {self.doc or E.to_infix(self.expression)}"
            self._sources[key] = codegen.function(
                fname, self.columns, self.defaults, outputs, self.names,
                doc=doc.replace('"""', "'''").replace("\\", "\\\\"), inplace=any(key))
        return self._sources[key]

    def function(self, needs: Sequence[bool]):
        key = tuple(bool(n) for n in needs)
        fn = self._functions.get(key)
        if fn is None:
            with self._lock:
                fn = self._functions.get(key)
                if fn is None:
                    fn = self._exec(self.source_for(key), key)
                    if self.backend == "inductor":
                        fn = _inductor(fn)
                    self._functions[key] = fn
        return fn

    @property
    def prepass_source(self) -> str:
        """Source of the batch pre-pass (empty for an elementwise loss): the batch-level
        terms over the whole batch, one output per batch column."""
        if not self.batch_terms:
            return ""
        return codegen.function(f"{self.name}_batch", self.signature.columns, self.defaults,
                                list(self.batch_terms), self.names,
                                doc=f"{self.name}: the batch-level terms, over the whole batch.")

    def batch_columns(self, columns: Sequence[torch.Tensor], values: tuple) -> list:
        """The batch-level terms over the whole batch (no gradient): the extra columns."""
        if not self.batch_terms:
            return []
        if self._prepass is None:
            with self._lock:
                if self._prepass is None:
                    self._prepass = self._exec(self.prepass_source, None,
                                               f"{self.name}_batch")
        with torch.no_grad():
            out = self._prepass(*(c.detach() for c in columns), *values)
        return list(out) if isinstance(out, tuple) else [out]

    def run(self, prep, needs: Sequence[bool], values: tuple):
        """Evaluate on prepared columns; returns (value, gradient buffers).

        Large batches on the CPU run in row chunks of about ``runtime.CHUNK`` elements, so
        every temporary (and the contiguous copy of a strided column) stays in cache: several
        times faster than whole-batch elementwise ops (``runtime.whole`` decides). A GPU
        runs the whole batch; the inductor backend fuses everything into one loop and needs
        no chunking.
        """
        fn = self.function(needs)
        cols = list(prep.columns) + self.batch_columns(prep.columns, values)
        ref = cols[0]
        grad = any(needs)
        if runtime.whole(ref) or self.backend == "inductor":
            result = fn(*(runtime.dense(c) for c in cols), *values)
            if not grad:
                return result, []
            return result[0], self._assemble(prep, needs, result[1:])
        value = torch.empty(prep.out_shape, dtype=ref.dtype, device=ref.device)
        if not grad:
            runtime.run_chunks(fn, cols, values, value, None)
            return value, []
        buffers: list = [None] * len(prep.grad_shapes)
        dests: list = []
        for need, (b, j) in zip(needs, self.signature.grad_slots):
            if need and buffers[b] is None:
                buffers[b] = torch.empty(prep.grad_shapes[b], dtype=ref.dtype, device=ref.device)
            dests.append((buffers[b] if j is None else buffers[b][:, j]) if need else None)
        runtime.run_chunks(fn, cols, values, value, dests)
        return value, buffers

    def _assemble(self, prep, needs: Sequence[bool], grads: Sequence) -> list:
        """Column gradients of one whole-batch call -> the signature's gradient buffers."""
        slots = self.signature.grad_slots
        ref = prep.columns[0]
        buffers: list = [None] * len(prep.grad_shapes)
        for b, members in enumerate(self.signature.buffer_columns):
            if not any(needs[k] for k in members):
                continue
            parts = [grads[k] for k in members]
            if slots[members[0]][1] is None:  # the column is the whole buffer
                g = parts[0]
                buffers[b] = g if g is not None else torch.zeros(
                    prep.grad_shapes[b], dtype=ref.dtype, device=ref.device)
            else:
                zero = torch.zeros(prep.grad_shapes[b][:1], dtype=ref.dtype, device=ref.device)
                buffers[b] = torch.stack([g if g is not None else zero for g in parts], 1)
        return buffers

    def _exec(self, source: str, key, fname: Optional[str] = None) -> object:
        filename = f"<autoloss {self.name} {self.hash} #{next(_COUNTER)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace = dict(_NAMESPACE, __name__=f"autoloss.generated.{self.name}")
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - generated, validated
        fname = fname or self.name + ("_vjp" if any(key) else "")
        return namespace[fname]

    @property
    def source(self) -> str:
        """The generated value function and the fused value-and-gradient function."""
        first = tuple(0 in sources for sources in self.signature.column_sources)
        pre = self.prepass_source
        return ((pre + "\n\n" if pre else "") + self.source_for([False] * len(first))
                + "\n\n" + self.source_for(first))

    # -- calling ---------------------------------------------------------------------------
    def values(self, params: Mapping[str, float]) -> tuple[float, ...]:
        out = dict(self.defaults)
        for k, v in params.items():
            if k not in out:
                raise UnknownNameError(f"{self.name}: unknown parameter {k!r}; "
                                       f"{did_you_mean(k, out) if out else 'it takes none'}")
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
                raise ExpressionError(f"{self.name}: parameter {k!r} must be a real number, "
                                      f"got {v!r}")
            out[k] = float(v)
        return tuple(out.values())

    def __call__(self, *inputs, reduction: Reduction = "none", weight=None, avg_factor=None,
                 **params) -> torch.Tensor:
        values = self.values(params)
        inputs = self.signature.check(inputs, self.name)
        grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
        if grad:
            loss = _FusedFunction.apply(self, values, *inputs)
        else:
            prep = self.signature.prepare(self.name, *inputs)
            loss, _ = self.run(prep, [False] * len(prep.columns), values)
        return reduce(loss, reduction, weight, avg_factor)

    def eager(self, *inputs, reduction: Reduction = "none", **params) -> torch.Tensor:
        """The generated value function under plain torch autograd (no fused gradient).

        Slower; it is the cross-check of the closed-form gradient (and supports higher
        derivatives).
        """
        values = self.values(params)
        inputs = self.signature.check(inputs, self.name)
        prep = self.signature.prepare(self.name, *inputs)
        cols = list(prep.columns) + self.batch_columns(prep.columns, values)
        loss = self.function([False] * len(prep.columns))(*cols, *values)
        return reduce(loss, reduction)

    def __repr__(self) -> str:
        return (f"CompiledLoss({self.name!r}, signature={self.signature.name!r}, "
                f"expression={E.to_infix(self.expression)!r})")


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, compiled: CompiledLoss, values: tuple, *inputs):
        sig = compiled.signature
        prep = sig.prepare(compiled.name, *inputs)
        needs = tuple(
            any(inputs[i] is not None and bool(ctx.needs_input_grad[2 + i]) for i in sources)
            for sources in sig.column_sources
        )
        value, buffers = compiled.run(prep, needs, values)
        ctx.prep = prep
        ctx.buffers = buffers
        ctx.signature = sig
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        scaled = []
        for b in ctx.buffers:  # buffers have the output's shape, or (*output shape, k)
            g = gout if b is None or b.dim() == gout.dim() else gout.unsqueeze(-1)
            scaled.append(None if b is None else b * g)
        return (None, None, *ctx.signature.backward(ctx.prep, scaled))


def _inductor(fn):
    """``torch.compile`` the generated function (one fused loop); eager if that fails."""
    compiled = torch.compile(fn, dynamic=True)
    state = {"fn": compiled}

    def call(*args):
        try:
            return state["fn"](*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, loudly
            if state["fn"] is fn:
                raise
            import warnings

            warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); "
                          "running the eager generated code", RuntimeWarning, stacklevel=2)
            state["fn"] = fn
            return fn(*args)

    return call


# -------------------------------------------------------------------------------- cache
#: compiled losses kept (least recently used first out): a search compiles every candidate
#: it runs, and each holds its generated code and closed-form gradients
CACHE_SIZE = 256
_CACHE: collections.OrderedDict[tuple, CompiledLoss] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()


def compile_loss(expression: Expr, signature: Signature | str, *, name: str = "loss",
                 mode: Mode = "exact", doc: str = "", backend: Backend = "eager",
                 kind: str = "E") -> CompiledLoss:
    """Compile (or fetch from the cache keyed by canonical hash) a loss expression.

    ``kind`` is the catalog's: elementwise (E) and batch-level (B) losses compile (batch
    ops are found in the expression either way); set-level (S) ones are refused.
    """
    require_kind(kind, "the compiler")
    signature = get_signature(signature) if isinstance(signature, str) else signature
    key = (canon.canonical_hash(expression, salt=f"{signature.name}:{mode}"), name, backend)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    compiled = CompiledLoss(expression, signature, name=name, mode=mode, doc=doc,
                            backend=backend)
    with _CACHE_LOCK:
        compiled = _CACHE.setdefault(key, compiled)
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return compiled
