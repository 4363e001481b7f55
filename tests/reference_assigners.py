"""Straight ports of the reference label assigners: what autoloss.assigners is checked against.

Each function follows its original step by step, one image at a time where the original
is per image (ultralytics' TAL is batched and stays batched), with the original's loops
(per gt in max-IoU's low-quality matching and in the dynamic-k matching, per level in
ATSS and FCOS, per Sinkhorn iteration) and its constants. They return the original's
outputs in the original's conventions (mmdetection: ``gt_inds`` 1-based, 0 background,
-1 ignored; labels -1 or ``num_classes`` for background).

Differences from the originals, none of which changes a decision:
    * no ``.cuda()``/``.cpu()`` moves, no AMP casts: mmdetection's SimOTA casts the
      scores to float32 for the BCE (an fp16 guard); here the inputs' dtype is kept, so
      float64 comparisons are exact;
    * inputs are plain tensors instead of ``InstanceData``/``Instances``;
    * ignore boxes (``gt_bboxes_ignore``, ``ignore_iof_thr``) are left out: autoloss has no
      crowd/ignore annotations.

Sources read (facts taken, code not copied):
    mmdetection  mmdet/models/task_modules/assigners/max_iou_assigner.py   MaxIoUAssigner
                 mmdet/models/task_modules/assigners/atss_assigner.py      ATSSAssigner
                 mmdet/models/task_modules/assigners/sim_ota_assigner.py   SimOTAAssigner
                     (the version that square-roots the scores, as YOLOX's official
                     yolo_head.py get_assignments does)
                 mmdet/models/task_modules/assigners/dynamic_soft_label_assigner.py
                 mmdet/models/task_modules/assigners/hungarian_assigner.py,
                     match_cost.py (FocalLossCost, ClassificationCost, BBoxL1Cost, IoUCost)
                 mmdet/models/dense_heads/fcos_head.py  FCOSHead._get_target_single,
                     centerness_target
                 mmdet/structures/bbox/bbox_overlaps.py  bbox_overlaps (eps 1e-6)
    ultralytics  ultralytics/utils/tal.py        TaskAlignedAssigner
                 ultralytics/utils/metrics.py    bbox_iou (eps 1e-7, CIoU)
    Megvii-BaseDetection/OTA  playground/detection/coco/ota.res50.fpn.coco.800size.1x/
                 fcos.py (FCOS.get_ground_truth, get_ious_and_iou_loss, SinkhornDistance),
                 config.py (REG_WEIGHT 1.5, SINKHORN_EPS 0.1, SINKHORN_ITER 50,
                 TOP_CANDIDATES 20); focal loss as fvcore's sigmoid_focal_loss
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------- mmdetection
def bbox_overlaps(boxes1, boxes2, mode="iou", eps=1e-6):
    """mmdet ``bbox_overlaps(boxes1, boxes2, mode, is_aligned=False)``: (n, m)."""
    rows, cols = boxes1.shape[0], boxes2.shape[0]
    if rows * cols == 0:
        return boxes1.new_zeros(rows, cols)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    size = (bottom_right - top_left).clamp(min=0)
    inter = size[..., 0] * size[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    union = torch.max(union, union.new_tensor([eps]))
    ious = inter / union
    if mode == "iou":
        return ious
    outer_tl = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    outer_br = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    outer = (outer_br - outer_tl).clamp(min=0)
    enclose = torch.max(outer[..., 0] * outer[..., 1], union.new_tensor([eps]))
    return ious - (enclose - union) / enclose


def max_iou_assign(priors, gt_bboxes, gt_labels, pos_iou_thr=0.5, neg_iou_thr=0.4,
                   min_pos_iou=0.0, gt_max_assign_all=True, match_low_quality=True):
    """``MaxIoUAssigner.assign`` + ``assign_wrt_overlaps``: (gt_inds, labels)."""
    overlaps = bbox_overlaps(gt_bboxes, priors)                     # (k, n)
    num_gts, num_priors = overlaps.shape
    gt_inds = torch.full((num_priors,), -1, dtype=torch.long)
    if num_gts == 0 or num_priors == 0:
        labels = torch.full((num_priors,), -1, dtype=torch.long)
        if num_gts == 0:
            gt_inds[:] = 0
        return gt_inds, labels
    max_ov, argmax_ov = overlaps.max(dim=0)
    gt_max_ov, gt_argmax_ov = overlaps.max(dim=1)
    gt_inds[(max_ov >= 0) & (max_ov < neg_iou_thr)] = 0
    pos = max_ov >= pos_iou_thr
    gt_inds[pos] = argmax_ov[pos] + 1
    if match_low_quality:
        for i in range(num_gts):
            if gt_max_ov[i] >= min_pos_iou:
                if gt_max_assign_all:
                    gt_inds[overlaps[i, :] == gt_max_ov[i]] = i + 1
                else:
                    gt_inds[gt_argmax_ov[i]] = i + 1
    labels = torch.full((num_priors,), -1, dtype=torch.long)
    where = gt_inds > 0
    labels[where] = gt_labels[gt_inds[where] - 1]
    return gt_inds, labels


def atss_assign(priors, num_level_priors, gt_bboxes, gt_labels, topk=9):
    """``ATSSAssigner.assign`` (alpha None, no ignore boxes): (gt_inds, labels)."""
    INF = 100000000
    num_gt, num_priors = gt_bboxes.shape[0], priors.shape[0]
    overlaps = bbox_overlaps(priors, gt_bboxes)                     # (n, k)
    gt_inds = torch.zeros(num_priors, dtype=torch.long)
    if num_gt == 0 or num_priors == 0:
        return gt_inds, torch.full((num_priors,), -1, dtype=torch.long)
    gt_points = torch.stack([(gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0,
                             (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0], 1)
    priors_cx = (priors[:, 0] + priors[:, 2]) / 2.0
    priors_cy = (priors[:, 1] + priors[:, 3]) / 2.0
    prior_points = torch.stack([priors_cx, priors_cy], 1)
    distances = (prior_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()
    candidates = []
    start = 0
    for n_level in num_level_priors:
        end = start + n_level
        k = min(topk, n_level)
        _, nearest = distances[start:end, :].topk(k, dim=0, largest=False)
        candidates.append(nearest + start)
        start = end
    candidates = torch.cat(candidates, dim=0)                      # (K, k)
    cand_ov = overlaps[candidates, torch.arange(num_gt)]
    threshold = cand_ov.mean(0) + cand_ov.std(0)
    is_pos = cand_ov >= threshold[None, :]
    for j in range(num_gt):
        candidates[:, j] += j * num_priors
    flat_cx = priors_cx.view(1, -1).expand(num_gt, num_priors).contiguous().view(-1)
    flat_cy = priors_cy.view(1, -1).expand(num_gt, num_priors).contiguous().view(-1)
    candidates = candidates.view(-1)
    left = flat_cx[candidates].view(-1, num_gt) - gt_bboxes[:, 0]
    top = flat_cy[candidates].view(-1, num_gt) - gt_bboxes[:, 1]
    right = gt_bboxes[:, 2] - flat_cx[candidates].view(-1, num_gt)
    bottom = gt_bboxes[:, 3] - flat_cy[candidates].view(-1, num_gt)
    inside = torch.stack([left, top, right, bottom], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & inside
    scored = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = candidates.view(-1)[is_pos.view(-1)]
    scored[index] = overlaps.t().contiguous().view(-1)[index]
    scored = scored.view(num_gt, -1).t()
    best, best_gt = scored.max(dim=1)
    gt_inds[best != -INF] = best_gt[best != -INF] + 1
    labels = torch.full((num_priors,), -1, dtype=torch.long)
    where = gt_inds > 0
    labels[where] = gt_labels[gt_inds[where] - 1]
    return gt_inds, labels


def fcos_targets(points, num_points_per_lvl, strides, gt_bboxes, gt_labels, num_classes,
                 regress_ranges, center_sampling=True, center_sample_radius=1.5):
    """``FCOSHead._get_target_single`` (+ ``centerness_target`` on the positives):
    (labels, min_area_inds, bbox_targets, centerness)."""
    INF = 1e8
    num_points, num_gts = points.shape[0], gt_labels.shape[0]
    if num_gts == 0:
        return (torch.full((num_points,), num_classes, dtype=torch.long),
                torch.zeros(num_points, dtype=torch.long), points.new_zeros(num_points, 4),
                points.new_zeros(num_points))
    ranges = torch.cat([points.new_tensor(regress_ranges[i])[None].expand(n, 2)
                        for i, n in enumerate(num_points_per_lvl)])
    areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
    areas = areas[None].repeat(num_points, 1)
    ranges = ranges[:, None, :].expand(num_points, num_gts, 2)
    boxes = gt_bboxes[None].expand(num_points, num_gts, 4)
    xs = points[:, 0][:, None].expand(num_points, num_gts)
    ys = points[:, 1][:, None].expand(num_points, num_gts)
    left, right = xs - boxes[..., 0], boxes[..., 2] - xs
    top, bottom = ys - boxes[..., 1], boxes[..., 3] - ys
    bbox_targets = torch.stack((left, top, right, bottom), -1)
    if center_sampling:
        cx = (boxes[..., 0] + boxes[..., 2]) / 2
        cy = (boxes[..., 1] + boxes[..., 3]) / 2
        centre_box = torch.zeros_like(boxes)
        radius = cx.new_zeros(cx.shape)
        begin = 0
        for level, n in enumerate(num_points_per_lvl):
            radius[begin:begin + n] = strides[level] * center_sample_radius
            begin += n
        x_lo, y_lo, x_hi, y_hi = cx - radius, cy - radius, cx + radius, cy + radius
        centre_box[..., 0] = torch.where(x_lo > boxes[..., 0], x_lo, boxes[..., 0])
        centre_box[..., 1] = torch.where(y_lo > boxes[..., 1], y_lo, boxes[..., 1])
        centre_box[..., 2] = torch.where(x_hi > boxes[..., 2], boxes[..., 2], x_hi)
        centre_box[..., 3] = torch.where(y_hi > boxes[..., 3], boxes[..., 3], y_hi)
        inside = torch.stack((xs - centre_box[..., 0], ys - centre_box[..., 1],
                              centre_box[..., 2] - xs, centre_box[..., 3] - ys),
                             -1).min(-1)[0] > 0
    else:
        inside = bbox_targets.min(-1)[0] > 0
    reach = bbox_targets.max(-1)[0]
    in_range = (reach >= ranges[..., 0]) & (reach <= ranges[..., 1])
    areas[inside == 0] = INF
    areas[in_range == 0] = INF
    min_area, min_area_inds = areas.min(dim=1)
    labels = gt_labels[min_area_inds]
    labels[min_area == INF] = num_classes
    bbox_targets = bbox_targets[range(num_points), min_area_inds]
    centerness = points.new_zeros(num_points)
    pos = labels != num_classes
    if pos.any():
        t = bbox_targets[pos]
        lr, tb = t[:, [0, 2]], t[:, [1, 3]]
        centerness[pos] = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0])
                                     * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
    return labels, min_area_inds, bbox_targets, centerness


def _dynamic_k_matching(cost, pairwise_ious, num_gt, valid_mask, candidate_topk):
    """mmdetection's ``dynamic_k_matching`` (SimOTA and DSL): (matched ious, gt inds)."""
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    k_cand = min(candidate_topk, pairwise_ious.size(0))
    top_ious, _ = torch.topk(pairwise_ious, k_cand, dim=0)
    dynamic_ks = torch.clamp(top_ious.sum(0).int(), min=1)
    for j in range(num_gt):
        _, pos = torch.topk(cost[:, j], k=int(dynamic_ks[j]), largest=False)
        matching[:, j][pos] = 1
    several = matching.sum(1) > 1
    if several.sum() > 0:
        _, cheapest = torch.min(cost[several, :], dim=1)
        matching[several, :] *= 0
        matching[several, cheapest] = 1
    fg = matching.sum(1) > 0
    valid_mask[valid_mask.clone()] = fg
    matched_gt = matching[fg, :].argmax(1)
    matched_ious = (matching * pairwise_ious).sum(1)[fg]
    return matched_ious, matched_gt


