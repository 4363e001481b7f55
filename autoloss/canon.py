"""Canonical form, stable hash, numerically stable rewrites and lowering.

``canonical(e)`` maps algebraically equal spellings of a candidate to one tree, so that
equal candidates are compiled and evaluated once:

* ``a - b -> a + (-1) * b``, ``-a -> (-1) * a``, ``a / b -> a * b ** -1``;
* sums and products are flattened, their operands sorted, numeric constants folded,
  like terms collected (``x + x -> 2 * x``) and equal bases merged (``x * x -> x ** 2``);
* identities dropped (``x * 1``, ``x + 0``, ``x ** 1``), constant calls folded
  (``exp(0) -> 1``), operands of other commutative ops (min, max) sorted;
* comparisons face one way (``a > b -> b < a``).

Terminals are opaque: canonicalization never looks inside a terminal's definition.

``rewrite_stable(e, defs)`` then applies numerically stable rewrites that may look
through terminal definitions (``defs``), e.g. ``log(p)`` with ``p = sigmoid(x)`` becomes
``logsigmoid(x)``; ``lower(e)`` turns the canonical sums and products back into the
cheap ops (``-``, ``/``, unary minus) the compiler emits.
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Optional

from . import expr as E
from . import ops
from .expr import Call, Const, Expr, Param, Var


# ------------------------------------------------------------------------------ canonical
class _Canon:
    def __init__(self):
        self.keys: dict[Expr, str] = {}

    def key(self, node: Expr) -> str:
        k = self.keys.get(node)
        if k is None:
            rank = {Const: "0", Param: "1", Var: "2", Call: "3"}[type(node)]
            k = rank + E.to_infix(node)
            self.keys[node] = k
        return k

    def run(self, root: Expr) -> Expr:
        return E.transform(root, self.node)

    def node(self, node: Expr, ch) -> Expr:
        if type(node) is not Call:
            return node
        op = node.op
        if op == "add":
            return self.add(ch)
        if op == "sub":
            return self.add([ch[0], self.mul([Const(-1.0), ch[1]])])
        if op == "neg":
            return self.mul([Const(-1.0), ch[0]])
        if op == "mul":
            return self.mul(ch)
        if op == "div":
            return self.mul([ch[0], self.pow(ch[1], Const(-1.0))])
        if op == "pow":
            return self.pow(ch[0], ch[1])
        if op == "gt":
            op, ch = "lt", [ch[1], ch[0]]
        elif op == "ge":
            op, ch = "le", [ch[1], ch[0]]
        folded = E._fold(op, *ch)
        if folded is not None:
            return folded
        spec = ops.REGISTRY[op]
        if spec.commutative:
            if ch[0] == ch[1] and op in ("min", "max"):
                return ch[0]
            ch = sorted(ch, key=self.key)
        if op == "stop_grad" and type(ch[0]) is Const:
            return ch[0]
        if op == "where" and type(ch[0]) is Const:
            return ch[1] if ch[0].value != 0 else ch[2]
        return Call(op, ch)

    # -- sums ----------------------------------------------------------------------------
    def _flatten(self, items, op):
        out = []
        stack = list(reversed(items))
        while stack:
            x = stack.pop()
            if type(x) is Call and x.op == op:
                stack.extend(reversed(x.args))
            else:
                out.append(x)
        return out

    def add(self, items) -> Expr:
        constant = 0.0
        coeffs: dict[Expr, float] = {}
        order: list[Expr] = []
        for term in self._flatten(items, "add"):
            if type(term) is Const:
                constant += term.value
                continue
            c, rest = split_coeff(term)
            if rest not in coeffs:
                coeffs[rest] = 0.0
                order.append(rest)
            coeffs[rest] += c
        terms = []
        for rest in order:
            c = coeffs[rest]
            if c == 0.0:
                continue
            terms.append(rest if c == 1.0 else self.mul([Const(c), rest]))
        terms.sort(key=self.key)
        if constant != 0.0 or not terms:
            terms.insert(0, Const(constant))
        return self._chain("add", terms)

    # -- products ------------------------------------------------------------------------
    def mul(self, items) -> Expr:
        constant = 1.0
        powers: dict[Expr, Expr] = {}
        order: list[Expr] = []
        for f in self._flatten(items, "mul"):
            if type(f) is Const:
                constant *= f.value
                continue
            base, ex = f, Const(1.0)
            if type(f) is Call and f.op == "pow" and type(f.args[1]) is Const:
                base, ex = f.args
            if base in powers:
                total = E._fold("add", powers[base], ex)
                if total is None:  # non-finite: keep the factors apart
                    order.append(f)
                    powers[f] = Const(1.0)
                    continue
                powers[base] = total
            else:
                powers[base] = ex
                order.append(base)
        if constant == 0.0:
            return Const(0.0)
        factors = []
        for base in order:
            p = self.pow(base, powers[base])
            if type(p) is Const:
                constant *= p.value
            else:
                factors.append(p)
        factors.sort(key=self.key)
        if constant != 1.0 or not factors:
            factors.insert(0, Const(constant))
        return self._chain("mul", factors)

    def pow(self, base: Expr, ex: Expr) -> Expr:
        folded = E._fold("pow", base, ex)
        if folded is not None:
            return folded
        if type(ex) is Const:
            if ex.value == 1.0:
                return base
            if ex.value == 0.0:
                return Const(1.0)
            if (type(base) is Call and base.op == "pow" and type(base.args[1]) is Const
                    and ex.value.is_integer()):
                return self.pow(base.args[0], Const(base.args[1].value * ex.value))
        if type(base) is Const and base.value == 1.0:
            return Const(1.0)
        return Call("pow", (base, ex))

    @staticmethod
    def _chain(op: str, items) -> Expr:
        result = items[0]
        for item in items[1:]:
            result = Call(op, (result, item))
        return result


def canonical(root: Expr) -> Expr:
    """The canonical form of ``root`` (see the module docstring)."""
    return _Canon().run(root)


def serialize(root: Expr) -> str:
    """An unambiguous text form, parameters with their values (input of the hash)."""
    out: dict[Expr, str] = {}
    for node in E.postorder(root):
        if type(node) is Var:
            out[node] = f"${node.name}"
        elif type(node) is Param:
            out[node] = f"@{node.name}={node.default!r}"
        elif type(node) is Const:
            out[node] = repr(node.value)
        else:
            out[node] = f"{node.op}({','.join(out[a] for a in node.args)})"
    return out[root]


def canonical_hash(root: Expr, salt: str = "") -> str:
    """A stable 16-hex-digit hash of the canonical form (same across runs and machines)."""
    text = salt + "|" + serialize(canonical(root))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------ stable rewrites
def _is_const(node: Expr, value: float) -> bool:
    return type(node) is Const and node.value == value


def _unfold(node: Expr, defs: Mapping[str, Expr]) -> Expr:
    """A terminal's definition (followed through aliases), else the node itself."""
    seen = 0
    while type(node) is Var and node.name in defs and seen < 16:
        node = defs[node.name]
        seen += 1
    return node


