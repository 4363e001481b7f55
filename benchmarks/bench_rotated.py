"""Rotated IoU (autoloss.rotated) against shapely, and a NaN/inf sweep over hostile pairs.

Every speed number is a ratio of two timings taken side by side in this process
(interleaved rounds, medians), so the machine's speed cancels out.

    python benchmarks/bench_rotated.py            # 1e5 pairs; sweep over 1e6 pairs
    python benchmarks/bench_rotated.py --quick    # 1e4 pairs; sweep over 1e5

(a) Speed, one thread. Ours: forward+backward of ``rotated.iou`` (plain autograd, what an
    exported module runs) and of the compiled loss ``1 - riou`` (what a search runs), in
    float32 and float64, and the forward alone. shapely: a per-pair Python loop
    (``Polygon(p).intersection(Polygon(q)).area``) and shapely 2's vectorized
    ``intersection`` on arrays of polygons, forward only (shapely has no gradient), both
    from ready corner arrays (building the corners is not timed for shapely). shapely is
    timed on a subsample and scaled to the full count: the loop is linear in the pairs.
(b) Robustness: 1 - riou and its gradient with respect to both boxes over many random
    pairs, in chunks, every third chunk split among degenerate kinds (tiny, thin, zero-size,
    identical, coincident vertices, touching on a grid, near-parallel, theta + pi, far apart);
    non-finite values and gradients are counted per kind.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoloss import rotated  # noqa: E402
from autoloss.compiler import compile_loss  # noqa: E402
from autoloss.parse import parse  # noqa: E402
from autoloss.signatures import RBOX  # noqa: E402


def pairs(n: int, generator: torch.Generator, dtype=torch.float64):
    """The signature's samples: sizes at aspect 1:4 ... 4:1, any angle, overlapping mostly."""
    return RBOX.sample(n, generator, dtype=dtype)


