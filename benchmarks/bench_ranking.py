"""Ranking losses: autoloss.ranking vs a straight port of the official per-positive loop.

Forward+backward of AP-Loss, aLRP Loss, Rank & Sort Loss and DR Loss on N anchors with
P = 10, 100, 1000 positives, both measured side by side in this process (median of
repeats, float32, 1 thread unless --threads). The loops are tests/reference_ranking.py:
the official code (cccorn/AP-loss, kemaloksuz/aLRPLoss, kemaloksuz/RankSortLoss) minus
``.cuda()``; their "backward" is a saved gradient times the incoming one, so a forward
call is the whole cost. DR Loss's official code is already vectorized: its row is a
sanity check (ratio ~ 1), not a speed-up. ``--big`` adds P = 10,000 for the vectorized
losses alone, to show how they grow with P.

Logits: negatives ~ N(-3, 1.5), positives ~ N(0, 1) (an early-training-like overlap, so
most negatives are 'relevant': within delta of the lowest positive); the number M of
relevant negatives is printed since the loop's cost is P * (P + M).

    python benchmarks/bench_ranking.py                 # N = 1e5, P = 10, 100, 1000
    python benchmarks/bench_ranking.py --quick         # N = 1e4, smoke run
    python benchmarks/bench_ranking.py --big           # also P = 10,000 (vectorized only)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_ranking as ref  # noqa: E402  (the ported official loops)

from autoloss import ranking  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(n: int, n_pos: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 1.5 - 3
    perm = torch.randperm(n, generator=g)
    labels = torch.zeros(n)
    labels[perm[:n_pos]] = 1
    x[perm[:n_pos]] = torch.randn(n_pos, generator=g)
    targets = labels.clone()
    targets[perm[:n_pos]] = torch.rand(n_pos, generator=g) * 0.9 + 0.1  # IoUs for RS
    e_loc = torch.rand(n_pos, generator=g)  # localisation errors for aLRP
    return x, labels, targets, e_loc


def vectorized(name, x, labels, targets, e_loc):
    def run():
        xx = x.detach().requires_grad_(True)
        if name == "ap":
            loss = ranking.ap_loss(xx, labels)
        elif name == "alrp":
            loss = ranking.alrp_loss(xx, labels, e_loc)
        elif name == "rs":
            loss = ranking.rs_loss(xx, targets)
        else:
            loss = ranking.dr_loss(xx, labels)
        loss.backward()
    return run


def loop(name, x, labels, targets, e_loc):
    def run():
        if name == "ap":
            _, grad = ref.ap_loss(x, labels)
        elif name == "alrp":
            _, grad = ref.alrp_loss(x, labels, e_loc)[:2]
        elif name == "rs":
            grad = ref.rs_loss(x, targets)[2]
        else:
            xx = x.detach().requires_grad_(True)
            ref.dr_loss(xx, labels).backward()
            return
        grad * torch.ones(())  # the official backward: saved gradient times grad_output
    return run


def relevant(x, labels, delta):
    fg_min = x[labels == 1].min()
    return int(((labels == 0) & (x >= fg_min - delta)).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e4, few repeats")
    parser.add_argument("--big", action="store_true", help="also P = 10,000, vectorized only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 10_000 if args.quick else 100_000
    sizes = [10, 100, 1000]
    print(f"torch {torch.__version__}, {args.threads} thread(s), N = {n:,} anchors, float32; "
          "forward+backward, median ms\n")
    print(f"{'loss':5s} {'P':>6s} {'M rel':>7s} {'loop ms':>10s} {'vector ms':>10s} "
          f"{'loop/vector':>12s}")
    table = {}
    for n_pos in sizes + ([10_000] if args.big else []):
        data = inputs(n, n_pos)
        m = {"ap": relevant(data[0], data[1], 1.0), "alrp": relevant(data[0], data[1], 1.0),
             "rs": relevant(data[0], data[1], 0.5), "dr": n - n_pos}
        for name in ("ap", "alrp", "rs", "dr"):
            fast = median_time(vectorized(name, *data), 3 if args.quick else 7)
            if n_pos <= 1000:
                slow_reps = 3 if n_pos <= 100 or name == "dr" else 1
                slow = median_time(loop(name, *data), slow_reps, warmup=int(n_pos <= 100))
                ratio = f"{slow / fast:12.1f}"
                slow_ms = f"{slow * 1e3:10.1f}"
            else:
                slow_ms, ratio = f"{'-':>10s}", f"{'-':>12s}"
            table[name, n_pos] = fast
            print(f"{name:5s} {n_pos:6d} {m[name]:7d} {slow_ms} {fast * 1e3:10.2f} {ratio}",
                  flush=True)
    print("\ngrowth of the vectorized time with P (time at P / time at P = 10):")
    for name in ("ap", "alrp", "rs", "dr"):
        base = table[name, 10]
        cells = "  ".join(f"P={p}: {table[name, p] / base:5.2f}x"
                          for p in sorted({p for (k, p) in table if k == name}))
        print(f"  {name:5s} {cells}")


if __name__ == "__main__":
    main()
