"""``digits``: a real, small one-stage detector on canvases of handwritten digits.

Canvases of 64 x 64 px hold 1 to 5 digits from scikit-learn's bundled digits dataset
(8 x 8 images, no download), upscaled by a random factor (12 to 28 px) and placed at random;
10 classes. The images are split 80/20 into train and validation pools and 8,000 training
and 300 validation canvases are drawn from them, all fixed by ``data_seed`` (0): like a
real benchmark the data stay put while the run's seed drives initialisation and batches.
The training set is large enough that 4x the default budget (12,000 steps, 24 epochs)
still improves on it; with 2,000 canvases the longer runs overfit and ranked the losses
by how fast they overfit.

The detector is FCOS-style, in plain torch: a stride-8 convolutional backbone and a
GroupNorm head tower (about 110k parameters in all), a classification branch (sigmoid,
prior 0.01) and a box branch predicting (l, t, r, b) distances, optionally an IoU-quality
branch. Points are
assigned with FCOS centre sampling (radius 1.5 strides, ties to the smaller box); any other
assigner with the same signature can be passed in. The ``reg`` slot takes either a ``box``
loss on decoded boxes or a ``coord`` loss on the (l, t, r, b) distances in stride units,
as real detectors do. Training: AdamW (one-cycle schedule, peak lr 5e-3) for 3,000 steps
of 48 canvases (options ``lr`` and ``batch``), losses summed and normalised by the number
of positive points. Batches of 16 were cheaper but ranked the losses by how fast they
start: losses that weigh precise boxes (alpha-IoU, CSE-Autoloss-B's) came 18th and 19th at
3,000 steps and 1st and 2nd at 4x that (see docs/proxies.md). The primary metric is COCO
mAP@[.5:.95] from pycocotools (AP50 and AP75 reported too) after class-wise NMS.
"""
from __future__ import annotations

import contextlib
import io
import math
from functools import lru_cache
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import (CandidateFailure, Metrics, check_losses, finite, no_report, per_positive,
                   seeded)
from ..signatures import SIGNATURES, box_regression
from .geometry import aligned_iou, box_iou

CANVAS = 64
STRIDE = 8
CLASSES = 10


# ---------------------------------------------------------------------------------- data
@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0
    return images, torch.tensor(data.target, dtype=torch.long)


def canvases(n: int, images: torch.Tensor, labels: torch.Tensor, g: torch.Generator,
             size: int = CANVAS, max_digits: int = 5, sizes=(12, 28)):
    """``n`` canvases (n, 1, size, size) with their boxes (xyxy) and labels."""
    out = torch.zeros(n, 1, size, size)
    boxes, classes = [], []
    for i in range(n):
        k = int(torch.randint(1, max_digits + 1, (1,), generator=g))
        bs, cs = [], []
        for _ in range(k):
            for _attempt in range(20):
                j = int(torch.randint(0, len(images), (1,), generator=g))
                side = int(torch.randint(sizes[0], sizes[1] + 1, (1,), generator=g))
                x0 = int(torch.randint(0, size - side + 1, (1,), generator=g))
                y0 = int(torch.randint(0, size - side + 1, (1,), generator=g))
                patch = F.interpolate(images[j][None, None], size=(side, side), mode="bilinear",
                                      align_corners=False)[0, 0]
                ys, xs = torch.nonzero(patch > 0.25, as_tuple=True)
                if len(xs) == 0:
                    continue
                box = [x0 + xs.min().item(), y0 + ys.min().item(), x0 + xs.max().item() + 1,
                       y0 + ys.max().item() + 1]
                if bs and _max_iou(box, bs) > 0.3:
                    continue
                region = out[i, 0, y0:y0 + side, x0:x0 + side]
                torch.maximum(region, patch, out=region)
                bs.append(box)
                cs.append(int(labels[j]))
                break
        boxes.append(torch.tensor(bs, dtype=torch.float32).reshape(-1, 4))
        classes.append(torch.tensor(cs, dtype=torch.long))
    return out, boxes, classes


def _max_iou(box, others) -> float:
    b = torch.tensor([box], dtype=torch.float32)
    return float(box_iou(b, torch.tensor(others, dtype=torch.float32)).max())


@lru_cache(maxsize=2)
def split(seed: int, train: int, val: int, size: int = CANVAS):
    """Train and validation canvases, built once per process (read-only: callers index them)."""
    images, labels = _digits()
    perm = torch.randperm(len(images), generator=seeded(seed))
    cut = int(0.8 * len(images))
    g = seeded(seed + 1)
    tr = canvases(train, images[perm[:cut]], labels[perm[:cut]], g, size)
    va = canvases(val, images[perm[cut:]], labels[perm[cut:]], g, size)
    return tr, va


