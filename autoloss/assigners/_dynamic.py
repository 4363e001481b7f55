"""Prediction-aware assigners: SimOTA, dynamic soft label (DSL), task-aligned (TAL), OTA.

They read the detector's detached classification logits and decoded boxes, so they run
every training step. All of them work on ``(B, G, P)`` cost tensors for the whole batch;
the per-class parts of the costs are never expanded to ``(B, G, P, C)``: a cost summed
over classes is the all-background sum (one ``(B, P)`` tensor) with the gt's own class
swapped in, read at ``(B, G, P)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._geometry import (corners, dynamic_k_matching, gather_gt, inside, last_true, ota_iou,
                        pairwise_iou, ul_iou)
from .base import Assigner, AssignerInputs, Assignment


def _matched(values: Tensor, gt_index: Tensor) -> Tensor:
    """``values`` (B, G, P) read at each prior's matched gt -> (B, P) (0 where unmatched)."""
    got = torch.gather(values, 1, gt_index.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(gt_index >= 0, got, 0.0)


def _clamped_log(x: Tensor) -> Tensor:
    """``log`` clamped at -100, as ``F.binary_cross_entropy`` does."""
    return x.log().clamp(min=-100)


def _logsumexp(x: Tensor, dim: int) -> Tensor:
    """``torch.logsumexp`` with the terms below ``max - 80`` counted as ``exp(-80)``: they
    change the sum by less than ``P * 2e-35``, far below float64's precision, and spare
    ``exp`` its slow path on the 1e7-sized gaps OTA's 1e6 penalty opens (3 to 10 times
    faster on the CPU)."""
    top = x.amax(dim, keepdim=True)
    return (x - top).clamp_(min=-80.0).exp_().sum(dim).log_() + top.squeeze(dim)


class SimOTAAssigner(Assigner):
    """SimOTA (YOLOX), as mmdetection's ``SimOTAAssigner``.

    Candidates are the priors whose centre lies inside some gt box or inside some gt's
    centre square (half-side ``center_radius * stride``). Cost of prior i for gt j:
    ``cls_weight * sum_c BCE(sqrt(p_ic), onehot_j) + iou_weight * -log(IoU_ij + 1e-7) +
    1e5 * [i not in both gt j's box and its centre square]``, with ``p = sigmoid(scores)``
    (the square root is YOLOX's, which passes p_cls * p_obj). Each gt takes its ``k_j =
    max(1, int(sum of its top-``candidate_topk`` IoUs))`` cheapest candidates; conflicts go
    to the cheapest gt. Quality: the IoU of the predicted box with its gt (YOLOX's
    classification target).
    """

    def validate(self):
        self._range("center_radius", 0.0, lo_open=True)
        self._range("candidate_topk", 1)
        self._range("iou_weight", 0.0)
        self._range("cls_weight", 0.0)

    def assign(self, x: AssignerInputs) -> Assignment:
        pts, boxes = x.centers, x.gt_boxes
        valid = x.gt_mask[..., None]
        x1, y1, x2, y2 = corners(boxes)
        in_box = inside(pts, x1, y1, x2, y2) & valid
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        r = self.center_radius * x.strides
        in_centre = inside(pts, cx - r, cy - r, cx + r, cy + r) & valid
        candidate = (in_box | in_centre).any(1)[:, None]                        # (B, 1, P)
        both = in_box & in_centre
        ious = pairwise_iou(boxes, x.pred_boxes)
        iou_cost = -torch.log(ious + 1e-7)
        s = torch.sigmoid(x.scores).sqrt()
        log_s, log_1s = _clamped_log(s), _clamped_log(1 - s)
        background = -log_1s.sum(-1)[:, None]                                    # (B, 1, P)
        cls_cost = background + gather_gt(log_1s, x.gt_labels) - gather_gt(log_s, x.gt_labels)
        cost = self.cls_weight * cls_cost + self.iou_weight * iou_cost + (~both) * 100000.0
        allowed = candidate & valid
        cost = torch.where(allowed, cost, math.inf)
        gt_index = dynamic_k_matching(cost, torch.where(allowed, ious, 0.0),
                                      self.candidate_topk, x.gt_mask)
        return Assignment.build(x, gt_index, quality=_matched(ious, gt_index))


class DynamicSoftLabelAssigner(Assigner):
    """Dynamic soft label assignment (RTMDet), as mmdetection's
    ``DynamicSoftLabelAssigner``.

    Candidates are the priors whose centre lies inside some gt box. Cost of prior i for
    gt j: ``sum_c BCE_logits(x_ic, y_ijc) * abs(y_ijc - sigmoid(x_ic))^2`` with the soft
    label ``y_ij = onehot_j * IoU_ij``, plus ``iou_weight * -log(IoU_ij + 1e-7)`` plus the
    soft centre prior ``10^(d_ij / stride_i - soft_center_radius)`` (``d``: distance from
    the prior to the gt centre). Dynamic-k matching as SimOTA with ``topk`` IoUs. Quality:
    the IoU of the predicted box with its gt (RTMDet's QFL target).
    """

    def validate(self):
        self._range("soft_center_radius", -math.inf)
        self._range("topk", 1)
        self._range("iou_weight", 0.0)

    def assign(self, x: AssignerInputs) -> Assignment:
        pts, boxes = x.centers, x.gt_boxes
        valid = x.gt_mask[..., None]
        x1, y1, x2, y2 = corners(boxes)
        in_box = inside(pts, x1, y1, x2, y2) & valid
        candidate = in_box.any(1)[:, None]                                       # (B, 1, P)
        dx, dy = pts[:, 0] - (x1 + x2) / 2.0, pts[:, 1] - (y1 + y2) / 2.0
        dist = (dx.pow(2) + dy.pow(2)).sqrt() / x.strides                      # (B, G, P)
        centre_prior = torch.pow(10, dist - self.soft_center_radius)
        ious = pairwise_iou(boxes, x.pred_boxes)
        iou_cost = -torch.log(ious + 1e-7) * self.iou_weight
        logits = x.scores
        prob = logits.sigmoid()
        neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                                 reduction="none") * prob.pow(2)
        x_j, p_j = gather_gt(logits, x.gt_labels), gather_gt(prob, x.gt_labels)   # (B, G, P)
        neg_j = F.binary_cross_entropy_with_logits(x_j, torch.zeros_like(x_j),
                                                   reduction="none") * p_j.pow(2)
        pos_j = F.binary_cross_entropy_with_logits(x_j, ious, reduction="none") * \
            (ious - p_j).abs().pow(2)
        cls_cost = neg.sum(-1)[:, None] - neg_j + pos_j
        cost = cls_cost + iou_cost + centre_prior
        allowed = candidate & valid
        cost = torch.where(allowed, cost, math.inf)
        gt_index = dynamic_k_matching(cost, torch.where(allowed, ious, 0.0), self.topk,
                                      x.gt_mask)
        return Assignment.build(x, gt_index, quality=_matched(ious, gt_index))


