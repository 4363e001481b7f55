"""Compiled losses vs hand-written eager torch on a GPU: forward + backward, float32.

    python benchmarks/bench_cuda.py            # N = 1e4 ... 1e7 rows; < 60 s on an H200
    python benchmarks/bench_cuda.py --quick    # N = 1e4, 1e5 (runs on the CPU without CUDA)

Each call is followed by ``torch.cuda.synchronize()``; times are medians of interleaved
repeats after warm-up (``bench_compiler.paired``, wall clock). The baselines are the
hand-written eager losses bench_compiler.py measures against (tests/reference.py). Three
ways per loss: ``eager`` (the baseline), ``compiled`` (``zoo.build`` as the runtime runs it:
a GPU batch whole, one launch per op), ``chunked`` (the same forced into the CPU's row
chunks of ``runtime.CHUNK`` elements), each with its ratio to eager (below 1: faster than
eager). Then the exact rotated IoU, forward + backward with respect to both boxes. Prints
markdown.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compiler import fwd_bwd, paired, reference  # noqa: E402

from autoloss import rotated, runtime, zoo  # noqa: E402
from autoloss.signatures import BOX, RBOX, SIGMOID  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def synced(fn):
    def run():
        fn()
        sync()
    return run


def repeats(n: int) -> int:
    """About 3e7 rows per timing, between 5 and 30 repeats."""
    return max(5, min(30, 30_000_000 // n))


def chunked(fn):
    """``fn`` with the runtime forced into row chunks of ``runtime.CHUNK`` elements
    (``runtime.whole`` answering no): the CPU's cache-sized chunks, one launch per op and
    chunk."""
    def run():
        before, runtime.whole = runtime.whole, lambda ref: False
        try:
            fn()
        finally:
            runtime.whole = before
    return run


def inputs(name: str, n: int, g: torch.Generator):
    """n rows on the device, float32: box pairs (giou) or (n, 4) logits and targets (focal)."""
    sig = SIGMOID if name == "focal" else BOX
    return tuple(x.to(DEVICE) for x in sig.sample(n, g, dtype=torch.float32))


def losses(sizes) -> None:
    print("| loss | N rows | eager ms | compiled ms | compiled / eager | chunked ms "
          "| chunked / eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        for name in ("focal", "giou"):
            x = inputs(name, n, g)
            compiled = fwd_bwd(zoo.build(name), x)
            fns = [fwd_bwd(getattr(reference, name), x), compiled, chunked(compiled)]
            eager, mine, forced = paired([synced(f) for f in fns], repeats(n))
            print(f"| {name} | {n:,} | {eager * 1e3:.2f} | {mine * 1e3:.2f} | "
                  f"{mine / eager:.2f} | {forced * 1e3:.2f} | {forced / eager:.2f} |", flush=True)
            del x
    print()


def rotated_iou(n: int) -> None:
    print(f"rotated IoU, {n:,} pairs, float32, forward + backward (both boxes)\n")
    print("| what | ms |\n|---|---:|")
    g = torch.Generator().manual_seed(1)
    pred, target = (x.to(DEVICE) for x in RBOX.sample(n, g, dtype=torch.float32))

    def geometry():
        p, t = pred.detach().requires_grad_(True), target.detach().requires_grad_(True)
        rotated.iou(p, t).sum().backward()

    def loss():
        p, t = pred.detach().requires_grad_(True), target.detach().requires_grad_(True)
        zoo.build("rotated_iou")(p, t).sum().backward()

    for what, ms in zip(("autoloss.rotated.iou (autograd through the exact geometry)",
                         "zoo rotated_iou, 1 - riou (compiled)"),
                        paired([synced(geometry), synced(loss)], repeats(n))):
        print(f"| {what} | {ms * 1e3:.2f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1e4 and 1e5 only")
    args = parser.parse_args()
    start = time.perf_counter()
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    print(f"# CUDA benchmark: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.get_num_threads()} CPU thread(s)\n")
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000, 10_000_000]
    print("forward + backward, float32 (focal: N x 4 logits; giou: N box pairs)\n")
    losses(sizes)
    rotated_iou(100_000 if args.quick else 1_000_000)
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
