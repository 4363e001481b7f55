"""The four error curves of the DIoU paper's simulation (IoU, GIoU, DIoU, CIoU losses).

    python benchmarks/boxsim_curves.py [--scale 1.0]      # 1,715,000 cases at scale 1

Prints the table behind docs/proxies.md and writes benchmarks/results/boxsim_curves.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from autoloss import zoo
from autoloss.proxies.boxsim import BoxSim

OUT = Path(__file__).resolve().parent / "results"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(exist_ok=True)
    curves = {}
    print("| loss | cases | initial error | final error (T=200) | final / initial | "
          "AUC / initial | seconds |\n| --- | --- | --- | --- | --- | --- | --- |")
    for loss_id in ("iou", "giou", "diou", "ciou"):
        start = time.perf_counter()
        m = BoxSim().run({"reg": zoo.compiled(loss_id)}, scale=args.scale)
        seconds = time.perf_counter() - start
        curves[loss_id] = m.curve
        e = m.extra
        print(f"| {loss_id} | {e['cases']:.0f} | {e['initial_error']:.3g} | "
              f"{e['final_error']:.3g} | {e['final_error_ratio']:.4f} | {m.value:.3f} | "
              f"{seconds:.0f} |", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for loss_id, curve in curves.items():
        ax.plot([t for t, _ in curve], [e for _, e in curve], label=loss_id.upper())
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("total regression error")
    ax.set_title(f"boxsim, scale {args.scale}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "boxsim_curves.png", dpi=110)


if __name__ == "__main__":
    main()
