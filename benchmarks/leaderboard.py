"""Leaderboard: the applicable zoo losses on every proxy, and each proxy's fidelity.

For each proxy the zoo losses that fit its slots run over several seeds at the default
budget; the table ranks them by mean metric. Fidelity is Kendall's tau between the ranking
at the default budget and at 4x the budget (on all entries, or a subset for the detector):
a proxy whose ranking flips with a longer budget would mislead a search.

    python benchmarks/leaderboard.py                       # everything (about an hour)
    python benchmarks/leaderboard.py --proxies boxsim --seeds 1 --quick

Writes benchmarks/results/leaderboard.md, .json and .png (git-ignored) and prints the
markdown. One torch thread per run.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from autoloss import catalog
from autoloss.evaluate import evaluate
from autoloss.proxies import CandidateFailure

OUT = Path(__file__).resolve().parent / "results"
QUALITY_CLS = {"qfl", "vfl", "cse_autoloss_b_cls"}  # trained on IoU targets, as in their papers


def entries(proxy: str):
    """(label, losses, proxy options) of every applicable zoo loss."""
    box = sorted(s.id for s in catalog.of_signature("box"))
    coord = sorted(s.id for s in catalog.of_signature("coord"))
    sig = sorted(s.id for s in catalog.of_signature("sigmoid"))
    if proxy == "boxsim":
        return [(b, {"reg": b}, {}) for b in box]
    if proxy in ("clssim", "clssim_quality"):
        return [(c, {"cls": c}, {}) for c in sig]
    if proxy == "digits":
        out = []
        for c in sig:
            opts = {"cls_target": "iou"} if c in QUALITY_CLS else {}
            out.append((f"{c} + giou", {"cls": c, "reg": "giou"}, opts))
        for r in box + coord:
            if r != "giou":
                out.append((f"focal + {r}", {"cls": "focal", "reg": r}, {}))
        return out
    raise KeyError(proxy)


FIDELITY_SUBSET = {  # the detector's 4x-budget runs are long: a spread of combinations
    "digits": ["bce + giou", "focal + giou", "qfl + giou", "vfl + giou", "focal + l1",
               "focal + smooth_l1", "focal + iou", "focal + diou", "focal + ciou", "focal + siou"],
}
DEFAULTS = {"boxsim": {"scale": 0.1}, "clssim": {}, "clssim_quality": {}, "digits": {}}


def run(proxy, label, losses, options, seeds, budget=None):
    start = time.perf_counter()
    try:
        res = evaluate(proxy, losses, seeds=seeds, budget=budget, threads=1, options=options,
                       **DEFAULTS[proxy])
        return {"label": label, "values": res.values, "mean": res.mean, "std": res.std,
                "seconds": time.perf_counter() - start, "direction": res.direction,
                "metric": res.metric, "extra": {k: statistics.fmean(v) for k, v in res.extra.items()}}
    except CandidateFailure as err:
        return {"label": label, "failed": err.reason, "seconds": time.perf_counter() - start}


def kendall(a: dict, b: dict) -> float:
    from scipy.stats import kendalltau

    keys = sorted(set(a) & set(b))
    tau, _ = kendalltau([a[k] for k in keys], [b[k] for k in keys])
    return float(tau)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", default="boxsim,clssim,digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fidelity-seeds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="first 4 entries per proxy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    report = {"date": str(date.today()), "machine": f"{platform.machine()}, "
              f"{torch.get_num_threads()} torch thread, {platform.processor() or 'cpu'}",
              "proxies": {}}
    md = [f"Leaderboard measured {report['date']} ({report['machine']}); mean ± std over "
          f"{args.seeds} seeds at the default budget; tau: Kendall's tau of the ranking at the "
          "default budget vs 4x the budget.", ""]
    for proxy in args.proxies.split(","):
        items = entries(proxy)[: 4 if args.quick else None]
        rows = []
        for label, losses, options in items:
            rows.append(run(proxy, label, losses, options, args.seeds))
            r = rows[-1]
            print(f"{proxy:8s} {label:28s} " + (f"{r['mean']:.4f} ± {r['std']:.4f}" if "mean" in r
                                                else f"failed: {r['failed']}")
                  + f"  ({r['seconds']:.0f} s)", flush=True)
        ok = [r for r in rows if "mean" in r]
        if not ok:
            continue
        direction = ok[0]["direction"]
        ok.sort(key=lambda r: r["mean"], reverse=direction == "maximize")
        subset = FIDELITY_SUBSET.get(proxy)
        long = {}
        from autoloss import proxies as P

        default_budget = P.get(proxy).default_budget
        for label, losses, options in items:
            if subset and label not in subset:
                continue
            r = run(proxy, label, losses, options, args.fidelity_seeds, budget=4 * default_budget)
            if "mean" in r:
                long[label] = r["mean"]
                print(f"{proxy:8s} {label:28s} 4x budget: {r['mean']:.4f}  ({r['seconds']:.0f} s)",
                      flush=True)
        short = {r["label"]: r["mean"] for r in ok}
        tau = kendall(short, long) if len(long) > 1 else float("nan")
        seconds = statistics.fmean(r["seconds"] / args.seeds for r in ok)
        report["proxies"][proxy] = {"rows": rows, "long": long, "tau": tau,
                                    "seconds_per_run": seconds}
        md += [f"### {proxy} ({ok[0]['metric']}, {'higher' if direction == 'maximize' else 'lower'}"
               f" is better; {seconds:.1f} s per run; fidelity tau = {tau:.2f} on {len(long)} "
               "entries)", "", "| rank | loss | mean ± std | at 4x budget |", "| --- | --- | --- | --- |"]
        for i, r in enumerate(ok, 1):
            at4 = f"{long[r['label']]:.4f}" if r["label"] in long else ""
            md.append(f"| {i} | {r['label']} | {r['mean']:.4f} ± {r['std']:.4f} | {at4} |")
        for r in rows:
            if "failed" in r:
                md.append(f"| - | {r['label']} | failed: {r['failed']} | |")
        md.append("")
    text = "\n".join(md)
    (OUT / "leaderboard.md").write_text(text)
    (OUT / "leaderboard.json").write_text(json.dumps(report, indent=2))
    plot(report, OUT / "leaderboard.png")
    print(text)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["proxies"])
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in report["proxies"][name]["rows"] if "mean" in r]
        rows.sort(key=lambda r: r["mean"])
        ax.barh([r["label"] for r in rows], [r["mean"] for r in rows],
                xerr=[r["std"] for r in rows], color="tab:blue", alpha=0.8)
        ax.set_title(f"{name} (tau = {report['proxies'][name]['tau']:.2f})")
        ax.set_xlabel(rows[0]["metric"] if rows else "")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
