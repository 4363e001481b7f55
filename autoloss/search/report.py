"""``autoloss report RUN``: report.md, plots, and the best loss exported.

Plots (PNG, next to report.md):

* ``best_so_far.png``: the metric of every evaluated trial and the best so far;
* ``rejections.png``: verdicts by filter;
* ``pareto.png``: metric against expression size, the Pareto front marked;
* ``loss_curves.png``: the discovered loss beside the best zoo losses: loss and gradient
  against IoU (box losses, a prediction sliding onto its target) or against p
  (classification).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from optuna.trial import TrialState

from .. import catalog
from .. import expr as E
from ..signatures import SIGNATURES
from .candidate import Candidate
from .runs import Run
from .summary import exported_note, mean_std

__all__ = ["write_report", "print_summary", "transfer_lines", "compare", "exported_note"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(folder: Path | Run, export: bool = True) -> Path:
    """report.md and the plots in the run's folder; ``export``: the best loss too."""
    run = folder if isinstance(folder, Run) else Run(folder)
    folder, space, summary = run.folder, run.space, run.summary
    trials = run.trials()
    plt = _plt()
    minimize = space.direction == "minimize"

    # best so far
    evaluated = [t for t in trials if t.state == TrialState.COMPLETE
                 and t.user_attrs.get("verdict", {}).get("status") == "accepted"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if evaluated:
        xs = [t.number for t in evaluated]
        ys = [t.values[0] for t in evaluated]
        best, curve = None, []
        for y in ys:
            best = y if best is None or (y < best if minimize else y > best) else best
            curve.append(best)
        ax.scatter(xs, ys, s=12, alpha=0.5, label="evaluated trial")
        ax.step(xs, curve, where="post", color="tab:red", label="best so far")
        seeds = [t for t in evaluated if str(t.user_attrs["candidate"].get("origin", "")).startswith("seed:")]
        if seeds:
            ax.scatter([t.number for t in seeds], [t.values[0] for t in seeds], marker="x",
                       color="black", label="zoo seed")
        lo, hi = min(ys), max(ys)
        if minimize and hi > 20 * max(lo, 1e-12) and lo > 0:
            ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel(space.metric)
    ax.set_title(f"{space.name}: {run.strategy}")
    fig.tight_layout()
    fig.savefig(folder / "best_so_far.png", dpi=110)
    plt.close(fig)

    # rejections
    counts = {}
    for t in trials:
        v = t.user_attrs.get("verdict", {})
        key = v.get("status", "?")
        if key in ("rejected", "failed"):
            key = f"{key}: {v.get('filter', '?')}"
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            key = "interrupted"
        elif t.state == TrialState.PRUNED:
            key = "pruned"
        counts[key] = counts.get(key, 0) + 1
    fig, ax = plt.subplots(figsize=(7, 3.5))
    keys = sorted(counts)
    ax.barh(keys, [counts[k] for k in keys], color="tab:blue")
    ax.set_xlabel("trials")
    ax.set_title("verdicts")
    fig.tight_layout()
    fig.savefig(folder / "rejections.png", dpi=110)
    plt.close(fig)

    # pareto
    pts = [(t.user_attrs["candidate"].get("complexity", 0), t.values[0], t.number)
           for t in evaluated]
    front = _pareto(pts, minimize)
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.4, label="trials")
        front.sort()
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red",
                label="Pareto front")
        ax.legend()
    ax.set_xlabel("expression size (nodes)")
    ax.set_ylabel(space.metric)
    fig.tight_layout()
    fig.savefig(folder / "pareto.png", dpi=110)
    plt.close(fig)

    best_trial = run.best_trial()
    best = run.candidate_of(best_trial) if best_trial is not None else None
    curves = _loss_curves(folder, space, best, summary, plt) if best is not None else None

    exported = None
    transfer = summary.get("transfer")
    if export and (best is not None or transfer):
        exported = run.export()

    lines = [f"# Search report: {folder.name}", "",
             f"- space: `{space.name}` ({space.description})",
             f"- strategy: {run.strategy}, seed {run.seed}, "
             f"proxy `{space.proxy}` (budget {space.budget}, scale {space.scale}), "
             f"objective {space.metric} ({space.direction})",
             f"- trials: {len(trials)} "
             + ", ".join(f"{k} {v}" for k, v in summary.get("states", {}).items() if v), ""]
    ov = summary.get("engine_overhead", {})
    if ov.get("ratio") is not None and "ms_per_trial" in ov:
        lines += [f"- engine overhead (sampling, filters, storage, display): "
                  f"{ov['ratio'] * 100:.1f}% of the proxy time, {ov['ms_per_trial']:.0f} ms "
                  f"per trial ({ov['engine_s']:.1f} s vs {ov['proxy_s']:.1f} s over the "
                  f"{ov['trials']} trials of the last session)", ""]
    lines += ["## Best candidates", "", "| trial | " + space.metric + " | formula | origin |",
              "| --- | --- | --- | --- |"]
    for b in summary.get("best", []):
        formula = f"`{b['simplified']}`" if b.get("simplified") else "; ".join(
            f"{k}: `{v}`" for k, v in b["expression"].items())
        lines.append(f"| {b['trial']} | {b['values'][0]:.5g} | {formula} | {b['origin']} |")
    val = summary.get("validation")
    if val:
        lines += ["", "## Validation", "",
                  f"Re-scored with {val['settings'].get('seeds')} seeds"
                  f" (budget {val['settings'].get('budget', space.budget)}, scale "
                  f"{val['settings'].get('scale', space.scale)}); the last row is the best zoo "
                  "loss of the space.", "", "| candidate | mean ± std | per seed |",
                  "| --- | --- | --- |"]
        for r in val["rows"]:
            lines.append(_row(r))
        for variant in _variants(val):
            lines += ["", f"Held-out variant `{variant['name']}` of the proxy "
                          f"({_settings_text(variant)}):", "",
                      "| candidate | mean ± std | per seed |", "| --- | --- | --- |"]
            for r in val["held_out"]:
                if r.get("variant", variant["name"]) == variant["name"]:
                    lines.append(_row(r))
        verdict = compare(val, space.direction)
        if verdict:
            lines += ["", verdict]
    if transfer:
        lines += ["", *transfer_lines(transfer)]
    lines += ["", "## Rejections", "", "| filter | count | most common reasons |",
              "| --- | --- | --- |"]
    for filt, reasons in sorted(summary.get("rejections", {}).items()):
        total = sum(reasons.values())
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:2]
        lines.append(f"| {filt} | {total} | " + "; ".join(f"{r} ({n})" for r, n in top) + " |")
    lines += ["", "## Plots", "", "![best so far](best_so_far.png)", "",
              "![verdicts](rejections.png)", "", "![Pareto front](pareto.png)", ""]
    if curves:
        lines += [f"![the discovered loss beside the best zoo losses]({curves.name})", ""]
    if best is not None:
        lines += ["## The best loss", ""]
        if transfer and transfer.get("winner") is None:
            lines += [f"Trial {best_trial.number}, the best on `{space.proxy}`; it did not hold "
                      f"up in `{transfer['proxy']}`, so `best_loss.py` holds the baseline's "
                      f"`{transfer['export']['loss']}` instead:", ""]
        elif transfer:
            lines += [f"Trial {best_trial.number} (holds up in `{transfer['proxy']}`):", ""]
        else:
            lines += [f"Trial {best_trial.number}:", ""]
        latex = best_trial.user_attrs.get("result", {}).get("latex", {})
        for slot, e in best.slots.items():
            lines += [f"- `{slot}`: `{E.to_infix(e)}` (as searched; simplified "
                      f"`{Candidate({slot: e}).formula()}`)",
                      f"  - LaTeX: ${latex.get(slot, '')}$"]
        if best.choices:
            lines.append(f"- choices: {best.choices}")
    if exported:
        lines += ["", f"Exported to `{exported.name}` ({exported_note(summary)}): "
                      f"`from {exported.stem} import ...` (torch only)."]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(r: dict) -> str:
    if "failed" in r:
        return f"| {r['label']}: `{r['formula']}` | failed: {r['failed']} | |"
    per = ", ".join(f"{v:.5g}" for v in r["values"])
    return f"| {r['label']}: `{r['formula']}` | {r['mean']:.5g} ± {r['std']:.2g} | {per} |"


