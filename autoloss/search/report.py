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

from .. import catalog, export
from .. import expr as E
from ..errors import AutolossError
from ..proxies.geometry import aligned_iou
from .candidate import Candidate
from .runs import read_json
from .space import parse_space


def _load(folder: Path):
    import optuna

    from .runs import storage

    config = read_json(folder / "config.json")
    space = parse_space(config["space"], config["space_name"], config["space_file"])
    study = optuna.load_study(study_name="search", storage=storage(folder))
    return config, space, study


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(folder: Path, export: bool = True) -> Path:
    from optuna.trial import TrialState

    from .engine import Search

    config, space, study = _load(folder)
    summary = read_json(folder / "summary.json")
    search = Search(space, folder, strategy=config["options"]["strategy"],
                    seed=config["options"]["seed"], validate=False)
    trials = study.get_trials(deepcopy=False)
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
    ax.set_title(f"{space.name}: {config['options']['strategy']}")
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
        if t.user_attrs.get("interrupted"):
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

    best_trial = _best_trial(search, study, summary)
    best = search.candidate_of(best_trial) if best_trial is not None else None
    curves = _loss_curves(folder, space, best, summary, plt) if best is not None else None

    exported = None
    if export and best is not None:
        exported = export_best(folder, trial=best_trial.number)

    lines = [f"# Search report: {folder.name}", "",
             f"- space: `{space.name}` ({space.description})",
             f"- strategy: {config['options']['strategy']}, seed {config['options']['seed']}, "
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
        if val.get("held_out"):
            lines += ["", f"Held-out variant of the proxy ({val['held_out_settings']}):", "",
                      "| candidate | mean ± std | per seed |", "| --- | --- | --- |"]
            for r in val["held_out"]:
                lines.append(_row(r))
        verdict = compare(val, space.direction)
        if verdict:
            lines += ["", verdict]
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
        lines += ["## The best loss", "", f"Trial {best_trial.number}:", ""]
        for slot, e in best.slots.items():
            lines += [f"- `{slot}`: `{E.to_infix(e)}` (as searched; simplified "
                      f"`{Candidate({slot: e}).formula()}`)",
                      f"  - LaTeX: ${best_trial.user_attrs['candidate'].get('latex', {}).get(slot, '')}$"]
        if best.choices:
            lines.append(f"- choices: {best.choices}")
    if exported:
        lines += ["", f"Exported to `{exported.name}`: `from {exported.stem} import ...` "
                      "(torch only)."]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(r: dict) -> str:
    if "failed" in r:
        return f"| {r['label']}: `{r['formula']}` | failed: {r['failed']} | |"
    per = ", ".join(f"{v:.5g}" for v in r["values"])
    return f"| {r['label']}: `{r['formula']}` | {r['mean']:.5g} ± {r['std']:.2g} | {per} |"


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


def _best_trial(search, study, summary):
    """The validated best when there is a validation, else the best evaluated trial."""
    val = summary.get("validation") or {}
    rows = [r for r in val.get("rows", []) if "mean" in r and r.get("trial") is not None]
    if rows:
        pick = (min if search.space.direction == "minimize" else max)(rows, key=lambda r: r["mean"])
        return study.get_trials(deepcopy=False)[pick["trial"]]
    ranked = search.ranked(study)
    return ranked[0] if ranked else None


def _curve_inputs(signature: str, n: int = 121):
    dt = torch.float64
    if signature == "box":  # a unit box sliding sideways onto its target: IoU = (1-s)/(1+s)
        s = torch.linspace(0.98, 0.0, n, dtype=dt)
        target = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=dt).repeat(n, 1)
        zero = torch.zeros_like(s)
        pred = target + torch.stack([s, zero, s, zero], 1)
        return (pred, target), "shift"
    if signature == "sigmoid":
        x = torch.linspace(-6, 6, n, dtype=dt)[:, None]
        return (x, torch.ones_like(x)), "logit"
    if signature == "coord":
        d = torch.linspace(-3, 3, n, dtype=dt)[:, None].repeat(1, 4)
        return (d, torch.zeros_like(d)), "d"
    if signature == "softmax":
        x = torch.linspace(-6, 6, n, dtype=dt)
        logits = torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], 1)
        return (logits, torch.zeros(n, dtype=torch.long)), "logit"
    return None, ""