def _sigmoid_arg(node: Expr, defs) -> Optional[Expr]:
    node = _unfold(node, defs)
    if type(node) is Call and node.op == "sigmoid":
        return node.args[0]
    return None


def _one_minus(node: Expr, defs) -> Optional[Expr]:
    """``x`` if ``node`` is ``1 - x`` in canonical form (``add(1, mul(-1, x))``)."""
    node = _unfold(node, defs)
    if type(node) is Call and node.op == "add" and _is_const(node.args[0], 1.0):
        c, rest = split_coeff(node.args[1])
        if c == -1.0 and rest is not None:
            return rest
    return None


def _neg(x: Expr) -> Expr:
    return canonical(Call("mul", (Const(-1.0), x)))


def rewrite_stable(root: Expr, defs: Mapping[str, Expr] = {}) -> Expr:  # noqa: B006
    """Numerically stable rewrites of a canonical expression.

    * ``log(sigmoid(x)) -> logsigmoid(x)``, ``log(1 - sigmoid(x)) -> logsigmoid(-x)``
    * ``1 - sigmoid(x) -> sigmoid(-x)``
    * ``log(1 + exp(x)) -> softplus(x)``, ``log(exp(x)) -> x``, ``log(1 + x) -> log1p(x)``
    * ``sqrt(x ** 2) -> abs(x)``
    """

    def fn(node: Expr, ch) -> Expr:
        node = node.rebuild(ch)
        if type(node) is not Call:
            return node
        if node.op == "log":
            (a,) = node.args
            s = _sigmoid_arg(a, defs)
            if s is not None:
                return Call("logsigmoid", (s,))
            inner = _one_minus(a, defs)
            if inner is not None:
                s = _sigmoid_arg(inner, defs)
                if s is not None:
                    return Call("logsigmoid", (_neg(s),))
            u = _unfold(a, defs)
            if type(u) is Call and u.op == "exp":
                return u.args[0]
            if type(u) is Call and u.op == "add" and _is_const(u.args[0], 1.0):
                rest = u.args[1]
                r = _unfold(rest, defs)
                if type(r) is Call and r.op == "exp":
                    return Call("softplus", (r.args[0],))
                return Call("log1p", (rest,))
            if type(a) is Call and a.op == "sigmoid":  # log of a sigmoid produced above
                return Call("logsigmoid", a.args)
        if node.op == "add":
            inner = _one_minus(node, {})
            if inner is not None:
                s = _sigmoid_arg(inner, defs)
                if s is not None:
                    return Call("sigmoid", (_neg(s),))
        if node.op == "sqrt":
            (a,) = node.args
            if type(a) is Call and a.op == "pow" and _is_const(a.args[1], 2.0):
                return Call("abs", (a.args[0],))
        return node

    return E.transform(root, fn)


