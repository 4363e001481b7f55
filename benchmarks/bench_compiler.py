"""Compiled losses vs hand-written eager torch, and the population evaluator vs one by one.

Every number is a ratio of two timings taken side by side in this process (median of
repeats after warm-up), so the machine's speed cancels out. Ratios below 1 mean autoloss
is faster.

    python benchmarks/bench_compiler.py            # 1e5 and 1e6 inputs, 1 thread
    python benchmarks/bench_compiler.py --quick    # smaller, for a smoke run
    python benchmarks/bench_compiler.py --scaling  # 1 and 2 threads, 1e4 ... 4e6 rows

The hand-written baselines are the torchvision/mmdetection-style implementations in
tests/reference.py (plain eager torch with autograd).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference  # noqa: E402  (the independent hand-written losses)

from autoloss import catalog, zoo  # noqa: E402
from autoloss.search.operators import Grammar  # noqa: E402
from autoloss.compiler import CompiledLoss  # noqa: E402
from autoloss.population import PopulationEvaluator  # noqa: E402
from autoloss.signatures import BOX, SIGMOID  # noqa: E402


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    return paired([fn], repeats, warmup)[0]


def paired(fns, repeats: int, warmup: int = 2) -> list[float]:
    """Median times of several functions measured interleaved (A B A B ...), so drifts in
    the machine's speed hit all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def per_size(n: int) -> int:
    """Repeats for inputs of n elements: about 2e7 elements in all, at least 9 (a 1 ms
    call's median over 9 runs moves by 10 %)."""
    return max(9, 20_000_000 // n)


def fwd_bwd(loss_fn, inputs):
    def run():
        x = inputs[0].detach().requires_grad_(True)
        loss_fn(x, *inputs[1:]).sum().backward()
    return run


def losses(sizes, repeats):
    print("forward+backward, float32, 1 thread: compiled zoo loss / hand-written eager torch")
    print(f"{'loss':8s} {'N':>9s} {'eager ms':>10s} {'compiled ms':>12s} {'ratio':>7s}")
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in sizes:
        boxes = BOX.sample(n, g, dtype=torch.float32)
        logits = SIGMOID.sample(n // 4, g, dtype=torch.float32, classes=4)  # n elements
        for name, inputs in (("giou", boxes), ("diou", boxes), ("ciou", boxes),
                             ("focal", logits)):
            eager, compiled = paired([fwd_bwd(getattr(reference, name), inputs),
                                      fwd_bwd(zoo.build(name), inputs)], repeats(n))
            rows.append((name, n, eager, compiled))
            print(f"{name:8s} {n:9d} {eager * 1e3:10.2f} {compiled * 1e3:12.2f} "
                  f"{compiled / eager:7.3f}")
    worst = max(c / e for _, _, e, c in rows)
    print(f"worst ratio {worst:.3f}, geometric mean "
          f"{statistics.geometric_mean([c / e for _, _, e, c in rows]):.3f}\n")
    return rows


def scaling(rows=(10_000, 100_000, 250_000, 1_000_000, 4_000_000), threads=(1, 2)):
    """Compiled / eager at each thread count: the chunked runtime must scale as torch does."""
    print("forward+backward, float32: compiled / eager at each torch thread count "
          "(focal: N x 4 logits; giou, ciou: N box pairs)")
    print(f"{'loss':6s} {'N rows':>9s}" + "".join(f" {f'eager ms {t}t':>12s} {f'ratio {t}t':>9s}"
                                            for t in threads))
    g = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    out = []
    for n in rows:
        logits = SIGMOID.sample(n, g, dtype=torch.float32, classes=4)
        boxes = BOX.sample(n, g, dtype=torch.float32)
        for name, inputs in (("focal", logits), ("giou", boxes), ("ciou", boxes)):
            line = f"{name:6s} {n:9d}"
            for t in threads:
                torch.set_num_threads(t)
                eager, compiled = paired([fwd_bwd(getattr(reference, name), inputs),
                                          fwd_bwd(zoo.build(name), inputs)],
                                         max(9, per_size(n * inputs[0].shape[1]) // 2))
                out.append((name, n, t, compiled / eager))
                line += f" {eager * 1e3:12.2f} {compiled / eager:9.3f}"
            print(line, flush=True)
    torch.set_num_threads(before)
    for t in threads:
        for name in ("focal", "giou", "ciou"):
            worst = max(r for m, _, k, r in out if m == name and k == t)
            print(f"{t} thread(s) {name}: worst ratio {worst:.3f}")
    print()
    return out


def inductor(sizes, repeats):
    print("the same with backend='inductor' (torch.compile of the generated code, opt-in)")
    print(f"{'loss':8s} {'N':>9s} {'eager ms':>10s} {'inductor ms':>12s} {'ratio':>7s} "
          f"{'compile s':>10s}")
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        boxes = BOX.sample(n, g, dtype=torch.float32)
        logits = SIGMOID.sample(n // 4, g, dtype=torch.float32, classes=4)
        for name, inputs in (("giou", boxes), ("diou", boxes), ("ciou", boxes),
                             ("focal", logits)):
            spec = catalog.get(name)
            fast = CompiledLoss(spec.expression, spec.signature, name=name, backend="inductor")
            start = time.perf_counter()
            fwd_bwd(fast, inputs)()
            compile_s = time.perf_counter() - start
            eager, compiled = paired([fwd_bwd(getattr(reference, name), inputs),
                                      fwd_bwd(fast, inputs)], repeats(n))
            print(f"{name:8s} {n:9d} {eager * 1e3:10.2f} {compiled * 1e3:12.2f} "
                  f"{compiled / eager:7.3f} {compile_s:10.1f}")
    print()


def exported(sizes, repeats):
    """The standalone module written by autoloss export vs the compiled loss."""
    import tempfile

    from autoloss import export

    print("exported module (autoloss export) / compiled zoo loss, forward+backward")
    print(f"{'loss':8s} {'N':>9s} {'compiled ms':>12s} {'exported ms':>12s} {'ratio':>7s}")
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            boxes = BOX.sample(n, g, dtype=torch.float32)
            logits = SIGMOID.sample(n // 4, g, dtype=torch.float32, classes=4)
            for name, inputs in (("giou", boxes), ("ciou", boxes), ("focal", logits)):
                path = export.to_file(zoo.compiled(name), f"{tmp}/{name}.py")
                module = export.load(path)
                fn = getattr(module, module.__all__[0])
                compiled, written = paired([fwd_bwd(zoo.build(name), inputs),
                                            fwd_bwd(fn, inputs)], repeats(n))
                print(f"{name:8s} {n:9d} {compiled * 1e3:12.2f} {written * 1e3:12.2f} "
                      f"{written / compiled:7.3f}")
    print()


def candidates(n: int, kind: str = "evolved", seed: int = 0):
    """256 related candidates, two ways:

    * ``evolved``: as the search produces them: children of the zoo box losses made by the
      search's own operators (mutation, crossover) from random earlier members;
    * ``grafted``: a zoo box loss plus or times a small random tree (the seed is shared).
    """
    from autoloss.expr import Call
    from autoloss.search import load
    from autoloss.search.operators import crossover, mutate

    rng = random.Random(seed)
    grammar = Grammar.of(load("box-regression").slots["reg"])
    seeds = [s.expression for s in catalog.of_signature("box") if s.compiles]
    if kind == "grafted":
        small = Grammar(grammar.primitives, grammar.terminals, max_depth=3)
        return [Call(rng.choice(("add", "mul")), (seeds[i % len(seeds)], small.tree(rng)))
                for i in range(n)]
    pool, out = list(seeds), []
    while len(out) < n:
        child = rng.choice(pool)
        if rng.random() < 0.3:
            child = crossover(rng, child, rng.choice(pool), grammar)
        child, _ = mutate(rng, child, grammar)
        pool.append(child)
        out.append(child)
    return out


def population_bench(n_candidates: int, n_rows: int, repeats: int):
    print(f"population: {n_candidates} candidates on one batch of {n_rows} box pairs, float32")
    g = torch.Generator().manual_seed(1)
    pred, target = BOX.sample(n_rows, g, dtype=torch.float32)
    for kind in ("grafted", "evolved"):
        exprs = candidates(n_candidates, kind)
        start = time.perf_counter()
        compiled = [CompiledLoss(e, BOX, name=f"c{i}", mode="search") for i, e in enumerate(exprs)]
        for c in compiled:
            c.function([False] * 8)
        compile_s = time.perf_counter() - start

        def one_by_one():
            for c in compiled:
                c(pred, target)

        def interpreter_one_by_one():  # no sharing: a fresh evaluator (terminals) per candidate
            for e in exprs:
                PopulationEvaluator(BOX, (pred, target), mode="search").values([e])

        def together():
            PopulationEvaluator(BOX, (pred, target), mode="search").values(exprs)

        a, a2, b = paired([one_by_one, interpreter_one_by_one, together], repeats, warmup=1)
        print(f"  {kind:8s} values: compiled one by one {a * 1e3:7.1f} ms (plus {compile_s:.1f} s "
              f"of compiling), evaluator one by one {a2 * 1e3:7.1f} ms, population "
              f"{b * 1e3:7.1f} ms -> {a / b:.1f}x / {a2 / b:.1f}x faster")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scaling", action="store_true",
                        help="only the thread-scaling table (1 and 2 threads, 1e4 ... 4e6 rows)")
    parser.add_argument("--inductor", action="store_true",
                        help="also time backend='inductor' (needs a C++ compiler; slow first compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.scaling:
        print(f"torch {torch.__version__}\n")
        scaling()
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    if args.quick:
        quick = lambda n: 3  # noqa: E731
        losses([10_000], quick)
        exported([10_000], quick)
        population_bench(32, 10_000, 2)
    else:
        losses([100_000, 1_000_000], per_size)
        exported([100_000, 1_000_000], per_size)
        if args.inductor:
            inductor([100_000, 1_000_000], per_size)
        population_bench(256, 100_000, 3)


if __name__ == "__main__":
    main()
