"""Candidate generation: grammar-constrained random trees, mutation and crossover.

Trees are edited as flat prefix arrays (DEAP's representation): a subtree is a slice found
by arity counting, crossover is a slice swap. New material only uses the slot's grammar
(its primitives, terminals and constants); nodes inherited from a zoo seed are kept as
they are. Every operator returns a tree within the slot's depth and node limits, or falls
back to a smaller edit.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

from .. import expr as E
from .. import ops
from ..expr import Call, Const, Expr, Param, Var

#: mutation kinds, with their probabilities
MUTATIONS = (("subtree", 0.3), ("point", 0.25), ("insert", 0.15), ("delete", 0.1),
             ("constant", 0.2))


class Grammar:
    """What new material may contain (a search-space slot's primitives, terminals, constants)."""

    def __init__(self, primitives: Sequence[str], terminals: Sequence[str],
                 constants: Sequence[float] = (0.5, 1.0, 2.0, 3.0), max_depth: int = 7,
                 max_nodes: int = 48):
        self.primitives = [p for p in primitives if ops.get(p).arity in (1, 2, 3)]
        self.by_arity = {a: [p for p in self.primitives if ops.get(p).arity == a] for a in (1, 2, 3)}
        self.terminals = list(terminals)
        self.constants = [float(c) for c in constants]
        self.max_depth = max_depth
        self.max_nodes = max_nodes

    @classmethod
    def of(cls, slot) -> "Grammar":
        return cls(slot.primitives, slot.terminals, slot.constants, slot.max_depth, slot.max_nodes)

    def fits(self, node: Expr) -> bool:
        return E.depth(node) <= self.max_depth and E.size(node) <= self.max_nodes

    def leaf(self, rng: random.Random) -> Expr:
        if self.constants and rng.random() < 0.2:
            return Const(rng.choice(self.constants))
        return Var(rng.choice(self.terminals))

    def tree(self, rng: random.Random, max_depth: Optional[int] = None,
             leaf_probability: float = 0.3) -> Expr:
        """A random tree (the 'grow' method: leaves may appear before the depth limit),
        within the depth and node limits."""
        depth = self.max_depth if max_depth is None else min(max_depth, self.max_depth)
        for attempt in range(20):
            tree = self._grow(rng, max(2, depth - attempt // 5), leaf_probability, 0)
            if self.fits(tree):
                return tree
        return self.leaf(rng)

    def _grow(self, rng, max_depth, leaf_probability, depth) -> Expr:
        if depth >= max_depth - 1 or not self.primitives or (
                depth > 0 and rng.random() < leaf_probability):
            return self.leaf(rng)
        name = rng.choice(self.primitives)
        if name == "pow":  # small constant exponents only: huge powers make useless candidates
            base = self._grow(rng, max_depth, leaf_probability, depth + 1)
            return Call("pow", (base, Const(rng.choice((0.5, 2.0, 3.0)))))
        return Call(name, tuple(self._grow(rng, max_depth, leaf_probability, depth + 1)
                                for _ in range(ops.get(name).arity)))


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
    """One random mutation of ``tree``; returns (child, kind). The child differs from the
    parent when any allowed edit can make it differ."""
    for _ in range(tries):
        kind = _pick_kind(rng)
        child = _mutate(rng, tree, grammar, kind)
        if child is not None and child != tree and grammar.fits(child):
            return child, kind
    return _mutate(rng, tree, grammar, "point") or tree, "point"


def _mutate(rng, tree, grammar, kind) -> Optional[Expr]:
    prefix = E.to_prefix(tree)
    i = rng.randrange(len(prefix))
    sub = E.from_prefix(prefix[i:E.subtree_end(prefix, i)])
    if kind == "subtree":
        room = max(2, grammar.max_depth - _depth_at(prefix, i))
        return _replace(prefix, i, grammar.tree(rng, max_depth=min(room, 4)))
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
        return _replace(prefix, i, grammar.leaf(rng))
    if kind == "insert":
        unary = grammar.by_arity.get(1, [])
        binary = grammar.by_arity.get(2, [])
        if binary and (not unary or rng.random() < 0.5):
            op = rng.choice(binary)
            other = grammar.leaf(rng)
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
    """Multiply one constant (or one parameter value, within its range) by exp(N(0, sigma))."""
    nodes = [n for n in E.postorder(tree) if type(n) in (Const, Param)
             and not (type(n) is Const and (n.value == 0 or math.isinf(n.value)))]
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
    """A child of ``a`` with one of its subtrees replaced by a subtree of ``b``."""
    pa, pb = E.to_prefix(a), E.to_prefix(b)
    for _ in range(tries):
        i, j = rng.randrange(len(pa)), rng.randrange(len(pb))
        child = E.from_prefix(list(pa[:i]) + list(pb[j:E.subtree_end(pb, j)])
                              + list(pa[E.subtree_end(pa, i):]))
        if child != a and grammar.fits(child):
            return child
    return a
