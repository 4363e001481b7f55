"""Search strategies: how the next candidate is chosen from the history of the study.

A strategy works on a backend-neutral trial handle (:mod:`autoloss.search.handle`: the
trial's number, its random generator seeded by (seed, trial number), suggestions and user
attributes), so any backend can drive it; it derives its state from the history of finished
trials only, so a resumed run continues exactly as an uninterrupted one would.

* ``random``: grammar-constrained random trees, random parameters and choices;
* ``tpe``: define-by-run over the tree (each node's token is a categorical suggested by
  Optuna's TPE sampler, keyed by its position), parameters as floats;
* ``evolution``: regularized (aging) evolution with tournament selection, the first
  population being the zoo losses of the slot (recombination of surveyed losses:
  crossover mixes their subtrees); ``evolution-scratch`` starts from random trees;
* ``nsga2``: the same operators with NSGA-II selection (non-dominated rank, then crowding
  distance) on the metric x complexity objectives.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Sequence

from .. import catalog
from ..expr import Call, Const, Expr, Param, Var
from ..units import DIMENSIONLESS, Dim
from .candidate import Candidate
from .handle import TrialHandle
from .operators import Grammar, crossover, mutate, perturb_constants
from .space import Space

NAMES = ("random", "tpe", "evolution", "evolution-scratch", "nsga2")


@dataclass
class Entry:
    """A finished trial the strategies can learn from."""

    number: int
    candidate: Candidate
    values: tuple[float, ...]


class Strategy:
    """Proposes the candidate of a trial; call order: ``propose(trial, history)`` once per
    trial, ``trial`` a :class:`~autoloss.search.handle.TrialHandle` and history the finished
    (complete or reused) trials in trial order."""

    name = "base"

    def __init__(self, space: Space, seed: int):
        self.space = space
        self.seed = seed
        self.grammars = {s: Grammar.of(slot) for s, slot in space.slots.items()}

    def propose(self, trial: TrialHandle, history: Sequence[Entry]) -> Candidate:
        raise NotImplementedError

    # -- shared pieces ---------------------------------------------------------------------
    def seed_expressions(self, slot: str) -> list[tuple[str, Expr]]:
        return [(s, catalog.get(s).expression) for s in self.space.slots[slot].seeds]

    def random_candidate(self, rng: random.Random, origin: str = "random") -> Candidate:
        slots = {}
        for s, slot in self.space.slots.items():
            if slot.mode == "params":
                slots[s] = _random_params(rng, self.seed_expressions(s)[0][1], slot)
            else:
                slots[s] = _with_params(self.grammars[s].tree(rng, max_depth=min(
                    slot.max_depth, 5)), slot, rng)
        return Candidate(slots, self.random_choices(rng), origin)

    def random_choices(self, rng: random.Random) -> dict[str, Any]:
        return {k: rng.choice(list(v)) for k, v in self.space.choices.items()}

    def seed_candidate(self, index: int) -> Optional[Candidate]:
        return zoo_seed(self.space, index)

    def child(self, rng: random.Random, a: Entry, b: Optional[Entry]) -> Candidate:
        slots = {}
        kinds = []
        for s, slot in self.space.slots.items():
            tree = a.candidate.slots[s]
            if slot.mode == "params":
                slots[s] = perturb_constants(rng, tree) or tree
                kinds.append("perturb")
                continue
            if b is not None and rng.random() < 0.5:
                tree = crossover(rng, tree, b.candidate.slots[s], self.grammars[s])
                kinds.append("crossover")
            tree, kind = mutate(rng, tree, self.grammars[s])
            kinds.append(kind)
            slots[s] = tree
        choices = dict(a.candidate.choices)
        if self.space.choices and rng.random() < 0.3:
            key = rng.choice(sorted(self.space.choices))
            choices[key] = rng.choice(list(self.space.choices[key]))
            kinds.append(f"choice:{key}")
        parents = (a.number,) + ((b.number,) if b is not None else ())
        return Candidate(slots, choices, "+".join(kinds), parents)

    def better(self, x: float, y: float) -> bool:
        return x < y if self.space.direction == "minimize" else x > y


def zoo_seed(space: Space, index: int) -> Optional[Candidate]:
    """The index-th combination of the space's zoo seeds (None when they are used up)."""
    lists = {s: [(n, catalog.get(n).expression) for n in slot.seeds]
             for s, slot in space.slots.items()}
    if any(not v for v in lists.values()):
        return None
    longest = max(len(v) for v in lists.values())
    if index >= longest:
        return None
    slots, names = {}, []
    for s, seeds in lists.items():
        name, e = seeds[index % len(seeds)]
        slots[s] = e
        names.append(name)
    choices = {k: v[0] for k, v in space.choices.items()}
    return Candidate(slots, choices, "seed:" + "+".join(names))


