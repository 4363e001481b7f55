"""The search loop: Optuna ask/tell over candidates, filters, proxy runs, validation.

One trial = one candidate. ``study.ask()`` opens the trial, the strategy proposes the
candidate (or a re-enqueued interrupted trial brings its own), the filters judge it,
accepted candidates run on the proxy with intermediate reports for the pruner, and
``study.tell()`` closes it. Every candidate's expression, canonical hash, LaTeX, verdict,
metrics and timings are trial attributes, so the storage alone tells the whole story: a
killed search loses no finished trial and ``--resume`` continues where it stopped.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import optuna
import torch
from optuna.trial import TrialState

from .. import proxies
from .. import expr as E
from ..compiler import compile_loss
from ..evaluate import evaluate, gradient_scale, resolve_loss
from ..proxies.base import CandidateFailure, Pruned
from . import runs, strategies
from .candidate import Candidate
from .filters import FilterBank, Verdict
from .space import Space, load, parse_space

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def proxy_options(space: Space, choices: dict[str, Any]) -> dict[str, Any]:
    """The proxy's options with a candidate's choices merged in (``weights.cls`` nests)."""
    options = json.loads(json.dumps(space.proxy_options))
    for key, value in choices.items():
        head, _, tail = key.partition(".")
        if tail:
            options.setdefault(head, {})[tail] = value
        else:
            options[key] = value
    return options


@dataclass
class Counts:
    accepted: int = 0
    rejected: int = 0
    reused: int = 0
    pruned: int = 0
    failed: int = 0
    interrupted: int = 0
    best: Optional[float] = None
    best_formula: str = ""
    best_trial: Optional[int] = None
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        """Trials that ran to an end (interrupted ones rerun and do not count)."""
        return self.accepted + self.rejected + self.reused + self.pruned + self.failed


class Search:
    """A search over ``space`` in ``folder`` (see the module docstring)."""

    def __init__(self, space: Space, folder: Path, *, strategy: Optional[str] = None,
                 seed: Optional[int] = None, trials: Optional[int] = None,
                 timeout: Optional[float] = None, threads: Optional[int] = None,
                 validate: bool = True, on_trial: Optional[Callable] = None,
                 on_message: Optional[Callable[[str], None]] = None):
        self.strategy_name = strategy or space.strategy
        if self.strategy_name == "nsga2" and not space.complexity:
            space = dataclasses.replace(space, complexity=True)  # NSGA-II: metric x size
        self.space = space
        self.folder = Path(folder)
        self.seed = space.seed if seed is None else seed
        self.trials = trials or space.trials
        self.timeout = timeout
        self.threads = threads
        self.validate_after = validate
        self.on_trial = on_trial
        self.on_message = on_message  # validation progress, one line at a time
        self.signatures = {s: slot.signature for s, slot in space.slots.items()}
        self.proxy = proxies.get(space.proxy, **space.proxy_options)
        self.strategy = strategies.make(self.strategy_name, space, self.seed)
        self._cache: dict[int, Candidate] = {}
        self._complete: dict[int, Any] = {}  # number -> frozen COMPLETE trial, in order
        self.reporting_s = 0.0  # of the running trial
        self.timing = {"trials": 0, "wall_s": 0.0, "proxy_s": 0.0}  # this process's steps
        self.counts = Counts()
        self.interrupted = False

    # -- set-up ---------------------------------------------------------------------------
    @classmethod
    def create(cls, space: Space | str, runs_dir: str | Path = "runs", name: Optional[str] = None,
               resume: bool = False, **options) -> "Search":
        runs_dir = Path(runs_dir)
        space = load(space) if isinstance(space, str) else space
        if resume:
            folder = runs_dir / name if name else runs.latest(runs_dir, space.name)
            if folder is None or not (folder / "config.json").exists():
                raise runs.RunError(f"nothing to resume: no run of {space.name!r} under "
                                    f"{runs_dir}" + (f" named {name!r}" if name else ""))
            config = runs.read_json(folder / "config.json")
            space = parse_space(config["space"], config["space_name"], config["space_file"])
            for key in ("strategy", "seed"):
                options[key] = config["options"][key]
            options["trials"] = options.get("trials") or config["options"]["trials"]
        else:
            folder = runs_dir / (name or runs.new_name(space.name))
            if (folder / "config.json").exists():
                raise runs.RunError(f"{folder} exists: pass --resume to continue it or --name "
                                    "to start another run")
            folder.mkdir(parents=True, exist_ok=True)
        search = cls(space, folder, **options)
        if not resume:
            runs.write_json(folder / "config.json", {
                "space_name": space.name, "space_file": space.file, "space": space.raw,
                "options": {"strategy": search.strategy_name, "seed": search.seed,
                            "trials": search.trials, "timeout": search.timeout,
                            "threads": search.threads},
                "created": datetime.now().isoformat(timespec="seconds"),
                "autoloss": __import__("autoloss").__version__})
        return search

    def study(self) -> optuna.Study:
        if self.strategy_name == "tpe":
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=10)
        else:
            sampler = optuna.samplers.RandomSampler(seed=self.seed)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5) if not self.space.complexity
                  else optuna.pruners.NopPruner())
        return optuna.create_study(study_name="search", storage=runs.storage(self.folder),
                                   directions=self.space.directions, sampler=sampler,
                                   pruner=pruner, load_if_exists=True)

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

    def recover(self, study) -> int:
        """Fail the trials a dead process left RUNNING and enqueue their candidates again."""
        recovered = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.interrupt(study, t._trial_id)
            recovered += 1
        return recovered

    @staticmethod
    def interrupt(study, trial_id: int) -> None:
        """Fail an unfinished trial and enqueue its candidate again (it reruns on resume)."""
        storage = study._storage
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        frozen = storage.get_trial(trial_id)
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None and "candidate" in frozen.user_attrs:
            callback(study, frozen)  # a WAITING copy of the trial, its attributes included

    def replay(self, study, bank: FilterBank) -> None:
        """Rebuild the filters' memory and the counters from the storage."""
        for t in study.get_trials(deepcopy=False):
            cand = self.candidate_of(t)
            verdict = t.user_attrs.get("verdict", {})
            if t.state == TrialState.COMPLETE:
                self._complete[t.number] = t
            if t.state == TrialState.COMPLETE and cand is not None:
                bank.remember(cand, Verdict(True, fingerprint=verdict.get("fingerprint", "")),
                              t.number)
            if t.state in FINISHED:
                self._count(t, cand)

    def _count(self, t, cand: Optional[Candidate]) -> None:
        c = self.counts
        verdict = t.user_attrs.get("verdict", {})
        status = verdict.get("status")
        if t.user_attrs.get("interrupted"):
            c.interrupted += 1
        elif status == "rejected":
            c.rejected += 1
            key = verdict.get("filter", "?")
            c.reasons[key] = c.reasons.get(key, 0) + 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.FAIL:
            c.failed += 1
            c.reasons["proxy"] = c.reasons.get("proxy", 0) + 1
        elif status == "reused":
            c.reused += 1
        elif t.state == TrialState.COMPLETE:
            c.accepted += 1
        if t.state == TrialState.COMPLETE and t.values:
            v = t.values[0]
            if c.best is None or self.strategy.better(v, c.best):
                c.best, c.best_trial = v, t.number
                c.best_formula = cand.formula() if cand is not None else ""

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        if self.threads:
            torch.set_num_threads(self.threads)
        with runs.Lock(self.folder):
            study = self.study()
            recovered = self.recover(study)
            from .. import symbolic  # noqa: F401 - sympy's import is start-up, not per trial

            bank = FilterBank(self.signatures, seed=self.seed,
                              scale_matters=getattr(self.proxy, "gradient_scale_matters", True))
            self.replay(study, bank)
            self._heartbeat = _Heartbeat(study._storage)
            start = time.monotonic()
            try:
                while True:
                    elapsed = time.monotonic() - start
                    if self.counts.finished >= self.trials or (self.timeout and
                                                               elapsed > self.timeout):
                        break
                    t_step = time.perf_counter()
                    proxy_s = self.step(study, bank)
                    self.timing["trials"] += 1
                    self.timing["wall_s"] += time.perf_counter() - t_step
                    self.timing["proxy_s"] += proxy_s
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                self._heartbeat.stop()
            summary = self.summarize(study, recovered)
            runs.write_json(self.folder / "summary.json", summary)
            if self.validate_after and not self.interrupted:
                summary["validation"] = self.validate(study)
                runs.write_json(self.folder / "summary.json", summary)
                if self.space.validation.get("transfer"):
                    summary["transfer"] = self.transfer(study, summary["validation"])
                    runs.write_json(self.folder / "summary.json", summary)
            return summary

    def step(self, study, bank: FilterBank) -> float:
        """One trial, from ``ask`` to the progress display; returns its proxy seconds."""
        with warnings.catch_warnings():  # heartbeats are recorded by _Heartbeat below
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
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
            self.interrupt(study, trial._trial_id)
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
                self.interrupt(study, trial._trial_id)
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
            study.tell(trial, values)
            bank.remember(candidate, verdict, trial.number)
        else:
            study.tell(trial, state=state)
        frozen = study._storage.get_trial(trial._trial_id)
        if frozen.state == TrialState.COMPLETE:
            self._complete[frozen.number] = frozen
        self._count(frozen, candidate)
        if self.on_trial is not None:
            self.on_trial(self, frozen)
        return proxy_s

    def evaluate(self, study, trial, candidate: Candidate):
        """Run the proxy; returns (state, values, extra metrics). The seconds its reports
        and pruning decisions took (engine time, not proxy time) add to ``self.reporting_s``."""
        losses = {s: candidate.compiled(s, sig) for s, sig in self.signatures.items()}
        proxy = proxies.get(self.space.proxy, **proxy_options(self.space, candidate.choices))
        multi = self.space.complexity

        view = None if multi else _PruningView(study, trial, list(self._complete.values()))

        def report(step: int, value: float) -> None:
            if view is None or not math.isfinite(value):
                return
            start = time.perf_counter()
            trial.report(value, step)
            prune = view.should_prune(step, value)
            self.reporting_s += time.perf_counter() - start
            if prune:
                raise Pruned(f"pruned at step {step}")

        try:
            with self._heartbeat.watching(trial._trial_id):
                metrics = proxy.run(losses, budget=self.space.budget, seed=self.seed,
                                    report=report, scale=self.space.scale)
        except Pruned:
            return TrialState.PRUNED, None, {}
        values = [metrics.value] + ([float(candidate.complexity)] if multi else [])
        if not all(math.isfinite(v) for v in values):
            raise CandidateFailure(f"{metrics.metric} is {metrics.value}")
        return TrialState.COMPLETE, values, metrics.as_dict()

    # -- summary and validation ----------------------------------------------------------
    def summarize(self, study, recovered: int = 0) -> dict:
        trials = study.get_trials(deepcopy=False)
        states = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
        reasons: dict[str, dict[str, int]] = {}
        for t in trials:
            v = t.user_attrs.get("verdict", {})
            if v.get("status") in ("rejected", "failed"):
                bucket = reasons.setdefault(v.get("filter", "?"), {})
                text = _short(v.get("reason", ""))
                bucket[text] = bucket.get(text, 0) + 1
        c = self.counts
        best = []
        for t in self.ranked(study)[:5]:
            cand = self.candidate_of(t)
            best.append({"trial": t.number, "values": list(t.values),
                         "expression": {s: a for s, a in _exprs(t).items()},
                         "simplified": cand.formula() if cand else "",
                         "latex": t.user_attrs.get("result", {}).get("latex", {}),
                         "choices": cand.choices if cand else {},
                         "origin": cand.origin if cand else "",
                         "metrics": t.user_attrs.get("result", {}).get("metrics", {})})
        return {
            "run": self.folder.name, "space": self.space.name, "strategy": self.strategy_name,
            "seed": self.seed, "proxy": self.space.proxy, "metric": self.space.metric,
            "direction": self.space.direction, "objectives": self.space.directions,
            "trials": len(trials), "states": states,
            "verdicts": {"accepted": c.accepted, "rejected": c.rejected, "reused": c.reused,
                         "pruned": c.pruned, "failed": c.failed, "interrupted": c.interrupted},
            "rejections": reasons,
            # by filter ("proxy": failed on the proxy); "units": refused by the dimension
            # check or the numeric unit probe
            "rejected_by": {f: sum(n.values()) for f, n in sorted(reasons.items())},
            "recovered_on_resume": recovered,
            "engine_overhead": self.overhead(),
            "best": best, "interrupted": self.interrupted,
            "updated": datetime.now().isoformat(timespec="seconds"),
        }

    def overhead(self) -> dict:
        """The engine's time in this process's trials: each step's wall time (ask, sampling,
        filters, storage writes, pruning decisions, tell, progress display) less the seconds
        the proxy computed, summed; ``ratio`` is that over the proxy seconds."""
        t = self.timing
        engine_s = max(0.0, t["wall_s"] - t["proxy_s"])
        return {"trials": t["trials"], "engine_s": engine_s, "proxy_s": t["proxy_s"],
                "ms_per_trial": 1000 * engine_s / t["trials"] if t["trials"] else None,
                "ratio": engine_s / t["proxy_s"] if t["proxy_s"] else None}

    def ranked(self, study) -> list:
        """Complete trials evaluated on the proxy (not reused), best first, one per key."""
        seen, out = set(), []
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get("verdict", {}).get("status") == "accepted"]
        trials.sort(key=lambda t: t.values[0], reverse=self.space.direction == "maximize")
        for t in trials:
            key = t.user_attrs["candidate"]["key"]
            if key not in seen:
                seen.add(key)
                out.append(t)
        return out

    def validate(self, study) -> dict:
        """Top-k candidates and the best zoo baseline, re-scored with more seeds and budget,
        then the best validated candidate and that zoo loss on each held-out variant of the
        proxy. One line per scored row goes to ``on_message``."""
        v = self.space.validation
        top = self.ranked(study)[: int(v.get("top_k", 3))]
        zoo = self.zoo_screening(study)
        best_zoo = zoo[0] if zoo else None
        entries = [(f"trial {t.number}", self.candidate_of(t), t.number) for t in top]
        if best_zoo is not None:
            entries.append((f"zoo {best_zoo['origin']}", best_zoo["candidate"], None))
        seeds = int(v.get("seeds", 3))
        self._say(f"validation: {len(entries)} candidate(s) x {seeds} seed(s) on "
                  f"{self.space.proxy}")
        rows = []
        for label, cand, number in entries:
            rows.append(self._score(label, cand, number, seeds=seeds, budget=v.get("budget"),
                                    scale=v.get("scale")))
            self._say(f"  {_line(rows[-1])}")
        variants = v.get("held_out") or []
        held_rows = []
        if variants and rows:
            best = self.validated(rows)[:1]
            picks = best + ([rows[-1]] if best_zoo is not None and rows[-1] not in best else [])
            for h in variants:
                budget = h["budget"] if h.get("budget") is not None else v.get("budget")
                self._say(f"held-out {h['name']!r}: {len(picks)} candidate(s) x {h['seeds']} "
                          f"seed(s)")
                for r in picks:
                    held_rows.append(self._score(r["label"], r["_candidate"], r["trial"],
                                                 seeds=int(h["seeds"]), budget=budget,
                                                 scale=h.get("scale"),
                                                 extra_options=h.get("options", {})))
                    held_rows[-1]["variant"] = h["name"]
                    self._say(f"  {_line(held_rows[-1])}")
        for r in rows + held_rows:
            r.pop("_candidate", None)
        return {"settings": {k: v[k] for k in v if k not in ("held_out", "transfer")},
                "held_out_settings": variants, "rows": rows, "held_out": held_rows,
                "zoo_screening": [{k: z[k] for k in ("origin", "value", "trial")} for z in zoo]}

    def validated(self, rows: list[dict]) -> list[dict]:
        """The candidates' validation rows (not the zoo's, not the failed), best first."""
        done = [r for r in rows if r.get("trial") is not None and "mean" in r]
        return sorted(done, key=lambda r: r["mean"], reverse=self.space.direction == "maximize")

    def reference_pull(self, reference: str, signature: str) -> Optional[float]:
        """The reference loss's pull (:func:`autoloss.evaluate.gradient_scale`), or None
        where the search proxy scores a multiple of a loss differently (a candidate's scale
        was then searched too, and it transfers as it is)."""
        if getattr(self.proxy, "gradient_scale_matters", True):
            return None
        return gradient_scale(resolve_loss(reference, [signature], "reference"))

    def transfer_weight(self, expression, pull: Optional[float]) -> Optional[float]:
        """The weight that gives a searched loss the reference's ``pull``, or None (no
        reference pull, or the loss has none near the target: weight 1, the proxy judges)."""
        if pull is None:
            return None
        signature = self.signatures[self.space.validation["transfer"]["searched_slot"]]
        mine = gradient_scale(compile_loss(expression, signature, mode="search"))
        if not (math.isfinite(mine) and mine > 0):
            return None
        return float(f"{pull / mine:.4g}")

    def transfer(self, study, validation: dict) -> dict:
        """The top validated candidates in the transfer proxy, beside the pair's losses for
        its other slots, against the baseline pair over the same seeds (see
        ``[validation.transfer]`` in :mod:`autoloss.search.space`).

        A candidate holds up when its mean is no worse than the baseline's by more than the
        larger of the two seed stds; the winner is the best candidate that holds up (or
        None), and ``export`` says what ``best_loss.py`` holds."""
        t = self.space.validation["transfer"]
        task = proxies.get(t["proxy"], **t["options"])
        slot, searched = t["slot"], t["searched_slot"]
        seeds = list(range(self.seed, self.seed + int(t["seeds"])))
        picks = self.validated(validation.get("rows", []))[: int(t["top_k"])]
        trials = study.get_trials(deepcopy=False) if picks else []
        base_label = " + ".join(t["baseline"][s] for s in task.slots)
        entries = [(base_label, None, None, dict(t["baseline"]))]  # label, trial, candidate
        weights: dict[int, float] = {}
        pull = self.reference_pull(t["baseline"][slot], self.signatures[searched]) if picks \
            else None
        for r in picks:
            cand = self.candidate_of(trials[r["trial"]])
            weight = self.transfer_weight(cand.slots[searched], pull)
            if weight is not None:
                weights[r["trial"]] = weight
                cand = scaled(cand, searched, weight)
            losses = dict(t["pair"])
            losses[slot] = cand.compiled(searched, self.signatures[searched])
            entries.append((r["label"], r["trial"], cand, losses))
        total, done, spent = len(entries) * len(seeds), 0, 0.0
        self._say(f"transfer to {task.name}: {len(entries)} pair(s) x {len(seeds)} seed(s) = "
                  f"{total} run(s) (the baseline {base_label} first, then the top "
                  f"{len(picks)} validated candidate(s) in slot {slot!r})")
        rows = []
        for label, number, cand, losses in entries:
            shown = dict(losses)
            if cand is not None:
                shown[slot] = Candidate({searched: cand.slots[searched]}).formula().partition(
                    ": ")[2]
            row = {"label": label, "trial": number, "losses": {s: shown[s] for s in task.slots},
                   "values": [], "seconds": []}
            if number in weights:
                row["weight"] = weights[number]
            for k, seed in enumerate(seeds):
                start = time.perf_counter()
                try:
                    res = evaluate(task, losses, seeds=[seed], budget=t.get("budget"),
                                   scale=t.get("scale"))
                except CandidateFailure as err:
                    row["failed"] = f"seed {seed}: {err.reason}"
                spent += time.perf_counter() - start
                done += 1
                if "failed" in row:
                    self._say(f"  transfer [{done}/{total}] {label}: failed: {row['failed']}")
                    done += len(seeds) - k - 1  # its other seeds are skipped
                    break
                row["values"].append(res.values[0])
                row["seconds"].append(res.seconds[0])
                left = (total - done) * spent / done
                self._say(f"  transfer [{done}/{total}] {label}, seed {seed}: {task.metric} "
                          f"{res.values[0]:.4g} ({res.seconds[0]:.0f} s"
                          + (f"; about {_duration(left)} left)" if done < total else ")"))
            if "failed" not in row:
                row["mean"] = statistics.fmean(row["values"])
                row["std"] = statistics.stdev(row["values"]) if len(row["values"]) > 1 else 0.0
            rows.append(row)
        baseline, cands = rows[0], rows[1:]
        maximize = task.direction == "maximize"
        for r in cands:
            if "mean" in r and "mean" in baseline:
                noise = max(r["std"], baseline["std"])
                r["delta"] = r["mean"] - baseline["mean"]
                r["holds"] = (r["delta"] >= -noise) if maximize else (r["delta"] <= noise)
            else:
                r["holds"] = False
        held = sorted((r for r in cands if r["holds"]), key=lambda r: r["mean"],
                      reverse=maximize)
        winner = held[0] if held else None
        settings = {k: t[k] for k in ("proxy", "slot", "searched_slot", "pair", "baseline",
                                      "top_k", "seeds", "budget", "scale", "options")}
        out = {"settings": settings, "proxy": task.name, "metric": task.metric,
               "direction": task.direction, "seeds": seeds, "baseline": baseline,
               "rows": cands,
               "winner": ({k: winner[k] for k in ("trial", "label", "losses", "mean", "std",
                                                   "delta")} if winner else None),
               "export": ({"kind": "trial", "trial": winner["trial"]} if winner else
                          {"kind": "baseline", "slot": searched, "loss": t["baseline"][slot]}),
               "seconds": spent}
        out["verdict"] = transfer_verdict(out)
        self._say(f"transfer verdict: {out['verdict']}")
        return out

    def _say(self, text: str) -> None:
        if self.on_message is not None:
            self.on_message(text)

    def zoo_screening(self, study) -> list[dict]:
        """Every zoo seed combination of the space at the search settings, best first
        (taken from the study when the search already evaluated it)."""
        by_key = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            by_key.setdefault(t.user_attrs["candidate"]["key"], t)
        out = []
        i = 0
        while True:
            cand = self.strategy.seed_candidate(i, None)
            if cand is None:
                break
            i += 1
            t = by_key.get(cand.key)
            if t is not None:
                value, number = t.values[0], t.number
            else:
                try:
                    res = self._run_candidate(cand, seeds=1, budget=self.space.budget,
                                              scale=self.space.scale)
                    value, number = res.mean, None
                except CandidateFailure:
                    continue
            out.append({"origin": cand.origin, "value": value, "trial": number,
                        "candidate": cand})
        out.sort(key=lambda z: z["value"], reverse=self.space.direction == "maximize")
        return out

    def _run_candidate(self, cand: Candidate, seeds, budget, scale, extra_options=None):
        losses = {s: cand.compiled(s, sig) for s, sig in self.signatures.items()}
        options = proxy_options(self.space, cand.choices)
        options.update(extra_options or {})
        return evaluate(self.space.proxy, losses, seeds=list(range(self.seed, self.seed + seeds)),
                        budget=budget, scale=scale, options=options)

    def _score(self, label, cand, number, seeds, budget, scale, extra_options=None) -> dict:
        row = {"label": label, "trial": number, "formula": cand.formula(), "_candidate": cand,
               "seeds": seeds, "budget": budget, "scale": scale}
        try:
            res = self._run_candidate(cand, seeds, budget, scale, extra_options)
            row.update(mean=res.mean, std=res.std, values=res.values, extra=res.extra)
        except CandidateFailure as err:
            row.update(failed=err.reason)
        return row