class TaskAlignedAssigner(Assigner):
    """Task-aligned assignment (TOOD), as ultralytics' ``TaskAlignedAssigner``.

    Alignment ``t_ij = s_ij^alpha * u_ij^beta`` (``s``: sigmoid score of gt j's class,
    ``u``: IoU, or CIoU clamped at 0 with ``iou="ciou"`` as ultralytics) at priors whose
    centre lies inside gt j, 0 elsewhere; each gt takes those of its ``topk`` priors by
    ``t`` (over all priors) that lie inside it; a prior taken by several gts goes to the
    gt of highest ``u`` over all gts (ultralytics' rule, which may hand it to a gt whose
    top-k it was not in).
    Quality and weight: the normalised alignment ``t_ij * max_pos(j) u / max_pos(j) t``
    (TOOD's and YOLOv8's soft target and box-loss weight).
    """

    def validate(self):
        self._range("topk", 1)
        self._range("alpha", 0.0)
        self._range("beta", 0.0)

    def assign(self, x: AssignerInputs) -> Assignment:
        pts, boxes = x.centers, x.gt_boxes
        valid = x.gt_mask[..., None]
        within = inside(pts, *corners(boxes), margin=1e-9) & valid               # (B, G, P)
        score = torch.where(within, gather_gt(x.scores.sigmoid(), x.gt_labels), 0.0)
        overlaps = torch.where(within, ul_iou(boxes, x.pred_boxes, self.iou == "ciou"), 0.0)
        metric = score.pow(self.alpha) * overlaps.pow(self.beta)
        k = min(self.topk, x.num_priors)
        top = metric.topk(k, dim=-1).indices
        in_top = torch.zeros(metric.shape, dtype=torch.bool, device=x.device)
        in_top.scatter_(2, top, True)
        pos = in_top & within                                                    # (B, G, P)
        several = pos.sum(1) > 1                                                 # (B, P)
        best = torch.zeros_like(pos).scatter_(1, overlaps.argmax(1)[:, None], True)
        pos = torch.where(several[:, None], best, pos)
        gt_index = last_true(pos)                                                # one gt each
        aligned = metric * pos
        top_metric = aligned.amax(-1, keepdim=True)
        top_iou = (overlaps * pos).amax(-1, keepdim=True)
        target = (aligned * top_iou / (top_metric + 1e-9)).amax(1)                # (B, P)
        return Assignment.build(x, gt_index, quality=target, weight=target)


