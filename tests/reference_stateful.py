"""Reference ports of the stateful losses, step by step as their official code.

Each class keeps its state as the original does (dtypes included) and is called once per
training step:

* :class:`SeesawPort` — mmdetection ``SeesawLoss`` / ``seesaw_ce_loss``
  (losses/seesaw_loss.py): logits (N, K + 2), labels in [0, K]; ``cum_samples`` (K + 1,)
  float32, incremented per unique label before the loss; returns the two terms.
* :class:`EQLv2Port` — mmdetection ``EQLV2Loss`` (losses/eqlv2_loss.py): logits (N, C + 1),
  the last channel the objectness; ``pos_grad``, ``neg_grad`` float32, ``pos_neg`` starting
  at 100; gradients collected after the loss.
* :class:`WIoUPort` — Instinct323/wiou ``iou.py`` ``IouLoss(n, t, ltype='WIoU',
  monotonous=False)``: ``iou_mean`` a float32 scalar starting at 1, moved before the loss
  with momentum 1 - 0.05 ** (1 / (n t)).

Independent of autoloss: plain torch with autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _weight_reduce(loss, weight=None, reduction="mean", avg_factor=None):
    # mmdetection weight_reduce_loss
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()
    if reduction == "mean":
        eps = torch.finfo(torch.float32).eps
        return loss.sum() / (avg_factor + eps)
    if reduction == "none":
        return loss
    raise ValueError("avg_factor can not be used with reduction='sum'")


def seesaw_ce_loss(scores, labels, weights, cum, k, p, q, eps, reduction="mean",
                   avg_factor=None):
    """mmdetection seesaw_ce_loss: (K,) class logits of the positive rows."""
    onehot = F.one_hot(labels, k)
    factor = scores.new_ones(onehot.shape)
    if p > 0:  # mitigation, a (K, K) matrix indexed by the label's row
        ratio = cum[None, :].clamp(min=1) / cum[:, None].clamp(min=1)
        below = (ratio < 1.0).float()
        factor = factor * (ratio.pow(p) * below + (1 - below))[labels.long(), :]
    if q > 0:  # compensation from the detached softmax
        prob = F.softmax(scores.detach(), dim=1)
        own = prob[torch.arange(len(prob)).long(), labels.long()]
        rel = prob / own[:, None].clamp(min=eps)
        above = (rel > 1.0).float()
        factor = factor * (rel.pow(q) * above + (1 - above))
    shifted = scores + factor.log() * (1 - onehot)
    loss = F.cross_entropy(shifted, labels, reduction="none")
    return _weight_reduce(loss, None if weights is None else weights.float(), reduction,
                          avg_factor)


class SeesawPort:
    def __init__(self, num_classes, p=0.8, q=2.0, eps=1e-2):
        self.k, self.p, self.q, self.eps = num_classes, p, q, eps
        self.cum_samples = torch.zeros(num_classes + 1, dtype=torch.float)

    def __call__(self, logits, labels, label_weights=None, avg_factor=None, reduction="mean"):
        k = self.k
        assert logits.size(-1) == k + 2
        pos = labels < k
        for value in labels.unique():  # counts first, one class at a time
            self.cum_samples[value] += (labels == value.item()).sum()
        if label_weights is None:
            label_weights = logits.new_ones(labels.shape)
        classes, objectness = logits[..., :-2], logits[..., -2:]
        term_classes = seesaw_ce_loss(classes[pos], labels[pos], label_weights[pos],
                                      self.cum_samples[:k], k, self.p, self.q, self.eps,
                                      reduction, avg_factor)
        obj = F.cross_entropy(objectness, (labels == k).long(), reduction="none")
        term_objectness = _weight_reduce(obj, label_weights, reduction, avg_factor)
        return term_classes, term_objectness


class EQLv2Port:
    def __init__(self, num_classes, gamma=12, mu=0.8, alpha=4.0):
        self.gamma, self.mu, self.alpha = gamma, mu, alpha
        self.pos_grad = torch.zeros(num_classes)
        self.neg_grad = torch.zeros(num_classes)
        self.pos_neg = torch.ones(num_classes) * 100

    def _map(self, x):
        return 1 / (1 + torch.exp(-self.gamma * (x - self.mu)))

    def __call__(self, logits, labels):
        """logits (N, C + 1), the objectness last; labels in [0, C]."""
        n, c = logits.shape
        target = logits.new_zeros(n, c)
        target[torch.arange(n), labels] = 1
        neg_w = torch.cat([self._map(self.pos_neg), logits.new_ones(1)])  # objectness: 1
        pos_w = 1 + self.alpha * (1 - neg_w)
        pos_w, neg_w = pos_w.view(1, -1).expand(n, c), neg_w.view(1, -1).expand(n, c)
        weight = pos_w * target + neg_w * (1 - target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        value = (bce * weight).sum() / n
        # statistics after the loss, without the objectness channel
        t, w = target.detach(), weight.detach()
        prob = torch.sigmoid(logits.detach())
        grad = torch.abs(t * (prob - 1) + (1 - t) * prob)
        self.pos_grad += (grad * t * w).sum(0)[:-1]
        self.neg_grad += (grad * (1 - t) * w).sum(0)[:-1]
        self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)
        return value


class WIoUPort:
    alpha = 1.9
    delta = 3

    def __init__(self, n, t):
        self.momentum = 1 - pow(0.05, 1 / (n * t))
        self.iou_mean = torch.nn.Parameter(torch.tensor(1.), requires_grad=False)
        self.training = True

    def __call__(self, pred, target):
        pred_xy = (pred[..., :2] + pred[..., 2:4]) / 2
        pred_wh = pred[..., 2:4] - pred[..., :2]
        target_xy = (target[..., :2] + target[..., 2:4]) / 2
        target_wh = target[..., 2:4] - target[..., :2]
        min_coord = torch.minimum(pred[..., :4], target[..., :4])
        max_coord = torch.maximum(pred[..., :4], target[..., :4])
        wh_inter = torch.relu(min_coord[..., 2:4] - max_coord[..., :2])
        s_inter = torch.prod(wh_inter, dim=-1)
        s_union = torch.prod(pred_wh, dim=-1) + torch.prod(target_wh, dim=-1) - s_inter
        wh_box = max_coord[..., 2:4] - min_coord[..., :2]
        l2_box = torch.square(wh_box).sum(dim=-1)
        l2_center = torch.square(pred_xy - target_xy).sum(dim=-1)
        iou = 1 - s_inter / s_union  # the official name: it is the loss 1 - IoU
        if self.training:
            self.iou_mean.mul_(1 - self.momentum)
            self.iou_mean.add_(self.momentum * iou.detach().mean().item())
        loss = torch.exp(l2_center / l2_box.detach()) * iou
        beta = iou.detach() / self.iou_mean
        divisor = self.delta * torch.pow(self.alpha, beta - self.delta)
        return loss * (beta / divisor)
