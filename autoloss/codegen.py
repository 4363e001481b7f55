"""Torch source generation from expression DAGs.

One generator writes every piece of torch code autoloss runs or ships: the value
function and the fused value-and-gradient function of a compiled loss (and, later, the
exported module). Common subexpressions are computed once; nodes named after terminals
(``iou``, ``enclose``, ...) get their own readable line; single-use nodes are written
inline; parameter-only subexpressions are plain Python arithmetic on floats.

The emitted code is TorchScript-compatible: annotated arguments, no keyword-only
arguments, no closures.
"""
from __future__ import annotations

import keyword
import math
import re
from collections import Counter
from typing import Mapping, Optional, Sequence

from . import expr as E
from . import ops
from .errors import ExpressionError
from .expr import Call, Const, Expr, Param, Var

RESERVED = frozenset({"torch", "math", "Tensor", "Optional", "Tuple", "List", "dtype", "float",
                      "int", "None", "True", "False"})
_TEMP = re.compile(r"^(t|g|d)\d+$")
MAX_INLINE = 90  # characters of an inlined subexpression before it gets its own line


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


class Emitter:
    """Writes straight-line code for several output expressions sharing one DAG."""

    def __init__(self, columns: Sequence[str], names: Mapping[Expr, str], dtype_ref: str,
                 tensor_params: frozenset = frozenset()):
        self.columns = set(columns)
        self.tensor_params = frozenset(tensor_params)
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
            for child in node.children:
                uses[child] += 1
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
        return order, uses

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
        if arith and self.tensor.get(node) and node.op in ops.BOOL_OPS:
            return f"{text}.to({self.dtype_ref}.dtype)"
        return text

    def _call(self, node: Call) -> str:
        spec = ops.REGISTRY[node.op]
        args = node.args
        tensor = self.tensor[node]
        if not tensor:
            if all(type(a) is Const for a in args):
                # a constant the canonical form could not fold (1 / 0, log(-1)): its IEEE value
                import torch

                value = spec.fn(*(torch.tensor(a.value, dtype=torch.float64) for a in args))
                return number(float(value))
            if spec.math is None:
                raise ExpressionError(f"primitive {node.op!r} cannot be applied to constants only")
            return spec.math.format(*(self.src(a) for a in args))
        if node.op == "stop_grad":
            return f"{self.src(args[0])}.detach()"
        if node.op == "where":
            c, a, b = args
            if not self.tensor[c]:  # a parameter-only condition picks a branch
                a_src, b_src = self.src(a), self.src(b)
                if not self.tensor[a]:
                    a_src = f"torch.full_like({self.dtype_ref}, {a_src})"
                if not self.tensor[b]:
                    b_src = f"torch.full_like({self.dtype_ref}, {b_src})"
                if type(c) is Call and c.op in ops.BOOL_OPS:  # a plain Python comparison
                    cond = ops.REGISTRY[c.op].torch.format(*(self.src(x) for x in c.args))
                else:
                    cond = f"{self.src(c)} != 0"
                return f"({a_src} if {cond} else {b_src})"
            cond = self.src(c, arith=False)
            if not (type(c) is Call and c.op in ops.BOOL_OPS):
                cond = f"({cond} != 0)"
            if not self.tensor[a] and not self.tensor[b]:
                # two Python numbers would give a tensor of torch's default dtype
                if type(a) is Const and type(b) is Const and (a.value, b.value) == (1.0, 0.0):
                    return f"{cond}.to({self.dtype_ref}.dtype)"
                return (f"torch.where({cond}, torch.full_like({self.dtype_ref}, {self.src(a)}), "
                        f"{self.src(b)})")
            return f"torch.where({cond}, {self.src(a)}, {self.src(b)})"
        if node.op in ("min", "max") and not all(self.tensor[a] for a in args):
            t, s = (args[0], args[1]) if self.tensor[args[0]] else (args[1], args[0])
            side = "max" if node.op == "min" else "min"
            return f"torch.clamp({self.src(t)}, {side}={self.src(s)})"
        if node.op == "clamp":
            x, lo, hi = args
            if self.tensor[lo] != self.tensor[hi]:
                full = [self.src(v) if self.tensor[v] else f"torch.full_like({self.src(x)}, "
                        f"{self.src(v)})" for v in (lo, hi)]
                return f"torch.clamp({self.src(x)}, {full[0]}, {full[1]})"
            if type(hi) is Const and math.isinf(hi.value) and hi.value > 0:
                return f"torch.clamp({self.src(x)}, min={self.src(lo)})"
            if type(lo) is Const and math.isinf(lo.value) and lo.value < 0:
                return f"torch.clamp({self.src(x)}, max={self.src(hi)})"
        if node.op == "pow" and type(args[1]) is Const and args[1].value == 2.0:
            return f"torch.square({self.src(args[0])})"
        if node.op in ops.BOOL_OPS:
            return spec.torch.format(*(self.src(a) for a in args))
        if node.op == "pow" and not self.tensor[args[0]]:
            return f"torch.pow({self.src(args[0])}, {self.src(args[1])})"
        return spec.torch.format(*(self.src(a) for a in args))

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
        dying: dict[int, list[str]] = {}
        for dep, i in last.items():
            if dep not in keep:
                dying.setdefault(i, []).append(self.bound[dep])
        for i, (text, _) in enumerate(statements):
            self.lines.append(text)
            if i in dying:
                self.lines.append("del " + ", ".join(sorted(dying[i])))

    def _reads(self, node: Expr) -> set[Expr]:
        """Bound variables the statement computing ``node`` reads."""
        out: set[Expr] = set()
        stack = list(node.children)
        while stack:
            n = stack.pop()
            if n in self.bound:
                out.add(n)
            elif type(n) is Call:
                stack.extend(n.children)
        return out

    def output(self, node: Expr, ref: str) -> str:
        """Source of an output tensor (constants broadcast to the shape of ``ref``)."""
        if self.tensor.get(node, False):
            return self.src(node)
        return f"torch.full_like({ref}, {self.src(node)})"


def function(name: str, columns: Sequence[str], params: Mapping[str, float],
             outputs: Sequence[tuple[str, Optional[Expr]]], names: Mapping[Expr, str],
             doc: str = "", tensor_params: frozenset = frozenset()) -> str:
    """Source of one function ``name(columns..., params...)`` returning ``outputs``.

    ``outputs`` is a list of (label, expression); an expression of ``None`` returns
    ``None`` (a gradient that is not needed). One output returns a Tensor, several a tuple.
    """
    for c in columns:
        check_identifier(c, "input")
    for p in params:
        check_identifier(p, "parameter")
    em = Emitter(columns, names, dtype_ref=columns[0], tensor_params=tensor_params)
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
