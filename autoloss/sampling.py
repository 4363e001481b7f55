"""Hard-example mining (survey section 2.2): masks that choose the examples a loss trains on.

Both miners rank the examples of each image by a per-example loss computed without
gradient and keep the hardest:

* :func:`ssd_hnm_mask`, SSD's hard negative mining: every positive, and of the negatives
  the ``neg_pos_ratio`` x (the image's positives) with the highest loss (Liu et al., SSD,
  ECCV 2016; mmdetection ``SSDHead.loss_by_feat_single``);
* :func:`ohem_mask`, Online Hard Example Mining as mmdetection's ``OHEMSampler``: per
  image at most ``int(num * pos_fraction)`` positives, then ``num`` minus the positives
  kept negatives (no more than ``neg_pos_ub`` x the positives kept where ``neg_pos_ub >=
  0``), the highest-loss ones where there are more, all of them where there are fewer
  (Shrivastava, Gupta, Girshick, CVPR 2016).

A mask is 1 for a kept example and 0 otherwise, in the losses' dtype, without gradient.
It combines with any loss as its ``weight``: a zoo loss's ``weight=`` argument (a mask
over samples broadcasts over a sigmoid loss's classes), or a plain product::

    from autoloss import sampling, zoo

    focal = zoo.build("focal")                                  # (N, C) per element
    per_element = focal(logits, target)
    mask = sampling.ohem_mask(per_element.detach().sum(1), target.amax(1) > 0,
                              num=256, image=image_of_anchor)
    loss = (per_element * mask[:, None]).sum() / mask.sum()

    ce = zoo.build("softmax_ce", reduction="sum")
    mask = sampling.ssd_hnm_mask(ce_values.detach(), labels < num_classes)  # one image
    loss = ce(logits, labels, weight=mask) / num_positives       # SSD's normalisation

Examples are grouped by image: pass ``image`` (N,), the image index of each example, or
losses of shape (B, A), one row per image (the mask has the losses' shape). Without
either, the whole batch is one image. Everything is vectorised, with no loop over images
or examples: the candidates' losses are laid out one row per image, one ``torch.topk``
over the rows takes the largest per-image quota, and each row keeps its own quota of it.
Which of equal losses at a quota's edge is kept is ``topk``'s choice (as in the official
code); the mined loss is the same. Losses must not be -inf (the padding).

The zoo entries ``ssd_hnm`` and ``ohem`` are these masks over softmax cross-entropy, the
loss each paper mines with (:class:`SSDHardNegativeLoss`, :class:`OHEMLoss`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .errors import SignatureError

__all__ = ["OHEMLoss", "SSDHardNegativeLoss", "ohem_mask", "ssd_hnm_mask"]

#: mmdetection's SSD ``train_cfg.neg_pos_ratio``
SSD_NEG_POS_RATIO = 3
#: mmdetection's R-CNN ``OHEMSampler(num=512, pos_fraction=0.25, neg_pos_ub=-1)``
OHEM_NUM = 512
OHEM_POS_FRACTION = 0.25


class _Groups(NamedTuple):
    losses: Tensor  # (N,) detached
    positive: Tensor  # (N,) bool
    negative: Tensor  # (N,) bool
    image: Tensor  # (N,) int64 in [0, images)
    column: Tensor  # (N,) int64: the example's place among its image's examples
    images: int
    width: int  # the most examples of one image
    shape: torch.Size


def _groups(name: str, losses: Tensor, positive: Tensor, image: Optional[Tensor],
            valid: Optional[Tensor]) -> _Groups:
    if (not isinstance(losses, Tensor) or not losses.is_floating_point()
            or losses.dim() not in (1, 2)):
        raise SignatureError(f"{name}: 'losses' must be a floating-point tensor of shape (N,) "
                             "(or (B, A), one row per image), got "
                             + (f"shape {tuple(losses.shape)} dtype {losses.dtype}"
                                if isinstance(losses, Tensor) else type(losses).__name__))
    for arg, value in (("positive", positive), ("valid", valid)):
        if value is None and arg == "valid":
            continue
        if (not isinstance(value, Tensor) or value.dtype != torch.bool
                or value.shape != losses.shape):
            got = (f"shape {tuple(value.shape)} dtype {value.dtype}"
                   if isinstance(value, Tensor) else type(value).__name__)
            raise SignatureError(f"{name}: {arg!r} must be a bool tensor of the losses' shape "
                                 f"{tuple(losses.shape)}, got {got}"
                                 + ("; e.g. labels < num_classes (mmdetection's background "
                                    "label is num_classes)" if arg == "positive" else ""))
    flat = losses.detach().reshape(-1)
    n = flat.numel()
    dev = flat.device
    if image is None:  # one row per image already: (B, A), or (N,) as one image
        images, width = (tuple(losses.shape) if losses.dim() == 2 else (1, n))
        index = torch.arange(images, device=dev).repeat_interleave(width)
        column = torch.arange(width, device=dev).repeat(images)
    else:
        if losses.dim() != 1:
            raise SignatureError(f"{name}: pass 'image' with losses of shape (N,); losses of "
                                 f"shape {tuple(losses.shape)} have one row per image already")
        if (not isinstance(image, Tensor) or image.shape != losses.shape
                or image.is_floating_point() or image.dtype == torch.bool):
            raise SignatureError(f"{name}: 'image' must be an integer tensor of shape "
                                 f"{tuple(losses.shape)}, the image index of each example")
        # image ids (any integers; ids beyond the batch size are renumbered 0..images-1);
        # each example's place in its image: one stable sort of the index, a prefix count
        index = image.to(dev).long()
        low, high = (int(v) for v in torch.aminmax(index)) if n else (0, -1)
        if low >= 0 and high < 2 * n + 16:  # image ids 0..B-1 (some maybe empty)
            images = high + 1
        else:
            ids, index = torch.unique(index, return_inverse=True)
            images = ids.numel()
        counts = torch.bincount(index, minlength=images)
        width = int(counts.max()) if n else 0
        order = torch.argsort(index, stable=True)
        start = torch.cumsum(counts, 0) - counts
        column = torch.empty_like(order)
        column[order] = torch.arange(n, device=dev) - start[index[order]]
    pos = positive.reshape(-1).to(dev)
    neg = ~pos
    if valid is not None:
        keep = valid.reshape(-1).to(dev)
        pos, neg = pos & keep, neg & keep
    return _Groups(flat, pos, neg, index.long(), column.long(), images, width, losses.shape)


def _hardest(g: _Groups, candidate: Tensor, quota: Tensor) -> Tensor:
    """Which candidates are among the ``quota[image]`` highest losses of their image's
    candidates (bool, (N,)): the losses laid out one row per image (others -inf), one
    ``topk`` over the rows with the largest quota, each row's top ``quota`` kept."""
    k = min(int(quota.max()), g.width) if g.images else 0
    if k <= 0:
        return torch.zeros_like(candidate)
    table = g.losses.new_full((g.images, g.width), -math.inf)
    table[g.image, g.column] = torch.where(candidate, g.losses, -math.inf)
    _, top = table.topk(k, dim=1)
    within = torch.arange(k, device=quota.device)[None, :] < quota[:, None]
    chosen = torch.zeros(table.shape, dtype=torch.bool, device=table.device)
    chosen.scatter_(1, top, within)
    return chosen[g.image, g.column] & candidate


