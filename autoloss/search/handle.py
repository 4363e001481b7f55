"""The trial handle: what a strategy sees of a trial, whichever backend runs it.

A strategy proposes one candidate per trial from a handle: the trial's number, a random
generator seeded by (search seed, trial number), suggestions (a categorical, a float) that
the backend's sampler may answer, and user attributes. Optuna's ask/tell is one backend
(:class:`autoloss.search.optuna_backend.OptunaTrial`); a backend without a sampler of its
own (Ray Tune's trials, a test) uses :class:`SampledTrial`, whose suggestions are drawn
from a generator of the handle's.
"""
from __future__ import annotations

import math
import random
from typing import Any, Mapping, Optional, Sequence


class TrialHandle:
    """One trial, as the strategies and the engine use it.

    Call order: the backend opens the trial and makes its handle; the engine reads the user
    attributes (a re-enqueued trial brings its candidate) and calls
    ``Strategy.propose(handle, history)``, which reads ``rng`` and calls ``suggest_*``; the
    engine records the outcome with ``set_user_attr`` and the backend closes the trial.
    """

    def __init__(self, number: int, seed: int):
        self.number = number
        self.seed = seed
        self._rng: Optional[random.Random] = None

    @property
    def rng(self) -> random.Random:
        """The trial's generator, seeded by (search seed, trial number): a resumed run draws
        what an uninterrupted one would."""
        if self._rng is None:
            self._rng = random.Random(f"{self.seed}:{self.number}")
        return self._rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        raise NotImplementedError

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        raise NotImplementedError

    @property
    def user_attrs(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def set_user_attr(self, key: str, value: Any) -> None:
        raise NotImplementedError


class SampledTrial(TrialHandle):
    """A handle with no sampler behind it: each suggestion is drawn (once per name) from a
    generator of its own, apart from ``rng``; user attributes live in a dict."""

    def __init__(self, number: int, seed: int, user_attrs: Optional[Mapping[str, Any]] = None):
        super().__init__(number, seed)
        self._draw = random.Random(f"{seed}:{number}:suggest")
        self._attrs = dict(user_attrs or {})
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name, choices):
        if name not in self.params:
            self.params[name] = self._draw.choice(list(choices))
        return self.params[name]

    def suggest_float(self, name, low, high, *, log=False):
        if name not in self.params:
            self.params[name] = (math.exp(self._draw.uniform(math.log(low), math.log(high)))
                                 if log else self._draw.uniform(low, high))
        return self.params[name]

    @property
    def user_attrs(self):
        return dict(self._attrs)

    def set_user_attr(self, key, value):
        self._attrs[key] = value