def _token(leaf: Expr) -> str:
    return leaf.name if type(leaf) is Var else f"const:{leaf.value!r}"


def _with_params(tree: Expr, slot, rng: random.Random) -> Expr:
    """Add the slot's extra tunable parameters by multiplying a random subtree term."""
    for p in slot.params.values():
        value = _sample(rng, p)
        tree = Call("mul", (Param(p.name, value, p.low, p.high, p.log), tree)) \
            if rng.random() < 0.5 else tree
    return tree


def _sample(rng: random.Random, p: Param) -> float:
    if p.low is None:
        return p.default
    if p.log:
        return round(math.exp(rng.uniform(math.log(p.low), math.log(p.high))), 4)
    return round(rng.uniform(p.low, p.high), 4)


def _random_params(rng: random.Random, tree: Expr, slot) -> Expr:
    from .. import expr as E

    mapping = {p: p.with_default(_sample(rng, p)) for p in E.params(tree).values()
               if p.low is not None}
    return E.substitute(tree, mapping) if mapping else tree


# ----------------------------------------------------------------------------- random
class RandomSearch(Strategy):
    name = "random"

    def propose(self, trial, history):
        return self.random_candidate(trial.rng)


# -------------------------------------------------------------------------------- tpe
class TPESearch(Strategy):
    """Define-by-run: every token of the tree is a categorical suggested at its position."""

    name = "tpe"
    max_depth = 4

    def propose(self, trial, history):
        slots = {}
        for s, slot in self.space.slots.items():
            if slot.mode == "params":
                slots[s] = self._params(trial, s, self.seed_expressions(s)[0][1])
            else:
                g = self.grammars[s]
                slots[s] = self._tree(trial, g, f"{s}", 0, min(self.max_depth, slot.max_depth))
        choices = {k: trial.suggest_categorical(f"choice.{k}", list(v))
                   for k, v in self.space.choices.items()}
        return Candidate(slots, choices, "tpe")

    def _tree(self, trial, g: Grammar, path: str, depth: int, max_depth: int,
              dim: Optional[Dim] = None) -> Expr:
        """A tree of dimension ``dim`` (the loss's at the root). A position's categorical
        is keyed by its path and dimension, so its choices are always the same list."""
        dim = g.want if dim is None else dim
        leaves = {_token(leaf): leaf for leaf in g.leaves(dim)} or {"const:1.0": Const(1.0)}
        tokens = list(leaves) if depth >= max_depth - 1 else g.ops_for(dim) + list(leaves)
        key = f"{path}@{dim}" if g.signature is not None and g.signature.has_units else path
        token = trial.suggest_categorical(key, tokens)
        if token in leaves:
            return leaves[token]
        if token == "pow":
            ks = g.exponents_for(dim)
            k = float(trial.suggest_categorical(f"{key}.exp", [repr(x) for x in ks]))
            base_dim = dim if dim == DIMENSIONLESS else Dim(dim.power / Fraction(k))
            base = self._tree(trial, g, path + ".0", depth + 1, max_depth, base_dim)
            return Call("pow", (base, Const(k)))

        def pick(name, options):
            labels = [str(o) for o in options]
            chosen = trial.suggest_categorical(f"{key}.{token}.{name}", labels)
            return options[labels.index(chosen)]

        return Call(token, tuple(self._tree(trial, g, f"{path}.{i}", depth + 1, max_depth, d)
                                 for i, d in enumerate(g.arg_dims(token, dim, pick))))

    def _params(self, trial, slot: str, tree: Expr) -> Expr:
        from .. import expr as E

        mapping = {}
        for p in E.params(tree).values():
            if p.low is None:
                continue
            value = trial.suggest_float(f"{slot}.{p.name}", p.low, p.high, log=p.log)
            mapping[p] = p.with_default(value)
        return E.substitute(tree, mapping) if mapping else tree


