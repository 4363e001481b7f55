"""Assigners that read only the priors and the ground truth: max-IoU, FCOS, ATSS.

All three are computed for the whole batch at once on ``(B, G, P)`` tensors; ATSS loops
over the feature levels (its top-k is per level, at most a handful of iterations).
"""
from __future__ import annotations

import math

import torch

from ._geometry import centres, corners, inside, last_true, pairwise_iou
from .base import Assigner, AssignerError, AssignerInputs, Assignment


class MaxIoUAssigner(Assigner):
    """Max-IoU anchor assignment (Faster R-CNN, RetinaNet, SSD), as mmdetection's
    ``MaxIoUAssigner``.

    With ``Q`` the IoU of prior boxes and ground truths: a prior whose best IoU is
    ``>= pos_iou_thr`` takes that gt; one whose best IoU is ``< neg_iou_thr`` is
    background; the rest are ignored. With ``match_low_quality``, every gt then also takes
    its best prior(s) (all tied ones with ``gt_max_assign_all``) when that IoU is ``>=
    min_pos_iou``, later gts overriding earlier ones as in mmdetection's loop.

    One deliberate difference: a low-quality match needs a positive IoU. mmdetection
    (``min_pos_iou = 0``, RetinaNet's default) gives a gt that overlaps no prior at all
    (outside the grid, or of zero area) every prior of the image, since IoU 0 >= 0.
    """

    def validate(self):
        self._range("pos_iou_thr", 0.0, 1.0)
        self._range("neg_iou_thr", 0.0, 1.0)
        self._range("min_pos_iou", 0.0, 1.0)
        self._range("anchor_scale", 0.0, lo_open=True)
        if self.neg_iou_thr > self.pos_iou_thr:
            raise AssignerError(f"assigner 'maxiou': neg_iou_thr ({self.neg_iou_thr}) must not "
                                f"exceed pos_iou_thr ({self.pos_iou_thr})")

    def assign(self, x: AssignerInputs) -> Assignment:
        anchors = x.prior_boxes(self.anchor_scale)
        valid = x.gt_mask[..., None]
        overlaps = torch.where(valid, pairwise_iou(x.gt_boxes, anchors), -1.0)   # (B, G, P)
        best, best_gt = overlaps.max(1)                                           # (B, P)
        has_gt = x.gt_mask.any(1)[:, None]
        negative = ((best >= 0) & (best < self.neg_iou_thr)) | ~has_gt
        positive = best >= self.pos_iou_thr
        gt_index = torch.where(positive, best_gt, -1)
        ignore = ~positive & ~negative
        if self.match_low_quality:
            gt_best, gt_best_prior = overlaps.max(2)                              # (B, G)
            ok = x.gt_mask & (gt_best >= self.min_pos_iou) & (gt_best > 0)
            if self.gt_max_assign_all:
                low = (overlaps == gt_best[..., None]) & ok[..., None]
            else:
                low = torch.zeros(overlaps.shape, dtype=torch.bool, device=x.device)
                low.scatter_(2, gt_best_prior[..., None], ok[..., None])
            last = last_true(low)                                                # last gt wins
            taken = last >= 0
            gt_index = torch.where(taken, last, gt_index)
            ignore = ignore & ~taken
        return Assignment.build(x, gt_index, ignore=ignore)


