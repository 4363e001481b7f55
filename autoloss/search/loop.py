"""The trials of a search on the local engine: Optuna ask/tell in one worker process.

One trial = one candidate. The study opens a trial, the strategy proposes the candidate
from the trial's handle (or a re-enqueued interrupted trial brings its own), the filters
judge it, accepted candidates run on the proxy with intermediate reports for the pruner,
and the study closes it. Every candidate's expression, canonical hash, LaTeX, verdict,
metrics and timings are trial attributes, so the storage alone tells the whole story: a
killed search loses no finished trial and ``--resume`` continues where it stopped.

With a shared storage (journal, PostgreSQL) several loops, in several processes or
machines, work on one study (``autoloss worker``): each reads the shared history before
each trial (the filters' memory of evaluated candidates, the counts, the evolution's
population: steady-state, asynchronous evolution), fails and enqueues the trials of workers
that stopped beating, and starts a trial only while the run's budget is not taken.
"""
from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from optuna.trial import FrozenTrial, TrialState

from .. import proxies
from ..proxies.base import CandidateFailure, Pruned
from . import strategies
from .candidate import Candidate
from .filters import FilterBank, Verdict
from .optuna_backend import WORKER, OptunaStudy, OptunaTrial
from .space import Space
from .summary import FINISHED, Counts

POLL_S = 1.0  # how often a waiting worker looks at the shared study