def _variants(val: dict) -> list[dict]:
    """The held-out variants of a validation (a run written before variants had names has one
    settings table)."""
    settings = val.get("held_out_settings") or []
    if isinstance(settings, dict):
        settings = [dict(settings, name="held-out")]
    return settings if val.get("held_out") else []


def _settings_text(variant: dict) -> str:
    parts = [f"{k} {variant[k]}" for k in ("seeds", "budget", "scale") if variant.get(k)
             is not None]
    parts += [f"{k}={v}" for k, v in (variant.get("options") or {}).items()]
    return ", ".join(parts) or "the proxy's defaults"


def transfer_lines(transfer: dict) -> list[str]:
    """The report's "Transfer to <proxy>" section (markdown lines)."""
    st, base = transfer["settings"], transfer["baseline"]
    others = ", ".join(f"{k} = `{v}`" for k, v in st["pair"].items())
    budget = f", budget {st['budget']}" if st.get("budget") else ""
    scale = f", scale {st['scale']}" if st.get("scale") else ""
    lines = [f"## Transfer to {transfer['proxy']}", "",
             f"The top {st['top_k']} validated candidates fill slot `{st['slot']}` of "
             f"`{transfer['proxy']}`" + (f" beside {others}" if others else "")
             + f", against the baseline {base['label']}, over the same seeds "
             f"({', '.join(map(str, transfer['seeds']))}{budget}{scale}). A candidate holds up "
             f"when its mean {transfer['metric']} is no worse than the baseline's by more than "
             "the larger of the two seed stds."
             + (" The search proxy does not tell a loss from its multiples, so each candidate "
                "is weighted to the baseline's pull near the target (the mean gradient norm "
                "of `autoloss.evaluate.gradient_scale`); the formulas below include that "
                "weight, and so does the exported loss."
                if any(r.get("weight") is not None for r in transfer["rows"]) else ""), "",
             f"| candidate | {transfer['metric']} mean ± std | per seed | Δ vs baseline | "
             "holds up |", "| --- | --- | --- | --- | --- |"]
    for r in [base] + transfer["rows"]:
        losses = " + ".join(f"`{v}`" for v in r["losses"].values())
        head = f"{r['label']}: {losses}" if r["trial"] is not None else f"baseline: {losses}"
        if "failed" in r:
            lines.append(f"| {head} | failed: {r['failed']} | | | no |")
            continue
        per = ", ".join(f"{v:.4g}" for v in r["values"])
        delta = f"{r['delta']:+.4g}" if r.get("delta") is not None else ""
        holds = "" if r["trial"] is None else ("**yes**" if r.get("holds") else "no")
        lines.append(f"| {head} | {mean_std(r)} | {per} | {delta} | {holds} |")
    lines += ["", f"**Verdict:** {transfer['verdict']}."]
    return lines


