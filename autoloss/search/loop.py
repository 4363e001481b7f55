"""The trials of a search on the local engine: Optuna ask/tell in one process.

One trial = one candidate. The study opens a trial, the strategy proposes the candidate
from the trial's handle (or a re-enqueued interrupted trial brings its own), the filters
judge it, accepted candidates run on the proxy with intermediate reports for the pruner,
and the study closes it. Every candidate's expression, canonical hash, LaTeX, verdict,
metrics and timings are trial attributes, so the storage alone tells the whole story: a
killed search loses no finished trial and ``--resume`` continues where it stopped.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable, Optional

from optuna.trial import FrozenTrial, TrialState

from .. import proxies
from ..proxies.base import CandidateFailure, Pruned
from . import strategies
from .candidate import Candidate
from .filters import FilterBank, Verdict
from .optuna_backend import OptunaStudy, OptunaTrial
from .space import Space
from .summary import FINISHED, Counts


class TrialLoop:
    """Runs trials of ``space`` in ``folder`` until ``trials`` have finished (this session's
    and earlier ones') or ``timeout`` seconds have passed; ``counts`` and ``timing`` say how
    it went (see :func:`autoloss.search.summary.overhead`)."""

    def __init__(self, space: Space, folder: Path, *, strategy: str, seed: int, trials: int,
                 timeout: Optional[float] = None):
        self.space = space
        self.folder = Path(folder)
        self.strategy_name = strategy
        self.seed = seed
        self.trials = trials
        self.timeout = timeout
        self.signatures = {s: slot.signature for s, slot in space.slots.items()}
        self.proxy = proxies.get(space.proxy, **space.proxy_options)
        self.strategy = strategies.make(strategy, space, seed)
        self._cache: dict[int, Candidate] = {}
        self._complete: dict[int, FrozenTrial] = {}  # number -> COMPLETE trial, in order
        self.reporting_s = 0.0  # of the running trial
        self.timing = {"trials": 0, "wall_s": 0.0, "proxy_s": 0.0}  # this session's steps
        self.counts = Counts()
        self.recovered = 0
        self.interrupted = False

    def run(self, on_trial: Optional[Callable[[FrozenTrial], None]] = None) -> None:
        """The session: recover what a dead process left, replay the history, then one
        :meth:`step` per trial. Ctrl-C ends it (``interrupted``), its trial re-enqueued."""
        study = OptunaStudy(self.folder, self.space.directions, self.strategy_name, self.seed)
        self.recovered = study.recover()
        from .. import symbolic  # noqa: F401 - sympy's import is start-up, not per trial

        bank = FilterBank(self.signatures, seed=self.seed,
                          scale_matters=getattr(self.proxy, "gradient_scale_matters", True))
        self.replay(study, bank)
        start = time.monotonic()
        with study.heartbeats():
            try:
                while True:
                    elapsed = time.monotonic() - start
                    if self.counts.finished >= self.trials or (self.timeout and
                                                               elapsed > self.timeout):
                        break
                    t_step = time.perf_counter()
                    frozen, proxy_s = self.step(study, bank)
                    if on_trial is not None:  # the progress display: engine time too
                        on_trial(frozen)
                    self.timing["trials"] += 1
                    self.timing["wall_s"] += time.perf_counter() - t_step
                    self.timing["proxy_s"] += proxy_s
            except KeyboardInterrupt:
                self.interrupted = True

    # -- history ----------------------------------------------------------------------------
    def candidate_of(self, trial) -> Optional[Candidate]:
        if trial.number not in self._cache:
            attrs = trial.user_attrs.get("candidate")
            if attrs is None:
                return None
            self._cache[trial.number] = Candidate.from_attrs(attrs, self.signatures)
        return self._cache[trial.number]

    def history(self) -> list[strategies.Entry]:
        """The complete trials as the strategies see them, from memory: this process is the
        run's only writer (``runs.Lock``), so what it replayed and told is the whole story."""
        out = []
        for t in self._complete.values():
            cand = self.candidate_of(t)
            if cand is not None and t.values:
                out.append(strategies.Entry(t.number, cand, tuple(t.values)))
        return out

    def replay(self, study: OptunaStudy, bank: FilterBank) -> None:
        """Rebuild the filters' memory and the counters from the storage."""
        for t in study.trials():
            cand = self.candidate_of(t)
            verdict = t.user_attrs.get("verdict", {})
            if t.state == TrialState.COMPLETE:
                self._complete[t.number] = t
            if t.state == TrialState.COMPLETE and cand is not None:
                bank.remember(cand, Verdict(True, fingerprint=verdict.get("fingerprint", "")),
                              t.number)
            if t.state in FINISHED:
                self.counts.add(t, cand, self.space.direction)

    # -- one trial ----------------------------------------------------------------------------
    def step(self, study: OptunaStudy, bank: FilterBank) -> tuple[FrozenTrial, float]:
        """One trial, from ``ask`` to ``tell``; returns the closed trial and its proxy
        seconds."""
        trial = study.ask()
        retry = trial.user_attrs.get("candidate")
        if trial.user_attrs.get("interrupted"):  # a re-enqueued copy of an interrupted trial
            trial.set_user_attr("interrupted", False)
        try:
            if retry is not None:
                candidate = Candidate.from_attrs(retry, self.signatures)
            else:
                candidate = self.strategy.propose(trial, self.history())
        except KeyboardInterrupt:
            study.interrupt(trial)
            raise
        verdict = bank.check([candidate])[0]
        trial.set_user_attr("candidate", candidate.attrs())  # a killed trial reruns from it
        record = {"status": verdict.status, "filter": verdict.filter, "reason": verdict.reason,
                  "fingerprint": verdict.fingerprint}
        proxy_s = 0.0
        state, values, extra = TrialState.FAIL, None, {}
        if verdict.status == "rejected" or (verdict.reused_from is not None
                                            and verdict.reused_from < 0):
            record["status"] = "rejected"
        elif verdict.status == "reused":
            source = self._complete[verdict.reused_from]  # the filters remember complete ones
            record["reused_from"] = verdict.reused_from
            state, values = TrialState.COMPLETE, list(source.values)
        else:
            t_proxy, self.reporting_s = time.perf_counter(), 0.0
            try:
                state, values, extra = self.evaluate(study, trial, candidate)
            except KeyboardInterrupt:
                trial.set_user_attr("verdict", record)
                study.interrupt(trial)
                raise
            except CandidateFailure as err:
                record.update(status="failed", filter="proxy", reason=err.reason)
            proxy_s = time.perf_counter() - t_proxy - self.reporting_s
        result = {"metrics": extra, "proxy_s": proxy_s}  # the rest of the trial is engine time
        if state == TrialState.COMPLETE:  # LaTeX (sympy, milliseconds) for the scored ones
            result["latex"] = {slot: _latex(e) for slot, e in candidate.slots.items()}
        trial.set_user_attr("verdict", record)
        trial.set_user_attr("result", result)
        if state == TrialState.COMPLETE:
            frozen = study.complete(trial, values)
            bank.remember(candidate, verdict, trial.number)
        else:
            frozen = study.close(trial, state)
        if frozen.state == TrialState.COMPLETE:
            self._complete[frozen.number] = frozen
        self.counts.add(frozen, candidate, self.space.direction)
        return frozen, proxy_s

    def evaluate(self, study: OptunaStudy, trial: OptunaTrial, candidate: Candidate):
        """Run the proxy; returns (state, values, extra metrics). The seconds its reports
        and pruning decisions took (engine time, not proxy time) add to ``self.reporting_s``."""
        losses = {s: candidate.compiled(s, sig, set_level=self.space.slots[s].set_level)
                  for s, sig in self.signatures.items()}
        proxy = proxies.get(self.space.proxy, **self.space.options_with(candidate.choices))
        multi = self.space.complexity
        should_prune = None if multi else study.pruning(trial, list(self._complete.values()))

        def report(step: int, value: float) -> None:
            if should_prune is None or not math.isfinite(value):
                return
            start = time.perf_counter()
            prune = should_prune(step, value)
            self.reporting_s += time.perf_counter() - start
            if prune:
                raise Pruned(f"pruned at step {step}")

        try:
            with study.watching(trial):
                metrics = proxy.run(losses, budget=self.space.budget, seed=self.seed,
                                    report=report, scale=self.space.scale)
        except Pruned:
            return TrialState.PRUNED, None, {}
        values = [metrics.value] + ([float(candidate.complexity)] if multi else [])
        if not all(math.isfinite(v) for v in values):
            raise CandidateFailure(f"{metrics.metric} is {metrics.value}")
        return TrialState.COMPLETE, values, metrics.as_dict()


@functools.lru_cache(maxsize=4096)
def _latex(e) -> str:
    from ..symbolic import latex

    try:
        return latex(e)
    except Exception:  # noqa: BLE001 - LaTeX is documentation: never fail a trial on it
        return ""

