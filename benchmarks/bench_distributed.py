"""Throughput and per-trial overhead of the search backends, on the same search.

The search: alpha-IoU's alpha on boxsim (``--scale``; 0.5 makes one proxy run take >= 20 s
on one thread), random strategy, two objectives (metric x size: no pruner and no scheduler,
so every backend runs every trial to its end). Each backend runs it from the command line as
a user would, in a fresh run folder:

* ``local``: one process, one torch thread (SQLite), the reference;
* ``workers``: ``--workers 2 --storage journal``, one thread each;
* ``ray``: ``--backend ray --max-concurrent 2 --cpus-per-trial 1`` on a local Ray (started by
  the search; ``--address`` for an existing cluster).

Throughput is finished trials per minute between the first trial's start and the last
one's end (from the storage's timestamps; start-up apart, quoted separately). A trial's
overhead is its wall time in the storage (ask to tell) less the seconds its proxy ran (the
``proxy_s`` it records): sampling, filters, storage, and for Ray the scheduling and
transport of the candidate and its results.

    python benchmarks/bench_distributed.py [--trials 8] [--scale 0.5] [--address A]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoloss.search.runs import Run

SPACE = """
[search]
description = "benchmark: alpha-IoU's alpha on boxsim"
strategy = "random"
trials = {trials}
seed = 0
[proxy]
name = "boxsim"
budget = 200
scale = {scale}
[objective]
metric = "error_auc"
direction = "minimize"
complexity = true
[slots.reg]
signature = "box"
mode = "params"
seeds = ["alpha_iou"]
[validation]
top_k = 1
seeds = 1
"""

BACKENDS = {
    "local": [],
    "workers": ["--workers", "2", "--storage", "journal"],
    "ray": ["--backend", "ray", "--max-concurrent", "2", "--cpus-per-trial", "1"],
}


def measure(name: str, space: Path, runs: Path, address: str | None) -> dict:
    extra = list(BACKENDS[name]) + (["--address", address] if name == "ray" and address else [])
    cmd = [sys.executable, "-m", "autoloss.cli", "search", str(space), "--runs-dir", str(runs),
           "--name", name, "--threads", "1", "--no-validate", "--no-report", "--quiet"] + extra
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stdout}\n{out.stderr}")
    run = Run(runs / name)
    done = [t for t in run.trials() if t.state.is_finished()
            and not t.user_attrs.get("interrupted")]
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    span = (last - first).total_seconds()
    ran = [t for t in done if t.user_attrs.get("result", {}).get("proxy_s")]
    proxy = [t.user_attrs["result"]["proxy_s"] for t in ran]
    over = [(t.datetime_complete - t.datetime_start).total_seconds() - p
            for t, p in zip(ran, proxy)]
    return {"backend": name, "trials": len(done), "span_s": span, "command_s": wall,
            "per_min": 60 * len(done) / span, "proxy_s": statistics.mean(proxy),
            "overhead_s": statistics.mean(over),
            "overhead_pct": 100 * statistics.mean(over) / statistics.mean(proxy)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--address", help="an existing Ray cluster (default: a local Ray)")
    ap.add_argument("--backends", default="local,workers,ray")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "bench.toml"
        space.write_text(SPACE.format(trials=args.trials, scale=args.scale))
        for name in args.backends.split(","):
            rows.append(measure(name, space, Path(tmp) / "runs", args.address))
            r = rows[-1]
            print(f"{name:8s} {r['trials']} trials in {r['span_s']:.0f} s ({r['command_s']:.0f} s "
                  f"with start-up): {r['per_min']:.2f} trials/min; proxy {r['proxy_s']:.1f} s "
                  f"a trial, overhead {r['overhead_s']:.2f} s = {r['overhead_pct']:.1f} %",
                  flush=True)
    base = next((r for r in rows if r["backend"] == "local"), None)
    if base:
        for r in rows:
            print(f"{r['backend']:8s} speed-up {r['per_min'] / base['per_min']:.2f}x over one "
                  "local worker")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