def simota_assign(priors, decoded_bboxes, pred_scores, gt_bboxes, gt_labels, center_radius=2.5,
                  candidate_topk=10, iou_weight=3.0, cls_weight=1.0):
    """``SimOTAAssigner.assign``; ``priors`` (n, 4) = (x, y, stride_w, stride_h), scores are
    probabilities (YOLOX: p_cls * p_obj). Returns (gt_inds, labels, max_overlaps)."""
    INF, EPS = 100000.0, 1.0e-7
    num_gt, num_bboxes = gt_bboxes.size(0), decoded_bboxes.size(0)
    gt_inds = decoded_bboxes.new_full((num_bboxes,), 0, dtype=torch.long)
    empty = (gt_inds, torch.full((num_bboxes,), -1, dtype=torch.long),
             decoded_bboxes.new_zeros(num_bboxes))
    if num_gt == 0 or num_bboxes == 0:
        return empty
    x = priors[:, 0].unsqueeze(1).repeat(1, num_gt)
    y = priors[:, 1].unsqueeze(1).repeat(1, num_gt)
    sx = priors[:, 2].unsqueeze(1).repeat(1, num_gt)
    sy = priors[:, 3].unsqueeze(1).repeat(1, num_gt)
    in_gts = torch.stack([x - gt_bboxes[:, 0], y - gt_bboxes[:, 1], gt_bboxes[:, 2] - x,
                          gt_bboxes[:, 3] - y], dim=1).min(dim=1).values > 0
    gcx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
    gcy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
    in_cts = torch.stack([x - (gcx - center_radius * sx), y - (gcy - center_radius * sy),
                          (gcx + center_radius * sx) - x, (gcy + center_radius * sy) - y],
                         dim=1).min(dim=1).values > 0
    valid_mask = (in_gts.sum(dim=1) > 0) | (in_cts.sum(dim=1) > 0)
    in_both = in_gts[valid_mask, :] & in_cts[valid_mask, :]
    valid_boxes = decoded_bboxes[valid_mask]
    valid_scores = pred_scores[valid_mask]
    num_valid = valid_boxes.size(0)
    if num_valid == 0:
        return empty
    pairwise_ious = bbox_overlaps(valid_boxes, gt_bboxes)
    iou_cost = -torch.log(pairwise_ious + EPS)
    onehot = F.one_hot(gt_labels.to(torch.int64), pred_scores.shape[-1]).to(
        pred_scores.dtype).unsqueeze(0).repeat(num_valid, 1, 1)
    valid_scores = valid_scores.unsqueeze(1).repeat(1, num_gt, 1)
    cls_cost = F.binary_cross_entropy(valid_scores.sqrt(), onehot, reduction="none").sum(-1)
    cost = cls_cost * cls_weight + iou_cost * iou_weight + (~in_both) * INF
    matched_ious, matched_gt = _dynamic_k_matching(cost, pairwise_ious, num_gt, valid_mask,
                                                   candidate_topk)
    gt_inds[valid_mask] = matched_gt + 1
    labels = gt_inds.new_full((num_bboxes,), -1)
    labels[valid_mask] = gt_labels[matched_gt].long()
    max_overlaps = decoded_bboxes.new_full((num_bboxes,), -INF)
    max_overlaps[valid_mask] = matched_ious
    return gt_inds, labels, max_overlaps


