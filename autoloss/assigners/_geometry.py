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


def pairwise_iou(gt: Tensor, boxes: Tensor, mode: str = "iou", eps: float = 1e-6) -> Tensor:
    """mmdetection ``bbox_overlaps(gt, boxes, mode)``, batched: ``gt`` (B, G, 4) with
    ``boxes`` (P, 4) or (B, P, 4) -> (B, G, P)."""
    a = gt[..., :, None, :]
    b = boxes[..., None, :, :] if boxes.dim() == 3 else boxes[None, None]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    wh = torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])
    wh = wh.clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area_a + area_b - overlap).clamp(min=eps)
    iou = overlap / union
    if mode == "iou":
        return iou
    ewh = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    ewh = ewh.clamp(min=0)
    enclose = (ewh[..., 0] * ewh[..., 1]).clamp(min=eps)
    return iou - (enclose - union) / enclose


def ul_iou(gt: Tensor, boxes: Tensor, ciou: bool, eps: float = 1e-7) -> Tensor:
    """ultralytics ``bbox_iou(gt, pred, xywh=False, CIoU=ciou).clamp(0)``, batched:
    ``gt`` (B, G, 4), ``boxes`` (B, P, 4) -> (B, G, P)."""
    g = gt[..., :, None, :]
    p = boxes[..., None, :, :]
    gx1, gy1, gx2, gy2 = g.unbind(-1)
    px1, py1, px2, py2 = p.unbind(-1)
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
    g = gt[..., :, None, :]
    p = boxes[..., None, :, :]
    eps = torch.finfo(torch.float32).eps
    area_g = (g[..., 2] - g[..., 0]).clamp(min=0) * (g[..., 3] - g[..., 1]).clamp(min=0)
    area_p = (p[..., 2] - p[..., 0]).clamp(min=0) * (p[..., 3] - p[..., 1]).clamp(min=0)
    wh = torch.minimum(g[..., 2:], p[..., 2:]) - torch.maximum(g[..., :2], p[..., :2])
    wh = wh.clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
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
    cheapest = cost.argmin(1)
    single = match.int().argmax(1)
    gt_index = torch.where(count > 1, cheapest, single)
    return torch.where(count > 0, gt_index, -1)