def compare(val: dict, direction: str) -> str:
    """A sentence: does the best validated candidate beat the best zoo loss, by how much."""
    rows = [r for r in val.get("rows", []) if "mean" in r]
    cands = [r for r in rows if r["label"].startswith("trial")]
    zoo = [r for r in rows if r["label"].startswith("zoo")]
    if not cands or not zoo:
        return ""
    key = (lambda r: r["mean"]) if direction == "minimize" else (lambda r: -r["mean"])
    best, base = min(cands, key=key), zoo[0]
    diff = best["mean"] - base["mean"]
    better = diff < 0 if direction == "minimize" else diff > 0
    rel = abs(diff) / abs(base["mean"]) * 100 if base["mean"] else float("inf")
    noise = max(best["std"], base["std"])
    word = "better than" if better else ("as good as" if abs(diff) <= noise else "worse than")
    return (f"The best validated candidate ({best['label']}, {best['mean']:.5g} ± "
            f"{best['std']:.2g}) is {word} the best zoo loss ({base['label'][4:]}, "
            f"{base['mean']:.5g} ± {base['std']:.2g}): a difference of {diff:+.4g} "
            f"({rel:.1f}%), seed-to-seed std {noise:.2g}.")


def _pareto(pts, minimize: bool):
    sign = 1 if minimize else -1
    front = []
    for c, v, n in pts:
        if not any((c2 <= c and sign * v2 <= sign * v) and (c2 < c or sign * v2 < sign * v)
                   for c2, v2, _ in pts):
            front.append((c, v, n))
    return front


