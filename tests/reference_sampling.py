"""Reference ports of hard-example mining, one Python iteration per image as the official code.

Written from mmdetection (3.x): ``SSDHead.loss_by_feat_single`` (dense_heads/ssd_head.py)
for SSD's hard negative mining, ``OHEMSampler`` with ``BaseSampler.sample``
(task_modules/samplers/) for OHEM. Independent of autoloss: plain torch, per-image loops,
``topk`` as the originals.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_loss_cls(cls_scores, labels, num_classes, neg_pos_ratio=3, label_weights=None):
    """SSD's classification loss over a batch: ``cls_scores`` (B, A, num_classes + 1),
    ``labels`` (B, A), background ``num_classes``. Returns (the loss, as the head sums its
    per-image terms; the mask of the anchors whose loss it sums, (B, A))."""
    if label_weights is None:
        label_weights = torch.ones_like(labels, dtype=cls_scores.dtype)
    avg_factor = int(((labels >= 0) & (labels < num_classes)).sum())  # the batch's positives
    total = cls_scores.new_zeros(())
    mask = torch.zeros_like(labels, dtype=cls_scores.dtype)
    for i in range(cls_scores.shape[0]):  # multi_apply over the images
        ce = F.cross_entropy(cls_scores[i], labels[i], reduction="none") * label_weights[i]
        pos = ((labels[i] >= 0) & (labels[i] < num_classes)).nonzero(as_tuple=False).view(-1)
        neg = (labels[i] == num_classes).nonzero(as_tuple=False).view(-1)
        k = min(neg_pos_ratio * pos.numel(), neg.numel())
        hardest, where = ce[neg].topk(k)
        total = total + (ce[pos].sum() + hardest.sum()) / avg_factor
        mask[i, pos] = 1
        mask[i, neg[where]] = 1
    return total, mask


class OHEMSamplerPort:
    """mmdetection ``OHEMSampler`` over one image's proposals: ``losses`` (n,) the head's
    classification loss of each proposal (what ``hard_mining`` ranks by), ``gt_inds`` (n,)
    as an assign result's: > 0 positive, 0 negative, -1 ignored."""

    def __init__(self, num=512, pos_fraction=0.25, neg_pos_ub=-1):
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub

    def hard_mining(self, inds, num_expected, losses):
        _, topk_loss_inds = losses[inds].topk(num_expected)
        return inds[topk_loss_inds]

    def _sample_pos(self, gt_inds, num_expected, losses):
        pos_inds = torch.nonzero(gt_inds > 0, as_tuple=False)
        if pos_inds.numel() != 0:
            pos_inds = pos_inds.squeeze(1)
        if pos_inds.numel() <= num_expected:
            return pos_inds
        return self.hard_mining(pos_inds, num_expected, losses)

    def _sample_neg(self, gt_inds, num_expected, losses):
        neg_inds = torch.nonzero(gt_inds == 0, as_tuple=False)
        if neg_inds.numel() != 0:
            neg_inds = neg_inds.squeeze(1)
        if len(neg_inds) <= num_expected:
            return neg_inds
        return self.hard_mining(neg_inds, num_expected, losses)

    def sample(self, gt_inds, losses):
        num_expected_pos = int(self.num * self.pos_fraction)
        pos_inds = self._sample_pos(gt_inds, num_expected_pos, losses).unique()
        num_sampled_pos = pos_inds.numel()
        num_expected_neg = self.num - num_sampled_pos
        if self.neg_pos_ub >= 0:
            _pos = max(1, num_sampled_pos)
            neg_upper_bound = int(self.neg_pos_ub * _pos)
            if num_expected_neg > neg_upper_bound:
                num_expected_neg = neg_upper_bound
        neg_inds = self._sample_neg(gt_inds, num_expected_neg, losses).unique()
        return pos_inds, neg_inds


def ohem_mask(losses, gt_inds, image, num=512, pos_fraction=0.25, neg_pos_ub=-1):
    """The OHEM sample of every image as a 0/1 mask over the flattened proposals:
    ``image`` (n,) the image of each proposal, sampled image by image."""
    sampler = OHEMSamplerPort(num, pos_fraction, neg_pos_ub)
    mask = torch.zeros_like(losses)
    for i in image.unique().tolist():
        where = (image == i).nonzero(as_tuple=False).view(-1)
        pos, neg = sampler.sample(gt_inds[where], losses[where])
        mask[where[pos]] = 1
        mask[where[neg]] = 1
    return mask
