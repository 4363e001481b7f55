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
assigned with FCOS centre sampling (radius 1.5 strides, ties to the smaller box), or:

- ``assigner=`` any id of :mod:`autoloss.assigners` (``maxiou``, ``fcos``, ``atss``,
  ``simota``, ``dsl``, ``tal``, ``ota``, ``hungarian``) with ``assigner_params=`` (a mapping,
  or its JSON text from the command line), an :class:`~autoloss.assigners.Assigner` built
  by hand, or a function ``(points, boxes) -> gt index per point`` as ``center_sampling``.
  Assigners that read only the ground truth are computed once per dataset and cached; the
  prediction-aware ones run every step on the detached logits and decoded boxes. Where a
  parameter is not given digits sets its own scale (``DIGITS_DEFAULTS``: anchors of 2
  strides for ``maxiou`` and ``atss``, FCOS ranges split at 16 px) instead of the
  registry's COCO-scale defaults. Max-IoU's ignored priors are left out of the
  classification loss.
- ``levels=2`` adds a stride-16 level (one stride-2 convolution on the stride-8 features,
  the head shared as in FCOS): 80 points instead of 64.
- ``cls_target="quality"`` puts the assigner's soft quality (TAL's normalised alignment,
  the IoU of SimOTA, DSL and OTA; 1 for the hard assigners) at the positive class, for
  QFL/VFL-style losses; ``"iou"`` the IoU of the predicted box; ``"onehot"`` 1.
- ``nms=`` None (default) evaluates with class-wise NMS unless the assigner is one-to-one
  (``hungarian``: top-100 scores as they are, an end-to-end detector); True/False force it.

The ``reg`` slot takes either a ``box``
loss on decoded boxes or a ``coord`` loss on the (l, t, r, b) distances in stride units,
as real detectors do. Training: AdamW (one-cycle schedule, peak lr 5e-3) for 3,000 steps
of 48 canvases (options ``lr`` and ``batch``), losses normalised by the number of positive
points and summed with ``weights`` (or combined by a multi-task ``weighting`` from
:mod:`autoloss.weighting`: uncertainty, gradnorm, dwa, self_balance, with
``weighting_params``; GradNorm balances the gradients on the last shared tower layer). Batches of 16 were cheaper but ranked the losses by how fast they
start: losses that weigh precise boxes (alpha-IoU, CSE-Autoloss-B's) came 18th and 19th at
3,000 steps and 1st and 2nd at 4x that (see docs/proxies.md). The primary metric is COCO
mAP@[.5:.95] from pycocotools (AP50 and AP75 reported too) after class-wise NMS.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from functools import lru_cache
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import assigners, weighting
from ..assigners import Assigner, AssignerInputs, Assignment
from ..weighting import Weighting
from ..errors import did_you_mean
from .base import (CandidateFailure, Metrics, check_losses, finite, no_report, per_positive,
                   seeded)
from ..signatures import SIGNATURES, box_regression
from .geometry import aligned_iou, box_iou

CANVAS = 64
STRIDE = 8
CLASSES = 10
#: the feature strides of the one- and two-level detectors
STRIDES = {1: (8,), 2: (8, 16)}


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
    """FCOS-style detector: one level (stride 8) or two (strides 8 and 16, shared head)."""

    def __init__(self, classes: int = CLASSES, width: int = 64, quality: bool = False,
                 levels: int = 1):
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
        self.strides = STRIDES[levels]
        # the stride-16 level: one stride-2 convolution on the stride-8 features (as FCOS
        # builds its extra levels); the head tower and branches are shared by the levels.
        # Made last, so that the one-level detector draws the same initial weights as before.
        self.down = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(inplace=True)) \
            if levels == 2 else None

    def forward(self, x: torch.Tensor):
        """Per image and point (the levels' points concatenated, finest first): class
        logits ``(n, P, C)``, (l, t, r, b) distances in pixels ``(n, P, 4)`` and the
        IoU-branch logits ``(n, P)`` (or None)."""
        f = self.stem(x)
        if self.down is None:
            return self._head(f, STRIDE)
        outs = [self._head(f, self.strides[0]), self._head(self.down(f), self.strides[1])]
        cls, ltrb, iou = (None if o[0] is None else torch.cat(o, 1) for o in zip(*outs))
        return cls, ltrb, iou

    def _head(self, f: torch.Tensor, stride: int):
        f = self.tower(f)
        n = f.shape[0]
        cls = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, self.cls.out_channels)
        # distances in pixels: exp of the raw output, in stride units
        ltrb = self.reg(f).permute(0, 2, 3, 1).reshape(n, -1, 4).clamp(max=6.0).exp() * stride
        iou = None if self.iou is None else self.iou(f).permute(0, 2, 3, 1).reshape(n, -1)
        return cls, ltrb, iou


