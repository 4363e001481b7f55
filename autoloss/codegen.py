"""Torch source generation from expression DAGs.

One generator writes every piece of torch code autoloss runs or ships: the value
function and the fused value-and-gradient function of a compiled loss (and the
exported module). Common subexpressions are computed once; nodes named after terminals
(``iou``, ``enclose``, ...) get their own readable line; single-use nodes are written
inline; parameter-only subexpressions are plain Python arithmetic on floats. In the fused
value-and-gradient functions, which run without autograd, an op overwrites an argument
that nothing else holds (``(a * b).add_(c)``) or writes into the buffer of a temporary no
longer read (``out=``), so a loss allocates little more than its outputs.

The emitted code is TorchScript-compatible: annotated arguments, no keyword-only
arguments, no closures.
"""
from __future__ import annotations

import keyword
import math
import re
from collections import Counter
from typing import Mapping, Optional, Sequence

import torch

from . import expr as E
from . import ops
from .errors import ExpressionError
from .expr import Call, Const, Expr, Param, Var

RESERVED = frozenset({"torch", "math", "Tensor", "Optional", "Tuple", "List", "dtype", "float",
                      "int", "None", "True", "False"})
_TEMP = re.compile(r"^(t|g|d)\d+$")
MAX_INLINE = 90  # characters of an inlined subexpression before it gets its own line
_INPLACE_METHODS = frozenset(n for n in dir(torch.Tensor) if n.endswith("_"))


def check_identifier(name: str, what: str) -> str:
    """Only validated identifiers ever reach generated code."""
    if (not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name)
            or name.startswith("_") or name in RESERVED or _TEMP.match(name)
            or not name.isascii()):
        raise ExpressionError(
            f"{what} {name!r} is not a usable name: use a plain ASCII identifier that is not a "
            f"Python keyword, does not start with '_', and is not one of {sorted(RESERVED)}"
        )
    return name


def number(value: float) -> str:
    if math.isnan(value):
        return "math.nan"
    if math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    return repr(float(value))


def _template_reads(node: Expr) -> tuple[int, ...]:
    """How often the torch template of ``node``'s op reads each argument: a template may
    name one twice (``wrap``: ``{0} - {1} * torch.round({0} / {1})``), and the argument is
    then bound to a variable, so it is computed once (and never overwritten twice)."""
    if type(node) is not Call:
        return ()
    template = ops.REGISTRY[node.op].torch
    return tuple(max(1, template.count("{%d}" % i)) for i in range(len(node.args)))