def rounds(fns, count: int, inner: int = 1) -> list[float]:
    """Median seconds per call of each function, measured in interleaved rounds (A B A B
    ...) so drifts in the machine's speed hit all alike; ``inner`` calls per round."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(count):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            bucket.append((time.perf_counter() - start) / inner)
    return [statistics.median(t) for t in times]


# -------------------------------------------------------------------------------- speed
def speed(n: int, sub_loop: int, sub_vec: int, count: int) -> None:
    import shapely
    from shapely.geometry import Polygon

    g = torch.Generator().manual_seed(0)
    pred64, target64 = pairs(n, g)
    corners_p = rotated.corners(pred64).numpy()
    corners_t = rotated.corners(target64).numpy()
    loss = compile_loss(parse("1 - riou", RBOX.names, dict(RBOX.params)), "rbox")

    def loop():
        for p, q in zip(corners_p[:sub_loop], corners_t[:sub_loop]):
            Polygon(p).intersection(Polygon(q)).area

    def vectorized():
        a = shapely.polygons(corners_p[:sub_vec])
        b = shapely.polygons(corners_t[:sub_vec])
        shapely.area(shapely.intersection(a, b))

    ours = {}
    for dtype in (torch.float32, torch.float64):
        pred, target = pred64.to(dtype), target64.to(dtype)

        def autograd(pred=pred, target=target):
            x = pred.detach().requires_grad_(True)
            y = target.detach().requires_grad_(True)
            (1 - rotated.iou(x, y)).sum().backward()

        def compiled(pred=pred, target=target):
            x = pred.detach().requires_grad_(True)
            y = target.detach().requires_grad_(True)
            loss(x, y).sum().backward()

        def forward(pred=pred, target=target):
            with torch.no_grad():
                rotated.iou(pred, target)

        ours[dtype] = (autograd, compiled, forward)
    fns = [loop, vectorized] + [f for d in ours for f in ours[d]]
    times = rounds(fns, count)
    t_loop, t_vec = times[0] * n / sub_loop, times[1] * n / sub_vec
    print(f"(a) rotated IoU on {n:,} pairs, 1 thread; shapely {shapely.__version__} timed on "
          f"{sub_loop:,} (loop) and {sub_vec:,} (vectorized) of them and scaled to {n:,}")
    print(f"    {'shapely per-pair loop, forward':44s} {t_loop * 1e3:9.1f} ms "
          f"({t_loop / n * 1e6:.1f} us per pair)")
    print(f"    {'shapely 2 vectorized, forward':44s} {t_vec * 1e3:9.1f} ms "
          f"({t_vec / n * 1e6:.1f} us per pair)")
    print(f"    {'ours':44s} {'ms':>9s} {'vs loop':>9s} {'vs vectorized':>14s}")
    labels = ("rotated.iou forward+backward", "compiled 1 - riou forward+backward",
              "rotated.iou forward")
    for k, dtype in enumerate(ours):
        for j, label in enumerate(labels):
            t = times[2 + 3 * k + j]
            name = f"{label}, {str(dtype).replace('torch.', '')}"
            print(f"    {name:44s} {t * 1e3:9.1f} {t_loop / t:8.0f}x {t_vec / t:13.0f}x")
    print()


# ------------------------------------------------------------------------ robustness
KINDS = ("random", "tiny", "thin", "zero-size", "identical", "coincident vertices",
         "grid (touching, shared edges)", "near-parallel", "theta + pi", "far apart")


def hostile(n: int, kind: str, g: torch.Generator, dtype) -> tuple:
    """n pairs of one kind."""
    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    c = (rand(n, 2) - 0.5) * 20
    wh = rand(n, 2) * 8 + 0.2
    theta = (rand(n) - 0.5) * 4 * math.pi
    target = torch.cat([c, wh, theta[:, None]], 1)
    pred = torch.cat([c + (rand(n, 2) - 0.5) * 4, wh * torch.exp(rand(n, 2) - 0.5),
                      (theta + (rand(n) - 0.5) * 2)[:, None]], 1)
    if kind == "tiny":
        pred[:, 2:4] = rand(n, 2) * 10.0 ** -(rand(n, 1) * 8 + 2)
        pred[:, :2] = c + (rand(n, 2) - 0.5) * wh
    elif kind == "thin":
        pred[:, 2] = 10.0 ** -(rand(n) * 10 + 2)
        target[:, 3] = torch.where(rand(n) < 0.5, 10.0 ** -(rand(n) * 10 + 2), target[:, 3])
    elif kind == "zero-size":
        which = (rand(n, 2) * 3).long()  # 0: w, 1: h, 2: both
        pred[:, 2] = torch.where(which[:, 0] != 1, 0.0, pred[:, 2])
        pred[:, 3] = torch.where(which[:, 0] != 0, 0.0, pred[:, 3])
        target[:, 2] = torch.where(which[:, 1] == 0, 0.0, target[:, 2])
    elif kind == "identical":
        pred = target.clone()
    elif kind == "coincident vertices":
        # the prediction turned by a multiple of 90 degrees about a corner of the target
        corner = rotated.corners(target)[torch.arange(n), (rand(n) * 4).long()]
        turn = (rand(n) * 4).floor() * math.pi / 2
        off = target[:, :2] - corner
        cs, sn = torch.cos(turn), torch.sin(turn)
        pred = target.clone()
        pred[:, 0] = corner[:, 0] + cs * off[:, 0] - sn * off[:, 1]
        pred[:, 1] = corner[:, 1] + sn * off[:, 0] + cs * off[:, 1]
        pred[:, 4] = target[:, 4] + turn
    elif kind == "grid (touching, shared edges)":
        # integer boxes on a grid at angle 0 or pi/2: exact ties everywhere
        target = torch.cat([(rand(n, 2) * 6).floor(), (rand(n, 2) * 4).floor() + 1,
                            ((rand(n) * 2).floor() * math.pi / 2)[:, None]], 1)
        pred = torch.cat([(rand(n, 2) * 6).floor(), (rand(n, 2) * 4).floor() + 1,
                          ((rand(n) * 2).floor() * math.pi / 2)[:, None]], 1)
    elif kind == "near-parallel":
        pred[:, 4] = target[:, 4] + (rand(n) - 0.5) * 10.0 ** -(rand(n) * 14 + 2)
    elif kind == "theta + pi":
        pred = target.clone()
        pred[:, 4] += math.pi * torch.where(rand(n) < 0.5, 1.0, -1.0)
        pred[:, :2] += (rand(n, 2) - 0.5) * 1e-9
    elif kind == "far apart":
        pred[:, :2] += torch.where(rand(n, 1) < 0.5, 1e6, -1e6)
    return pred.to(dtype), target.to(dtype)


def sweep(total: int, chunk: int) -> None:
    loss = compile_loss(parse("1 - riou", RBOX.names, dict(RBOX.params)), "rbox")
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(1)
        counts = {k: [0, 0, 0, 0] for k in KINDS}  # pairs, non-finite values, ... gradients,
        # values outside [0, 1]
        start = time.perf_counter()
        for i in range(total // chunk):
            kinds = ("random",) if i % 3 else KINDS  # every third chunk: all the kinds
            for kind in kinds:
                pred, target = hostile(chunk // len(kinds), kind, g, dtype)
                for fn in (loss, lambda p, t: 1 - rotated.iou(p, t)):
                    x = pred.clone().requires_grad_(True)
                    y = target.clone().requires_grad_(True)
                    value = fn(x, y)
                    gx, gy = torch.autograd.grad(value.sum(), [x, y])
                    c = counts[kind]
                    c[0] += len(pred)
                    c[1] += int((~torch.isfinite(value)).sum())
                    c[2] += int((~torch.isfinite(gx)).any(1).sum()
                                + (~torch.isfinite(gy)).any(1).sum())
                    c[3] += int(((value < -1e-6) | (value > 1 + 1e-6)).sum())
        took = time.perf_counter() - start
        pairs_done = sum(c[0] for c in counts.values()) // 2
        print(f"(b) {str(dtype).replace('torch.', '')}: {pairs_done:,} pairs in chunks of "
              f"{chunk:,}, each through the compiled 1 - riou and through rotated.iou "
              f"({took:.1f} s)")
        print(f"    {'kind':32s} {'evaluations':>11s} {'non-finite values':>18s} "
              f"{'non-finite gradient rows':>25s} {'outside [0, 1]':>15s}")
        for kind, (n, bad_v, bad_g, out) in counts.items():
            print(f"    {kind:32s} {n:11,d} {bad_v:18d} {bad_g:25d} {out:15d}")
        total_bad = sum(c[1] + c[2] for c in counts.values())
        print(f"    non-finite in all: {total_bad}; 1 - riou outside [0, 1] (by 1e-6): "
              f"{sum(c[3] for c in counts.values())}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    if args.quick:
        speed(10_000, 500, 2_000, 3)
        sweep(100_000, 25_000)
    else:
        speed(100_000, 2_000, 10_000, 9)
        sweep(1_000_000, 100_000)


if __name__ == "__main__":
    main()
