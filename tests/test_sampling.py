"""Hard-example mining masks (``autoloss.sampling``) against per-image ports of mmdetection's
SSD hard negative mining and OHEM sampler (``tests/reference_sampling.py``)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoloss import sampling, zoo
from autoloss.errors import SignatureError

import reference_sampling as ref


def _dense_batch(seed, images=5, anchors=300, classes=4):
    """Images with few, many, no and (last) almost only positives; background = classes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, anchors, classes + 1, generator=g, dtype=torch.float64) * 2
    labels = torch.full((images, anchors), classes, dtype=torch.long)
    for i, share in enumerate([0.02, 0.1, 0.0, 0.3, 0.9][:images]):
        pos = torch.rand(anchors, generator=g) < share
        labels[i, pos] = torch.randint(0, classes, (int(pos.sum()),), generator=g)
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [3, 1])
def test_ssd_mask_matches_ssd_head_per_image(seed, ratio):
    logits, labels = _dense_batch(seed)
    classes = logits.shape[-1] - 1
    want_value, want_mask = ref.ssd_loss_cls(logits, labels, classes, ratio)
    ce = F.cross_entropy(logits.reshape(-1, classes + 1), labels.reshape(-1), reduction="none")
    positive = (labels < classes)
    # one row per image, and the same batch flattened with an image index
    torch.testing.assert_close(sampling.ssd_hnm_mask(ce.view(labels.shape), positive, ratio),
                               want_mask, rtol=0, atol=0)
    image = torch.arange(labels.shape[0]).repeat_interleave(labels.shape[1])
    flat = sampling.ssd_hnm_mask(ce, positive.view(-1), ratio, image=image)
    torch.testing.assert_close(flat, want_mask.view(-1), rtol=0, atol=0)
    # the zoo entry: that mask over softmax CE, summed over the batch's positives
    x = logits.reshape(-1, classes + 1).clone().requires_grad_(True)
    x_ref = logits.clone().requires_grad_(True)
    got = zoo.build("ssd_hnm", reduction="sum", neg_pos_ratio=ratio)(
        x, labels.view(-1), image=image) / positive.sum()
    want, _ = ref.ssd_loss_cls(x_ref, labels, classes, ratio)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    (g_got,) = torch.autograd.grad(got, x)
    (g_want,) = torch.autograd.grad(want, x_ref)
    torch.testing.assert_close(g_got, g_want.view(-1, classes + 1), rtol=1e-12, atol=1e-15)


def _proposals(seed, images=4, per_image=700):
    """Proposals of several images in shuffled order; some ignored (gt_inds -1)."""
    g = torch.Generator().manual_seed(seed)
    n = images * per_image
    image = torch.randperm(n, generator=g) % images
    losses = torch.rand(n, generator=g, dtype=torch.float64) * 3
    gt_inds = torch.zeros(n, dtype=torch.long)
    u = torch.rand(n, generator=g)
    share = torch.tensor([0.05, 0.4, 0.0, 0.9])[image]  # few, more than 128, none, most
    gt_inds[u < share] = 1
    gt_inds[(u > 0.97)] = -1
    return losses, gt_inds, image


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("num, pos_fraction, neg_pos_ub", [
    (512, 0.25, -1), (256, 0.5, -1), (128, 0.25, 3.0), (2000, 0.25, -1), (64, 1.0, 0.5)])
def test_ohem_mask_matches_mmdet_sampler_per_image(seed, num, pos_fraction, neg_pos_ub):
    losses, gt_inds, image = _proposals(seed)
    want = ref.ohem_mask(losses, gt_inds, image, num, pos_fraction, neg_pos_ub)
    got = sampling.ohem_mask(losses, gt_inds > 0, num, pos_fraction, neg_pos_ub, image=image,
                             valid=gt_inds >= 0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.sum() > 0
    # image ids are labels only: gaps, large or negative ids give the same mask
    for ids in (image * 2, image * 10**6 - 3):
        again = sampling.ohem_mask(losses, gt_inds > 0, num, pos_fraction, neg_pos_ub,
                                   image=ids, valid=gt_inds >= 0)
        torch.testing.assert_close(again, want, rtol=0, atol=0)


def test_ohem_zoo_entry_is_cross_entropy_under_the_mask():
    logits, labels = _dense_batch(3, images=3, anchors=400)
    classes = logits.shape[-1] - 1
    x, y = logits.reshape(-1, classes + 1), labels.reshape(-1)
    image = torch.arange(3).repeat_interleave(400)
    ce = F.cross_entropy(x, y, reduction="none")
    gt_inds = (y < classes).long()
    mask = ref.ohem_mask(ce, gt_inds, image, num=128, pos_fraction=0.25)
    got = zoo.build("ohem", num=128)(x, y, image=image)
    torch.testing.assert_close(got, ce * mask, rtol=1e-12, atol=0)


def test_a_mask_is_the_weight_of_any_loss():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(200, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.zeros(200, 3, dtype=torch.float64)
    target[torch.arange(0, 200, 9), torch.arange(0, 200, 9) % 3] = 1.0
    focal = zoo.build("focal")
    per_element = focal(logits, target)
    mask = sampling.ssd_hnm_mask(per_element.detach().sum(1), target.amax(1) > 0)
    assert mask.requires_grad is False and mask.dtype == logits.dtype
    weighted = zoo.build("focal", reduction="sum")(logits, target, weight=mask)
    torch.testing.assert_close(weighted, (per_element * mask[:, None]).sum())
    positives = int((target.amax(1) > 0).sum())
    assert int(mask.sum()) == positives * 4  # every positive, 3 negatives each


def test_ties_keep_the_quota():
    losses = torch.ones(20, dtype=torch.float64)
    positive = torch.zeros(20, dtype=torch.bool)
    positive[:2] = True
    assert sampling.ssd_hnm_mask(losses, positive).sum() == 2 + 6
    assert sampling.ohem_mask(losses, positive, num=5, pos_fraction=0.2).sum() == 5
    # no positives: SSD keeps nothing, OHEM fills num with negatives
    none = torch.zeros(20, dtype=torch.bool)
    assert sampling.ssd_hnm_mask(losses, none).sum() == 0
    assert sampling.ohem_mask(losses, none, num=8).sum() == 8
    empty = torch.zeros(0, dtype=torch.float64)
    assert sampling.ssd_hnm_mask(empty, empty.bool()).shape == (0,)


def test_bad_input_says_what_was_expected():
    losses = torch.rand(10)
    with pytest.raises(SignatureError,
                       match="'positive' must be a bool tensor.*labels < num_classes"):
        sampling.ssd_hnm_mask(losses, torch.zeros(10, dtype=torch.long))
    with pytest.raises(SignatureError, match="'image' must be an integer tensor"):
        sampling.ohem_mask(losses, losses > 0.5, image=torch.zeros(10))
    with pytest.raises(SignatureError, match="one row per image already"):
        sampling.ohem_mask(losses.view(2, 5), losses.view(2, 5) > 0.5, image=torch.zeros(10))
    with pytest.raises(SignatureError, match="pos_fraction"):
        sampling.ohem_mask(losses, losses > 0.5, pos_fraction=1.5)
