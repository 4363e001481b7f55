"""The assigner table: focal + GIoU on digits under every label assigner (issue 17).

Each row trains the digits detector with focal + GIoU and one assigner over several seeds
and reports COCO mAP (mean ± std over the seeds), AP50 and the time per run. Every
registry assigner runs on the two-level detector (``levels=2``, strides 8 and 16, where
the FCOS ranges and the ATSS per-level candidates mean something) with digits' scale
defaults (``autoloss.proxies.digits.DIGITS_DEFAULTS``); ``hungarian`` trains one-to-one and
is evaluated without NMS. Digits' own ``center_sampling`` rows (one level: the proxy's
default; two levels) are the reference. ``--soft`` adds rows where the assigner's soft
quality is QFL's target (``cls_target="quality"``).

    python benchmarks/assigner_table.py --budget 1000            # the README's table
    python benchmarks/assigner_table.py --seeds 1 --budget 100 --only tal,fcos

Results are cached in OUT/assigner_cache.json (the leaderboard's cache format, keyed on
the proxy's effective settings); writes OUT/assigner_table.md. One torch thread per run.
"""
from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import leaderboard  # noqa: E402

from autoloss import assigners  # noqa: E402

FOCAL_GIOU = {"cls": "focal", "reg": "giou"}


def rows(soft: bool = False):
    """(label, losses, digits options) of every row."""
    out = [("center_sampling (1 level, default)", FOCAL_GIOU, {}),
           ("center_sampling", FOCAL_GIOU, {"levels": 2})]
    out += [(name, FOCAL_GIOU, {"assigner": name, "levels": 2}) for name in assigners.names()]
    if soft:
        out += [(f"{name}, qfl on its quality", {"cls": "qfl", "reg": "giou"},
                 {"assigner": name, "levels": 2, "cls_target": "quality"})
                for name in ("simota", "dsl", "tal", "ota")]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=None,
                        help="training steps (default: digits' default budget)")
    parser.add_argument("--only", help="comma-separated row labels or assigner ids")
    parser.add_argument("--soft", action="store_true", help="add the QFL-on-quality rows")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--cached", action="store_true", help="run nothing, report the cache")
    parser.add_argument("--out", type=Path, default=leaderboard.OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    items = rows(args.soft)
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        items = [r for r in items if r[0] in wanted or r[2].get("assigner") in wanted]
        if not items:
            parser.error(f"--only: no row {sorted(wanted)}; rows: {[r[0] for r in rows(True)]}")
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [("digits", label, losses, options, args.seeds, args.budget)
            for label, losses, options in items]
    results = leaderboard.run_all(jobs, args.jobs, args.out / "assigner_cache.json",
                                  cached_only=args.cached)
    budget = args.budget or 3000
    md = [f"Measured {date.today()}: digits, focal + GIoU unless named, {budget} steps, "
          f"{args.seeds} seeds, 1 torch thread per run; mAP@[.5:.95] mean ± std over the seeds.",
          "", "| assigner | levels | mAP | AP50 | s per run |", "| --- | --- | --- | --- | --- |"]
    for (label, _, options), r in zip(items, results):
        if r is None:
            continue
        if "mean" not in r:
            md.append(f"| {label} | {options.get('levels', 1)} | failed: {r['failed']} | | |")
            continue
        md.append(f"| {label} | {options.get('levels', 1)} | {r['mean']:.4f} ± {r['std']:.4f} "
                  f"| {r['extra']['ap50']:.4f} | {r['seconds'] / args.seeds:.0f} |")
    text = "\n".join(md)
    (args.out / "assigner_table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
