"""Straight ports of the official ranking-loss loops: the baseline autoloss.ranking is
checked and timed against.

Each function follows its official implementation step by step, one Python iteration per
positive in ascending logit order, and returns what the official ``forward`` computes:
the loss value and the gradient it saves for ``backward`` (the error-driven update, not
autograd). Differences from the originals, none of which changes a number: no ``.cuda()``
(tensors stay on the input's device and dtype), ``torch.argsort(..., stable=True)`` so ties
are broken the same way as in autoloss (the originals leave it to the backend), and an
early return of 0 with a zero gradient when there is no positive (what cccorn/AP-loss
does; the kemaloksuz losses would fail on ``torch.min`` of nothing, their heads return 0).

Sources read:
    cccorn/AP-loss            lib/model/aploss.py                       AP_loss
    kemaloksuz/aLRPLoss       mmdet/models/losses/alrp_loss.py          aLRPLoss
                              mmdet/models/dense_heads/alrp_loss_retina_head.py (loss)
    kemaloksuz/RankSortLoss   mmdet/models/losses/ranking_losses.py     RankSort, APLoss
    idstcv/DR_loss            sigmoid_dr_loss.py                        SigmoidDRLoss
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _h(x, delta):
    """The piecewise-linear step of all three losses."""
    if delta > 0:
        return torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)
    return (x >= 0).to(x.dtype)


def ap_loss(logits, labels, delta=1.0):
    """cccorn/AP-loss ``AP_loss`` on flat inputs: returns (loss, grad)."""
    grad = torch.zeros_like(logits)
    pos = labels == 1
    if not bool(pos.any()):
        return logits.new_zeros(()), grad
    fg = logits[pos]
    neg_rel = (labels == 0) & (logits >= fg.min() - delta)
    bg = logits[neg_rel]
    bg_grad = torch.zeros_like(bg)
    prec = torch.zeros_like(fg)
    max_prec = 0.0
    for i in torch.argsort(fg, stable=True).tolist():
        fg_rel = _h(fg - fg[i], delta)
        bg_rel = _h(bg - fg[i], delta)
        a = fg_rel.sum() + 0.5           # own term H(0) = 0.5 plus 0.5: 1 + sum over k != i
        b = bg_rel.sum()
        bg_rel = bg_rel / (a + b)
        current = a / (a + b)
        if max_prec <= current:
            max_prec = current
        else:
            bg_rel = bg_rel * ((1 - max_prec) / (1 - current))
        bg_grad += bg_rel
        prec[i] = max_prec
    grad[neg_rel] = bg_grad
    grad[pos] = -(1 - prec)
    n = fg.numel()
    return 1 - prec.sum() / n, grad / n


def alrp_loss(logits, labels, regression_losses, delta=1.0, eps=1e-5):
    """kemaloksuz/aLRPLoss ``aLRPLoss.forward``: returns (cls_loss, grad, rank, order)."""
    grad = torch.zeros_like(logits)
    pos = labels == 1
    if not bool(pos.any()):
        return (logits.new_zeros(()), grad, logits.new_zeros(0),
                torch.zeros(0, dtype=torch.long))
    fg = logits[pos]
    neg_rel = (labels == 0) & (logits >= fg.min() - delta)
    bg = logits[neg_rel]
    n = fg.numel()
    bg_grad = torch.zeros_like(bg)
    rank = torch.zeros_like(fg)
    prec = torch.zeros_like(fg)
    fg_grad = torch.zeros_like(fg)
    order = torch.argsort(fg, stable=True)
    for i in order.tolist():
        fg_rel = _h(fg - fg[i], delta)
        fg_rel[i] = 0
        bg_rel = _h(bg - fg[i], delta)
        rank_pos = 1 + fg_rel.sum()
        fp = bg_rel.sum()
        rank[i] = rank_pos + fp
        prec[i] = rank_pos / rank[i]
        if fp > eps:
            fg_grad[i] = -((fg_rel * regression_losses).sum() + fp) / rank[i]
            bg_grad += bg_rel * (-fg_grad[i] / fp)
    grad[pos] = fg_grad
    grad[neg_rel] = bg_grad
    return 1 - prec.mean(), grad / n, rank, order


def alrp_loc(regression_losses, rank, order):
    """The aLRP regression component of ``aLRPLossRetinaHead.loss`` (autograd applies)."""
    ordered = regression_losses[order].flip(dims=[0])
    return (torch.cumsum(ordered, dim=0) / rank[order].detach().flip(dims=[0])).mean()


def alrp_self_balance(cls_hist, loc_hist):
    """The head's SB weight after one period of recorded (cls, loc) values."""
    mean_loc = sum(loc_hist) / len(loc_hist)
    return (mean_loc + sum(cls_hist) / len(cls_hist)) / mean_loc