class FCOSAssigner(Assigner):
    """FCOS point assignment, as mmdetection's ``FCOSHead.get_targets``.

    A point is positive for a gt when it lies inside the box (with ``center_sampling``:
    inside the square of half-side ``radius * stride`` around the box centre, clipped to
    the box) and the largest of its (l, t, r, b) distances lies in its level's range
    ``regress_ranges[level] * range_scale`` (bounds inclusive); among several gts the one
    of smallest area wins (first on ties). The weight is the centerness target
    ``sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b))`` of the matched box.
    """

    def validate(self):
        self._range("radius", 0.0, lo_open=True)
        self._range("range_scale", 0.0, lo_open=True)
        ranges = self.regress_ranges
        ok = isinstance(ranges, (tuple, list)) and len(ranges) > 0 and all(
            isinstance(r, (tuple, list)) and len(r) == 2 and r[0] < r[1] for r in ranges)
        if not ok:
            raise AssignerError("assigner 'fcos' parameter 'regress_ranges' must be a sequence "
                                "of (low, high) pairs, one per level, e.g. ((-1, 64), (64, 128))")

    def assign(self, x: AssignerInputs) -> Assignment:
        levels = x.level_index
        n_levels = int(levels.max()) + 1
        if n_levels > len(self.regress_ranges):
            raise AssignerError(f"assigner 'fcos' has {len(self.regress_ranges)} regress_ranges "
                                f"but the priors span {n_levels} levels; pass one (low, high) "
                                "per level as regress_ranges")
        ranges = torch.tensor(self.regress_ranges, dtype=x.dtype, device=x.device)
        ranges = ranges * self.range_scale
        lo, hi = ranges[levels, 0], ranges[levels, 1]                             # (P,)
        pts, boxes = x.centers, x.gt_boxes
        x1, y1, x2, y2 = corners(boxes)
        px, py = pts[:, 0], pts[:, 1]
        ltrb = (px - x1, py - y1, x2 - px, y2 - py)                              # (B, G, P)
        if self.center_sampling:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            r = x.strides * self.radius                                           # (P,)
            within = inside(pts, torch.maximum(cx - r, x1), torch.maximum(cy - r, y1),
                            torch.minimum(cx + r, x2), torch.minimum(cy + r, y2))
        else:
            within = inside(pts, x1, y1, x2, y2)
        reach = torch.maximum(torch.maximum(ltrb[0], ltrb[1]), torch.maximum(ltrb[2], ltrb[3]))
        in_range = (reach >= lo) & (reach <= hi)
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (B, G)
        ok = within & in_range & x.gt_mask[..., None]
        area = torch.where(ok, area[..., None], math.inf)
        smallest, gt_index = area.min(1)
        gt_index = torch.where(torch.isfinite(smallest), gt_index, -1)
        at = gt_index.clamp(min=0)[:, None]
        left, top, right, bottom = (torch.gather(d, 1, at)[:, 0] for d in ltrb)  # (B, P)
        pos = gt_index >= 0
        ratio = (torch.minimum(left, right) / torch.maximum(left, right)) * \
            (torch.minimum(top, bottom) / torch.maximum(top, bottom))
        centerness = torch.where(pos, ratio, 0.0).clamp(min=0).sqrt()
        return Assignment.build(x, gt_index, weight=centerness)


class ATSSAssigner(Assigner):
    """Adaptive Training Sample Selection, as mmdetection's ``ATSSAssigner``.

    Per gt and per level, the ``topk`` priors whose centres are closest to the gt centre
    are candidates; the gt's threshold is the mean plus the (unbiased) standard deviation
    of the candidates' IoU; candidates with IoU >= threshold whose centre lies inside the
    gt (every side distance > 0.01) are positive; a prior positive for several gts takes
    the one of highest IoU. IoU is between prior boxes (the anchors, or a square of side
    ``anchor_scale * stride`` on each point) and gts.
    """

    def validate(self):
        self._range("topk", 1)
        self._range("anchor_scale", 0.0, lo_open=True)

    def assign(self, x: AssignerInputs) -> Assignment:
        anchors = x.prior_boxes(self.anchor_scale)
        pts = centres(anchors)                                                   # (P, 2)
        boxes = x.gt_boxes
        overlaps = pairwise_iou(boxes, anchors)                                   # (B, G, P)
        x1, y1, x2, y2 = corners(boxes)
        dx, dy = pts[:, 0] - (x1 + x2) / 2.0, pts[:, 1] - (y1 + y2) / 2.0
        dist = (dx.pow(2) + dy.pow(2)).sqrt()                                    # (B, G, P)
        candidates = []
        for idx in x.level_slices:                       # a handful of levels, not priors
            k = min(self.topk, idx.numel())
            near = dist[..., idx].topk(k, dim=-1, largest=False).indices
            candidates.append(idx[near])
        cand = torch.cat(candidates, -1)                                          # (B, G, K)
        cand_iou = torch.gather(overlaps, 2, cand)
        threshold = cand_iou.mean(-1) + cand_iou.std(-1)
        is_pos = cand_iou >= threshold[..., None]
        cx, cy = pts[:, 0][cand], pts[:, 1][cand]                                 # (B, G, K)
        centre_in = (cx - x1 > 0.01) & (cy - y1 > 0.01) & (x2 - cx > 0.01) & (y2 - cy > 0.01)
        is_pos = is_pos & centre_in & x.gt_mask[..., None]
        scored = torch.full_like(overlaps, -math.inf)
        scored.scatter_(2, cand, torch.where(is_pos, cand_iou, -math.inf))
        best, gt_index = scored.max(1)
        gt_index = torch.where(best > -math.inf, gt_index, -1)
        return Assignment.build(x, gt_index)