def dsl_assign(priors, decoded_bboxes, pred_scores, gt_bboxes, gt_labels,
               soft_center_radius=3.0, topk=13, iou_weight=3.0):
    """``DynamicSoftLabelAssigner.assign``; ``priors`` (n, 4) = (x, y, stride_w, stride_h),
    scores are logits. Returns (gt_inds, labels, max_overlaps)."""
    INF, EPS = 100000000, 1.0e-7
    num_gt, num_bboxes = gt_bboxes.size(0), decoded_bboxes.size(0)
    gt_inds = decoded_bboxes.new_full((num_bboxes,), 0, dtype=torch.long)
    empty = (gt_inds, torch.full((num_bboxes,), -1, dtype=torch.long),
             decoded_bboxes.new_zeros(num_bboxes))
    if num_gt == 0 or num_bboxes == 0:
        return empty
    centre = priors[:, :2]
    deltas = torch.cat([centre[:, None] - gt_bboxes[:, :2], gt_bboxes[:, 2:] - centre[:, None]],
                       dim=-1)
    in_gts = deltas.min(dim=-1).values > 0
    valid_mask = in_gts.sum(dim=1) > 0
    valid_boxes = decoded_bboxes[valid_mask]
    valid_scores = pred_scores[valid_mask]
    num_valid = valid_boxes.size(0)
    if num_valid == 0:
        return empty
    gt_centre = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2.0
    valid_prior = priors[valid_mask]
    distance = (valid_prior[:, None, :2] - gt_centre[None, :, :]).pow(2).sum(-1).sqrt() \
        / valid_prior[:, 2][:, None]
    centre_prior = torch.pow(10, distance - soft_center_radius)
    pairwise_ious = bbox_overlaps(valid_boxes, gt_bboxes)
    iou_cost = -torch.log(pairwise_ious + EPS) * iou_weight
    onehot = F.one_hot(gt_labels.to(torch.int64), pred_scores.shape[-1]).to(
        pred_scores.dtype).unsqueeze(0).repeat(num_valid, 1, 1)
    valid_scores = valid_scores.unsqueeze(1).repeat(1, num_gt, 1)
    soft_label = onehot * pairwise_ious[..., None]
    scale = soft_label - valid_scores.sigmoid()
    cls_cost = (F.binary_cross_entropy_with_logits(valid_scores, soft_label, reduction="none")
                * scale.abs().pow(2.0)).sum(dim=-1)
    cost = cls_cost + iou_cost + centre_prior
    matched_ious, matched_gt = _dynamic_k_matching(cost, pairwise_ious, num_gt, valid_mask, topk)
    gt_inds[valid_mask] = matched_gt + 1
    labels = gt_inds.new_full((num_bboxes,), -1)
    labels[valid_mask] = gt_labels[matched_gt].long()
    max_overlaps = decoded_bboxes.new_full((num_bboxes,), -INF)
    max_overlaps[valid_mask] = matched_ious
    return gt_inds, labels, max_overlaps