def rs_loss(logits, targets, delta=0.5, eps=1e-10):
    """kemaloksuz/RankSortLoss ``RankSort.forward``: returns (ranking, sorting, grad)."""
    grad = torch.zeros_like(logits)
    pos = targets > 0
    if not bool(pos.any()):
        return logits.new_zeros(()), logits.new_zeros(()), grad
    fg = logits[pos]
    y = targets[pos]
    n = fg.numel()
    neg_rel = (targets == 0) & (logits >= fg.min() - delta)
    bg = logits[neg_rel]
    bg_grad = torch.zeros_like(bg)
    sorting_error = torch.zeros_like(fg)
    ranking_error = torch.zeros_like(fg)
    fg_grad = torch.zeros_like(fg)
    for i in torch.argsort(fg, stable=True).tolist():
        fg_rel = _h(fg - fg[i], delta)
        bg_rel = _h(bg - fg[i], delta)
        rank_pos = fg_rel.sum()
        fp = bg_rel.sum()
        rank = rank_pos + fp
        ranking_error[i] = fp / rank
        current = (fg_rel * (1 - y)).sum() / rank_pos
        iou_rel = y >= y[i]
        target_order = iou_rel * fg_rel
        target = (target_order * (1 - y)).sum() / target_order.sum()
        sorting_error[i] = current - target
        if fp > eps:
            fg_grad[i] -= ranking_error[i]
            bg_grad += bg_rel * (ranking_error[i] / fp)
        missorted = (~iou_rel) * fg_rel
        denom = missorted.sum()
        if denom > eps:
            fg_grad[i] -= sorting_error[i]
            fg_grad += missorted * (sorting_error[i] / denom)
    grad[pos] = fg_grad / n
    grad[neg_rel] = bg_grad / n
    return ranking_error.mean(), sorting_error.mean(), grad


def dr_loss(logits, labels, margin=0.5, pos_lambda=1.0, neg_lambda=0.1 / math.log(3.5),
            L=6.0, tau=4.0):  # noqa: N803
    """idstcv/DR_loss ``SigmoidDRLoss.forward`` with one class column: logits (N,) become
    (N, 1) and binary labels the class ids (1 foreground, 0 background, -1 ignored)."""
    scores = logits.reshape(-1, 1)
    t = labels.reshape(-1, 1).to(logits.dtype)
    class_range = torch.arange(1, 2, dtype=t.dtype).unsqueeze(0)
    pos_ind = t == class_range
    neg_ind = (t != class_range) & (t >= 0)
    pos_prob = scores[pos_ind].sigmoid()
    neg_prob = scores[neg_ind].sigmoid()
    neg_q = F.softmax(neg_prob / neg_lambda, dim=0)
    neg_dist = torch.sum(neg_q * neg_prob)
    if pos_prob.numel() > 0:
        pos_q = F.softmax(-pos_prob / pos_lambda, dim=0)
        pos_dist = torch.sum(pos_q * pos_prob)
        return tau * torch.log(1. + torch.exp(L * (neg_dist - pos_dist + margin))) / L
    return tau * torch.log(1. + torch.exp(L * (neg_dist - 1. + margin))) / L
