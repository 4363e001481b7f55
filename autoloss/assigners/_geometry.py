"""Batched box geometry and the dynamic-k matching shared by the assigners.

Every pairwise tensor is laid out ``(B, G, P)``: image, ground truth, prior. The IoU
conventions are each reference's own, so that decisions taken on thresholds and top-k
agree with it: mmdetection's ``bbox_overlaps`` (union and enclosing area clamped to at
least ``eps`` = 1e-6) for max-IoU, ATSS, SimOTA, DSL and the Hungarian GIoU cost;
ultralytics' ``bbox_iou`` (``eps`` = 1e-7 added to the heights and the union) for TAL;
the OTA repository's (areas clamped at 0, union clamped to float32's machine epsilon).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _sides(gt: Tensor, boxes: Tensor):
    """Coordinates of ``gt`` (B, G, 4) as (B, G, 1) and of ``boxes`` (P, 4) or (B, P, 4)
    as (P,) or (B, 1, P): every pairwise expression then broadcasts to (B, G, P) along a
    contiguous prior axis (a trailing axis of 2 or 4 vectorizes poorly)."""
    g = [gt[..., i, None] for i in range(4)]
    b = [boxes[..., i].contiguous() for i in range(4)]
    return g, b if boxes.dim() == 2 else [c[:, None] for c in b]


def pairwise_iou(gt: Tensor, boxes: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """mmdetection ``bbox_overlaps(gt, boxes, mode)``, batched: ``gt`` (B, G, 4) with
    ``boxes`` (P, 4) or (B, P, 4) -> (B, G, P)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = _sides(gt, boxes)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    overlap = w * h
    union = (area_a + area_b - overlap).clamp(min=eps)
    iou = overlap / union
    if mode == "iou":
        return iou
    ew = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    eh = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    enclose = (ew * eh).clamp(min=eps)
    return iou - (enclose - union) / enclose


def ul_iou(gt: Tensor, boxes: Tensor, ciou: bool, eps: float = 1e-7) -> Tensor:
    """ultralytics ``bbox_iou(gt, pred, xywh=False, CIoU=ciou).clamp(0)``, batched:
    ``gt`` (B, G, 4), ``boxes`` (B, P, 4) -> (B, G, P)."""
    (gx1, gy1, gx2, gy2), (px1, py1, px2, py2) = _sides(gt, boxes)
    w1, h1 = gx2 - gx1, gy2 - gy1 + eps
    w2, h2 = px2 - px1, py2 - py1 + eps
    inter = (torch.minimum(gx2, px2) - torch.maximum(gx1, px1)).clamp(0) * \
        (torch.minimum(gy2, py2) - torch.maximum(gy1, py1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if ciou:
        cw = torch.maximum(gx2, px2) - torch.minimum(gx1, px1)
        ch = torch.maximum(gy2, py2) - torch.minimum(gy1, py1)
        c2 = cw.pow(2) + ch.pow(2) + eps
        rho2 = ((px1 + px2 - gx1 - gx2).pow(2) + (py1 + py2 - gy1 - gy2).pow(2)) / 4
        v = (4 / torch.pi ** 2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
        alpha = v / (v - iou + (1 + eps))
        iou = iou - (rho2 / c2 + v * alpha)
    return iou.clamp(0)


def ota_iou(gt: Tensor, boxes: Tensor) -> Tensor:
    """The OTA repository's IoU (``get_ious_and_iou_loss``): areas clamped at 0, union
    clamped to float32's machine epsilon. ``gt`` (B, G, 4), ``boxes`` (B, P, 4) -> (B, G, P)."""
    (gx1, gy1, gx2, gy2), (px1, py1, px2, py2) = _sides(gt, boxes)
    eps = torch.finfo(torch.float32).eps
    area_g = (gx2 - gx1).clamp(min=0) * (gy2 - gy1).clamp(min=0)
    area_p = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)
    w = (torch.minimum(gx2, px2) - torch.maximum(gx1, px1)).clamp(min=0)
    h = (torch.minimum(gy2, py2) - torch.maximum(gy1, py1)).clamp(min=0)
    inter = w * h
    return inter / (area_g + area_p - inter).clamp(min=eps)


def corners(boxes: Tensor):
    """The sides ``x1, y1, x2, y2`` of ``boxes`` (B, G, 4), each (B, G, 1): broadcast
    against the priors' (P,) coordinates they give (B, G, P)."""
    return boxes[..., 0, None], boxes[..., 1, None], boxes[..., 2, None], boxes[..., 3, None]


def inside(points: Tensor, x1, y1, x2, y2, margin: float = 0.0) -> Tensor:
    """Whether each point (P, 2) lies inside each box given by its sides (broadcastable
    to (B, G, P)) by more than ``margin`` on every side: the references' ``min(l, t, r, b)
    > margin``, written as four comparisons (no (B, G, P, 4) stack)."""
    px, py = points[:, 0], points[:, 1]
    return ((px - x1) > margin) & ((py - y1) > margin) & ((x2 - px) > margin) & \
        ((y2 - py) > margin)


def centres(boxes: Tensor) -> Tensor:
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2],
                       -1)


def gather_gt(values: Tensor, labels: Tensor) -> Tensor:
    """``values`` (B, P, C) read at each gt's class ``labels`` (B, G) -> (B, G, P)."""
    b, p, c = values.shape
    index = labels.clamp(0, c - 1)[..., None].expand(-1, -1, p)     # padding rows: any label
    return torch.gather(values.transpose(1, 2), 1, index)


def last_true(mask: Tensor) -> Tensor:
    """Index of the last True along dim 1 of ``mask`` (B, G, P), -1 where none: (B, P).
    (For columns with one True, the one; cheaper than ``argmax`` over a strided axis.)"""
    order = torch.arange(mask.shape[1], dtype=torch.int32, device=mask.device)[:, None]
    return torch.where(mask, order, -1).amax(1).long()


def dynamic_k_matching(cost: Tensor, ious: Tensor, topk: int, gt_valid: Tensor):
    """SimOTA's dynamic-k matching (also DSL's), batched over images and ground truths.

    ``cost`` (B, G, P) with ``inf`` at priors a gt may not take (outside the candidate
    set, padding); ``ious`` (B, G, P) with 0 at those. Each gt takes its ``k_j = max(1,
    int(sum of its top-``topk`` IoUs))`` lowest-cost priors; a prior taken by several
    gts keeps the cheapest. Returns ``gt_index`` (B, P) (-1 where unmatched). The top-k
    over the candidates is one ``topk`` of width ``max_j k_j`` per batch, cut per gt by
    rank: no loop over priors or ground truths.
    """
    n_priors = cost.shape[-1]
    k_cand = min(topk, n_priors)
    top_ious = ious.topk(k_cand, dim=-1).values
    dynamic_k = top_ious.sum(-1).int().clamp(min=1)                    # (B, G)
    k_max = int(dynamic_k.max())
    k_max = min(k_max, n_priors)
    best_cost, best = cost.topk(k_max, dim=-1, largest=False)           # sorted ascending
    rank = torch.arange(k_max, device=cost.device)
    take = (rank < dynamic_k[..., None]) & gt_valid[..., None] & torch.isfinite(best_cost)
    match = torch.zeros(cost.shape, dtype=torch.bool, device=cost.device)
    match.scatter_(2, best, take)
    count = match.sum(1)                                                # (B, P)
    return torch.where(count > 1, cost.argmin(1), last_true(match))