# ---------------------------------------------------------------------------------- lower
def _flat(node: Expr, op: str) -> list[Expr]:
    out, stack = [], [node]
    while stack:
        x = stack.pop()
        if type(x) is Call and x.op == op:
            stack.extend(reversed(x.args))
        else:
            out.append(x)
    return out


def split_coeff(term: Expr) -> tuple[float, Expr | None]:
    """``(c, rest)`` with ``term == c * rest`` for a canonical term (``rest`` None: a number)."""
    if type(term) is Const:
        return term.value, None
    if type(term) is Call and term.op == "mul":
        factors = _flat(term, "mul")
        if type(factors[0]) is Const:
            return factors[0].value, _Canon._chain("mul", factors[1:])
    return 1.0, term


def lower(root: Expr) -> Expr:
    """Turn canonical sums/products back into ``-``, ``/`` and unary minus.

    ``a + (-1) * b -> a - b``, ``a * b ** -1 -> a / b``, ``(-1) * a -> -a``,
    ``x ** 0.5 -> sqrt(x)``, ``x ** -1 -> 1 / x``: the same function with the fewest
    cheap ops, which is what the compiler differentiates and emits.
    """
    memo: dict[Expr, Expr] = {}

    def low(node: Expr) -> Expr:
        done = memo.get(node)
        if done is None:
            done = memo[node] = _lower_node(node)
        return done

    def chain(op: str, items: list[Expr]) -> Expr:
        out = items[0]
        for item in items[1:]:
            out = Call(op, (out, item))
        return out

    def product(factors: list[Expr], coeff: float) -> Expr:
        num: list[Expr] = []
        den: list[Expr] = []
        for f in factors:
            if type(f) is Call and f.op == "pow" and type(f.args[1]) is Const \
                    and f.args[1].value < 0:
                den.append(_power(low(f.args[0]), -f.args[1].value))
            else:
                num.append(low(f))
        if coeff != 1.0 or not num:
            num.insert(0, Const(coeff))
        out = chain("mul", num)
        return Call("div", (out, chain("mul", den))) if den else out

    def _lower_node(node: Expr) -> Expr:
        if type(node) is not Call:
            return node
        if node.op == "mul":
            coeff, rest = split_coeff(node)
            factors = _flat(rest, "mul") if rest is not None else []
            out = product(factors, abs(coeff))
            return Call("neg", (out,)) if coeff < 0 else out
        if node.op == "add":
            pos: list[Expr] = []
            neg: list[Expr] = []
            for term in _flat(node, "add"):
                c, rest = split_coeff(term)
                factors = _flat(rest, "mul") if rest is not None else []
                (neg if c < 0 else pos).append(product(factors, abs(c)))
            if not pos:
                return Call("neg", (chain("add", neg),))
            out = chain("add", pos)
            for t in neg:
                out = Call("sub", (out, t))
            return out
        if node.op == "pow" and type(node.args[1]) is Const:
            k = node.args[1].value
            if k < 0:
                return Call("div", (Const(1.0), _power(low(node.args[0]), -k)))
            return _power(low(node.args[0]), k)
        return node.rebuild([low(a) for a in node.args])

    return low(root)


def _power(base: Expr, k: float) -> Expr:
    if k == 1.0:
        return base
    if k == 0.5:
        return Call("sqrt", (base,))
    return Call("pow", (base, Const(k)))