# -------------------------------------------------------------------------------- model
class Detector(nn.Module):
    """FCOS-style single-level detector (stride 8)."""

    def __init__(self, classes: int = CLASSES, width: int = 64, quality: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(32, width, 3, 2, 1), nn.ReLU(inplace=True))
        self.tower = nn.Sequential(  # GroupNorm in the head tower, as FCOS
            nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(8, width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1), nn.GroupNorm(8, width), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(width, classes, 3, 1, 1)
        self.reg = nn.Conv2d(width, 4, 3, 1, 1)
        self.iou = nn.Conv2d(width, 1, 3, 1, 1) if quality else None
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.normal_(self.reg.weight, std=0.01)
        nn.init.constant_(self.reg.bias, math.log(1.5))

    def forward(self, x: torch.Tensor):
        f = self.tower(self.stem(x))
        n = x.shape[0]
        cls = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, self.cls.out_channels)
        # distances in pixels: exp of the raw output, in stride units
        ltrb = self.reg(f).permute(0, 2, 3, 1).reshape(n, -1, 4).clamp(max=6.0).exp() * STRIDE
        iou = None if self.iou is None else self.iou(f).permute(0, 2, 3, 1).reshape(n, -1)
        return cls, ltrb, iou


def points(size: int = CANVAS, stride: int = STRIDE) -> torch.Tensor:
    c = (torch.arange(size // stride, dtype=torch.float32) + 0.5) * stride
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


# ---------------------------------------------------------------------------- assigners
def center_sampling(pts: torch.Tensor, boxes: torch.Tensor, stride: int = STRIDE,
                    radius: float = 1.5) -> torch.Tensor:
    """FCOS centre sampling: the index of the gt each point regresses, -1 for background.

    A point is positive for a gt when it lies inside the box and within ``radius`` strides
    of its centre; among several gts the smallest box wins.
    """
    if len(boxes) == 0:
        return torch.full((len(pts),), -1, dtype=torch.long)
    x, y = pts[:, 0:1], pts[:, 1:2]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    near = ((x - cx).abs() < radius * stride) & ((y - cy).abs() < radius * stride)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(len(pts), -1)
    area = torch.where(inside & near, area, torch.full_like(area, math.inf))
    best, idx = area.min(1)
    return torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))


