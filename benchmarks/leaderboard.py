"""Leaderboard: the applicable zoo losses on every proxy, and each proxy's fidelity.

For each proxy the zoo losses that fit its slots run over several seeds at the default
budget; the table ranks them by mean metric. Fidelity is Kendall's tau between the ranking
at the default budget and at 4x the budget (on every entry run):
a proxy whose ranking flips with a longer budget would mislead a search.

    python benchmarks/leaderboard.py --jobs 2              # everything (about 3 hours)
    python benchmarks/leaderboard.py --proxies boxsim --seeds 1 --quick
    python benchmarks/leaderboard.py --proxies digits --option batch=16 --entries 'focal + giou'

Results are cached per entry in OUT/leaderboard_cache.json (OUT: --out, by default
benchmarks/results), keyed on the proxy's effective settings (defaults included), so a rerun
only computes what is missing and a changed default recomputes; delete an entry, or the
file, after changing a proxy's code.

Writes OUT/leaderboard.md, .json and .png (git-ignored) and prints the markdown. One torch
thread per run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from autoloss import catalog
from autoloss.cli import parse_options
from autoloss.evaluate import evaluate
from autoloss.proxies import CandidateFailure

OUT = Path(__file__).resolve().parent / "results"
QUALITY_CLS = {"qfl", "vfl", "cse_autoloss_b_cls", "rs_loss"}  # IoU targets, as in their papers


def entries(proxy: str):
    """(label, losses, proxy options) of every applicable zoo loss."""
    box = sorted(s.id for s in catalog.of_signature("box"))
    coord = sorted(s.id for s in catalog.of_signature("coord"))
    sig = sorted(s.id for s in catalog.of_signature("sigmoid"))
    if proxy == "boxsim":
        return [(b, {"reg": b}, {}) for b in box]
    if proxy == "rboxsim":
        return [(r, {"reg": r}, {}) for r in sorted(s.id for s in catalog.of_signature("rbox"))]
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
        out.append(("bce + l1", {"cls": "bce", "reg": "l1"}, {}))  # the weak baseline
        return out
    raise KeyError(proxy)


CACHE = "leaderboard_cache.json"
DEFAULTS = {"boxsim": {"scale": 0.1}, "rboxsim": {}, "clssim": {}, "clssim_quality": {},
            "digits": {}}


def run(proxy, label, losses, options, seeds, budget=None):
    start = time.perf_counter()
    torch.set_num_threads(1)
    try:
        res = evaluate(proxy, losses, seeds=seeds, budget=budget, threads=1, options=options,
                       **DEFAULTS[proxy])
        return {"label": label, "values": res.values, "mean": res.mean, "std": res.std,
                "seconds": time.perf_counter() - start, "direction": res.direction,
                "metric": res.metric, "extra": {k: statistics.fmean(v) for k, v in res.extra.items()}}
    except CandidateFailure as err:
        return {"label": label, "failed": err.reason, "seconds": time.perf_counter() - start}


def _key(proxy, label, options, seeds, budget) -> str:
    """The cache key: the proxy's effective settings, defaults included, so that a changed
    default (the digits batch, say) recomputes instead of reusing another design's result."""
    from autoloss import proxies as P

    settings = {k: getattr(v, "__name__", v) for k, v in vars(P.get(proxy, **options)).items()}
    return json.dumps([proxy, label, settings, seeds, budget], sort_keys=True, default=str)


