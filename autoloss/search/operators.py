"""Candidate generation: grammar-constrained random trees, mutation and crossover.

Trees are edited as flat prefix arrays (DEAP's representation): a subtree is a slice found
by arity counting, crossover is a slice swap. New material only uses the slot's grammar
(its primitives, terminals and constants); nodes inherited from a zoo seed are kept as
they are. Every operator returns a tree within the slot's depth and node limits, or falls
back to a smaller edit.

The grammar is strongly typed by physical dimension (:mod:`autoloss.units`): a new
subtree is grown for the dimension its place needs (a box loss is dimensionless, so
``exp`` gets a dimensionless argument and ``rho2`` is divided by an area), crossover swaps
subtrees of equal dimension, and every edit is checked, so no search budget goes to a
candidate that would change when the image is scaled.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction
from typing import Callable, Optional, Sequence

from .. import expr as E
from .. import ops, units
from ..expr import Call, Const, Expr, Param, Var
from ..signatures import SIGNATURES, Signature
from ..units import DIMENSIONLESS, Dim

#: mutation kinds, with their probabilities
MUTATIONS = (("subtree", 0.3), ("point", 0.25), ("insert", 0.15), ("delete", 0.1),
             ("constant", 0.2))
#: the constant exponents new ``pow`` nodes get (huge powers make useless candidates)
EXPONENTS = (0.5, 2.0, 3.0)


class Grammar:
    """What new material may contain (a search-space slot's primitives, terminals,
    constants), typed by the signature's dimensions.

    Intermediate dimensions are those of the grammar's own leaves (for box terminals:
    dimensionless, length, area), so every dimension asked for has a leaf and generation
    never dead-ends: ``rho2 / diag2``, ``sqrt(enclose) * iou``, ``pw ** 2`` are built,
    ``exp(rho2)`` and ``iou + pw`` are not.
    """

    def __init__(self, primitives: Sequence[str], terminals: Sequence[str],
                 constants: Sequence[float] = (0.5, 1.0, 2.0, 3.0), max_depth: int = 7,
                 max_nodes: int = 48, signature: Optional[str | Signature] = None):
        self.primitives = [p for p in primitives if ops.get(p).arity in (1, 2, 3)]
        self.by_arity = {a: [p for p in self.primitives if ops.get(p).arity == a] for a in (1, 2, 3)}
        self.terminals = list(terminals)
        self.constants = [float(c) for c in constants]
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        sig = SIGNATURES[signature] if isinstance(signature, str) else signature
        self.signature = sig
        self.dims = {t: sig.dims[t] if sig else DIMENSIONLESS for t in self.terminals}
        self.param_units = sig.param_units if sig else {}
        self.want = sig.loss_unit if sig else DIMENSIONLESS
        self.leaf_dims = sorted({DIMENSIONLESS} | {d for d in self.dims.values() if not d.weight},
                                key=lambda d: d.power)
        self._by_dim = {d: [t for t in self.terminals if self.dims[t] == d] for d in self.leaf_dims}

    @classmethod
    def of(cls, slot) -> "Grammar":
        return cls(slot.primitives, slot.terminals, slot.constants, slot.max_depth, slot.max_nodes,
                   slot.signature)

    # -- dimensions -------------------------------------------------------------------------
    def unit_error(self, node: Expr) -> Optional[str]:
        return None if self.signature is None else self.signature.unit_error(node)

    def dims_of(self, node: Expr) -> Optional[dict[Expr, Dim]]:
        """The dimension of every subtree of ``node``, or None if it is ill-formed."""
        memo: dict[Expr, Dim] = {}
        if self.signature is None:
            return {n: DIMENSIONLESS for n in E.postorder(node)}
        try:
            units.infer(node, self.signature.dims, self.param_units, memo)
        except units.DimensionError:
            return None
        return memo

    def fits(self, node: Expr, *parents: Expr) -> bool:
        """Within the depth and node limits, and well-dimensioned. A child of ``parents``
        may be as deep and as large as the largest of them: a zoo seed beyond the space's
        limits (GWD is 16 deep, KFIoU 191 nodes) still evolves, and nothing outgrows both."""
        depth = max([self.max_depth] + [E.depth(p) for p in parents])
        nodes = max([self.max_nodes] + [E.size(p) for p in parents])
        return (E.depth(node) <= depth and E.size(node) <= nodes
                and self.unit_error(node) is None)

    def ops_for(self, dim: Dim) -> list[str]:
        """The grammar's primitives that can produce a ``dim`` from leaf dimensions."""
        out = []
        for p in self.primitives:
            op = ops.get(p)
            if op.units in ("pure", "sign") or op.comparison:
                ok = dim == DIMENSIONLESS
            elif op.units == "root":
                ok = Dim(dim.power * 2) in self._by_dim
            elif op.units == "power":
                ok = bool(self.exponents_for(dim))
            elif op.units == "product":
                ok = bool(self._splits(p, dim))
            else:
                ok = dim in self._by_dim  # sum, same, keep, select: arguments of dim itself
            if ok:
                out.append(p)
        return out

    def exponents_for(self, dim: Dim) -> list[float]:
        if dim == DIMENSIONLESS:
            return list(EXPONENTS)
        return [k for k in EXPONENTS if Dim(dim.power / Fraction(k)) in self._by_dim]

    def arg_dims(self, name: str, dim: Dim, pick: Callable[[str, list], object]) -> list[Dim]:
        """The dimensions of the arguments of ``name`` producing ``dim`` (``pick(key,
        options)`` chooses where there are several ways)."""
        op = ops.get(name)
        if op.comparison or op.units == "sign":
            d = pick("dim", self.leaf_dims)
            return [d] * op.arity
        if op.units == "pure":
            return [DIMENSIONLESS] * op.arity
        if op.units == "root":
            return [Dim(dim.power * 2)]
        if op.units == "select":
            return [DIMENSIONLESS, dim, dim]
        if op.units == "product":
            d = pick("dim", self._splits(name, dim))
            return [d, Dim(dim.power - d.power)] if name == "mul" else [Dim(dim.power + d.power), d]
        return [dim] * op.arity  # sum, same, keep

    def _splits(self, name: str, dim: Dim) -> list[Dim]:
        """The leaf dimensions ``d`` of the second factor of ``mul`` (``d * (dim / d)``) or
        of the divisor of ``div`` (``(dim * d) / d``) that leave a leaf dimension."""
        sign = -1 if name == "mul" else 1
        return [d for d in self.leaf_dims if Dim(dim.power + sign * d.power) in self._by_dim]

    # -- growing ----------------------------------------------------------------------------
    def leaves(self, dim: Dim = DIMENSIONLESS) -> list[Expr]:
        out: list[Expr] = [Var(t) for t in self._by_dim.get(dim, ())]
        if dim == DIMENSIONLESS:
            out += [Const(c) for c in self.constants]
        return out

    def leaf(self, rng: random.Random, dim: Dim = DIMENSIONLESS) -> Expr:
        names = self._by_dim.get(dim, [])
        if dim == DIMENSIONLESS and self.constants and (not names or rng.random() < 0.2):
            return Const(rng.choice(self.constants))
        if not names:
            return Const(1.0)
        return Var(rng.choice(names))

    def tree(self, rng: random.Random, max_depth: Optional[int] = None,
             leaf_probability: float = 0.3, dim: Optional[Dim] = None) -> Expr:
        """A random tree of dimension ``dim`` (default: the loss's) by the 'grow' method
        (leaves may appear before the depth limit), within the depth and node limits."""
        dim = self.want if dim is None else dim
        depth = self.max_depth if max_depth is None else min(max_depth, self.max_depth)
        for attempt in range(20):
            tree = self._grow(rng, max(2, depth - attempt // 5), leaf_probability, 0, dim)
            if E.depth(tree) <= self.max_depth and E.size(tree) <= self.max_nodes:
                return tree
        return self.leaf(rng, dim)

    def ratio(self, rng: random.Random) -> Optional[Expr]:
        """A dimensionless group: two terminals of one dimension divided (``rho2 / diag2``,
        ``pw / tw``), the building block of dimensional analysis; None without ``div``."""
        dims = [d for d, names in self._by_dim.items() if d != DIMENSIONLESS and names]
        if "div" not in self.primitives or not dims:
            return None
        names = self._by_dim[rng.choice(dims)]
        a = rng.choice(names)
        b = rng.choice([n for n in names if n != a] or names)
        return Call("div", (Var(a), Var(b)))

    def _grow(self, rng, max_depth, leaf_probability, depth, dim: Dim) -> Expr:
        choices = self.ops_for(dim)
        if depth >= max_depth - 1 or not choices or (
                depth > 0 and rng.random() < leaf_probability):
            if depth < max_depth - 1 and dim == DIMENSIONLESS and rng.random() < 0.5:
                group = self.ratio(rng)
                if group is not None:
                    return group
            return self.leaf(rng, dim)
        name = rng.choice(choices)
        if name == "pow":
            k = rng.choice(self.exponents_for(dim))
            base_dim = dim if dim == DIMENSIONLESS else Dim(dim.power / Fraction(k))
            base = self._grow(rng, max_depth, leaf_probability, depth + 1, base_dim)
            return Call("pow", (base, Const(k)))
        arg_dims = self.arg_dims(name, dim, lambda _key, options: rng.choice(options))
        return Call(name, tuple(self._grow(rng, max_depth, leaf_probability, depth + 1, d)
                                for d in arg_dims))


def _pick_kind(rng: random.Random) -> str:
    r = rng.random()
    for kind, p in MUTATIONS:
        if r < p:
            return kind
        r -= p
    return MUTATIONS[-1][0]


def _replace(prefix, i, new: Expr) -> Expr:
    end = E.subtree_end(prefix, i)
    return E.from_prefix(list(prefix[:i]) + E.to_prefix(new) + list(prefix[end:]))


def mutate(rng: random.Random, tree: Expr, grammar: Grammar, tries: int = 20) -> tuple[Expr, str]:
    """One random mutation of ``tree``; returns (child, kind). The child is well-dimensioned
    and differs from the parent when any allowed edit can make it differ."""
    for _ in range(tries):
        kind = _pick_kind(rng)
        child = _mutate(rng, tree, grammar, kind)
        if child is not None and child != tree and grammar.fits(child, tree):
            return child, kind
    child = perturb_constants(rng, tree)
    return ((child, "constant") if child is not None and grammar.fits(child, tree)
            else (tree, "none"))


def _mutate(rng, tree, grammar, kind) -> Optional[Expr]:
    prefix = E.to_prefix(tree)
    i = rng.randrange(len(prefix))
    sub = E.from_prefix(prefix[i:E.subtree_end(prefix, i)])
    dims = grammar.dims_of(sub)
    dim = dims[sub] if dims is not None else DIMENSIONLESS
    if dim.free:
        dim = DIMENSIONLESS
    if kind == "subtree":
        if dim not in grammar.leaf_dims:  # positions, volumes: only inherited, never grown
            return None
        room = max(2, grammar.max_depth - _depth_at(prefix, i))
        return _replace(prefix, i, grammar.tree(rng, max_depth=min(room, 4), dim=dim))
    if kind == "point":
        token = prefix[i]
        if isinstance(token, str):
            same = [p for p in grammar.by_arity.get(ops.get(token).arity, []) if p != token]
            if not same:
                return None
            new = list(prefix)
            new[i] = rng.choice(same)
            return E.from_prefix(new)
        if type(token) is Const and grammar.constants:
            return _replace(prefix, i, Const(rng.choice(grammar.constants)))
        return _replace(prefix, i, grammar.leaf(rng, dim)) if dim in grammar.leaf_dims else None
    if kind == "insert":
        unary = grammar.by_arity.get(1, [])
        binary = grammar.by_arity.get(2, [])
        if binary and (not unary or rng.random() < 0.5):
            op = rng.choice(binary)
            keeps = ops.get(op).units in ("sum", "same") and not ops.get(op).comparison
            other = grammar.leaf(rng, dim if keeps and not dim.weight else DIMENSIONLESS)
            args = (sub, other) if rng.random() < 0.5 else (other, sub)
            return _replace(prefix, i, Call(op, args))
        if unary:
            return _replace(prefix, i, Call(rng.choice(unary), (sub,)))
        return None
    if kind == "delete":
        if type(sub) is not Call:
            return None
        return _replace(prefix, i, rng.choice(sub.args))
    if kind == "constant":
        return perturb_constants(rng, tree)
    raise ValueError(kind)


def _depth_at(prefix, i: int) -> int:
    """Depth of position ``i`` in a prefix array (the root is at depth 0)."""
    stack: list[int] = []  # remaining children of each open node
    depth = 0
    for j, token in enumerate(prefix[:i + 1]):
        depth = len(stack)
        if j == i:
            return depth
        arity = ops.REGISTRY[token].arity if isinstance(token, str) else 0
        if arity:
            stack.append(arity)
        else:
            while stack:
                stack[-1] -= 1
                if stack[-1]:
                    break
                stack.pop()
    return depth


def perturb_constants(rng: random.Random, tree: Expr, sigma: float = 0.3) -> Optional[Expr]:
    """Multiply one constant (or one parameter value, within its range) by exp(N(0, sigma)).

    Parameters without a search range (a signature's ``eps``) are never touched: they are
    numerical regularisers, shared with the terminals (``iou`` divides by ``union + eps``),
    and an ``eps`` of 0.3 would make every box loss depend on the units of the image."""
    nodes = [n for n in E.postorder(tree)
             if (type(n) is Const and n.value != 0 and not math.isinf(n.value))
             or (type(n) is Param and n.low is not None)]
    if not nodes:
        return None
    target = rng.choice(nodes)
    factor = math.exp(rng.gauss(0.0, sigma))
    if type(target) is Const:
        value = round(target.value * factor, 4)
        new: Expr = Const(value)
    else:
        value = target.default * factor if target.default else rng.uniform(
            target.low or 0.0, target.high or 1.0)
        if target.low is not None:
            value = min(max(value, target.low), target.high)
        new = target.with_default(round(value, 4))
    return E.substitute(tree, {target: new})


def crossover(rng: random.Random, a: Expr, b: Expr, grammar: Grammar, tries: int = 20) -> Expr:
    """A child of ``a`` with one of its subtrees replaced by a subtree of ``b`` of the same
    dimension."""
    pa, pb = E.to_prefix(a), E.to_prefix(b)
    dims_a, dims_b = grammar.dims_of(a), grammar.dims_of(b)
    if dims_a is None or dims_b is None:
        return a
    spans_b = [(j, E.subtree_end(pb, j)) for j in range(len(pb))]
    by_dim: dict[Dim, list[tuple[int, int]]] = {}
    for j, end in spans_b:
        by_dim.setdefault(dims_b[E.from_prefix(pb[j:end])], []).append((j, end))
    for _ in range(tries):
        i = rng.randrange(len(pa))
        end_a = E.subtree_end(pa, i)
        dim = dims_a[E.from_prefix(pa[i:end_a])]
        donors = spans_b if dim.free else by_dim.get(dim, []) + by_dim.get(units.FREE, [])
        if not donors:
            continue
        j, end_b = rng.choice(donors)
        child = E.from_prefix(list(pa[:i]) + list(pb[j:end_b]) + list(pa[end_a:]))
        if child != a and grammar.fits(child, a, b):
            return child
    return a