def _loss_curves(folder, space, best, summary, plt) -> Optional[Path]:
    from ..compiler import compile_loss

    slots = [s for s, slot in space.slots.items() if slot.signature in ("box", "sigmoid", "coord",
                                                                         "softmax")]
    if not slots:
        return None
    zoo_origins = [z["origin"] for z in (summary.get("validation") or {}).get("zoo_screening", [])][:3]
    fig, axes = plt.subplots(2, len(slots), figsize=(6 * len(slots), 7), squeeze=False)
    for col, slot in enumerate(slots):
        sig = space.slots[slot].signature
        inputs, _ = _curve_inputs(sig)
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
            if sig == "box":
                xs = aligned_iou(x.detach(), inputs[1])
                grad = g[:, 0] + g[:, 2]  # d loss / d shift: both x edges move
                xlabel = "IoU (a unit box sliding sideways onto its target)"
            else:
                xs = torch.sigmoid(x.detach()[:, 0]) if sig in ("sigmoid", "softmax") else x.detach()[:, 0]
                grad = g[:, 0]
                xlabel = "p (target y = 1)" if sig in ("sigmoid", "softmax") else "d = pred - target"
            order = torch.argsort(xs)
            style = "-" if label == "discovered" else "--"
            axes[0][col].plot(xs[order].numpy(), value.detach()[order].numpy(), style, label=label)
            axes[1][col].plot(xs[order].numpy(), grad[order].numpy(), style, label=label)
        axes[0][col].set_title(f"slot {slot} ({sig}): loss")
        axes[1][col].set_title("gradient (d loss / d shift)" if sig == "box"
                               else "gradient (d loss / d logit)" if sig != "coord"
                               else "gradient (d loss / d pred)")
        axes[1][col].set_xlabel(xlabel)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def export_best(folder: Path, trial: Optional[int] = None, output: Optional[str] = None,
                name: Optional[str] = None, trainable: bool = False, check: bool = False) -> Path:
    """Export a run's trial (default: the validated best) as a standalone module."""
    from optuna.trial import TrialState

    from .engine import Search

    config, space, study = _load(folder)
    summary = read_json(folder / "summary.json")
    search = Search(space, folder, strategy=config["options"]["strategy"],
                    seed=config["options"]["seed"], validate=False)
    if trial is None:
        t = _best_trial(search, study, summary)
        if t is None:
            raise AutolossError(f"{folder}: no evaluated trial to export")
    else:
        trials = study.get_trials(deepcopy=False)
        if not 0 <= trial < len(trials):
            raise AutolossError(f"{folder}: no trial {trial}; the run has trials 0 to "
                                f"{len(trials) - 1}")
        t = trials[trial]
        if t.state != TrialState.COMPLETE:
            raise AutolossError(f"{folder}: trial {trial} did not complete ({t.state.name})")
    cand = search.candidate_of(t)
    prov = export.Provenance(source="autoloss search", run=folder.name, trial=t.number,
                             proxy=space.proxy, metric=space.metric, value=t.values[0],
                             title=f"loss found by autoloss search {space.name}",
                             formula=cand.formula(),
                             extra={"origin": cand.origin, "strategy": config["options"]["strategy"]})
    out = Path(output) if output else folder / "best_loss.py"
    if not out.is_absolute() and output:
        out = Path.cwd() / out
    compiled = {s: cand.compiled(s, sig) for s, sig in search.signatures.items()}
    if len(compiled) == 1:
        (slot, loss), = compiled.items()
        cls = name or "SearchedLoss"
        export.to_file(loss, out, cls, params=cand.params(slot), trainable_constants=trainable,
                       provenance=prov)
        if check:
            export.check(out, loss, cand.params(slot))
        return out
    names = {s: (name or "Searched") + s.title().replace("_", "") + "Loss" for s in compiled}
    weights = {k.split(".", 1)[1]: v for k, v in cand.choices.items() if k.startswith("weights.")}
    others = {k: v for k, v in cand.choices.items() if not k.startswith("weights.")}
    out.write_text(export.to_source_joint(compiled, names,
                                          {s: cand.params(s) for s in compiled},
                                          weights, others, prov))
    if check:  # every slot's function against its compiled loss, in one fresh process
        export.check_many([(out, loss, cand.params(s), export.function_name(names[s]))
                           for s, loss in compiled.items()])
    return out


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
            console.print(f"  {r['label']:28s} {text}  [scale {r.get('scale')}]", markup=False)
        sentence = compare(val, summary["direction"])
        if sentence:
            console.print(sentence, markup=False)
