"""Label assigners: time per call, and how it grows with priors and ground truths.

Every registered assigner on one image (B = 1) with P ~ 10^3, 10^4, 10^5 point priors
(three levels, strides 8/16/32, on a square canvas of 224, 704 and 2208 px) and G = 5,
50, 200 ground-truth boxes, C = 10 classes, float32, 1 thread (median of repeats, in
this process). Predictions (for the prediction-aware assigners) are jittered copies of a
box the prior lies in for half the priors, random boxes around the prior for the rest.
The growth exponents are the slopes of log time against log P (at G = 50) and log G (at
P ~ 10^4).

``--ratio`` also times the straight ports of the references (tests/reference_assigners.py:
mmdetection, ultralytics, the OTA repository; per image, their own loops) against the
batched assigners on a batch of B = 8 images at P ~ 10^4, G = 50, side by side (and, with
``--digits``, on the digits batch): the speed-up of batching and vectorizing. ``--digits``
times the setting of the digits proxy (B = 48 canvases of 64 px, strides 8 and 16: P = 80,
5 boxes each).

    python benchmarks/bench_assigners.py                  # the full grid
    python benchmarks/bench_assigners.py --quick          # P ~ 10^3, 10^4 only
    python benchmarks/bench_assigners.py --ratio --digits
    python benchmarks/bench_assigners.py --no-grid --step      # assignment / digits step

``--step`` measures the issue's target, assignment cost <= 10 % of a digits training step:
for each assigner, the real two-level digits detector (``levels=2``, focal + GIoU, batch
48) is trained for some steps and the median time of one whole training step (forward,
assignment where it runs each step, loss, backward, AdamW) is set beside the median time
of one assignment of a batch on that detector's current predictions (building the
``AssignerInputs`` included), in this process, one after the other. The static assigners
(``maxiou``, ``fcos``, ``atss``, digits' own ``center_sampling``) are computed once per
dataset and cached, so their cost per step is an index; their ratio is what they would
cost if they ran every step.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from autoloss import assigners  # noqa: E402
from autoloss.assigners import AssignerInputs  # noqa: E402
from autoloss.assigners.testing import grid  # noqa: E402

STRIDES = (8, 16, 32)
CANVAS = {1_000: 224, 10_000: 704, 100_000: 2208}


def median_time(fn, budget: float = 1.0, max_repeats: int = 7) -> float:
    start = time.perf_counter()
    fn()                                              # warm-up (and scipy's import)
    if time.perf_counter() - start > 3 * budget:      # slow: one timed call is enough
        max_repeats = 1
    times = []
    while len(times) < max_repeats and (len(times) < 2 or sum(times) < budget):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scene(canvas: int, n_gt: int, batch: int = 1, num_classes: int = 10, strides=STRIDES,
          seed: int = 0, dtype=torch.float32, device: str = "cpu") -> AssignerInputs:
    g = torch.Generator().manual_seed(seed)
    pts, st = grid(canvas, strides, dtype=torch.float64)
    n = len(pts)
    wh = (torch.rand(batch, n_gt, 2, generator=g, dtype=torch.float64) * 0.27 + 0.03) * canvas
    xy = torch.rand(batch, n_gt, 2, generator=g, dtype=torch.float64) * (canvas - wh)
    boxes = torch.cat([xy, xy + wh], -1)
    labels = torch.randint(0, num_classes, (batch, n_gt), generator=g)
    inside = ((pts[None, None] > boxes[..., None, :2]) & (pts[None, None] < boxes[..., None, 2:])
              ).all(-1)                                                         # (B, G, P)
    pick = (inside * torch.rand(batch, n_gt, n, generator=g, dtype=torch.float64)).argmax(1)
    near = inside.any(1) & (torch.rand(batch, n, generator=g) < 0.5)            # (B, P)
    target = torch.gather(boxes, 1, pick[..., None].expand(-1, -1, 4))
    size = (target[..., 2:] - target[..., :2]).repeat(1, 1, 2)
    jittered = target + (torch.rand(batch, n, 4, generator=g, dtype=torch.float64) - 0.5) \
        * 0.6 * size
    half = (torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * 2 + 1) * st[:, None]
    around = torch.cat([pts - half, pts + half], -1)
    pred = torch.where(near[..., None], jittered, around)
    pred = torch.cat([torch.minimum(pred[..., :2], pred[..., 2:] - 0.5), pred[..., 2:]], -1)
    logits = torch.randn(batch, n, num_classes, generator=g, dtype=torch.float64) - 2
    cls = torch.gather(labels, 1, pick)
    boost = torch.zeros_like(logits).scatter_(2, cls[..., None], 3.0) * near[..., None]
    def put(t):
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    return AssignerInputs(priors=put(pts), strides=put(st), gt_boxes=put(boxes),
                          gt_labels=put(labels), scores=put(logits + boost),
                          pred_boxes=put(pred), image_size=(canvas, canvas))


def timed(name: str, x: AssignerInputs) -> float:
    a = assigners.build(name)
    if x.device.type == "cuda":
        def call():
            a(x)
            torch.cuda.synchronize()
        return median_time(call)
    return median_time(lambda: a(x))


def slope(xs, ys) -> float:
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def fmt(t: float) -> str:
    return f"{t * 1e3:9.1f}" if t < 10 else f"{t:8.1f}s"


def grid_table(sizes, gts, names, device):
    print(f"time per call in ms, one image, float32, {torch.get_num_threads()} thread(s), "
          f"{device}")
    cols = [(p, g) for p in sizes for g in gts]
    head = " ".join(f"{'P=%.0e' % n_p + ' G=%d' % g:>15}" for n_p, g in cols)
    print(f"{'assigner':<10} {head}   P-exp  G-exp")
    scenes = {(p, g): scene(CANVAS[p], g, device=device) for p, g in cols}
    for p in sizes:
        print(f"  (P ~ {p:g}: exactly {scenes[(p, gts[0])].num_priors} priors)")
    for name in names:
        times = {c: timed(name, scenes[c]) for c in cols}
        row = " ".join(f"{fmt(times[c]):>15}" for c in cols)
        g_mid = 50 if 50 in gts else gts[len(gts) // 2]
        p_mid = 10_000 if 10_000 in sizes else sizes[-1]
        pe = slope([scenes[(p, g_mid)].num_priors for p in sizes],
                   [times[(p, g_mid)] for p in sizes]) if len(sizes) > 1 else float("nan")
        ge = slope(list(gts), [times[(p_mid, g)] for g in gts]) if len(gts) > 1 else float("nan")
        print(f"{name:<10} {row}   {pe:5.2f}  {ge:5.2f}", flush=True)


def reference_call(name: str, x: AssignerInputs):
    """The per-image reference ports on the batch, in our conventions' inputs."""
    import reference_assigners as ref

    a = assigners.build(name)
    sizes = [len(i) for i in x.level_slices]
    strided = torch.cat([x.centers, x.strides[:, None], x.strides[:, None]], 1)
    if name == "tal":
        return lambda: ref.tal_assign(x.scores.sigmoid(), x.pred_boxes, x.centers,
                                      x.gt_labels[..., None], x.gt_boxes,
                                      x.gt_mask[..., None].to(x.dtype), a.topk, x.num_classes,
                                      a.alpha, a.beta, ciou=False)

    def per_image():
        for i in range(x.batch):
            b, c = x.gt_boxes[i], x.gt_labels[i]
            if name == "maxiou":
                ref.max_iou_assign(x.prior_boxes(a.anchor_scale), b, c)
            elif name == "atss":
                ref.atss_assign(x.prior_boxes(a.anchor_scale), sizes, b, c, a.topk)
            elif name == "fcos":
                ref.fcos_targets(x.priors, sizes, list(STRIDES), b, c, x.num_classes,
                                 a.regress_ranges)
            elif name == "simota":
                ref.simota_assign(strided, x.pred_boxes[i], x.scores[i].sigmoid(), b, c)
            elif name == "dsl":
                ref.dsl_assign(strided, x.pred_boxes[i], x.scores[i], b, c)
            elif name == "ota":
                p = x.pred_boxes[i]
                ltrb = torch.cat([x.centers - p[:, :2], p[:, 2:] - x.centers], 1)
                ref.ota_assign(list(x.centers.split(sizes)), list(STRIDES), x.scores[i], ltrb,
                               b, c, x.num_classes)
            elif name == "hungarian":
                h, w = x.image_size[i].tolist()
                ref.hungarian_assign(x.scores[i], x.pred_boxes[i], b, c, (h, w))
    return per_image


