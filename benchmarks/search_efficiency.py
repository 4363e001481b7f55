"""Search efficiency on box-regression: best found vs number of proxy evaluations.

Strategies random, tpe, evolution (seeded from the zoo) and evolution-scratch, 3 seeds
each, the same number of trials. A proxy evaluation is a trial that ran boxsim (evaluated,
pruned or failed on the proxy); rejected and reused candidates cost no evaluation. The
reference is the best zoo loss of the space, screened at the search settings.

    python benchmarks/search_efficiency.py [--trials 80] [--seeds 3]

Writes benchmarks/results/search_efficiency.{md,json,png} (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from autoloss.search import Search, load
from autoloss.evaluate import evaluate

OUT = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "tpe", "evolution", "evolution-scratch")


def zoo_reference(space) -> tuple[str, float]:

    best = None
    for loss_id in space.slots["reg"].seeds:
        try:
            r = evaluate(space.proxy, {"reg": loss_id}, seeds=[space.seed], budget=space.budget,
                         scale=space.scale, options=space.proxy_options)
        except Exception:  # noqa: BLE001 - a seed that fails is no reference
            continue
        if best is None or r.mean < best[1]:
            best = (loss_id, r.mean)
    return best


def curve(folder: Path):
    import optuna

    from autoloss.search.runs import storage

    study = optuna.load_study(study_name="search", storage=storage(folder))
    evals, best, points = 0, None, []
    for t in study.trials:
        status = t.user_attrs.get("verdict", {}).get("status")
        ran = status in ("accepted", "failed") or t.state == optuna.trial.TrialState.PRUNED
        if not ran:
            continue
        evals += 1
        if t.state == optuna.trial.TrialState.COMPLETE and status == "accepted":
            v = t.values[0]
            best = v if best is None or v < best else best
        points.append((evals, best))
    return points


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    space = load("box-regression")
    ref_id, ref = zoo_reference(space)
    print(f"best zoo loss at the search settings: {ref_id} {ref:.4f}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            for seed in range(args.seeds):
                search = Search.create(space, runs_dir=tmp, name=f"{strategy}-{seed}",
                                       strategy=strategy, seed=seed, trials=args.trials,
                                       validate=False, threads=1)
                search.run()
                pts = curve(search.folder)
                results.setdefault(strategy, []).append(pts)
                reach = next((e for e, b in pts if b is not None and b <= ref), None)
                final = pts[-1][1] if pts else None
                print(f"{strategy:18s} seed {seed}: {len(pts)} proxy evaluations, best "
                      f"{final}, reached the zoo's best after {reach}", flush=True)
    rows = ["| strategy | proxy evaluations (mean) | evaluations to reach the best zoo loss "
            "(per seed) | best found (mean ± std) |", "| --- | --- | --- | --- |"]
    summary = {"reference": {"loss": ref_id, "value": ref}, "trials": args.trials,
               "strategies": {}}
    for strategy, runs in results.items():
        reach = [next((e for e, b in pts if b is not None and b <= ref), None) for pts in runs]
        finals = [pts[-1][1] for pts in runs if pts and pts[-1][1] is not None]
        n_eval = statistics.fmean(len(p) for p in runs)
        summary["strategies"][strategy] = {"reach": reach, "finals": finals, "evals": n_eval}
        reach_text = ", ".join("never" if r is None else str(r) for r in reach)
        final_text = (f"{statistics.fmean(finals):.4f} ± {statistics.stdev(finals):.4f}"
                      if len(finals) > 1 else (f"{finals[0]:.4f}" if finals else "-"))
        rows.append(f"| {strategy} | {n_eval:.0f} | {reach_text} | {final_text} |")
    text = (f"Search efficiency on box-regression ({args.trials} trials per run, {args.seeds} "
            f"seeds; reference: best zoo loss `{ref_id}` = {ref:.4f} error AUC at the search "
            "settings; lower is better).\n\n" + "\n".join(rows))
    (OUT / "search_efficiency.md").write_text(text)
    (OUT / "search_efficiency.json").write_text(json.dumps({"summary": summary,
                                                             "curves": results}, indent=1))
    plot(results, ref, OUT / "search_efficiency.png")
    print(text)


def plot(results, ref, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(STRATEGIES, ("tab:gray", "tab:orange", "tab:blue", "tab:green")))
    for strategy, runs in results.items():
        for i, pts in enumerate(runs):
            xs = [e for e, b in pts if b is not None]
            ys = [b for e, b in pts if b is not None]
            ax.step(xs, ys, where="post", color=colours[strategy], alpha=0.8,
                    label=strategy if i == 0 else None)
    ax.axhline(ref, color="black", linestyle=":", label="best zoo loss")
    ax.set_xlabel("proxy evaluations")
    ax.set_ylabel("best error AUC so far (lower is better)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