class OTAAssigner(Assigner):
    """Optimal transport assignment (Ge et al., CVPR 2021), as the official
    Megvii-BaseDetection/OTA ``FCOS.get_ground_truth`` and ``SinkhornDistance``.

    Cost of prior i for gt j: ``sum_c focal(x_ic, onehot_j)`` (sigmoid focal loss, alpha
    ``focal_alpha``, gamma ``focal_gamma``) ``+ reg_weight * -log IoU_ij + 1e6 * [i not
    inside both gt j (side distances > 0.01) and its centre square of half-side
    center_radius * stride, clipped to the box]``; the background row costs ``sum_c
    focal(x_ic, 0)``. Supplies: ``max(1, int(sum of the top-``topk`` IoUs inside the
    region))`` units per gt, the remaining ``P - sum`` to background; one unit of demand per
    prior. ``sinkhorn_iters`` Sinkhorn iterations at entropy ``sinkhorn_eps`` give the plan
    (in float64: see :meth:`_sinkhorn`); each row is divided by its maximum and each prior
    goes to its largest entry. Quality and weight: the IoU of the predicted box with its gt
    (the official IoU-branch target and GIoU-loss weight). One guard the official code
    lacks: when the gts ask for more than ``P`` units (few priors, many well-predicted boxes)
    the background supply is 0, not negative (whose log is NaN).
    """

    def validate(self):
        self._range("center_radius", 0.0, lo_open=True)
        self._range("reg_weight", 0.0)
        self._range("topk", 1)
        self._range("sinkhorn_eps", 0.0, lo_open=True)
        self._range("sinkhorn_iters", 1)
        self._range("focal_alpha", 0.0, 1.0)
        self._range("focal_gamma", 0.0)

    def _focal(self, logits: Tensor, target: float) -> Tensor:
        p = logits.sigmoid()
        t = torch.full_like(logits, target)
        ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        alpha_t = self.focal_alpha * t + (1 - self.focal_alpha) * (1 - t)
        return alpha_t * (ce * (1 - p_t) ** self.focal_gamma)

    def assign(self, x: AssignerInputs) -> Assignment:
        pts, boxes = x.centers, x.gt_boxes
        valid = x.gt_mask                                                         # (B, G)
        x1, y1, x2, y2 = corners(boxes)
        in_box = inside(pts, x1, y1, x2, y2, margin=0.01)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        r = x.strides * self.center_radius
        in_centre = inside(pts, torch.maximum(cx - r, x1), torch.maximum(cy - r, y1),
                           torch.minimum(cx + r, x2), torch.minimum(cy + r, y2))
        region = in_box & in_centre
        logits = x.scores
        background = self._focal(logits, 0.0).sum(-1)                            # (B, P)
        x_j = gather_gt(logits, x.gt_labels)
        cls_cost = background[:, None] - self._focal(x_j, 0.0) + self._focal(x_j, 1.0)
        ious = ota_iou(boxes, x.pred_boxes)
        iou_cost = -ious.clamp(min=torch.finfo(torch.float32).eps).log()
        cost = cls_cost + self.reg_weight * iou_cost + 1e6 * (~region).to(x.dtype)
        n_priors = x.num_priors
        k = min(self.topk, n_priors)
        supply = (ious * region).topk(k, dim=-1).values.sum(-1).int().clamp(min=1).to(x.dtype)
        supply = torch.where(valid, supply, 0.0)                                 # (B, G)
        rest = (n_priors - supply.sum(1, keepdim=True)).clamp(min=0)             # see below
        mu = torch.cat([supply, rest], 1)                                         # (B, G + 1)
        rows = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)              # (B, G + 1)
        cost = torch.cat([cost, background[:, None]], 1)                          # (B, G + 1, P)
        plan = self._sinkhorn(mu, cost, rows)
        plan = plan / plan.amax(-1, keepdim=True).where(rows[..., None], 1.0)
        plan = plan.masked_fill(~rows[..., None], -1.0)
        row = plan.max(1).indices  # (B, P): the first largest, as argmax (15x faster here)
        n_gt = valid.shape[1]
        gt_index = torch.where(row < n_gt, row, -1)
        iou = _matched(ious, gt_index)
        return Assignment.build(x, gt_index, quality=iou, weight=iou)

    def _sinkhorn(self, mu: Tensor, cost: Tensor, rows: Tensor) -> Tensor:
        """The plan of ``SinkhornDistance.forward`` (``sinkhorn_iters`` iterations at entropy
        ``sinkhorn_eps``, the columns' update first), in float64 whatever the costs' dtype:
        :meth:`_scaling` where it can be trusted, else :meth:`_log_domain`.

        The official code iterates in float32 in the log domain, where a gt with no prior
        in its region (all its costs carry the 1e6 penalty: ``-C / eps`` near -1e7) leaves
        the potentials about 1e7 and the plan's exponents a few units off: on a digits batch
        its float32 plan is 9 % off the float64 one, and 6 of 23,040 priors (1,438
        positives, six batches of an untrained detector) go to another gt or background. The
        tests' scenes assign as the official code does; both paths here agree with the float64
        log domain.
        """
        plan = self._scaling(mu, cost, rows)
        if plan is None:
            plan = self._log_domain(mu.double(), cost.double(), rows)
        return plan.to(cost.dtype)

    def _scaling(self, mu: Tensor, cost: Tensor, rows: Tensor) -> Optional[Tensor]:
        """Sinkhorn's matrix scaling of ``K = exp(-C / eps)`` in float64; None where it
        cannot be trusted.

        The same iterations as the log domain's for a fraction of their time (digits: 7 ms
        instead of 16 for the whole assignment): an iteration is two multiply-and-sums, not
        two log-sum-exps. ``K``'s rows are divided by their largest entry, then its columns
        (diagonal scalings: the column one is absorbed by the first ``v``, the row one by
        starting ``u`` at ``exp(row max)`` instead of 1, which is where the official ``u = 1``
        lands in these units), so every row and column keeps an entry 1 and the penalised
        rows of a gt with no prior in its region do not underflow to zero. Where something
        does (a tiny ``eps``: a column that only a not-yet-started row can supply), a
        scaling turns infinite or a row misses its supply, and None sends it to the log
        domain.
        """
        eps = self.sinkhorn_eps
        k = (-cost.double() / eps).masked_fill(~rows[..., None], -math.inf)
        top = k.amax(2)                                          # (B, G+1); -inf: padding
        k = k - top.where(rows, 0.0)[..., None]
        kernel = (k - k.amax(1, keepdim=True)).exp_()                            # (B, G+1, P)
        supply = (mu.double() + 1e-8) * rows
        u = (top - top.amax(1, keepdim=True)).exp_()  # the official u = 1 (see above)
        v = None
        for _ in range(self.sinkhorn_iters):  # nu = 1 per prior, + 1e-8 as the official
            v = (1.0 + 1e-8) / (kernel * u[..., :, None]).sum(1)                   # (B, P)
            u = supply / (kernel * v[..., None, :]).sum(2).clamp_(min=1e-300)      # (B, G+1)
        plan = u[..., :, None] * kernel * v[..., None, :]
        ok = torch.isfinite(plan).all() and torch.allclose(plan.sum(2), supply, rtol=1e-6,
                                                             atol=1e-12)
        return plan if ok else None

    def _log_domain(self, mu: Tensor, cost: Tensor, rows: Tensor) -> Tensor:
        """The log-domain Sinkhorn iterations of ``SinkhornDistance.forward``; returns the
        plan ``exp((-C + u + v) / eps)``.

        The official update ``v <- eps (log nu - lse_i((-C_ij + u_i + v_j) / eps)) + v``
        does not depend on the old ``v`` (it cancels out of the log-sum-exp), nor ``u``'s on
        the old ``u``: with ``K = -C / eps`` computed once and the potentials kept divided
        by ``eps`` (``a = u / eps``, ``b = v / eps``), an iteration is two broadcast adds
        and two log-sum-exps. The start ``u = 1`` is ``a = 1 / eps``. Padding rows are
        ``-inf`` in ``K``: no sum sees them.
        """
        eps = self.sinkhorn_eps
        k = (-cost / eps).masked_fill(~rows[..., None], -math.inf)               # (B, G+1, P)
        a = torch.where(rows, 1.0 / eps, 0.0).to(cost.dtype)                      # (B, G+1)
        log_mu = torch.log(mu + 1e-8)
        log_nu = torch.log(torch.ones((), dtype=cost.dtype, device=cost.device) + 1e-8)
        b = None
        for _ in range(self.sinkhorn_iters):
            b = log_nu - _logsumexp(k + a[..., :, None], dim=1)                     # (B, P)
            a = log_mu - _logsumexp(k + b[..., None, :], dim=2)
            a = torch.where(rows, a, 0.0)
        return torch.exp(k + a[..., :, None] + b[..., None, :])
