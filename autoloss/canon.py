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
class Canonicalizer:
    """Canonical forms with a memo: reuse one instance across many expressions."""

    def __init__(self):
        self.keys: dict[Expr, str] = {}
        self.memo: dict[Expr, Expr] = {}

    def key(self, node: Expr) -> str:
        """A total order on canonical nodes (numbers, parameters, variables, calls)."""
        k = self.keys.get(node)
        if k is None:
            for n in E.postorder(node, self.keys):
                if n in self.keys:
                    continue
                if type(n) is Const:
                    k = "0" + repr(n.value)
                elif type(n) is Param:
                    k = "1" + n.name
                elif type(n) is Var:
                    k = "2" + n.name
                else:
                    k = "3" + n.op + "(" + ",".join(self.keys[a] for a in n.args) + ")"
                self.keys[n] = k
            k = self.keys[node]
        return k

    def __call__(self, root: Expr) -> Expr:
        return E.transform(root, self.node, self.memo)

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
            if ch[0] == ch[1] and spec.idempotent:
                return ch[0]
            ch = sorted(ch, key=self.key)
        if spec.alias and type(ch[0]) is Const:  # stop_grad(2) is 2
            return ch[0]
        if spec.condition and type(ch[0]) is Const:  # a constant condition picks a branch
            return ch[1] if ch[0].value != 0 else ch[2]
        return Call(op, ch)

    # -- sums ----------------------------------------------------------------------------
    @staticmethod
    def _flatten(items, op):
        return [x for item in items for x in _flat(item, op)]

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
        if constant != 1.0 and len(factors) == 1 and type(factors[0]) is Call \
                and factors[0].op == "add":
            # a number times a sum distributes: -(y - x) and x - y are one form
            return self.add([self.mul([Const(constant), t])
                             for t in self._flatten([factors[0]], "add")])
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
    return Canonicalizer()(root)


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


def canonical_hash(root: Expr, salt: str = "",
                   canonicalizer: Optional[Canonicalizer] = None) -> str:
    """A stable 16-hex-digit hash of the canonical form (same across runs and machines).
    ``canonicalizer``: one to reuse (its memo), e.g. across a population."""
    text = salt + "|" + serialize((canonicalizer or Canonicalizer())(root))
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


def rewrite_stable(root: Expr, defs: Mapping[str, Expr] = {},  # noqa: B006
                   memo: Optional[dict[Expr, Expr]] = None) -> Expr:
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

    return E.transform(root, fn, memo)


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
            return factors[0].value, Canonicalizer._chain("mul", factors[1:])
    return 1.0, term


def lower(root: Expr, memo: Optional[dict[Expr, Expr]] = None) -> Expr:
    """Turn canonical sums/products back into ``-``, ``/`` and unary minus.

    ``a + (-1) * b -> a - b``, ``a * b ** -1 -> a / b``, ``(-1) * a -> -a``,
    ``x ** 0.5 -> sqrt(x)``, ``x ** -1 -> 1 / x``: the same function with the fewest
    cheap ops, which is what the compiler differentiates and emits.
    """
    memo = {} if memo is None else memo

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


# ------------------------------------------------------------------------------- factor
def _signed_terms(node: Expr) -> list[tuple[float, Expr]]:
    out: list[tuple[float, Expr]] = []
    stack: list[tuple[float, Expr]] = [(1.0, node)]
    while stack:
        sign, x = stack.pop()
        if type(x) is Call and x.op == "add":
            stack += [(sign, x.args[1]), (sign, x.args[0])]
        elif type(x) is Call and x.op == "sub":
            stack += [(-sign, x.args[1]), (sign, x.args[0])]
        elif type(x) is Call and x.op == "neg":
            stack.append((-sign, x.args[0]))
        else:
            out.append((sign, x))
    return out


def _sum(terms: list[tuple[float, Expr]]) -> Expr:
    out: Optional[Expr] = None
    for sign, t in terms:
        if out is None:
            out = t if sign > 0 else E.neg(t)
        else:
            out = E.add(out, t) if sign > 0 else E.sub(out, t)
    return out if out is not None else Const(0.0)


def _product(factors: list[Expr]) -> Expr:
    out: Expr = Const(1.0)
    for f in factors:
        out = E.mul(out, f)
    return out


