"""Grammar-constrained random expression trees (the raw material of a search).

``random_tree`` grows a tree over a signature's terminals, a set of primitives and a few
constants (the "grow" method of genetic programming: leaves may appear before the depth
limit). It is deterministic for a given ``random.Random``.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

from . import ops
from .expr import Call, Const, Expr, Var

#: the elementwise primitives a default search may use
DEFAULT_PRIMITIVES = ("add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "abs", "sigmoid",
                      "softplus", "tanh", "sin", "cos", "min", "max", "pow")
DEFAULT_CONSTANTS = (1.0, 2.0, 3.0, 0.5)


def random_tree(rng: random.Random, terminals: Sequence[str], *,
                primitives: Sequence[str] = DEFAULT_PRIMITIVES,
                constants: Sequence[float] = DEFAULT_CONSTANTS, max_depth: int = 4,
                leaf_probability: float = 0.3, depth: int = 0) -> Expr:
    """A random expression tree of at most ``max_depth`` levels."""
    if not terminals:
        raise ValueError("random_tree needs at least one terminal")
    if depth >= max_depth - 1 or (depth > 0 and rng.random() < leaf_probability):
        return _leaf(rng, terminals, constants)
    name = rng.choice(list(primitives))
    spec = ops.get(name)
    if name == "pow":  # keep exponents small constants: huge powers are useless candidates
        base = random_tree(rng, terminals, primitives=primitives, constants=constants,
                           max_depth=max_depth, leaf_probability=leaf_probability,
                           depth=depth + 1)
        return Call("pow", (base, Const(rng.choice((0.5, 2.0, 3.0)))))
    args = tuple(
        random_tree(rng, terminals, primitives=primitives, constants=constants,
                    max_depth=max_depth, leaf_probability=leaf_probability, depth=depth + 1)
        for _ in range(spec.arity))
    return Call(name, args)


def _leaf(rng: random.Random, terminals: Sequence[str], constants: Sequence[float]) -> Expr:
    if constants and rng.random() < 0.25:
        return Const(rng.choice(list(constants)))
    return Var(rng.choice(list(terminals)))


def population(rng: random.Random, n: int, terminals: Sequence[str],
               seeds: Optional[Sequence[Expr]] = None, **kwargs) -> list[Expr]:
    """``n`` random trees; with ``seeds``, each is a seed plus or times a random tree."""
    out = []
    for i in range(n):
        tree = random_tree(rng, terminals, **kwargs)
        if seeds:
            tree = Call(rng.choice(("add", "mul")), (seeds[i % len(seeds)], tree))
        out.append(tree)
    return out
