"""Loss-scale fairness: does a proxy reward a loss for multiplying itself by a constant?

For k in {0.1, 0.3, 1, 3, 10}: boxsim with k x GIoU, calibrated step (the default) and the
paper's fixed step, and clssim with k x focal (alpha 0.25, gamma 2). Prints a markdown table
of the metric and its ratio to k = 1 (issue 12's target: within 3 %), and the seconds per run.

    python benchmarks/scale_fairness.py [--boxsim-scale 0.1] [--seed 0] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch

from autoloss.evaluate import evaluate
from autoloss.proxies import CandidateFailure

GIOU = "1 - iou + (enclose - union) / (enclose + eps)"
FOCAL = ("(0.25 * t + 0.75 * (1 - t)) * (1 - (p * t + (1 - p) * (1 - t))) ** 2 "
         "* -(t * log(p) + (1 - t) * log(1 - p))")
MULTIPLES = (0.1, 0.3, 1, 3, 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxsim-scale", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [("boxsim", f"scale {args.boxsim_scale:g}, calibrated step", "reg", GIOU,
             {"step": "calibrated"}, args.boxsim_scale),
            ("boxsim", f"scale {args.boxsim_scale:g}, fixed step", "reg", GIOU,
             {"step": "fixed"}, args.boxsim_scale),
            ("clssim", "default scale and budget", "cls", FOCAL, {}, None)]
    print("| proxy | setting | loss | metric | " + " | ".join(f"k = {k:g}" for k in MULTIPLES)
          + " | seconds per run |")
    print("| --- " * (5 + len(MULTIPLES)) + "|")
    for proxy, setting, slot, expr, options, scale in rows:
        values, seconds = {}, []
        for k in MULTIPLES:
            loss = expr if k == 1 else f"{k:g} * ({expr})"
            try:
                result = evaluate(proxy, {slot: loss}, seeds=[args.seed], scale=scale,
                                  options=options)
                values[k] = result.values[0]
                seconds += result.seconds
            except CandidateFailure as err:
                values[k] = err.reason
        base = values[1]
        metric = "error AUC (lower)" if proxy == "boxsim" else "AP (higher)"
        name = "k x GIoU" if proxy == "boxsim" else "k x focal"

        def cell(v):
            if isinstance(v, str):
                return "fails: " + v.split(":")[0]
            return f"{v:.4f} ({v / base:.4f})"

        print(f"| {proxy} | {setting} | {name} | {metric} | "
              + " | ".join(cell(values[k]) for k in MULTIPLES)
              + f" | {sum(seconds) / len(seconds):.1f} |", flush=True)
    print("\nEach cell: the metric, and in brackets its ratio to k = 1 "
          f"(seed {args.seed}, {torch.get_num_threads()} torch thread(s)).")


if __name__ == "__main__":
    main()