class Emitter:
    """Writes straight-line code for several output expressions sharing one DAG."""

    def __init__(self, columns: Sequence[str], names: Mapping[Expr, str], dtype_ref: str,
                 tensor_params: frozenset = frozenset(), inplace: bool = False):
        self.columns = set(columns)
        self.tensor_params = frozenset(tensor_params)
        # every tensor has the columns' shape and dtype unless a parameter is a tensor
        self.inplace = inplace and not self.tensor_params
        self.dying: set[Expr] = set()  # bound temporaries the statement being written frees
        self.consumed: set[Expr] = set()  # ... and those of them it overwrites in place
        self.pool: list[str] = []  # temporaries no longer read, their buffers free to reuse
        self.aliased: set[Expr] = set()
        self.names = dict(names)
        self.dtype_ref = dtype_ref
        self.lines: list[str] = []
        self.bound: dict[Expr, str] = {}
        self.tensor: dict[Expr, bool] = {}
        self.counter = 0
        self.used_names: set[str] = set(columns)

    # -- analysis ------------------------------------------------------------------------
    def _analyse(self, roots: Sequence[Expr]):
        order = E.postorder_many(roots)
        uses: Counter = Counter()
        for node in order:
            for child, reads in zip(node.children, _template_reads(node)):
                uses[child] += reads
            if type(node) is Var:
                if node.name not in self.columns:
                    raise ExpressionError(f"generated code has no input named {node.name!r}")
                self.tensor[node] = True
            elif type(node) is Call:
                self.tensor[node] = any(self.tensor[a] for a in node.args)
            else:
                self.tensor[node] = type(node) is Param and node.name in self.tensor_params
        for r in roots:
            uses[r] += 2
        # nodes other tensors may be views of (stop_grad, a branch picked by a parameter):
        # never overwritten in place
        self.aliased = set()
        for node in order:
            self.aliased.update(self._viewed(node))
        changed = True
        while changed:  # a view of a view: stop_grad(stop_grad(u)) shares u's memory
            before = len(self.aliased)
            for n in list(self.aliased):
                self.aliased.update(self._viewed(n))
            changed = len(self.aliased) > before
        return order, uses

    def _viewed(self, node: Expr) -> tuple:
        """The arguments whose memory ``node``'s value may be (a view such as stop_grad, a
        branch picked by a parameter)."""
        if type(node) is not Call:
            return ()
        spec = ops.REGISTRY[node.op]
        if spec.alias:
            return node.args[:1]
        if spec.condition and not self.tensor[node.args[0]]:
            return node.args[1:]
        return ()

    @staticmethod
    def boolean(node: Expr) -> bool:
        """Whether ``node``'s torch form is a bool tensor (a comparison)."""
        return type(node) is Call and ops.REGISTRY[node.op].comparison

    def _new_tensor(self, node: Expr) -> bool:
        """Whether ``node`` computes a new floating-point tensor of the columns' shape."""
        return (type(node) is Call and self.tensor[node] and not self.boolean(node)
                and not self._viewed(node))

    def _fresh(self, prefix: str) -> str:
        while True:
            name = f"{prefix}{self.counter}"
            self.counter += 1
            if name not in self.used_names:
                self.used_names.add(name)
                return name

    # -- expressions ---------------------------------------------------------------------
    def src(self, node: Expr, arith: bool = True) -> str:
        """Source of ``node``; comparisons are bool tensors unless ``arith``."""
        if node in self.bound:
            text = self.bound[node]
        elif type(node) is Var or type(node) is Param:
            return node.name
        elif type(node) is Const:
            return number(node.value)
        else:
            text = self._call(node)
        if arith and self.tensor.get(node) and self.boolean(node):
            return f"{text}.to({self.dtype_ref}.dtype)"
        return text

    def full(self, node: Expr) -> str:
        """Source of ``node`` as a tensor (a number is broadcast to the columns' shape)."""
        if self.tensor[node]:
            return self.src(node)
        return f"torch.full_like({self.dtype_ref}, {self.src(node)})"

    def owned(self, node: Expr) -> bool:
        """Whether ``node`` is written inline as a new tensor nobody else holds: an op may
        then overwrite it (``a * b + c`` -> ``(a * b).add_(c)``), saving an allocation
        and a pass over fresh memory. Only in no-grad code (``inplace``)."""
        return (self.inplace and self._new_tensor(node) and node not in self.aliased
                and (node not in self.bound or node in self.dying))

    def take(self, node: Expr) -> str:
        """Source of an owned argument that an op is about to overwrite."""
        if node in self.bound:
            self.consumed.add(node)
        return self.src(node)

    def _inplace(self, node: Call, method: str) -> Optional[str]:
        """``node`` written as ``arg.method(...)`` on an owned argument, if it can be."""
        args = node.args
        if len(args) == 1 and self.owned(args[0]):
            return f"{self.take(args[0])}.{method}()"
        if len(args) == 2:
            order = (0, 1) if self.owned(args[0]) else (
                (1, 0) if ops.REGISTRY[node.op].commutative and self.owned(args[1]) else None)
            if order is not None:
                a, b = (args[i] for i in order)
                return f"{self.take(a)}.{method}({self.src(b)})"
        return None

    def _into_dead(self, node: Call, function: str, args: Sequence[str],
                   keywords: str = "") -> Optional[str]:
        """``torch.function(args, out=dead)``: the result written into the buffer of a
        temporary no longer read (no allocation, and memory that is already in cache)."""
        if not (self.inplace and self.pool and self._new_tensor(node)):
            return None
        return f"torch.{function}({', '.join(args)}{keywords}, out={self.pool.pop()})"

    def unary(self, node: Call, function: str, x: Expr, keywords: str = "") -> str:
        """``node`` written as ``torch.function(x, keywords)``: in place on an owned ``x``,
        else into a dead buffer, else a new tensor."""
        if self.owned(x):
            return f"{self.take(x)}.{function}_({keywords})"
        xs = self.src(x)  # rendered once: rendering may take dead buffers
        keywords = f", {keywords}" if keywords else ""
        return (self._into_dead(node, function, [xs], keywords)
                or f"torch.{function}({xs}{keywords})")

    def _call(self, node: Call) -> str:
        spec = ops.REGISTRY[node.op]
        args = node.args
        if not self.tensor[node]:
            if all(type(a) is Const for a in args):
                # a constant the canonical form could not fold (1 / 0, log(-1)): its IEEE value
                value = spec.fn(*(torch.tensor(a.value, dtype=torch.float64) for a in args))
                return number(float(value))
            if spec.math is None:
                raise ExpressionError(f"primitive {node.op!r} cannot be applied to constants only")
            return spec.math.format(*(self.src(a) for a in args))
        if spec.emit is not None:
            text = spec.emit(self, node)
            if text is not None:
                return text
        if spec.tensor_args:
            return spec.torch.format(*(self.full(a) for a in args))
        if spec.out is not None and spec.out + "_" in _INPLACE_METHODS:
            text = self._inplace(node, spec.out + "_")
            if text is not None:
                return text
        srcs = [self.src(a) for a in args]  # once: rendering may take dead buffers
        text = None
        if spec.out is not None and self.tensor[args[0]]:
            text = self._into_dead(node, spec.out, srcs)
        elif spec.out is not None and len(args) == 2 and spec.commutative:
            text = self._into_dead(node, spec.out, srcs[::-1])
        return text or spec.torch.format(*srcs)

    # -- statements ----------------------------------------------------------------------
    def emit(self, roots: Sequence[Expr], prefix: str = "t", free: bool = True) -> None:
        """Bind shared, named and long subexpressions to variables, in dependency order.

        With ``free``, a variable is deleted right after its last use, so temporaries
        are recycled by the allocator instead of piling up (large batches run several
        times faster that way).
        """
        order, uses = self._analyse(roots)
        statements: list[tuple[str, Expr]] = []
        for node in order:
            if type(node) is not Call or node in self.bound:
                continue
            named = node in self.names
            if not (named or uses[node] > 1):
                if len(self.src(node)) <= MAX_INLINE:
                    continue
            name = self.names.get(node)
            if name is None or name in self.used_names:
                name = self._fresh(prefix)
            else:
                self.used_names.add(name)
            statements.append((f"{name} = {self.src(node, arith=False)}", node))
            self.bound[node] = name
        if not free:
            self.lines += [s for s, _ in statements]
            return
        # last statement that reads each bound variable
        keep = set(roots)
        last: dict[Expr, int] = {}
        for i, (_, node) in enumerate(statements):
            for dep in self._reads(node):
                last[dep] = i
        dying: dict[int, list[Expr]] = {}
        for dep, i in last.items():
            if dep not in keep:
                dying.setdefault(i, []).append(dep)
        for i, (text, node) in enumerate(statements):
            freed = dying.get(i, [])
            if self.inplace:  # rewritten with what is free by now
                reads = self._reads(node, counts=True)
                self.dying = {d for d in freed if reads[d] == 1}  # read once, at its last use
                self.consumed = set()
                text = f"{self.bound[node]} = {self._call(node)}"
                reusable = {d for d in freed if d not in self.consumed
                            and d not in self.aliased and self._new_tensor(d)}
                self.pool += sorted(self.bound[d] for d in reusable)
                freed = [d for d in freed if d not in reusable]
                self.dying = set()
            self.lines.append(text)
            if freed:
                self.lines.append("del " + ", ".join(sorted(self.bound[d] for d in freed)))

    def _reads(self, node: Expr, counts: bool = False):
        """Bound variables the statement computing ``node`` reads (with ``counts``, how
        many times)."""
        out: Counter = Counter()
        stack = list(node.children)
        while stack:
            n = stack.pop()
            if n in self.bound:
                out[n] += 1
            elif type(n) is Call:
                stack.extend(n.children)
        return out if counts else set(out)

    def output(self, node: Expr, ref: str) -> str:
        """Source of an output tensor (constants broadcast to the shape of ``ref``)."""
        if self.tensor.get(node, False):
            return self.src(node)
        return f"torch.full_like({ref}, {self.src(node)})"


