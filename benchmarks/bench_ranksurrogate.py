"""Ranking surrogates: the generic pair-grid core against ap_loss and the official loop.

AP-Loss three ways, forward + backward on N anchors with P = 10, 100, 1000 positives,
measured side by side in this process (median of repeats, float32, 1 thread unless
--threads): ``ranksurrogate.RankLoss`` on the ``ap_step`` step (any compiled step, the
dense (P, N) pair grid in blocks), ``ranking.ap_loss`` (the ramp only, sorted prefix
sums), and the official per-positive loop (tests/reference_ranking.py). All three give
the same loss. Also the core with the sigmoid step under both updates. The inputs are
bench_ranking.py's (negatives ~ N(-3, 1.5), positives ~ N(0, 1)).

    python benchmarks/bench_ranksurrogate.py            # N = 1e5
    python benchmarks/bench_ranksurrogate.py --quick    # N = 1e4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_ranking as ref  # noqa: E402  (the ported official loops)
from bench_ranking import inputs, median_time  # noqa: E402

from autoloss import ranking, zoo  # noqa: E402
from autoloss.ranksurrogate import RankLoss  # noqa: E402


def backward_of(fn, x, labels):
    def run():
        xx = x.detach().requires_grad_(True)
        fn(xx, labels).backward()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e4, few repeats")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 10_000 if args.quick else 100_000
    reps = 3 if args.quick else 5
    core = zoo.loss("ap_step")
    sigmoid = zoo.compiled("sigmoid_step")
    rows = {
        "core, ap_step (error update)": core,
        "core, sigmoid_step (error update)": RankLoss(sigmoid),
        "core, sigmoid_step (autograd)": RankLoss(sigmoid, update="autograd"),
        "ranking.ap_loss": ranking.ap_loss,
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), N = {n:,} anchors, float32; "
          "forward+backward, median ms\n")
    print(f"{'':36s} {'P = 10':>10s} {'P = 100':>10s} {'P = 1000':>10s}")
    times: dict[str, list[float]] = {k: [] for k in list(rows) + ["official loop"]}
    for n_pos in (10, 100, 1000):
        x, labels, _, _ = inputs(n, n_pos)
        for name, fn in rows.items():
            times[name].append(median_time(backward_of(fn, x, labels), reps))
        times["official loop"].append(median_time(lambda: ref.ap_loss(x, labels), 1 if
                                                  n_pos == 1000 else reps))
    for name, ts in times.items():
        print(f"{name:36s} " + " ".join(f"{t * 1e3:10.1f}" for t in ts))
    base = times["core, ap_step (error update)"]
    print("\nratios (time / core with ap_step):")
    for name, ts in times.items():
        print(f"{name:36s} " + " ".join(f"{t / b:10.2f}" for t, b in zip(ts, base)))


if __name__ == "__main__":
    main()