def hungarian_assign(scores, pred_bboxes, gt_bboxes, gt_labels, img_shape, cls_weight=1.0,
                     l1_weight=5.0, giou_weight=2.0, class_cost="focal", alpha=0.25, gamma=2,
                     eps=1e-12):
    """``HungarianAssigner.assign`` with [FocalLossCost | ClassificationCost](cls_weight),
    BBoxL1Cost(box_format='xywh', l1_weight), IoUCost('giou', giou_weight):
    (gt_inds, labels)."""
    from scipy.optimize import linear_sum_assignment

    num_gts, num_preds = gt_bboxes.shape[0], pred_bboxes.shape[0]
    gt_inds = torch.full((num_preds,), -1, dtype=torch.long)
    labels = torch.full((num_preds,), -1, dtype=torch.long)
    if num_gts == 0 or num_preds == 0:
        if num_gts == 0:
            gt_inds[:] = 0
        return gt_inds, labels
    if class_cost == "focal":
        p = scores.sigmoid()
        neg = -(1 - p + eps).log() * (1 - alpha) * p.pow(gamma)
        pos = -(p + eps).log() * alpha * (1 - p).pow(gamma)
        cls = (pos[:, gt_labels] - neg[:, gt_labels]) * cls_weight
    else:
        cls = -scores.softmax(-1)[:, gt_labels] * cls_weight

    def cxcywh(b):
        x1, y1, x2, y2 = b.split((1, 1, 1, 1), dim=-1)
        return torch.cat([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1), (y2 - y1)], dim=-1)

    img_h, img_w = img_shape
    factor = gt_bboxes.new_tensor([img_w, img_h, img_w, img_h]).unsqueeze(0)
    l1 = torch.cdist(cxcywh(pred_bboxes) / factor, cxcywh(gt_bboxes) / factor, p=1) * l1_weight
    giou = -bbox_overlaps(pred_bboxes, gt_bboxes, mode="giou") * giou_weight
    cost = torch.stack([cls, l1, giou]).sum(dim=0)
    rows, cols = linear_sum_assignment(cost.detach().cpu())
    rows, cols = torch.from_numpy(rows), torch.from_numpy(cols)
    gt_inds[:] = 0
    gt_inds[rows] = cols + 1
    labels[rows] = gt_labels[cols]
    return gt_inds, labels