def _positives(g: _Groups) -> Tensor:
    """The number of positives of each image."""
    return torch.bincount(g.image[g.positive], minlength=g.images)


def ssd_hnm_mask(losses: Tensor, positive: Tensor, neg_pos_ratio: float = SSD_NEG_POS_RATIO,
                 *, image: Optional[Tensor] = None, valid: Optional[Tensor] = None) -> Tensor:
    """SSD's hard negative mining: 1 for every positive and for the hardest negatives.

    Per image with P positives, the ``floor(neg_pos_ratio * P)`` negatives of highest loss
    are kept (all negatives where there are fewer; none in an image without positives).

    Args:
        losses: (N,) or (B, A) per-example losses (one row per image), e.g. softmax
            cross-entropy; used without gradient.
        positive: bool, the losses' shape: foreground examples.
        neg_pos_ratio: negatives kept per positive (3 in SSD and mmdetection).
        image: (N,) integer image index of each example (losses (N,) only); omitted, a
            1-D batch is one image.
        valid: bool, the losses' shape: examples that may be sampled at all (False:
            ignored, neither positive nor negative). mmdetection's SSD counts every
            non-positive anchor as a negative (its label weights multiply the losses).

    Returns:
        The mask, the losses' shape and dtype, no gradient.
    """
    if not neg_pos_ratio >= 0:
        raise SignatureError(f"ssd_hnm_mask: neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    g = _groups("ssd_hnm_mask", losses, positive, image, valid)
    quota = torch.floor(_positives(g).to(torch.float64) * float(neg_pos_ratio)).long()
    keep = g.positive | _hardest(g, g.negative, quota)
    return keep.to(losses.dtype).reshape(g.shape)


def ohem_mask(losses: Tensor, positive: Tensor, num: int = OHEM_NUM,
              pos_fraction: float = OHEM_POS_FRACTION, neg_pos_ub: float = -1, *,
              image: Optional[Tensor] = None, valid: Optional[Tensor] = None) -> Tensor:
    """Online Hard Example Mining (mmdetection ``OHEMSampler``): 1 for the examples kept.

    Per image: ``int(num * pos_fraction)`` positives at most (the highest-loss ones where
    there are more), then ``num - (positives kept)`` negatives at most, capped at
    ``int(neg_pos_ub * max(1, positives kept))`` when ``neg_pos_ub >= 0``.

    Args:
        losses: (N,) or (B, A) per-example losses (one row per image), e.g. the R-CNN
            head's classification loss as mmdetection ranks them; used without gradient.
        positive: bool, the losses' shape: foreground examples.
        num: examples per image (512 for R-CNN heads).
        pos_fraction: the largest share of positives (0.25).
        neg_pos_ub: the most negatives per positive kept, -1 for no bound (mmdetection's
            default).
        image, valid: as :func:`ssd_hnm_mask` (``valid`` False: ignored proposals,
            mmdetection's ``gt_inds == -1``).

    Returns:
        The mask, the losses' shape and dtype, no gradient.
    """
    if not (num >= 1 and float(num).is_integer()):
        raise SignatureError(f"ohem_mask: num must be a whole number >= 1, got {num}")
    if not 0 <= pos_fraction <= 1:
        raise SignatureError(f"ohem_mask: pos_fraction must lie in [0, 1], got {pos_fraction}")
    g = _groups("ohem_mask", losses, positive, image, valid)
    num = int(num)
    expected_pos = int(num * pos_fraction)
    kept_pos = torch.clamp(_positives(g), max=expected_pos)
    expected_neg = num - kept_pos
    if neg_pos_ub >= 0:
        bound = torch.floor(torch.clamp(kept_pos, min=1).to(torch.float64) * float(neg_pos_ub))
        expected_neg = torch.minimum(expected_neg, bound.long())
    keep = (_hardest(g, g.positive, torch.full_like(kept_pos, expected_pos))
            | _hardest(g, g.negative, expected_neg))
    return keep.to(losses.dtype).reshape(g.shape)


# ------------------------------------------------------------------------- zoo entries
def _cross_entropy(name: str, logits: Tensor, labels: Tensor, quality) -> tuple[Tensor, Tensor]:
    """Softmax cross-entropy per sample (the ``softmax`` signature's checks) and which
    samples are positives: background is the last class, C - 1 (mmdetection's SSD and R-CNN
    heads: C = num_classes + 1 logits, background label num_classes)."""
    from .signatures import SOFTMAX

    prep = SOFTMAX.prepare(name, logits, labels, quality)
    return -prep.columns[0], labels < logits.shape[1] - 1


class SSDHardNegativeLoss(torch.nn.Module):
    """SSD's classification loss: softmax cross-entropy of every positive and of the
    ``neg_pos_ratio`` x as many hardest negatives of its image, 0 elsewhere (per sample,
    (N,)). The background is the last class. SSD divides the sum by the positives of the
    whole batch: ``reduction="sum"`` over ``num_pos``, or ``avg_factor=num_pos``. Pass
    ``image`` (N,) to mine per image; without it the batch is one image. Stateless."""

    def forward(self, logits: Tensor, labels: Tensor, quality: Optional[Tensor] = None, *,
                neg_pos_ratio: float = SSD_NEG_POS_RATIO,
                image: Optional[Tensor] = None) -> Tensor:
        ce, positive = _cross_entropy("ssd_hnm", logits, labels, quality)
        return ce * ssd_hnm_mask(ce, positive, neg_pos_ratio, image=image)

    def reset(self) -> None:
        """Nothing to forget: the mask is each batch's own."""


class OHEMLoss(torch.nn.Module):
    """Softmax cross-entropy of the examples OHEM keeps (mmdetection ``OHEMSampler`` with
    its R-CNN defaults: ``num`` per image, at most ``pos_fraction`` of them positives, the
    rest negatives, the hardest of each), 0 elsewhere (per sample, (N,)). The background is
    the last class. Fast R-CNN averages over the kept examples: divide the sum by the mask's
    count (``ohem_mask``), or use ``reduction="mean"`` over all N where a constant factor
    does not matter. Pass ``image`` (N,) to mine per image. Stateless."""

    def forward(self, logits: Tensor, labels: Tensor, quality: Optional[Tensor] = None, *,
                num: float = OHEM_NUM, pos_fraction: float = OHEM_POS_FRACTION,
                image: Optional[Tensor] = None) -> Tensor:
        ce, positive = _cross_entropy("ohem", logits, labels, quality)
        return ce * ohem_mask(ce, positive, num, pos_fraction, image=image)

    def reset(self) -> None:
        """Nothing to forget: the mask is each batch's own."""
