"""The expression IR: immutable trees of variables, constants, parameters and op calls.

Nodes compare structurally and cache their hash, so a dict keyed by nodes is a DAG with
common subexpressions merged (what the compiler and the population evaluator use).

Two ways to build nodes:

* the classes themselves (``Call("add", (a, b))``) build exactly what is asked for;
  the parser uses them, so printing round-trips;
* the smart constructors (``add``, ``mul``, ... and the Python operators on nodes)
  fold the trivial cases (``x * 1``, ``x + 0``, ``0 * x``, constant arithmetic); the
  gradient rules and rewrites use them so derived expressions stay small.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

from . import ops
from .errors import ExpressionError

Number = Union[int, float]


class Expr:
    """Base class of all nodes. Immutable; structural ``==``; cached ``hash``."""

    __slots__ = ("_hash",)

    # -- structure --------------------------------------------------------------------
    @property
    def children(self) -> tuple["Expr", ...]:
        return ()

    def rebuild(self, children: Sequence["Expr"]) -> "Expr":
        return self

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}({to_infix(self)!r})"

    def __str__(self) -> str:
        return to_infix(self)

    # -- building with Python operators (smart constructors) -----------------------------
    def __add__(self, other):
        return add(self, _lift(other))

    def __radd__(self, other):
        return add(_lift(other), self)

    def __sub__(self, other):
        return sub(self, _lift(other))

    def __rsub__(self, other):
        return sub(_lift(other), self)

    def __mul__(self, other):
        return mul(self, _lift(other))

    def __rmul__(self, other):
        return mul(_lift(other), self)

    def __truediv__(self, other):
        return div(self, _lift(other))

    def __rtruediv__(self, other):
        return div(_lift(other), self)

    def __pow__(self, other):
        return pow(self, _lift(other))

    def __neg__(self):
        return neg(self)


_set = object.__setattr__


def _init(node: Expr, **fields) -> None:
    for k, v in fields.items():
        object.__setattr__(node, k, v)


class Var(Expr):
    """A named input of an expression: a terminal of a signature or a column."""

    __slots__ = ("name",)
    __hash__ = Expr.__hash__

    def __init__(self, name: str):
        _set(self, "name", name)
        _set(self, "_hash", hash(("var", name)))

    def __eq__(self, other):
        return self is other or (type(other) is Var and other.name == self.name)

    def __reduce__(self):
        return (Var, (self.name,))


class Const(Expr):
    """A numeric constant (always stored as a finite Python float, or +-inf)."""

    __slots__ = ("value",)
    __hash__ = Expr.__hash__

    def __init__(self, value: Number):
        value = float(value)
        if math.isnan(value):
            raise ExpressionError("constants must be numbers, got nan")
        _set(self, "value", value)
        _set(self, "_hash", hash(("const", value)))

    def __eq__(self, other):
        return self is other or (type(other) is Const and other.value == self.value)

    def __reduce__(self):
        return (Const, (self.value,))


class Param(Expr):
    """A named, tunable parameter with a default value and an optional search range."""

    __slots__ = ("name", "default", "low", "high", "log")
    __hash__ = Expr.__hash__

    def __init__(self, name: str, default: Number, low: Optional[Number] = None,
                 high: Optional[Number] = None, log: bool = False):
        default = float(default)
        low = None if low is None else float(low)
        high = None if high is None else float(high)
        _init(self, name=name, default=default, low=low, high=high, log=bool(log),
              _hash=hash(("param", name, default)))

    def __eq__(self, other):
        return self is other or (
            type(other) is Param and other.name == self.name and other.default == self.default
            and other.low == self.low and other.high == self.high and other.log == self.log
        )

    def with_default(self, value: Number) -> "Param":
        return Param(self.name, value, self.low, self.high, self.log)

    def __reduce__(self):
        return (Param, (self.name, self.default, self.low, self.high, self.log))


class Call(Expr):
    """An op of the registry applied to argument expressions."""

    __slots__ = ("op", "args")
    __hash__ = Expr.__hash__

    def __init__(self, op: str, args: Sequence[Expr]):
        args = tuple(args)
        spec = ops.REGISTRY.get(op) or ops.get(op)  # get() raises, naming close names
        if len(args) != spec.arity:
            raise ExpressionError(
                f"primitive {op!r} takes {spec.arity} argument(s), got {len(args)}"
            )
        for a in args:
            if not isinstance(a, Expr):
                raise TypeError(f"argument of {op!r} must be an Expr, got {type(a).__name__}")
        _set(self, "op", op)  # (what _init does, without its keyword dict: hot path)
        _set(self, "args", args)
        _set(self, "_hash", hash((op, args)))

    @property
    def children(self) -> tuple[Expr, ...]:
        return self.args

    def rebuild(self, children: Sequence[Expr]) -> Expr:
        children = tuple(children)
        if all(c is a for c, a in zip(children, self.args)):
            return self
        return Call(self.op, children)

    def __eq__(self, other):
        if self is other:
            return True
        return (type(other) is Call and other._hash == self._hash and other.op == self.op
                and other.args == self.args)

    def __reduce__(self):
        return (Call, (self.op, self.args))


# --------------------------------------------------------------------------- constructors
def const(value: Number) -> Const:
    return Const(value)


def _lift(x) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return Const(x)
    raise TypeError(f"cannot use {type(x).__name__} in an expression")


def _is(x: Expr, value: float) -> bool:
    return type(x) is Const and x.value == value


def _fold(op: str, *args: Expr) -> Optional[Expr]:
    """Evaluate an op on constant arguments, if the result is a finite number."""
    for a in args:
        if type(a) is not Const:
            return None
    spec = ops.get(op)
    if spec.math is None:
        return None
    src = spec.math.format(*(repr(a.value) for a in args))
    try:
        value = eval(src, {"math": math, "inf": math.inf})  # noqa: S307 - registry template
    except (ArithmeticError, ValueError):
        return None
    if isinstance(value, complex) or not math.isfinite(value):
        return None
    return Const(value)


def call(op: str, *args: Expr) -> Expr:
    """Smart constructor for any op: folds constants, else builds the node."""
    folded = _fold(op, *args)
    return folded if folded is not None else Call(op, args)


def _neg_arg(x: Expr) -> Optional[Expr]:
    return x.args[0] if type(x) is Call and x.op == "neg" else None


def _const_mul(x: Expr) -> Optional[tuple[float, Expr]]:
    if type(x) is Call and x.op == "mul" and type(x.args[0]) is Const:
        return x.args[0].value, x.args[1]
    return None


def add(a: Expr, b: Expr) -> Expr:
    if _is(a, 0.0):
        return b
    if _is(b, 0.0):
        return a
    if type(b) is Const and b.value < 0:
        return sub(a, Const(-b.value))
    nb = _neg_arg(b)
    if nb is not None:
        return sub(a, nb)
    na = _neg_arg(a)
    if na is not None:
        return sub(b, na)
    return call("add", a, b)


def sub(a: Expr, b: Expr) -> Expr:
    if _is(b, 0.0):
        return a
    if _is(a, 0.0):
        return neg(b)
    nb = _neg_arg(b)
    if nb is not None:
        return add(a, nb)
    na = _neg_arg(a)
    if na is not None:
        return neg(add(na, b))
    return call("sub", a, b)


def mul(a: Expr, b: Expr) -> Expr:
    if _is(a, 0.0) or _is(b, 0.0):
        return Const(0.0)
    if type(b) is Const and type(a) is not Const:
        a, b = b, a
    if _is(a, 1.0):
        return b
    if _is(a, -1.0):
        return neg(b)
    na, nb = _neg_arg(a), _neg_arg(b)
    if na is not None:
        return neg(mul(na, b))
    if nb is not None:
        return neg(mul(a, nb))
    if type(a) is Const:
        if type(b) is Const:
            return call("mul", a, b)
        inner = _const_mul(b)
        if inner is not None:
            return mul(Const(a.value * inner[0]), inner[1])
    return call("mul", a, b)


def div(a: Expr, b: Expr) -> Expr:
    if _is(a, 0.0):
        return Const(0.0)
    if _is(b, 1.0):
        return a
    na, nb = _neg_arg(a), _neg_arg(b)
    if na is not None:
        return neg(div(na, b))
    if nb is not None:
        return neg(div(a, nb))
    return call("div", a, b)


def neg(a: Expr) -> Expr:
    if type(a) is Call and a.op == "neg":
        return a.args[0]
    if type(a) is Call and a.op == "sub":
        return Call("sub", (a.args[1], a.args[0]))
    return call("neg", a)


def pow(a: Expr, b: Expr) -> Expr:  # noqa: A001 - mirrors the op name
    if _is(b, 1.0):
        return a
    if _is(b, 0.0):
        return Const(1.0)
    return call("pow", a, b)


# ------------------------------------------------------------------------------ traversal
def postorder(root: Expr, stop: Optional[Mapping[Expr, object]] = None) -> list[Expr]:
    """Unique nodes of the DAG under ``root``, children before parents (iterative).

    Nodes in ``stop`` are listed but not descended into (their subtree is known).
    """
    order: list[Expr] = []
    _walk(root, set(), order, stop)
    return order


def postorder_many(roots: Iterable[Expr]) -> list[Expr]:
    """Unique nodes of several DAGs, children first; a subgraph shared by several roots
    (a population's common terminals) is walked once."""
    seen: set[Expr] = set()
    order: list[Expr] = []
    for root in roots:
        _walk(root, seen, order)
    return order


def _walk(root: Expr, seen: set, order: list, stop: Optional[Mapping[Expr, object]] = None):
    """Append to ``order`` the nodes under ``root`` not in ``seen``, children first."""
    # the hot loop of every pass over a DAG: names bound locally, a Call's args read
    # directly (``children`` is a property)
    stack: list[tuple[Expr, bool]] = [(root, False)]
    pop, push, mark, emit = stack.pop, stack.append, seen.add, order.append
    while stack:
        node, expanded = pop()
        if expanded:
            emit(node)
            continue
        if node in seen:
            continue
        mark(node)
        push((node, True))
        if stop is not None and node in stop:
            continue
        children = node.args if type(node) is Call else node.children
        for k in range(len(children) - 1, -1, -1):
            child = children[k]
            if child not in seen:
                push((child, False))


def transform(root: Expr, fn: Callable[[Expr, Sequence[Expr]], Expr],
              memo: Optional[dict[Expr, Expr]] = None) -> Expr:
    """Rebuild bottom-up: ``fn(node, new_children)`` returns the replacement node.

    Shared subtrees are transformed once; pass ``memo`` to share that work across calls
    (the transform must then be a pure function of the node).
    """
    done: dict[Expr, Expr] = {} if memo is None else memo
    for node in postorder(root, done):
        if node not in done:
            done[node] = fn(node, [done[c] for c in node.children])
    return done[root]


def substitute(root: Expr, mapping: Mapping[Expr, Expr]) -> Expr:
    """Replace nodes (by structural equality) everywhere in ``root``."""
    return transform(root, lambda n, ch: mapping.get(n) or n.rebuild(ch))


def variables(root: Expr) -> set[str]:
    return {n.name for n in postorder(root) if type(n) is Var}


def params(root: Expr) -> dict[str, Param]:
    return {n.name: n for n in postorder(root) if type(n) is Param}


def ops_used(root: Expr) -> set[str]:
    return {n.op for n in postorder(root) if type(n) is Call}


def size(root: Expr) -> int:
    """Number of nodes of the tree (shared subtrees counted each time they appear)."""
    memo: dict[Expr, int] = {}
    for node in postorder(root):
        memo[node] = 1 + sum(memo[c] for c in node.children)
    return memo[root]


def depth(root: Expr) -> int:
    memo: dict[Expr, int] = {}
    for node in postorder(root):
        memo[node] = 1 + max((memo[c] for c in node.children), default=0)
    return memo[root]


# ------------------------------------------------------------------------------- printing
def format_number(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == math.pi:
        return "pi"
    if value == math.e:
        return "e"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_UNARY = 4  # Python's precedence of a unary minus (a negative number prints as one)


def _precedence(node: Expr) -> int:
    if type(node) is Call:
        spec = ops.REGISTRY[node.op]
        if spec.infix or spec.prefix:
            return spec.precedence
        return 6
    if type(node) is Const and (node.value < 0 or node.value == -math.inf):
        return _UNARY
    return 6


def to_infix(root: Expr) -> str:
    """Print as the infix language the parser reads.

    ``parse(to_infix(e)) == e`` for every parsed ``e``; the parser reads ``-2`` as the
    constant -2, so a hand-built ``neg(Const(2))`` reads back as that (equal) constant.
    """
    text: dict[Expr, str] = {}
    for node in postorder(root):
        text[node] = _print_node(node, text)
    return text[root]


def _print_node(node: Expr, text: Mapping[Expr, str]) -> str:
    if type(node) is Var or type(node) is Param:
        return node.name
    if type(node) is Const:
        return format_number(node.value)
    spec = ops.REGISTRY[node.op]
    args = node.args
    if spec.prefix:
        (a,) = args
        inner = text[a]
        if _precedence(a) < spec.precedence:
            inner = f"({inner})"
        return f"{spec.prefix}{inner}"
    if spec.infix:
        p = spec.precedence
        left, right = (text[a] for a in args)
        lp, rp = (_precedence(a) for a in args)
        if spec.comparison:
            need_left, need_right = lp <= p, rp <= p
        elif spec.right_assoc:  # Python allows a unary minus in the exponent: a ** -b
            need_left, need_right = lp <= p, rp < _UNARY
        else:  # left associative
            need_left, need_right = lp < p, rp <= p
        if need_left:
            left = f"({left})"
        if need_right:
            right = f"({right})"
        return f"{left} {spec.infix} {right}"
    return f"{node.op}({', '.join(text[a] for a in args)})"


# ------------------------------------------------------------------------ prefix arrays
Token = Union[str, Var, Const, Param]


def to_prefix(root: Expr) -> list[Token]:
    """Flat prefix view (DEAP style): op names and leaves, parents before children."""
    out: list[Token] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if type(node) is Call:
            out.append(node.op)
            stack.extend(reversed(node.args))
        else:
            out.append(node)
    return out


def _token_arity(token: Token) -> int:
    return ops.REGISTRY[token].arity if isinstance(token, str) else 0


def subtree_end(prefix: Sequence[Token], start: int) -> int:
    """Index one past the subtree that begins at ``start`` (arity counting)."""
    need = 1
    i = start
    while need:
        if i >= len(prefix):
            raise ExpressionError("prefix array ends inside a subtree")
        need += _token_arity(prefix[i]) - 1
        i += 1
    return i


def from_prefix(prefix: Sequence[Token]) -> Expr:
    """Inverse of :func:`to_prefix`."""
    stack: list[Expr] = []
    for token in reversed(prefix):
        if isinstance(token, str):
            arity = ops.get(token).arity
            if len(stack) < arity:
                raise ExpressionError(f"prefix array: {token!r} is missing arguments")
            args = [stack.pop() for _ in range(arity)]
            stack.append(Call(token, args))
        elif isinstance(token, Expr):
            stack.append(token)
        else:
            raise ExpressionError(f"prefix array: bad token {token!r}")
    if len(stack) != 1:
        raise ExpressionError(f"prefix array holds {len(stack)} trees, expected one")
    return stack[0]


def iter_subtrees(root: Expr) -> Iterator[Expr]:
    """Every subtree occurrence in prefix order (for mutation and crossover)."""
    prefix = to_prefix(root)
    for i in range(len(prefix)):
        yield from_prefix(prefix[i:subtree_end(prefix, i)])