def ratio_table(names, digits: bool):
    settings = [("B = 8, P = 10164, G = 50", scene(CANVAS[10_000], 50, batch=8))]
    if digits:
        settings.append(("digits: B = 48, P = 80, G = 5", scene(64, 5, batch=48, strides=(8, 16))))
    for title, x in settings:
        print(f"\nbatched vs the per-image reference ports, {title}, float32, ms per batch")
        print(f"{'assigner':<10} {'autoloss':>10} {'reference':>10} {'speed-up':>9}")
        for name in names:
            ours = timed(name, x)
            theirs = median_time(reference_call(name, x), budget=2.0, max_repeats=3)
            print(f"{name:<10} {fmt(ours):>10} {fmt(theirs):>10} {theirs / ours:8.1f}x",
                  flush=True)


def digits_table(names):
    x = scene(64, 5, batch=48, strides=(8, 16))
    print(f"\ndigits-like batch: B = 48, P = {x.num_priors} (64 px, strides 8 and 16), "
          "G = 5, float32")
    for name in names:
        print(f"{name:<10} {fmt(timed(name, x))} ms", flush=True)


def digits_step_table(names, levels: int = 2, scale: float = 0.25):
    from autoloss import zoo
    from autoloss.assigners import Assigner
    from autoloss.proxies.digits import Digits, padded_targets, priors, split

    losses = {"cls": zoo.compiled("focal"), "reg": zoo.compiled("giou")}
    print(f"\nassignment vs one digits training step: levels={levels} (P = "
          f"{len(priors(64, levels)[0])}), batch 48, focal + GIoU, float32, "
          f"{torch.get_num_threads()} thread(s); ms, median")
    print(f"{'assigner':<16} {'runs':<11} {'step':>8} {'assign':>8} {'ratio':>7}")
    for name in ["center_sampling"] + list(names):
        proxy = Digits(assigner=name, levels=levels)
        data = proxy.data(scale)
        (train_x, _, _), _ = split(*data)
        targets = proxy.targets(data)
        gt = padded_targets(*data)
        torch.manual_seed(0)
        model = proxy.model()
        opt = torch.optim.AdamW(model.parameters(), lr=proxy.lr, weight_decay=1e-4)
        pts = priors(proxy.canvas, levels)
        g = torch.Generator().manual_seed(0)

        def batch():
            return torch.randint(0, len(train_x), (proxy.batch,), generator=g)

        def step():
            idx = batch()
            model.train()
            out = model(train_x[idx])
            total = proxy.step_loss(losses, "box", out, pts, targets, idx)
            opt.zero_grad()
            total.backward()
            opt.step()

        for _ in range(20):                          # past the first, slowest steps
            step()
        t_step = median_time(step, budget=3.0, max_repeats=40)
        idx = batch()
        with torch.no_grad():
            out = model(train_x[idx])
        if isinstance(proxy.assigner, Assigner):
            def assign():
                proxy.assigner(proxy.assigner_inputs(out, pts, gt, idx))
        else:                                        # digits' own: one canvas at a time
            boxes = split(*data)[0][1]

            def assign():
                for i in idx.tolist():
                    proxy.assigner(pts[0], boxes[i], pts[1][:, None])
        t_assign = median_time(assign, budget=1.0, max_repeats=20)
        runs = "every step" if proxy.dynamic else "cached"
        print(f"{name:<16} {runs:<11} {t_step * 1e3:8.1f} {t_assign * 1e3:8.2f} "
              f"{100 * t_assign / t_step:6.1f}%", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="P ~ 1e3 and 1e4 only")
    parser.add_argument("--no-grid", action="store_true", help="skip the P x G grid")
    parser.add_argument("--ratio", action="store_true", help="also time the reference ports")
    parser.add_argument("--digits", action="store_true", help="also the digits-proxy setting")
    parser.add_argument("--step", action="store_true",
                        help="assignment time / one digits training step (two levels)")
    parser.add_argument("--only", nargs="*", default=None, help="assigner ids")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.only or assigners.names()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    if not args.no_grid:
        grid_table(sizes, [5, 50, 200], names, args.device)
    if args.ratio:
        ratio_table(names, args.digits)
    if args.digits:
        digits_table(names)
    if args.step:
        digits_step_table(names)


if __name__ == "__main__":
    main()