def points(size: int = CANVAS, stride: int = STRIDE) -> torch.Tensor:
    c = (torch.arange(size // stride, dtype=torch.float32) + 0.5) * stride
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


def priors(size: int = CANVAS, levels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of every level, finest first, ``(P, 2)``, and the stride of each ``(P,)``
    (the order of the detector's outputs)."""
    pts = [points(size, s) for s in STRIDES[levels]]
    strides = torch.cat([torch.full((len(p),), float(s)) for p, s in zip(pts, STRIDES[levels])])
    return torch.cat(pts), strides


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
def assignments(assigner: Callable, data_seed: int, train: int, val: int, canvas: int = CANVAS,
                levels: int = 1):
    """Per training canvas of ``split(data_seed, train, val, canvas)``: the positive points
    and the box and class each point regresses, for one of digits' own assigners (a
    function of the points and one canvas's boxes; with two levels it also gets each
    point's stride). Built once per process, like the data (a search's trials share them;
    read-only)."""
    (_, boxes, classes), _ = split(data_seed, train, val, canvas)
    pts, strides = priors(canvas, levels)
    out = []
    for b, c in zip(boxes, classes):
        assigned = assigner(pts, b) if levels == 1 else assigner(pts, b, strides[:, None])
        index = assigned.clamp(min=0)
        out.append((assigned >= 0, b[index], c[index]))
    return tuple(out)


@lru_cache(maxsize=2)
def padded_targets(data_seed: int, train: int, val: int, canvas: int = CANVAS):
    """The training canvases' boxes ``(N, G, 4)``, labels ``(N, G)`` and validity mask
    ``(N, G)``, padded to the most boxes a canvas holds (what ``AssignerInputs`` takes)."""
    (_, boxes, classes), _ = split(data_seed, train, val, canvas)
    g = max(len(b) for b in boxes)
    out = (torch.zeros(len(boxes), g, 4), torch.zeros(len(boxes), g, dtype=torch.long),
           torch.zeros(len(boxes), g, dtype=torch.bool))
    for i, (b, c) in enumerate(zip(boxes, classes)):
        out[0][i, :len(b)], out[1][i, :len(b)], out[2][i, :len(b)] = b, c, True
    return out


#: the registry assigners' parameters that digits sets for its scale when not given: the
#: registry's defaults are for COCO (objects of 32 to 800 px, anchors of 4 or 8 strides,
#: FCOS ranges of 64 px per level), on digits' 12 to 28 px digits they would put every
#: positive on one level and leave max-IoU with low-quality matches only
DIGITS_DEFAULTS = {
    "fcos": {"regress_ranges": {1: ((-1.0, math.inf),),
                                2: ((-1.0, 16.0), (16.0, math.inf))}},
    "atss": {"anchor_scale": {1: 2.0, 2: 2.0}},
    "maxiou": {"anchor_scale": {1: 2.0, 2: 2.0}},
}

_STATIC: dict = {}


def static_assignment(assigner: Assigner, data_seed: int, train: int, val: int,
                      canvas: int = CANVAS, levels: int = 1) -> Assignment:
    """The assignment of every training canvas (fields ``(N, P)``) by a registry assigner
    that reads no prediction: computed once per process for the data and the assigner's
    parameters (the two latest kept, as the data), then indexed per batch."""
    key = (type(assigner), repr(assigner), data_seed, train, val, canvas, levels)
    if key not in _STATIC:
        boxes, labels, mask = padded_targets(data_seed, train, val, canvas)
        pts, strides = priors(canvas, levels)
        parts = [assigner(AssignerInputs(priors=pts, strides=strides,
                                         gt_boxes=boxes[i:i + 1000],
                                         gt_labels=labels[i:i + 1000],
                                         gt_mask=mask[i:i + 1000], num_classes=CLASSES))
                 for i in range(0, len(boxes), 1000)]
        while len(_STATIC) >= 2:
            _STATIC.pop(next(iter(_STATIC)))
        _STATIC[key] = Assignment(*(torch.cat([getattr(a, f) for a in parts])
                                    for f in ("gt_index", "labels", "quality", "weight",
                                              "ignore")), num_classes=CLASSES)
    return _STATIC[key]


def _rows(a: Assignment, idx: torch.Tensor) -> Assignment:
    """The assignment of the canvases ``idx`` of a whole-dataset assignment."""
    return Assignment(a.gt_index[idx], a.labels[idx], a.quality[idx], a.weight[idx],
                      a.ignore[idx], num_classes=a.num_classes)


def resolve_assigner(assigner, params: Optional[Mapping] = None, levels: int = 1):
    """``assigner`` as digits takes it: one of its own (``"center_sampling"``,
    ``"inside_box"``, or a function of points and boxes), a registry id (built with
    ``params`` over :data:`DIGITS_DEFAULTS`) or a built :class:`~autoloss.assigners.Assigner`."""
    if isinstance(params, str):                 # from the command line: --option k=JSON
        try:
            params = json.loads(params)
        except json.JSONDecodeError as err:
            raise ValueError(f"assigner_params given as text must be a JSON object such as "
                             f"'{{\"topk\": 9}}', got {params!r} ({err.msg})") from None
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"assigner_params must be a mapping of parameter names to values "
                         f"(e.g. {{'topk': 9}}), got {type(params).__name__}")
    if isinstance(assigner, str) and assigner in assigners.names():
        defaults = {k: v[levels] for k, v in DIGITS_DEFAULTS.get(assigner, {}).items()}
        return assigners.build(assigner, **{**defaults, **(params or {})})
    if params:
        raise ValueError(f"assigner_params are for an assigner of the registry given by name "
                         f"({', '.join(assigners.names())}); {assigner!r} takes none (build an "
                         "Assigner with its parameters and pass it, or name a registry id)")
    if isinstance(assigner, str):
        if assigner in ASSIGNERS:
            return ASSIGNERS[assigner]
        known = sorted(ASSIGNERS) + assigners.names()
        raise ValueError(f"assigner must be one of digits' own {sorted(ASSIGNERS)} or a "
                         f"registered one {assigners.names()}, got {assigner!r}; "
                         f"{did_you_mean(assigner, known)}")
    if isinstance(assigner, Assigner) or callable(assigner):
        return assigner
    raise ValueError(f"assigner must be a name, an autoloss.assigners.Assigner or a function "
                     f"(points, boxes) -> gt index per point, got {type(assigner).__name__}")


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


def detect(cls, ltrb, iou, pts, score_threshold=0.05, top_k=100,
           nms_threshold: Optional[float] = 0.6):
    """Per image: boxes, scores, labels after class-wise NMS (none with ``nms_threshold``
    None: the top-k boxes as they are, for a detector trained one-to-one)."""
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
        if nms_threshold is None:
            out.append((boxes, val, c))
            continue
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

    def __init__(self, assigner: str | Callable | Assigner = "center_sampling",
                 cls_target: str = "onehot", quality_branch: bool = False,
                 weights: Optional[Mapping[str, float]] = None, data_seed: int = 0,
                 canvas: int = CANVAS, batch: Optional[int] = None, lr: Optional[float] = None,
                 assigner_params: Optional[Mapping] = None, levels: int = 1,
                 nms: Optional[bool] = None, weighting: str = "fixed",
                 weighting_params: Optional[Mapping | str] = None):
        if isinstance(levels, bool) or levels not in STRIDES:
            raise ValueError(f"levels must be 1 (stride 8) or 2 (strides 8 and 16), "
                             f"got {levels!r}")
        self.levels = levels
        self.assigner = resolve_assigner(assigner, assigner_params, levels)
        registry = isinstance(self.assigner, Assigner)
        if cls_target not in ("onehot", "iou", "quality"):
            raise ValueError("cls_target must be 'onehot', 'iou' (the IoU of the predicted "
                             "box at the positive class, for QFL/VFL) or 'quality' (the "
                             f"assigner's soft quality target), got {cls_target!r}")
        if cls_target == "quality" and not registry:
            raise ValueError("cls_target='quality' reads the soft quality of a registry "
                             f"assigner; {assigner!r} gives hard targets: choose one of "
                             f"{assigners.names()} (e.g. assigner='tal'), or cls_target='iou'")
        self.cls_target = cls_target
        if nms is not None and not isinstance(nms, bool):
            raise ValueError(f"nms must be True, False or None (NMS unless the assigner is "
                             f"one-to-one), got {nms!r}")
        one_to_one = registry and self.assigner.spec.one_to_one
        self.nms = (not one_to_one) if nms is None else nms
        self.quality_branch = quality_branch
        self.weights = {"cls": 1.0, "reg": 1.0, "iou": 1.0}
        self.weights.update(weights or {})
        # how the task losses combine: ``fixed`` is the weighted sum with ``weights``; the
        # others (autoloss.weighting) are built per run, so no state crosses runs
        if isinstance(weighting_params, str):
            weighting_params = json.loads(weighting_params)
        self.weighting, self.weighting_params = weighting, dict(weighting_params or {})
        if weighting != "fixed":
            self._combiner(("cls", "reg"))  # a bad name or parameter fails here, clearly
        self.data_seed = data_seed
        self.canvas = canvas
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise ValueError(f"batch must be a positive number of canvases, got {batch!r}")
        if lr is not None and not (isinstance(lr, (int, float)) and 0 < lr < 1):
            raise ValueError(f"lr must be a peak learning rate in (0, 1), got {lr!r}")
        self.batch = batch or type(self).batch
        self.lr = float(lr or type(self).lr)

    @property
    def dynamic(self) -> bool:
        """Whether the assigner reads the predictions (it then runs every step)."""
        return isinstance(self.assigner, Assigner) and bool(self.assigner.spec.needs)

    def run(self, losses: Mapping[str, Callable], budget: Optional[int] = None, seed: int = 0,
            report=None, scale: Optional[float] = None) -> Metrics:
        check_losses(self, losses)
        report = report or no_report
        steps = int(budget or self.default_budget)
        scale = scale or self.default_scale
        data = self.data(scale)
        (train_x, _, _), (val_x, val_b, val_c) = split(*data)
        targets = self.targets(data)
        torch.manual_seed(seed)
        # channels-last: oneDNN's convolutions, the backward ones above all, run about a
        # third faster in that layout here (one-channel images are already in it)
        model = self.model()
        groups = [{"params": list(model.parameters())}]
        self.combine = None
        if self.weighting != "fixed":
            tasks = ("cls", "reg") + (("iou",) if self.quality_branch else ())
            self.combine = self._combiner(tasks).bind(model.tower[-3].parameters())
            if list(self.combine.parameters()):  # learnable weights: no weight decay
                groups.append({"params": list(self.combine.parameters()), "weight_decay": 0})
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=steps,
                                                    pct_start=0.1)
        pts = priors(self.canvas, self.levels)
        g = seeded(seed + 2)
        # the three intermediate mAPs (a COCO evaluation each) only when someone listens
        checkpoints = {max(1, round(steps * k / 4)) for k in (1, 2, 3)} \
            if report is not no_report else set()
        reg_signature = getattr(getattr(losses["reg"], "signature", None), "name", "box")
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(train_x), (self.batch,), generator=g)
            model.train()
            outputs = model(train_x[idx])
            total = self.step_loss(losses, reg_signature, outputs, pts, targets, idx)
            finite(total, f"the training loss at step {step}")
            opt.zero_grad()
            total.backward()
            opt.step()
            sched.step()
            if step in checkpoints:
                report(step, self._evaluate(model, val_x, val_b, val_c, pts[0])["map"])
        result = self._evaluate(model, val_x, val_b, val_c, pts[0])
        report(steps, result["map"])
        return Metrics(self.metric, result["map"], self.direction,
                       extra={"ap50": result["ap50"], "ap75": result["ap75"]})

    def _combiner(self, tasks) -> Weighting:
        try:
            return weighting.build(self.weighting, tasks, **self.weighting_params)
        except TypeError as err:
            raise ValueError(f"weighting_params for {self.weighting!r}: {err}") from None

    # -- the pieces of a training step (the assigner benchmark times them one by one) -----
    def data(self, scale: float = 1.0) -> tuple:
        """The arguments of :func:`split` at ``scale``."""
        return (self.data_seed, max(self.batch, int(self.train_canvases * scale)),
                max(8, int(self.val_canvases * scale)), self.canvas)

    def model(self) -> Detector:
        return Detector(quality=self.quality_branch, levels=self.levels).to(
            memory_format=torch.channels_last)

    def targets(self, data: tuple):
        """What the training steps read: digits' own assigners' per-canvas targets; for a
        registry assigner the padded ground truth (boxes first) and, for a static one, its
        whole-dataset assignment (all cached per process)."""
        if not isinstance(self.assigner, Assigner):
            return assignments(self.assigner, *data, self.levels)
        if self.dynamic:
            return padded_targets(*data)
        return padded_targets(*data)[0], static_assignment(self.assigner, *data, self.levels)

    def assign(self, outputs, pts, targets, idx) -> Assignment:
        """The assignment of the batch ``idx``: read from the cache, or, for an assigner
        that reads the predictions, computed on the detached scores and decoded boxes."""
        if not self.dynamic:
            return _rows(targets[1], idx)
        return self.assigner(self.assigner_inputs(outputs, pts, targets, idx))

    def assigner_inputs(self, outputs, pts, gt, idx) -> AssignerInputs:
        """The batch ``idx`` as an assigner reads it: the priors, the padded ground truth
        ``gt`` (:func:`padded_targets`) and the detached logits and decoded boxes."""
        cls, ltrb, _ = outputs
        points_, strides = pts
        boxes, labels, mask = gt
        with torch.no_grad():
            d = ltrb.detach()
            pred = torch.cat([points_ - d[..., :2], points_ + d[..., 2:]], -1)
        return AssignerInputs(
            priors=points_, strides=strides, gt_boxes=boxes[idx], gt_labels=labels[idx],
            gt_mask=mask[idx], scores=cls.detach(), pred_boxes=pred,
            num_classes=cls.shape[-1], image_size=(self.canvas, self.canvas))

    def step_loss(self, losses, reg_signature, outputs, pts, targets, idx) -> torch.Tensor:
        """The training loss of the batch ``idx`` given the detector's ``outputs``."""
        cls, ltrb, iou = outputs
        if not isinstance(self.assigner, Assigner):
            batch = [targets[i] for i in idx.tolist()]
            pos = torch.cat([t[0] for t in batch])
            return self._loss(losses, reg_signature, cls, ltrb, iou, pts, pos,
                              torch.cat([t[1] for t in batch])[pos],
                              torch.cat([t[2] for t in batch])[pos])
        a = self.assign(outputs, pts, targets, idx)
        gt_boxes = targets[0][idx]
        pos = a.positive.reshape(-1)
        ignore = a.ignore.reshape(-1)
        return self._loss(losses, reg_signature, cls, ltrb, iou, pts, pos,
                          a.matched_boxes(gt_boxes).reshape(-1, 4)[pos],
                          a.labels.reshape(-1)[pos], quality=a.quality.reshape(-1)[pos],
                          keep=~ignore if bool(ignore.any()) else None)

    def _loss(self, losses, reg_signature, cls, ltrb, iou, pts, pos, gt_boxes, gt_classes,
              quality=None, keep=None):
        """Classification over every point (but the ignored ones, ``keep`` False), box
        regression and the IoU branch over the positive points ``pos`` with their matched
        ``gt_boxes`` and ``gt_classes``; ``quality`` is the assigner's soft target."""
        n, p, c = cls.shape
        points_, strides = pts
        num_pos = max(1.0, float(pos.sum()))
        flat_pts = points_.repeat(n, 1)[pos]
        stride = STRIDE if self.levels == 1 else strides.repeat(n)[pos][:, None]
        d = ltrb.reshape(-1, 4)[pos]
        pred_boxes = torch.cat([flat_pts - d[:, :2], flat_pts + d[:, 2:]], 1)
        with torch.no_grad():
            overlap = aligned_iou(pred_boxes, gt_boxes)
        target = torch.zeros(n * p, c)
        pos_rows = pos.nonzero()[:, 0]
        if self.cls_target == "iou":
            target[pos_rows, gt_classes] = overlap.clamp(min=1e-6)
        elif self.cls_target == "quality":
            target[pos_rows, gt_classes] = quality.clamp(min=1e-6)
        else:
            target[pos_rows, gt_classes] = 1.0
        logits = cls.reshape(-1, c)
        if keep is not None:
            logits, target = logits[keep], target[keep]
        l_cls = per_positive(losses["cls"], logits, target, num_pos=num_pos)
        reg_inputs = SIGNATURES[reg_signature].from_detector(d, flat_pts, gt_boxes, stride)
        reg = per_positive(losses["reg"], *reg_inputs, num_pos=num_pos)
        branch = None
        if iou is not None:
            iou_target = torch.zeros(n * p)
            iou_target[pos_rows] = overlap
            branch = F.binary_cross_entropy_with_logits(iou.reshape(-1)[pos], iou_target[pos],
                                                        reduction="sum") / num_pos
        if getattr(self, "combine", None) is not None:
            parts = {"cls": l_cls, "reg": reg}
            if branch is not None:
                parts["iou"] = branch
            return self.combine(parts)
        total = self.weights["cls"] * l_cls
        total = total + self.weights["reg"] * reg
        if branch is not None:
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
                dets += detect(cls, ltrb, iou, pts,
                               nms_threshold=0.6 if self.nms else None)
        return coco_map(gt_boxes, gt_labels, dets)