class _PruningView:
    """The study's pruner, asked from memory.

    ``trial.should_prune()`` reads every trial back from the SQLite storage at each report
    (milliseconds, as long as a short proxy step). Within a trial the finished trials do not
    change, so the view reads them once and hands the same pruner the same frozen trials,
    with the running trial's intermediate values kept here; the decisions are the ones
    ``should_prune()`` would make (tested). The reports still go to the storage.
    """

    def __init__(self, study, trial, completed: Optional[list] = None):
        self.study = study
        self.pruner = study.pruner
        self.direction = study.direction
        self._completed = list(completed if completed is not None else
                               study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        self.frozen = copy.copy(study._storage.get_trial(trial._trial_id))  # storage's stays
        self._values: dict[int, float] = dict(self.frozen.intermediate_values)

    def __getattr__(self, name):  # anything else a pruner asks of the study
        return getattr(self.study, name)

    def get_trials(self, deepcopy: bool = False, states=None):
        if states is not None and tuple(states) != (TrialState.COMPLETE,):
            return self.study.get_trials(deepcopy=deepcopy, states=states)
        return self._completed

    def should_prune(self, step: int, value: float) -> bool:
        self._values[step] = value
        self.frozen.intermediate_values = dict(self._values)
        return self.pruner.prune(self, self.frozen)


class _Heartbeat:
    """Records the running trial's heartbeat while the proxy runs, so other readers of the
    storage (optuna's stale-trial detection, a dashboard) can tell a dead run's trials.

    One thread for the whole search: the first beat of a trial comes within one interval of
    its start, so a trial shorter than that writes nothing (``--resume`` fails and re-enqueues
    whatever a dead process left RUNNING, heartbeat or not)."""

    def __init__(self, storage):
        self.storage = storage
        self.interval = storage.get_heartbeat_interval() if hasattr(
            storage, "get_heartbeat_interval") else None
        self.trial_id: Optional[int] = None
        self._stop = threading.Event()
        self.thread = None
        if self.interval:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()

    @contextlib.contextmanager
    def watching(self, trial_id: int):
        self.trial_id = trial_id
        try:
            yield
        finally:
            self.trial_id = None

    def _beat(self):
        while not self._stop.wait(self.interval):
            trial_id = self.trial_id
            if trial_id is None:
                continue
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed heartbeat only delays stale detection
                pass

    def stop(self):
        self._stop.set()
        if self.thread is not None:
            self.thread.join()


@functools.lru_cache(maxsize=4096)
def _latex(e) -> str:
    from ..symbolic import latex

    try:
        return latex(e)
    except Exception:  # noqa: BLE001 - LaTeX is documentation: never fail a trial on it
        return ""


def _exprs(t) -> dict[str, str]:
    attrs = t.user_attrs.get("candidate", {})
    return {k[5:]: v for k, v in attrs.items() if k.startswith("expr.")}


def _short(text: str) -> str:
    """A reason without trial numbers and values, for counting reasons alike."""
    import re

    text = re.sub(r"trial \d+", "trial N", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)
    return text[:160]


def _line(r: dict) -> str:
    """A validation row as one line of progress."""
    head = f"{r['label']}" + (f" [{r['variant']}]" if r.get("variant") else "")
    if "failed" in r:
        return f"{head}: failed: {r['failed']}"
    return f"{head}: {r['mean']:.5g} ± {r['std']:.2g} over {len(r['values'])} seed(s)"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def mean_std(row: dict) -> str:
    """A row's mean and seed std, as the verdicts and the report print them."""
    return f"{row['mean']:.4g} ± {row['std']:.2g}"


def scaled(cand: Candidate, slot: str, weight: float) -> Candidate:
    """``cand`` with ``slot``'s loss multiplied by ``weight``."""
    slots = dict(cand.slots)
    slots[slot] = E.mul(E.const(weight), slots[slot])
    return dataclasses.replace(cand, slots=slots)


def transfer_verdict(section: dict) -> str:
    """One plain sentence: does a candidate hold up in the transfer proxy, and what does
    ``best_loss.py`` hold."""
    proxy, metric = section["proxy"], section["metric"]
    base = section["baseline"]
    settings = section["settings"]
    fallback = f"best_loss.py holds the baseline's {settings['baseline'][settings['slot']]}"
    winner = section.get("winner")
    if winner is not None:
        return (f"{winner['label']} transfers: {proxy} {metric} {mean_std(winner)} vs "
                f"{base['label']} {mean_std(base)}")
    rows = section.get("rows", [])
    if not rows:
        return (f"no candidate to transfer (none passed validation on the search proxy); "
                f"{fallback}")
    if "mean" not in base:
        return (f"transfer inconclusive: the baseline {base['label']} failed in {proxy} "
                f"({base['failed']}); {fallback}")
    scored = [r for r in rows if "mean" in r]
    if not scored:
        return (f"no candidate transfers: every candidate failed in {proxy} ({rows[0]['label']}: "
                f"{rows[0]['failed']}); {fallback}")
    best = sorted(scored, key=lambda r: r["mean"],
                  reverse=section["direction"] == "maximize")[0]
    return (f"no candidate transfers: best {best['label']} {proxy} {metric} {mean_std(best)} vs "
            f"{base['label']} {mean_std(base)}; {fallback}")
