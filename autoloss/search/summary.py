"""``summary.json``: what a search says about its trials, and the words for it.

* :class:`Counts`: the verdicts tallied as trials finish (rebuilt from the storage on
  resume), what the progress display shows;
* :func:`ranked`: the evaluated trials best first, one per candidate;
* :func:`summarize`: the summary of a run after a session of trials (validation and
  transfer are added by :mod:`autoloss.search.validation`);
* :func:`mean_std`, :func:`exported_note`: phrases the verdicts, the report, the CLI and
  the exported module's provenance share.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Optional, Sequence

from optuna.trial import FrozenTrial, TrialState

from .. import catalog
from .candidate import Candidate

if TYPE_CHECKING:  # annotations only: runs imports this module
    from .runs import Run

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


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

    def add(self, t: FrozenTrial, cand: Optional[Candidate], direction: str) -> None:
        """Count a finished trial (``direction``: of the first objective, for the best)."""
        verdict = t.user_attrs.get("verdict", {})
        status = verdict.get("status")
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            self.interrupted += 1
        elif status == "rejected":
            self.rejected += 1
            key = verdict.get("filter", "?")
            self.reasons[key] = self.reasons.get(key, 0) + 1
        elif t.state == TrialState.PRUNED:
            self.pruned += 1
        elif t.state == TrialState.FAIL:
            self.failed += 1
            self.reasons["proxy"] = self.reasons.get("proxy", 0) + 1
        elif status == "reused":
            self.reused += 1
        elif t.state == TrialState.COMPLETE:
            self.accepted += 1
        if t.state == TrialState.COMPLETE and t.values:
            v = t.values[0]
            if self.best is None or (v < self.best if direction == "minimize" else v > self.best):
                self.best, self.best_trial = v, t.number
                self.best_formula = cand.formula() if cand is not None else ""

    def verdicts(self) -> dict[str, int]:
        return {"accepted": self.accepted, "rejected": self.rejected, "reused": self.reused,
                "pruned": self.pruned, "failed": self.failed, "interrupted": self.interrupted}


def ranked(trials: Sequence[FrozenTrial], direction: str) -> list[FrozenTrial]:
    """Complete trials evaluated on the proxy (not reused), best first, one per key."""
    seen, out = set(), []
    done = [t for t in trials if t.state == TrialState.COMPLETE
            and t.user_attrs.get("verdict", {}).get("status") == "accepted"]
    done.sort(key=lambda t: t.values[0], reverse=direction == "maximize")
    for t in done:
        key = t.user_attrs["candidate"]["key"]
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def summarize(run: Run, counts: Counts, *, strategy: str, seed: int, recovered: int = 0,
              overhead: Optional[dict] = None, interrupted: bool = False) -> dict:
    """The summary of ``run`` after a session of trials: states and verdicts, rejection
    reasons, the five best trials, this session's engine overhead."""
    space = run.space
    trials = run.trials()
    states = {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
    reasons: dict[str, dict[str, int]] = {}
    for t in trials:
        v = t.user_attrs.get("verdict", {})
        if v.get("status") in ("rejected", "failed"):
            bucket = reasons.setdefault(v.get("filter", "?"), {})
            text = _short(v.get("reason", ""))
            bucket[text] = bucket.get(text, 0) + 1
    best = []
    for t in ranked(trials, space.direction)[:5]:
        cand = run.candidate_of(t)
        best.append({"trial": t.number, "values": list(t.values),
                     "expression": _exprs(t),
                     "simplified": cand.formula() if cand else "",
                     "latex": t.user_attrs.get("result", {}).get("latex", {}),
                     "choices": cand.choices if cand else {},
                     "origin": cand.origin if cand else "",
                     "metrics": t.user_attrs.get("result", {}).get("metrics", {})})
    return {
        "run": run.name, "space": space.name, "strategy": strategy,
        "seed": seed, "proxy": space.proxy, "metric": space.metric,
        "direction": space.direction, "objectives": space.directions,
        "trials": len(trials), "states": states,
        "verdicts": counts.verdicts(),
        "rejections": reasons,
        # by filter ("proxy": failed on the proxy); "units": refused by the dimension
        # check or the numeric unit probe
        "rejected_by": {f: sum(n.values()) for f, n in sorted(reasons.items())},
        "recovered_on_resume": recovered,
        "engine_overhead": overhead or {},
        "best": best, "interrupted": interrupted,
        "updated": datetime.now().isoformat(timespec="seconds"),
    }


def overhead(timing: dict) -> dict:
    """The engine's time in a session's trials: each step's wall time (ask, sampling,
    filters, storage writes, pruning decisions, tell, progress display) less the seconds
    the proxy computed, summed; ``ratio`` is that over the proxy seconds."""
    engine_s = max(0.0, timing["wall_s"] - timing["proxy_s"])
    return {"trials": timing["trials"], "engine_s": engine_s, "proxy_s": timing["proxy_s"],
            "ms_per_trial": 1000 * engine_s / timing["trials"] if timing["trials"] else None,
            "ratio": engine_s / timing["proxy_s"] if timing["proxy_s"] else None}


def mean_std(row: dict) -> str:
    """A row's mean and seed std, as the verdicts and the report print them."""
    return f"{row['mean']:.4g} ± {row['std']:.2g}"


def exported_note(summary: dict) -> str:
    """What ``best_loss.py`` holds, in a few words."""
    transfer = summary.get("transfer")
    if not transfer:
        val = summary.get("validation")
        return "the best validated candidate" if val else "the best evaluated trial"
    if transfer.get("winner") is not None:
        return (f"{transfer['winner']['label']}, the best candidate that holds up in "
                f"{transfer['proxy']}")
    loss = transfer["export"]["loss"]
    kind = "zoo loss" if loss in catalog.default().losses else "loss"
    return f"the baseline's {kind} {loss}: no candidate held up in {transfer['proxy']}"


def _exprs(t: FrozenTrial) -> dict[str, str]:
    attrs = t.user_attrs.get("candidate", {})
    return {k[5:]: v for k, v in attrs.items() if k.startswith("expr.")}


def _short(text: str) -> str:
    """A reason without trial numbers and values, for counting reasons alike."""
    text = re.sub(r"trial \d+", "trial N", text)
    text = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", text)
    return text[:160]
