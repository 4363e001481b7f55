"""The error curves of the DIoU paper's simulation (IoU, GIoU, DIoU, CIoU, WIoU losses).

    python benchmarks/boxsim_curves.py [--scale 1.0] [--steps calibrated,fixed] [--unit 1]

1,715,000 cases at scale 1. Prints the table behind docs/proxies.md, one row per loss and
step mode (``calibrated``: boxsim's default, the step scaled by GIoU's gradient over the
loss's; ``fixed``: the paper's steps), and writes benchmarks/results/boxsim_curves.png
(calibrated solid, fixed dashed).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from autoloss import zoo
from autoloss.proxies import CandidateFailure
from autoloss.proxies.boxsim import BoxSim

OUT = Path(__file__).resolve().parent / "results"
LOSSES = ("iou", "giou", "diou", "ciou", "wiou")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--steps", default="calibrated,fixed")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--unit", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    curves = {}
    print("| loss | step | cases | initial error | final error (T=200) | final / initial | "
          "AUC / initial | step scale | seconds |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for step in args.steps.split(","):
        proxy = BoxSim(step=step, unit=args.unit)
        for loss_id in args.losses.split(","):
            start = time.perf_counter()
            try:
                m = proxy.run({"reg": zoo.compiled(loss_id)}, scale=args.scale)
            except CandidateFailure as err:
                print(f"| {loss_id} | {step} | fails: {err.reason} |||||||", flush=True)
                continue
            seconds = time.perf_counter() - start
            curves[loss_id, step] = m.curve
            e = m.extra
            print(f"| {loss_id} | {step} | {e['cases']:.0f} | {e['initial_error']:.3g} | "
                  f"{e['final_error']:.3g} | {e['final_error_ratio']:.4f} | {m.value:.3f} | "
                  f"{e['step_scale']:.3g} | {seconds:.0f} |", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = {}
    for (loss_id, step), curve in curves.items():
        line, = ax.plot([t for t, _ in curve], [e for _, e in curve],
                        linestyle="-" if step == "calibrated" else "--",
                        color=colours.get(loss_id),
                        label=f"{loss_id.upper()}, {step}")
        colours[loss_id] = line.get_color()
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("total regression error")
    ax.set_title(f"boxsim, scale {args.scale:g}, unit {args.unit:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "boxsim_curves.png", dpi=110)


if __name__ == "__main__":
    main()