def run_all(jobs: list[tuple], n_jobs: int, cache_path: Path,
            cached_only: bool = False) -> list[dict]:
    """Run (proxy, label, losses, options, seeds, budget) entries, cached in ``cache_path``,
    in parallel; with ``cached_only`` run nothing and give None for the entries not measured
    yet."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    keys = [_key(proxy, label, options, seeds, budget)
            for proxy, label, _, options, seeds, budget in jobs]
    todo = [(key, job) for key, job in zip(keys, jobs) if key not in cache]
    if todo and not cached_only:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n_jobs) as pool:
            for (key, job), result in zip(todo, pool.imap(_run_job, [j for _, j in todo])):
                cache[key] = result
                cache_path.write_text(json.dumps(cache, indent=1))
                r = result
                tag = f" at budget {job[5]}"
                print(f"{job[0]:8s} {job[1]:28s}{tag} " + (
                    f"{r['mean']:.4f} ± {r['std']:.4f}" if "mean" in r
                    else f"failed: {r['failed']}") + f"  ({r['seconds']:.0f} s)", flush=True)
    return [cache.get(key) for key in keys]


def _run_job(job):
    proxy, label, losses, options, seeds, budget = job
    return run(proxy, label, losses, options, seeds, budget)


def _short(reason: str) -> str:
    return reason.split(":")[0]


def kendall(a: dict, b: dict) -> float:
    from scipy.stats import kendalltau

    keys = sorted(set(a) & set(b))
    tau, _ = kendalltau([a[k] for k in keys], [b[k] for k in keys])
    return float(tau)


def seed_tau(rows: list[dict]) -> float:
    """Mean Kendall tau between the rankings two single seeds give: the noise ceiling that
    a fidelity tau measured with one seed at 4x the budget should be read against."""
    n = min(len(r["values"]) for r in rows)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(rows) < 2 or not pairs:
        return float("nan")
    return statistics.fmean(
        kendall({r["label"]: r["values"][i] for r in rows}, {r["label"]: r["values"][j] for r in rows})
        for i, j in pairs)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxies", default="boxsim,rboxsim,clssim,digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fidelity-seeds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="first 4 entries per proxy")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE", default=[],
                        help="a proxy option for every entry, e.g. batch=48 for digits")
    parser.add_argument("--entries", help="only these labels, comma-separated "
                        "(e.g. 'focal + giou,bce + l1')")
    parser.add_argument("--cached", action="store_true",
                        help="run nothing: report what the cache holds (an interrupted run)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="where the cache and the reports live (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": str(date.today()), "machine": f"{platform.machine()}, "
              f"{torch.get_num_threads()} torch thread per run, {os.cpu_count()} cores",
              "proxies": {}}
    md = [f"Leaderboard measured {report['date']} ({report['machine']}"
          + (f"; proxy options {args.option}" if args.option else "") + "); mean ± std over "
          f"{args.seeds} seeds at the default budget; tau: Kendall's tau between the rankings "
          f"at the default budget and at 4x the budget ({args.fidelity_seeds} seed(s)); "
          "seed-to-seed tau: the mean tau between the rankings of two single seeds.", ""]
    from autoloss import proxies as P

    common = parse_options(args.option)
    proxies = args.proxies.split(",")
    wanted = {label.strip() for label in args.entries.split(",")} if args.entries else None
    if wanted:
        known = {label for proxy in proxies for label, _, _ in entries(proxy)}
        if unknown := wanted - known:
            parser.error(f"--entries: no entry {sorted(unknown)} on {', '.join(proxies)}; "
                         f"the labels are: {', '.join(sorted(known))}")
    for proxy in proxies:
        items = [(label, losses, {**options, **common})
                 for label, losses, options in entries(proxy)[: 4 if args.quick else None]
                 if not wanted or label in wanted]
        if not items:
            continue
        budget = P.get(proxy).default_budget
        budget4 = 4 * budget
        jobs = [(proxy, label, losses, options, args.seeds, budget)
                for label, losses, options in items]
        if args.fidelity_seeds > 0:  # 0: no fidelity runs (tau is then nan)
            jobs += [(proxy, label, losses, options, args.fidelity_seeds, budget4)
                     for label, losses, options in items]
        results = run_all(jobs, args.jobs, out / CACHE, cached_only=args.cached)
        rows = [r for r in results[:len(items)] if r is not None]
        longs = [r for r in results[len(items):] if r is not None]
        ok = [r for r in rows if "mean" in r]
        if not ok:
            continue
        direction = ok[0]["direction"]
        ok.sort(key=lambda r: r["mean"], reverse=direction == "maximize")
        long = {r["label"]: r["mean"] for r in longs if "mean" in r}
        short = {r["label"]: r["mean"] for r in ok}
        tau = kendall(short, long) if len(long) > 1 else float("nan")
        noise = seed_tau(ok)
        seconds = statistics.fmean(r["seconds"] / args.seeds for r in ok)
        report["proxies"][proxy] = {"rows": rows, "long": long, "tau": tau,
                                    "seed_tau": noise, "seconds_per_run": seconds}
        md += [f"### {proxy} ({ok[0]['metric']}, {'higher' if direction == 'maximize' else 'lower'}"
               f" is better; {seconds:.1f} s per run; fidelity tau = {tau:.2f} on {len(long)} "
               + (f"of {len(items)} " if len(long) < len(items) else "")
               + f"entries; seed-to-seed tau at the default budget = {noise:.2f})", "",
               "| rank | loss | mean ± std | at 4x budget |", "| --- | --- | --- | --- |"]
        for i, r in enumerate(ok, 1):
            at4 = f"{long[r['label']]:.4f}" if r["label"] in long else ""
            md.append(f"| {i} | {r['label']} | {r['mean']:.4f} ± {r['std']:.4f} | {at4} |")
        for r in rows:
            if "failed" in r:
                md.append(f"| - | {r['label']} | failed: {_short(r['failed'])} | |")
        md.append("")
    text = "\n".join(md)
    (out / "leaderboard.md").write_text(text)
    (out / "leaderboard.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "leaderboard.png")
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