# ------------------------------------------------------------------------- ultralytics
def ul_bbox_iou(box1, box2, CIoU=False, eps=1e-7):
    """``bbox_iou(box1, box2, xywh=False, CIoU=CIoU)`` on matching rows (..., 4)."""
    b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
    b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp(0) * \
        (b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not CIoU:
        return iou
    cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
    ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4
    v = (4 / math.pi ** 2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def tal_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=13,
               num_classes=80, alpha=1.0, beta=6.0, eps=1e-9, ciou=True):
    """``TaskAlignedAssigner.forward`` (batched as the original): scores are probabilities,
    ``gt_labels`` (b, n, 1), ``mask_gt`` (b, n, 1). Returns (target_labels, target_scores,
    fg_mask, target_gt_idx)."""
    bs, n_max = pd_scores.shape[0], gt_bboxes.shape[1]
    if n_max == 0:
        return (torch.full_like(pd_scores[..., 0], num_classes), torch.zeros_like(pd_scores),
                torch.zeros_like(pd_scores[..., 0]).bool(),
                torch.zeros_like(pd_scores[..., 0]).long())
    na = anc_points.shape[0]
    # select_candidates_in_gts
    lt, rb = gt_bboxes.view(-1, 1, 4).chunk(2, 2)
    mask_in_gts = torch.cat((anc_points[None] - lt, rb - anc_points[None]), dim=2).view(
        bs, n_max, na, -1).amin(3).gt_(1e-9)
    # get_box_metrics
    metric_mask = (mask_in_gts * mask_gt).bool()
    overlaps = torch.zeros([bs, n_max, na], dtype=pd_bboxes.dtype)
    bbox_scores = torch.zeros([bs, n_max, na], dtype=pd_scores.dtype)
    ind = torch.zeros([2, bs, n_max], dtype=torch.long)
    ind[0] = torch.arange(end=bs).view(-1, 1).expand(-1, n_max)
    ind[1] = gt_labels.squeeze(-1)
    bbox_scores[metric_mask] = pd_scores[ind[0], :, ind[1]][metric_mask]
    pd = pd_bboxes.unsqueeze(1).expand(-1, n_max, -1, -1)[metric_mask]
    gt = gt_bboxes.unsqueeze(2).expand(-1, -1, na, -1)[metric_mask]
    overlaps[metric_mask] = ul_bbox_iou(gt, pd, CIoU=ciou).squeeze(-1).clamp_(0)
    align_metric = bbox_scores.pow(alpha) * overlaps.pow(beta)
    # select_topk_candidates
    topk_mask = mask_gt.expand(-1, -1, topk).bool()
    _, topk_idxs = torch.topk(align_metric, topk, dim=-1, largest=True)
    topk_idxs.masked_fill_(~topk_mask, 0)
    count = torch.zeros(align_metric.shape, dtype=torch.int8)
    ones = torch.ones_like(topk_idxs[:, :, :1], dtype=torch.int8)
    for k in range(topk):
        count.scatter_add_(-1, topk_idxs[:, :, k:k + 1], ones)
    count.masked_fill_(count > 1, 0)
    mask_topk = count.to(align_metric.dtype)
    mask_pos = mask_topk * mask_in_gts * mask_gt
    # select_highest_overlaps
    fg_mask = mask_pos.sum(-2)
    if fg_mask.max() > 1:
        several = (fg_mask.unsqueeze(1) > 1).expand(-1, n_max, -1)
        best = overlaps.argmax(1)
        is_best = torch.zeros(mask_pos.shape, dtype=mask_pos.dtype)
        is_best.scatter_(1, best.unsqueeze(1), 1)
        mask_pos = torch.where(several, is_best, mask_pos).float().to(mask_pos.dtype)
        fg_mask = mask_pos.sum(-2)
    target_gt_idx = mask_pos.argmax(-2)
    # get_targets
    batch_ind = torch.arange(end=bs, dtype=torch.int64)[..., None]
    flat_idx = target_gt_idx + batch_ind * n_max
    target_labels = gt_labels.long().flatten()[flat_idx]
    target_labels.clamp_(0)
    target_scores = torch.zeros((bs, na, num_classes), dtype=torch.int64)
    target_scores.scatter_(2, target_labels.unsqueeze(-1), 1)
    target_scores = torch.where(fg_mask[:, :, None].repeat(1, 1, num_classes) > 0,
                                target_scores, 0)
    # normalise
    align_metric = align_metric * mask_pos
    pos_align = align_metric.amax(dim=-1, keepdim=True)
    pos_overlaps = (overlaps * mask_pos).amax(dim=-1, keepdim=True)
    norm = (align_metric * pos_overlaps / (pos_align + eps)).amax(-2).unsqueeze(-1)
    target_scores = target_scores * norm
    return target_labels, target_scores, fg_mask.bool(), target_gt_idx


# ------------------------------------------------------------------------------- OTA
def _sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0):
    """fvcore ``sigmoid_focal_loss`` (what cvpods' ``sigmoid_focal_loss_jit`` scripts)."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def _ota_ious(inputs, targets):
    """``get_ious_and_iou_loss(box_mode='ltrb', loss_type='iou')``: (ious, -log iou)."""
    inputs = torch.cat((-inputs[..., :2], inputs[..., 2:]), dim=-1)
    targets = torch.cat((-targets[..., :2], targets[..., 2:]), dim=-1)
    eps = torch.finfo(torch.float32).eps
    area_i = (inputs[..., 2] - inputs[..., 0]).clamp_(min=0) * \
        (inputs[..., 3] - inputs[..., 1]).clamp_(min=0)
    area_t = (targets[..., 2] - targets[..., 0]).clamp_(min=0) * \
        (targets[..., 3] - targets[..., 1]).clamp_(min=0)
    w = (torch.min(inputs[..., 2], targets[..., 2]) - torch.max(inputs[..., 0], targets[..., 0])
         ).clamp_(min=0)
    h = (torch.min(inputs[..., 3], targets[..., 3]) - torch.max(inputs[..., 1], targets[..., 1])
         ).clamp_(min=0)
    inter = w * h
    ious = inter / (area_t + area_i - inter).clamp(min=eps)
    return ious, -ious.clamp(min=eps).log()


def _sinkhorn(mu, nu, C, eps, max_iter):
    """``SinkhornDistance.forward``: the plan pi."""
    u, v = torch.ones_like(mu), torch.ones_like(nu)

    def M(u, v):
        return (-C + u.unsqueeze(-1) + v.unsqueeze(-2)) / eps

    for _ in range(max_iter):
        v = eps * (torch.log(nu + 1e-8) - torch.logsumexp(M(u, v).transpose(-2, -1), dim=-1)) + v
        u = eps * (torch.log(mu + 1e-8) - torch.logsumexp(M(u, v), dim=-1)) + u
    return torch.exp(M(u, v))


def ota_assign(shifts_per_level, strides, box_cls, box_delta, gt_boxes, gt_classes, num_classes,
               center_radius=2.5, reg_weight=1.5, top_candidates=20, sinkhorn_eps=0.1,
               sinkhorn_iter=50, alpha=0.25, gamma=2.0):
    """One image of ``FCOS.get_ground_truth`` (OTA): shifts per level (n_l, 2), class
    logits (n, C), predicted (l, t, r, b) (n, 4). Returns (gt_classes, matched_gt_inds,
    gt_ious)."""
    shifts = torch.cat(shifts_per_level, dim=0)

    def get_deltas(s, boxes):                      # Shift2BoxTransform, weights (1, 1, 1, 1)
        return torch.cat((s - boxes[..., :2], boxes[..., 2:] - s), dim=-1)

    deltas = get_deltas(shifts, gt_boxes.unsqueeze(1))
    is_in_boxes = deltas.min(dim=-1).values > 0.01
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    is_in_centres = []
    for stride, level_shifts in zip(strides, shifts_per_level):
        radius = stride * center_radius
        centre_boxes = torch.cat((torch.max(centres - radius, gt_boxes[:, :2]),
                                  torch.min(centres + radius, gt_boxes[:, 2:])), dim=-1)
        is_in_centres.append(get_deltas(level_shifts, centre_boxes.unsqueeze(1))
                             .min(dim=-1).values > 0)
    is_in_boxes = is_in_boxes & torch.cat(is_in_centres, dim=1)
    num_gt, num_anchor = gt_boxes.shape[0], shifts.shape[0]
    shape = (num_gt, num_anchor, -1)
    onehot = F.one_hot(gt_classes, num_classes).to(box_cls.dtype)
    loss_cls = _sigmoid_focal_loss(box_cls.unsqueeze(0).expand(shape),
                                   onehot.unsqueeze(1).expand(shape), alpha, gamma).sum(dim=-1)
    loss_cls_bg = _sigmoid_focal_loss(box_cls, torch.zeros_like(box_cls), alpha, gamma).sum(-1)
    ious, loss_delta = _ota_ious(box_delta.unsqueeze(0).expand(shape), deltas)
    loss = loss_cls + reg_weight * loss_delta + 1e6 * (1 - is_in_boxes.to(box_cls.dtype))
    topk_ious, _ = torch.topk(ious * is_in_boxes.to(box_cls.dtype), top_candidates, dim=1)
    mu = ious.new_ones(num_gt + 1)
    mu[:-1] = torch.clamp(topk_ious.sum(1).int(), min=1).to(ious.dtype)
    mu[-1] = num_anchor - mu[:-1].sum()
    nu = ious.new_ones(num_anchor)
    loss = torch.cat([loss, loss_cls_bg.unsqueeze(0)], dim=0)
    pi = _sinkhorn(mu, nu, loss, sinkhorn_eps, sinkhorn_iter)
    rescale, _ = pi.max(dim=1)
    pi = pi / rescale.unsqueeze(1)
    _, matched = torch.max(pi, dim=0)
    classes = gt_classes.new_ones(num_anchor) * num_classes
    fg = matched != num_gt
    classes[fg] = gt_classes[matched[fg]]
    gt_ious = ious.new_zeros(num_anchor)
    gt_ious[fg] = ious[matched[fg], torch.arange(num_anchor)[fg]]
    return classes, torch.where(fg, matched, -1), gt_ious