def function(name: str, columns: Sequence[str], params: Mapping[str, float],
             outputs: Sequence[tuple[str, Optional[Expr]]], names: Mapping[Expr, str],
             doc: str = "", tensor_params: frozenset = frozenset(),
             inplace: bool = False) -> str:
    """Source of one function ``name(columns..., params...)`` returning ``outputs``.

    ``outputs`` is a list of (label, expression); an expression of ``None`` returns
    ``None`` (a gradient that is not needed). One output returns a Tensor, several a tuple.
    With ``inplace``, ops overwrite the temporaries only they hold: such a function must
    not run under autograd (the fused value-and-gradient functions run in no-grad mode).
    """
    for c in columns:
        check_identifier(c, "input")
    for p in params:
        check_identifier(p, "parameter")
    em = Emitter(columns, names, dtype_ref=columns[0], tensor_params=tensor_params,
                 inplace=inplace)
    roots = [e for _, e in outputs if e is not None]
    em.emit(roots)
    ref = columns[0]
    results = []
    for label, e in outputs:
        if e is None:
            results.append("None")
            continue
        results.append(em.output(e, ref))
    sig_args = [f"{c}: Tensor" for c in columns] + [
        f"{p}: Tensor" if p in tensor_params else f"{p}: float = {number(v)}"
        for p, v in params.items()]
    if tensor_params:  # no default may follow an argument without one
        sig_args = [a.split(" = ")[0] for a in sig_args]
    if len(outputs) == 1:
        ret_type = "Tensor"
    else:
        ret_type = "Tuple[" + ", ".join(
            "Tensor" if i == 0 else "Optional[Tensor]" for i in range(len(outputs))) + "]"
    lines = [f"def {name}({', '.join(sig_args)}) -> {ret_type}:"]
    if doc:
        lines.append(f'    """{doc}"""')
    lines += [f"    {line}" for line in em.lines]
    lines.append(f"    return {', '.join(results)}")
    return "\n".join(lines) + "\n"
