"""Rejection-filter throughput and engine overhead.

* 10,000 grammar-constrained random box-loss candidates through the filters (batches of
  500, the population evaluator underneath): candidates per second, and the verdicts;
* the engine's overhead per trial on box-regression (sampling, filters, storage) as a
  share of the proxy time, from a short search's trial timings.

    python benchmarks/bench_filters.py [--candidates 10000] [--trials 120]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter

import torch

from autoloss.search import Search, load
from autoloss.search.candidate import Candidate
from autoloss.search.filters import FilterBank
from autoloss.search.operators import Grammar


def throughput(n: int) -> None:
    space = load("box-regression")
    grammar = Grammar.of(space.slots["reg"])
    rng = random.Random(0)
    cands = [Candidate({"reg": grammar.tree(rng, max_depth=6)}) for _ in range(n)]
    bank = FilterBank({"reg": "box"})
    start = time.perf_counter()
    verdicts = []
    for i in range(0, n, 500):
        verdicts += bank.check(cands[i:i + 500])
    seconds = time.perf_counter() - start
    counts = Counter(f"{v.status}{':' + v.filter if v.filter else ''}" for v in verdicts)
    missing = sum(1 for v in verdicts if not v.ok and not v.reason)
    print(f"filters: {n} random candidates in {seconds:.1f} s = {n / seconds:.0f} candidates/s "
          f"({torch.get_num_threads()} torch threads)")
    print("  verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(f"  rejections without a reason: {missing}")


def overhead(trials: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        search = Search.create(load("box-regression"), runs_dir=tmp, name="overhead",
                               trials=trials, validate=False)
        summary = search.run()
    ov = summary["engine_overhead"]
    print(f"engine overhead on box-regression: {ov['engine_s']:.2f} s of engine time "
          f"({ov['ms_per_trial']:.1f} ms per trial) for {ov['proxy_s']:.1f} s of proxy time = "
          f"{ov['ratio'] * 100:.1f}% ({summary['verdicts']['accepted']} evaluated trials of "
          f"{summary['trials']})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    throughput(args.candidates)
    overhead(args.trials)


if __name__ == "__main__":
    main()