def _loss_curves(folder, space, best, summary, plt) -> Optional[Path]:
    from ..compiler import compile_loss

    slots = [s for s, slot in space.slots.items() if SIGNATURES[slot.signature].curve]
    if not slots:
        return None
    zoo_origins = [z["origin"] for z in (summary.get("validation") or {}).get("zoo_screening", [])][:3]
    fig, axes = plt.subplots(2, len(slots), figsize=(6 * len(slots), 7), squeeze=False)
    for col, slot in enumerate(slots):
        sig = space.slots[slot].signature
        curve = SIGNATURES[sig].curve(121)
        inputs = curve.inputs
        labels = [("discovered", best.slots[slot])]
        names = []
        for origin in zoo_origins:
            names += [n.split(":")[-1] for n in origin.replace("seed:", "").split("+")]
        for name in dict.fromkeys(names):
            if name in catalog.default().losses and catalog.get(name).signature == sig:
                labels.append((name, catalog.get(name).expression))
        if len(labels) == 1:
            labels += [(s, catalog.get(s).expression) for s in space.slots[slot].seeds[:3]]
        for label, e in labels[:4]:
            loss = compile_loss(e, sig, name="curve", mode="search")
            x = inputs[0].clone().requires_grad_(True)
            value = loss(x, *inputs[1:])
            value = value.reshape(value.shape[0], -1).sum(1)
            (g,) = torch.autograd.grad(value.sum(), x)
            xs = curve.x
            grad = (g * curve.direction).reshape(g.shape[0], -1).sum(1)
            order = torch.argsort(xs)
            style = "-" if label == "discovered" else "--"
            axes[0][col].plot(xs[order].numpy(), value.detach()[order].numpy(), style, label=label)
            axes[1][col].plot(xs[order].numpy(), grad[order].numpy(), style, label=label)
        axes[0][col].set_title(f"slot {slot} ({sig}): loss")
        axes[1][col].set_title(f"gradient (d loss / d {curve.sweep})")
        axes[1][col].set_xlabel(curve.xlabel)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_summary(summary: dict, console) -> None:
    v = summary["verdicts"]
    console.print(f"trials {summary['trials']}: {v['accepted']} evaluated, {v['reused']} reused, "
                  f"{v['rejected']} rejected, {v['pruned']} pruned, {v['failed']} failed")
    ov = summary.get("engine_overhead", {})
    if ov.get("ratio") is not None:
        console.print(f"engine overhead: {ov['ratio'] * 100:.1f}% of the proxy time")
    for b in summary.get("best", [])[:3]:
        formula = b.get("simplified") or "; ".join(f"{k}: {e}" for k, e in b["expression"].items())
        console.print(f"  trial {b['trial']}: {b['values'][0]:.5g}  {formula}", markup=False)
    val = summary.get("validation")
    if val:
        console.print("validation:")
        for r in val["rows"] + val.get("held_out", []):
            text = (f"failed: {r['failed']}" if "failed" in r
                    else f"{r['mean']:.5g} ± {r['std']:.2g} over {len(r['values'])} seed(s)")
            where = f"held-out {r['variant']}" if r.get("variant") else f"scale {r.get('scale')}"
            console.print(f"  {r['label']:28s} {text}  [{where}]", markup=False)
        sentence = compare(val, summary["direction"])
        if sentence:
            console.print(sentence, markup=False)
    transfer = summary.get("transfer")
    if transfer:
        console.print(f"transfer to {transfer['proxy']} ({transfer['metric']}, seeds "
                      f"{', '.join(map(str, transfer['seeds']))}):", markup=False)
        for r in [transfer["baseline"]] + transfer["rows"]:
            if "failed" in r:
                text = f"failed: {r['failed']}"
            else:
                text = f"{mean_std(r)}"
                if r["trial"] is None:
                    text += "  (baseline)"
                else:
                    text += (f"  {'holds up' if r['holds'] else 'does not hold up'} "
                             f"({r['delta']:+.4g})")
            label = r["label"] if r["trial"] is not None else "baseline " + r["label"]
            console.print(f"  {label:28s} {text}", markup=False)