def inside_box(pts: torch.Tensor, boxes: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Plain FCOS: every point inside a box is positive (smallest box wins)."""
    return center_sampling(pts, boxes, stride, radius=1e9)


ASSIGNERS = {"center_sampling": center_sampling, "inside_box": inside_box}


@lru_cache(maxsize=2)
def assignments(assigner: Callable, data_seed: int, train: int, val: int, canvas: int = CANVAS):
    """Per training canvas of ``split(data_seed, train, val, canvas)``: the positive points
    and the box and class each point regresses. Built once per process, like the data (a
    search's trials share them; read-only)."""
    (_, boxes, classes), _ = split(data_seed, train, val, canvas)
    pts = points(canvas)
    out = []
    for b, c in zip(boxes, classes):
        assigned = assigner(pts, b)
        index = assigned.clamp(min=0)
        out.append((assigned >= 0, b[index], c[index]))
    return tuple(out)


# ----------------------------------------------------------------------------- inference
def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices kept, by decreasing score."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes)
    keep = torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if keep[i]:
            keep[i + 1:] &= iou[i, i + 1:] <= threshold
    return order[keep]


def detect(cls, ltrb, iou, pts, score_threshold=0.05, top_k=100, nms_threshold=0.6):
    """Per image: boxes, scores, labels after class-wise NMS."""
    scores = torch.sigmoid(cls)
    if iou is not None:
        scores = torch.sqrt(scores * torch.sigmoid(iou)[..., None])
    out = []
    for s, d in zip(scores, ltrb):
        flat = s.reshape(-1)
        k = min(top_k, flat.numel())
        val, idx = flat.topk(k)
        keep = val > score_threshold
        val, idx = val[keep], idx[keep]
        p, c = idx // s.shape[1], idx % s.shape[1]
        boxes = torch.cat([pts[p] - d[p, :2], pts[p] + d[p, 2:]], 1)
        offset = c[:, None].float() * (4 * CANVAS)  # class-wise NMS in one call
        kept = nms(boxes + offset, val, nms_threshold)
        out.append((boxes[kept], val[kept], c[kept]))
    return out


def coco_map(gt_boxes, gt_labels, detections) -> dict[str, float]:
    """COCO mAP@[.5:.95], AP50 and AP75 from pycocotools (its printing silenced)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        images.append({"id": i, "width": CANVAS, "height": CANVAS})
        for b, c in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": c + 1,
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": 0})
    for i, (boxes, scores, labels) in enumerate(detections):
        for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({"image_id": i, "category_id": c + 1, "score": s,
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    if not results:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(CLASSES)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=float)
    return {"map": float(max(stats[0], 0.0)), "ap50": float(max(stats[1], 0.0)),
            "ap75": float(max(stats[2], 0.0))}


# -------------------------------------------------------------------------------- proxy
class Digits:
    """The digits detector proxy (see the module docstring)."""

    name = "digits"
    slots = {"cls": "sigmoid", "reg": box_regression()}
    metric = "map"
    direction = "maximize"
    #: trained with Adam: a multiple of a loss trains the same
    gradient_scale_matters = False
    default_budget = 3000
    default_scale = 1.0
    train_canvases = 8000
    val_canvases = 300
    batch = 48
    lr = 5e-3

    def __init__(self, assigner: str | Callable = "center_sampling", cls_target: str = "onehot",
                 quality_branch: bool = False, weights: Optional[Mapping[str, float]] = None,
                 data_seed: int = 0, canvas: int = CANVAS, batch: Optional[int] = None,
                 lr: Optional[float] = None):
        self.assigner = ASSIGNERS[assigner] if isinstance(assigner, str) else assigner
        if cls_target not in ("onehot", "iou"):
            raise ValueError("cls_target must be 'onehot' or 'iou' (the IoU of the predicted "
                             f"box at the positive class, for QFL/VFL), got {cls_target!r}")
        self.cls_target = cls_target
        self.quality_branch = quality_branch
        self.weights = {"cls": 1.0, "reg": 1.0, "iou": 1.0}
        self.weights.update(weights or {})
        self.data_seed = data_seed
        self.canvas = canvas
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise ValueError(f"batch must be a positive number of canvases, got {batch!r}")
        if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr < 1):
            raise ValueError(f"lr must be a peak learning rate in (0, 1), got {lr!r}")
        self.batch = batch or type(self).batch
        self.lr = float(lr or type(self).lr)

    def run(self, losses: Mapping[str, Callable], budget: Optional[int] = None, seed: int = 0,
            report=None, scale: Optional[float] = None) -> Metrics:
        check_losses(self, losses)
        report = report or no_report
        steps = int(budget or self.default_budget)
        scale = scale or self.default_scale
        data = (self.data_seed, max(self.batch, int(self.train_canvases * scale)),
                max(8, int(self.val_canvases * scale)), self.canvas)
        (train_x, _, _), (val_x, val_b, val_c) = split(*data)
        targets = assignments(self.assigner, *data)
        torch.manual_seed(seed)
        # channels-last: oneDNN's convolutions, the backward ones above all, run about a
        # third faster in that layout here (one-channel images are already in it)
        model = Detector(quality=self.quality_branch).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps,
                                                    pct_start=0.1)
        pts = points(self.canvas)
        g = seeded(seed + 2)
        # the three intermediate mAPs (a COCO evaluation each) only when someone listens
        checkpoints = {max(1, round(steps * k / 4)) for k in (1, 2, 3)} \
            if report is not no_report else set()
        reg_signature = getattr(getattr(losses["reg"], "signature", None), "name", "box")
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(train_x), (self.batch,), generator=g)
            model.train()
            cls, ltrb, iou = model(train_x[idx])
            total = self._loss(losses, reg_signature, cls, ltrb, iou, pts,
                               [targets[i] for i in idx.tolist()])
            finite(total, f"the training loss at step {step}")
            opt.zero_grad()
            total.backward()
            opt.step()
            sched.step()
            if step in checkpoints:
                report(step, self._evaluate(model, val_x, val_b, val_c, pts)["map"])
        result = self._evaluate(model, val_x, val_b, val_c, pts)
        report(steps, result["map"])
        return Metrics(self.metric, result["map"], self.direction,
                       extra={"ap50": result["ap50"], "ap75": result["ap75"]})

    def _loss(self, losses, reg_signature, cls, ltrb, iou, pts, targets):
        n, p, c = cls.shape
        pos = torch.cat([t[0] for t in targets])
        gt_boxes = torch.cat([t[1] for t in targets])[pos]
        gt_classes = torch.cat([t[2] for t in targets])[pos]
        num_pos = max(1.0, float(pos.sum()))
        flat_pts = pts.repeat(n, 1)[pos]
        d = ltrb.reshape(-1, 4)[pos]
        pred_boxes = torch.cat([flat_pts - d[:, :2], flat_pts + d[:, 2:]], 1)
        with torch.no_grad():
            quality = aligned_iou(pred_boxes, gt_boxes)
        target = torch.zeros(n * p, c)
        pos_rows = pos.nonzero()[:, 0]
        target[pos_rows, gt_classes] = quality.clamp(min=1e-6) if self.cls_target == "iou" else 1.0
        total = self.weights["cls"] * per_positive(losses["cls"], cls.reshape(-1, c), target,
                                                   num_pos=num_pos)
        reg_inputs = SIGNATURES[reg_signature].from_detector(d, flat_pts, gt_boxes, STRIDE)
        reg = losses["reg"](*reg_inputs, reduction="sum")
        total = total + self.weights["reg"] * reg / num_pos
        if iou is not None:
            iou_target = torch.zeros(n * p)
            iou_target[pos_rows] = quality
            branch = F.binary_cross_entropy_with_logits(iou.reshape(-1)[pos], iou_target[pos],
                                                        reduction="sum") / num_pos
            total = total + self.weights["iou"] * branch
        return total

    def _evaluate(self, model, images, gt_boxes, gt_labels, pts) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            dets = []
            for start in range(0, len(images), 100):
                cls, ltrb, iou = model(images[start:start + 100])
                if not torch.isfinite(cls).all() or not torch.isfinite(ltrb).all():
                    raise CandidateFailure("the detector's outputs became non-finite")
                dets += detect(cls, ltrb, iou, pts)
        return coco_map(gt_boxes, gt_labels, dets)