class TrialLoop:
    """Runs trials of ``space`` in ``folder`` until ``trials`` have finished (this session's
    and earlier ones') or ``timeout`` seconds have passed; ``counts`` and ``timing`` say how
    it went (see :func:`autoloss.search.summary.overhead`)."""

    def __init__(self, space: Space, folder: Path, *, strategy: str, seed: int, trials: int,
                 timeout: Optional[float] = None, storage: Optional[str] = None,
                 study_name: Optional[str] = None):
        self.space = space
        self.storage = storage
        self.study_name = study_name
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

    def study(self) -> OptunaStudy:
        return OptunaStudy(self.folder, self.space.directions, self.strategy_name, self.seed,
                           self.storage, self.study_name)

    def run(self, on_trial: Optional[Callable[[FrozenTrial], None]] = None) -> None:
        """The session: recover what a dead process left, replay the history, then one
        :meth:`step` per trial. Ctrl-C ends it (``interrupted``), its trial re-enqueued."""
        study = self.study()
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
                    if self.timeout and elapsed > self.timeout:
                        break
                    t_step = time.perf_counter()  # engine time from here, proxy time apart
                    if study.shared:
                        go = self.next_shared(study, bank)
                        if go is None:
                            break
                        if not go:
                            time.sleep(POLL_S)
                            continue
                    elif self.counts.finished >= self.trials:
                        break
                    frozen, proxy_s = self.step(study, bank)
                    if on_trial is not None:  # the progress display: engine time too
                        on_trial(frozen)
                    self.timing["trials"] += 1
                    self.timing["wall_s"] += time.perf_counter() - t_step
                    self.timing["proxy_s"] += proxy_s
            except KeyboardInterrupt:
                self.interrupted = True

    def next_shared(self, study: OptunaStudy, bank: FilterBank) -> Optional[bool]:
        """With other workers on the study: True to start a trial now, False to wait for
        the others, None when the run is done. A worker starts a trial while a retried trial
        is waiting or the finished and running trials leave budget; it stays, failing stale
        trials, until no trial runs anywhere (a worker that dies leaves its trial to the
        others: someone must be there to notice)."""
        study.fail_stale()
        states = Counter(t.state for t in self.replay(study, bank))
        if states[TrialState.WAITING]:
            return True
        if self.counts.finished + states[TrialState.RUNNING] < self.trials:
            return True
        return False if states[TrialState.RUNNING] else None

    # -- history ----------------------------------------------------------------------------
    def candidate_of(self, trial) -> Optional[Candidate]:
        if trial.number not in self._cache:
            attrs = trial.user_attrs.get("candidate")
            if attrs is None:
                return None
            self._cache[trial.number] = Candidate.from_attrs(attrs, self.signatures)
        return self._cache[trial.number]

    def history(self) -> list[strategies.Entry]:
        """The complete trials as the strategies see them, in trial order, from memory: what
        this worker replayed and told (with a shared storage, replayed before each trial)."""
        out = []
        for _, t in sorted(self._complete.items()):
            cand = self.candidate_of(t)
            if cand is not None and t.values:
                out.append(strategies.Entry(t.number, cand, tuple(t.values)))
        return out

    def replay(self, study: OptunaStudy, bank: FilterBank) -> list[FrozenTrial]:
        """Bring the filters' memory and the counters up to the storage (the complete
        trials not yet seen are remembered; the counts are taken afresh); returns the
        trials read."""
        counts, trials = Counts(), study.trials()
        for t in trials:
            cand = self.candidate_of(t)
            if t.state == TrialState.COMPLETE and t.number not in self._complete:
                self._complete[t.number] = t
                if cand is not None:
                    verdict = t.user_attrs.get("verdict", {})
                    bank.remember(cand, Verdict(True, fingerprint=verdict.get("fingerprint",
                                                                              "")), t.number)
            if t.state in FINISHED:
                counts.add(t, cand, self.space.direction)
        self.counts = counts
        return trials

    # -- one trial ----------------------------------------------------------------------------
    def step(self, study: OptunaStudy, bank: FilterBank) -> tuple[FrozenTrial, float]:
        """One trial, from ``ask`` to ``tell``; returns the closed trial and its proxy
        seconds."""
        opened = self.open(study, bank)
        state, values, extra, proxy_s = self.settle(opened)
        if state is None:  # accepted: the proxy runs here
            t_proxy, self.reporting_s = time.perf_counter(), 0.0
            try:
                state, values, extra = self.evaluate(study, opened.trial, opened.candidate)
            except KeyboardInterrupt:
                opened.trial.set_user_attr("verdict", opened.record)
                study.interrupt(opened.trial)
                raise
            except CandidateFailure as err:
                state = TrialState.FAIL
                opened.record.update(status="failed", filter="proxy", reason=err.reason)
            proxy_s = time.perf_counter() - t_proxy - self.reporting_s
        return self.close(study, bank, opened, state, values, extra, proxy_s), proxy_s

    def open(self, study: OptunaStudy, bank: FilterBank) -> "Opened":
        """Ask a trial, give it its candidate (proposed, or the one a re-enqueued trial
        brings) and the filters' verdict."""
        trial = study.ask()
        if study.shared:
            trial.set_user_attr("worker", WORKER)
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
        return Opened(trial, candidate, verdict, record)

    def settle(self, opened: "Opened"):
        """(state, values, extra, proxy_s) of a trial the filters decide (rejected, or
        reused from an evaluated duplicate); state None when the proxy must run."""
        verdict, record = opened.verdict, opened.record
        if verdict.status == "rejected" or (verdict.reused_from is not None
                                            and verdict.reused_from < 0):
            record["status"] = "rejected"
            return TrialState.FAIL, None, {}, 0.0
        if verdict.status == "reused":
            source = self._complete[verdict.reused_from]  # the filters remember complete ones
            record["reused_from"] = verdict.reused_from
            return TrialState.COMPLETE, list(source.values), {}, 0.0
        return None, None, {}, 0.0

    def close(self, study: OptunaStudy, bank: FilterBank, opened: "Opened",
              state: TrialState, values, extra: dict, proxy_s: float) -> FrozenTrial:
        """Record the outcome in the trial's attributes and tell the study."""
        trial, candidate = opened.trial, opened.candidate
        result = {"metrics": extra, "proxy_s": proxy_s}  # the rest of the trial is engine time
        if state == TrialState.COMPLETE:  # LaTeX (sympy, milliseconds) for the scored ones
            result["latex"] = {slot: _latex(e) for slot, e in candidate.slots.items()}
        trial.set_user_attr("verdict", opened.record)
        trial.set_user_attr("result", result)
        if state == TrialState.COMPLETE:
            frozen = study.complete(trial, values)
        else:
            frozen = study.close(trial, state)
        if frozen.state == TrialState.COMPLETE:  # not when another worker failed it meanwhile
            bank.remember(candidate, opened.verdict, trial.number)
            self._complete[frozen.number] = frozen
        self.counts.add(frozen, candidate, self.space.direction)
        return frozen

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


@dataclass
class Opened:
    """A trial asked and given its candidate, not yet told."""

    trial: OptunaTrial
    candidate: Candidate
    verdict: Verdict
    record: dict  # the verdict as the trial's attribute records it


@functools.lru_cache(maxsize=4096)
def _latex(e) -> str:
    from ..symbolic import latex

    try:
        return latex(e)
    except Exception:  # noqa: BLE001 - LaTeX is documentation: never fail a trial on it
        return ""