# -------------------------------------------------------------------------- evolution
class Evolution(Strategy):
    """Regularized (aging) evolution: the population is the last ``population`` finished
    trials; a parent is the best of ``tournament`` random members; with probability
    ``crossover`` a second parent contributes a subtree; the child is always mutated."""

    name = "evolution"

    def __init__(self, space, seed, from_zoo: bool = True):
        super().__init__(space, seed)
        self.from_zoo = from_zoo
        if not from_zoo:
            self.name = "evolution-scratch"

    def initial(self, trial, history, rng) -> Optional[Candidate]:
        """Zoo seeds (or random trees) first; evolution starts once the seeds are used up
        (from the zoo) or a quarter of the population has been evaluated (from scratch:
        most random trees are rejected, so waiting for a full population of them would
        keep the search random for a long time)."""
        if self.from_zoo:
            seeded = self.seed_candidate(trial.number)
            if seeded is not None:
                return seeded
            return None if history else self.random_candidate(rng, "random")
        if len(history) >= max(self.space.tournament, self.space.population // 4):
            return None
        return self.random_candidate(rng, "random")

    def propose(self, trial, history):
        rng = trial.rng
        first = self.initial(trial, history, rng)
        if first is not None:
            return first
        population = list(history)[-self.space.population:]
        a = self.tournament(rng, population)
        b = self.tournament(rng, population) if rng.random() < self.space.crossover else None
        return self.child(rng, a, b)

    def tournament(self, rng: random.Random, population: Sequence[Entry]) -> Entry:
        contestants = rng.sample(list(population), min(self.space.tournament, len(population)))
        best = contestants[0]
        for c in contestants[1:]:
            if self.better(c.values[0], best.values[0]):
                best = c
        return best


# ------------------------------------------------------------------------------ nsga2
class NSGA2(Evolution):
    """NSGA-II selection on (metric, complexity): binary tournaments by non-dominated rank,
    then crowding distance, over the whole history of finished trials."""

    name = "nsga2"

    def propose(self, trial, history):
        rng = trial.rng
        first = self.initial(trial, history, rng)
        if first is not None:
            return first
        rank, crowd = rank_and_crowding([e.values for e in history], self.space.directions)
        entries = list(history)

        def pick() -> Entry:
            i, j = rng.randrange(len(entries)), rng.randrange(len(entries))
            if (rank[i], -crowd[i]) <= (rank[j], -crowd[j]):
                return entries[i]
            return entries[j]

        b = pick() if rng.random() < self.space.crossover else None
        return self.child(rng, pick(), b)


def rank_and_crowding(values: Sequence[Sequence[float]], directions: Sequence[str]):
    """Non-dominated front index (0 = Pareto front) and crowding distance of each point."""
    sign = [1.0 if d == "minimize" else -1.0 for d in directions]
    pts = [tuple(s * v for s, v in zip(sign, vals)) for vals in values]
    n = len(pts)

    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    rank = [0] * n
    remaining = set(range(n))
    level = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(pts[j], pts[i])
                                                 for j in remaining if j != i)}
        for i in front:
            rank[i] = level
        remaining -= front
        level += 1
    crowd = [0.0] * n
    for lvl in range(level):
        members = [i for i in range(n) if rank[i] == lvl]
        for k in range(len(directions)):
            members.sort(key=lambda i: pts[i][k])
            lo, hi = pts[members[0]][k], pts[members[-1]][k]
            crowd[members[0]] = crowd[members[-1]] = math.inf
            for a, i, b in zip(members, members[1:], members[2:]):
                if hi > lo:
                    crowd[i] += (pts[b][k] - pts[a][k]) / (hi - lo)
    return rank, crowd


def make(name: str, space: Space, seed: int) -> Strategy:
    if name == "random":
        return RandomSearch(space, seed)
    if name == "tpe":
        return TPESearch(space, seed)
    if name == "evolution":
        return Evolution(space, seed, from_zoo=True)
    if name == "evolution-scratch":
        return Evolution(space, seed, from_zoo=False)
    if name == "nsga2":
        return NSGA2(space, seed)
    from ..errors import AutolossError, did_you_mean

    raise AutolossError(f"unknown strategy {name!r}; {did_you_mean(name, NAMES)}")