def _factor_sum(node: Expr) -> Expr:
    terms = _signed_terms(node)
    if len(terms) < 2:
        return node
    split = []
    for sign, term in terms:
        factors = []
        for f in _flat(term, "mul"):
            if type(f) is Call and f.op == "neg":
                sign, f = -sign, f.args[0]
            factors.append(f)
        split.append((sign, factors))
    counts: dict[Expr, int] = {}
    for _, factors in split:
        for f in set(factors):
            if type(f) is not Const:
                counts[f] = counts.get(f, 0) + 1
    best = max(counts, key=lambda f: counts[f], default=None)
    if best is None or counts[best] < 2:
        return node
    inner, rest = [], []
    for sign, factors in split:
        if best in factors:
            factors = list(factors)
            factors.remove(best)
            inner.append((sign, _product(factors)))
        else:
            rest.append((sign, _product(factors)))
    out = E.mul(best, _factor_sum(_sum(inner)))
    if rest:
        out = E.add(out, _factor_sum(_sum(rest)))
    return out


def factor(root: Expr, memo: Optional[dict[Expr, Expr]] = None) -> Expr:
    """Pull common factors out of sums: ``a*b + a*c -> a*(b + c)`` (greedy, exact algebra).

    Applied to gradients, whose chain-rule terms share many factors; fewer multiplies.
    """

    def fn(node: Expr, ch) -> Expr:
        node = node.rebuild(ch)
        if type(node) is Call and node.op in ("add", "sub"):
            return _factor_sum(node)
        return node

    return E.transform(root, fn, memo)


def fuse_bce(roots: list[Expr]) -> list[Expr]:
    """``y * logsigmoid(z) + (1 - y) * logsigmoid(-z)`` -> ``-bce_logits(z, y)``: torch's
    fused binary cross-entropy kernel instead of a dozen elementwise passes (BCE, focal,
    QFL and VFL are written this way). Its value is torch's own: ``(1 - y) z -
    logsigmoid(z)``, exact but for an absolute error of an ulp of ``z`` where the loss is
    far below it.

    An emission step: it runs after differentiation and leaves gradients untouched.
    """
    def term(node):  # mul(coefficient, logsigmoid(arg)) -> (coefficient, arg)
        if type(node) is not Call or node.op != "mul":
            return None
        for i in (0, 1):
            ls = node.args[i]
            if type(ls) is Call and ls.op == "logsigmoid":
                return node.args[1 - i], ls.args[0]
        return None

    def complement(a, b) -> bool:  # b == 1 - a
        return type(b) is Call and b.op == "sub" and b.args == (Const(1.0), a)

    def fuse(node, children):
        node = node.rebuild(children)
        if type(node) is Call and node.op == "neg" and type(node.args[0]) is Call \
                and node.args[0].op == "neg":  # -(-bce), from -(y log p + ...)
            return node.args[0].args[0]
        if type(node) is not Call or node.op != "add":
            return node
        terms = [term(a) for a in node.args]
        if None in terms:
            return node
        (a, z), (b, w) = terms
        if w == Call("neg", (z,)) and (complement(a, b) or complement(b, a)):
            return Call("neg", (Call("bce_logits", (z, a)),))
        if z == Call("neg", (w,)) and (complement(a, b) or complement(b, a)):
            return Call("neg", (Call("bce_logits", (w, b)),))
        return node

    memo: dict[Expr, Expr] = {}
    return [E.transform(r, fuse, memo) for r in roots]


def share_logsigmoid(roots: list[Expr]) -> list[Expr]:
    """Where ``logsigmoid(z)`` and ``logsigmoid(-z)`` both appear, compute them from one
    ``L = log1p(exp(-|z|))``: ``logsigmoid(z) = min(z, 0) - L``, ``logsigmoid(-z) =
    -max(z, 0) - L`` (exact, as BCE-with-logits does; one transcendental pass instead of two).

    An emission step: it runs after differentiation and leaves gradients untouched.
    """
    nodes = E.postorder_many(roots)
    found = {n for n in nodes if type(n) is Call and n.op == "logsigmoid"}
    pairs: dict[Expr, Expr] = {}
    for n in found:
        z = n.args[0]
        if type(z) is Call and z.op == "neg":
            continue
        twin = Call("logsigmoid", (Call("neg", (z,)),))
        if twin in found:
            shared = Call("log1p", (Call("exp", (Call("neg", (Call("abs", (z,)),)),)),))
            zero = Const(0.0)
            pairs[n] = Call("sub", (Call("min", (z, zero)), shared))
            pairs[twin] = Call("sub", (Call("neg", (Call("max", (z, zero)),)), shared))
    if not pairs:
        return list(roots)
    memo: dict[Expr, Expr] = {}
    return [E.transform(r, lambda node, ch: pairs.get(node) or node.rebuild(ch), memo)
            for r in roots]
