"""The stage after the trials: is the search's best really better, and does it transfer?

* :meth:`Validation.validate`: the top-k candidates and the best zoo seed combination,
  re-scored on the search proxy with more seeds (and the validation budget and scale),
  then the best candidate and that zoo loss on each held-out variant of the proxy;
* :meth:`Validation.transfer` (``[validation.transfer]``): the top validated candidates in
  another proxy, beside the pair's losses for its other slots, against a baseline pair over
  the same seeds; the verdict says what ``best_loss.py`` holds.

It works on a :class:`~autoloss.search.runs.Run` (the trials and their candidates), so any
run folder can be validated; one line per scored row goes to ``on_message``.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Optional

from .. import proxies
from ..compiler import compile_loss
from ..evaluate import evaluate, gradient_scale, resolve_loss
from ..proxies.base import CandidateFailure
from ..signatures import SIGNATURES
from .candidate import Candidate
from .runs import Run
from .strategies import zoo_seed
from .summary import mean_std


class Validation:
    """Validation and transfer of ``run``'s candidates (see the module docstring), the
    proxies seeded from ``seed`` (the search's)."""

    def __init__(self, run: Run, seed: int,
                 on_message: Optional[Callable[[str], None]] = None):
        self.run = run
        self.space = run.space
        self.seed = seed
        self.signatures = run.signatures
        self.on_message = on_message

    # -- on the search proxy ---------------------------------------------------------------
    def validate(self) -> dict:
        """Top-k candidates and the best zoo baseline, re-scored with more seeds and budget,
        then the best validated candidate and that zoo loss on each held-out variant of the
        proxy."""
        v = self.space.validation
        top = self.run.ranked()[: int(v.get("top_k", 3))]
        zoo = self.zoo_screening()
        best_zoo = zoo[0] if zoo else None
        entries = [(f"trial {t.number}", self.run.candidate_of(t), t.number) for t in top]
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

    def zoo_screening(self) -> list[dict]:
        """Every zoo seed combination of the space at the search settings, best first
        (taken from the study when the search already evaluated it)."""
        by_key = {}
        for t in self.run.complete():
            by_key.setdefault(t.user_attrs["candidate"]["key"], t)
        out = []
        i = 0
        while True:
            cand = zoo_seed(self.space, i)
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
        losses = {s: cand.compiled(s, sig, set_level=self.space.slots[s].set_level)
                  for s, sig in self.signatures.items()}
        options = self.space.options_with(cand.choices)
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

    # -- in the transfer proxy ---------------------------------------------------------------
    def reference_pull(self, reference: str, signature: str) -> Optional[float]:
        """The reference loss's pull (:func:`autoloss.evaluate.gradient_scale`), or None
        where the search proxy scores a multiple of a loss differently (a candidate's scale
        was then searched too, and it transfers as it is)."""
        proxy = proxies.get(self.space.proxy, **self.space.proxy_options)
        if getattr(proxy, "gradient_scale_matters", True):
            return None
        return gradient_scale(resolve_loss(reference, [signature], "reference"))

    def transfer_weight(self, expression, pull: Optional[float]) -> Optional[float]:
        """The weight that gives a searched loss the reference's ``pull``, or None (no
        reference pull, or the loss has none near the target: weight 1, the proxy judges)."""
        if pull is None:
            return None
        signature = self.signatures[self.space.validation["transfer"]["searched_slot"]]
        if SIGNATURES[signature].set_level:
            # a multiple of a step is another ranking loss, not a stronger pull of the same
            # one (and the set-level loss normalises itself): it transfers as it is
            return None
        mine = gradient_scale(compile_loss(expression, signature, mode="search"))
        if not (math.isfinite(mine) and mine > 0):
            return None
        return float(f"{pull / mine:.4g}")

    def transfer(self, validation: dict) -> dict:
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
        base_label = " + ".join(t["baseline"][s] for s in task.slots)
        entries: list[tuple[str, Optional[int], Optional[Candidate], dict[str, Any]]] = [
            (base_label, None, None, dict(t["baseline"]))]  # label, trial, candidate, losses
        weights: dict[int, float] = {}
        pull = self.reference_pull(t["baseline"][slot], self.signatures[searched]) if picks \
            else None
        for r in picks:
            cand = self.run.candidate_of(self.run.trial(r["trial"]))
            weight = self.transfer_weight(cand.slots[searched], pull)
            if weight is not None:
                weights[r["trial"]] = weight
                cand = cand.scaled(searched, weight)
            losses = dict(t["pair"])
            losses[slot] = cand.compiled(searched, self.signatures[searched],
                                         set_level=self.space.slots[searched].set_level)
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


def _line(r: dict) -> str:
    """A validation row as one line of progress."""
    head = f"{r['label']}" + (f" [{r['variant']}]" if r.get("variant") else "")
    if "failed" in r:
        return f"{head}: failed: {r['failed']}"
    return f"{head}: {r['mean']:.5g} ± {r['std']:.2g} over {len(r['values'])} seed(s)"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
