"""Every zoo loss against an independent reference: values and gradients in float64."""
from __future__ import annotations

import math

import pytest
import torch

from autoloss import zoo
from conftest import ZOO_IDS, float_inputs, sample, zoo_sample
from reference import REFERENCES as BOX_AND_CLASSIFICATION
from reference import _alpha_iou_official, _awing_mmpose
from reference_rotated import ROTATED_REFERENCES

REFERENCES = {**BOX_AND_CLASSIFICATION, **ROTATED_REFERENCES}

#: gradients the reference does not define the way the formula does
SKIP_GRAD = {("qfl", 1): "mmdetection builds negatives' BCE against a fresh zero tensor, "
                         "so its target gradient vanishes there; the formula's does not"}
#: (rtol, atol) of values and gradients where a loss differs from its reference by more than
#: rounding: kfiou adds the signature's eps 1e-7 to the union volume where mmrotate adds
#: 1e-6 (relative effect ~1e-7)
TOLERANCE = {"rbox": (1e-4, 1e-9)}


def test_every_zoo_id_has_a_reference():
    assert sorted(set(ZOO_IDS) - set(REFERENCES)) == []


def _grads(out, inputs, idx, seed):
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), [inputs[i] for i in idx], allow_unused=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_values_and_gradients_match_reference(loss_id, seed):
    spec = zoo.get(loss_id)
    base = zoo_sample(loss_id, 257, seed)
    idx = float_inputs(base)
    mine = [x.clone().requires_grad_(i in idx) if i in idx else x for i, x in enumerate(base)]
    theirs = [x.clone().requires_grad_(i in idx) if i in idx else x for i, x in enumerate(base)]
    out = zoo.build(loss_id)(*mine)
    ref = REFERENCES[loss_id](*theirs)
    assert out.shape == ref.shape
    rtol, atol = TOLERANCE.get(spec.signature, (1e-6, 1e-9))
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for i, a, b in zip(idx, _grads(out, mine, idx, seed), _grads(ref, theirs, idx, seed)):
        if (loss_id, i) in SKIP_GRAD:
            continue
        a = torch.zeros_like(mine[i]) if a is None else a
        b = torch.zeros_like(theirs[i]) if b is None else b
        torch.testing.assert_close(a, b, rtol=rtol, atol=10 * atol, msg=f"gradient of input {i}")


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_float32_close_to_float64(loss_id):
    base = zoo_sample(loss_id, 300, 5)
    low = tuple(x.float() if x.is_floating_point() else x for x in base)
    torch.testing.assert_close(zoo.build(loss_id)(*low).double(), zoo.build(loss_id)(*base),
                               rtol=2e-4, atol=2e-5)


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# hand-worked geometry (the cases of torchvision's test_ops)
B1, B2, B3, B4 = [-1, -1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 2], [1, 1, 2, 2]
CASES = {
    # pairs: identical, nested (IoU 1/4), adjacent (touching), diagonal (corner contact)
    "giou": [0.0, 0.75, 1.0, 1.5],
    "diou": [0.0, 0.8125, 1.2, 1.25],
    "ciou": [0.0, 0.8125, 1.2, 1.25],
    "iou": [0.0, 0.75, 1.0, 1.0],
    "iou_square": [0.0, 1 - 1 / 16, 1.0, 1.0],
    "log_iou": [0.0, math.log(4), -math.log(1e-6), -math.log(1e-6)],
    "alpha_iou": [0.0, 1 - 1 / 64, 1.0, 1.0],
    # EIoU: + (w - wg)^2 / cw^2 + (h - hg)^2 / ch^2: nested 1/4 + 1/4; adjacent h: 1/4
    "eiou": [0.0, 0.8125 + 0.5, 1.2, 1.25],
    "wiou": [0.0, 0.75 * math.exp(0.5 / 8), math.exp(1 / 5), math.exp(2 / 8)],
    # alpha = 3. GIoU: (C - U) / C is 0, 0, 0, 1/2; the official distance penalty
    # (dx^6 + dy^6) / (cw^6 + ch^6) is 2^-12, 1 / 65, 2^-6; all boxes are squares: v = 0
    "alpha_giou": [0.0, 1 - 1 / 64, 1.0, 1.125],
    "alpha_diou": [0.0, 1 - 1 / 64 + 1 / 4096, 1 + 1 / 65, 1 + 1 / 64],
    "alpha_ciou": [0.0, 1 - 1 / 64 + 1 / 4096, 1 + 1 / 65, 1 + 1 / 64],
}


@pytest.mark.parametrize("loss_id", sorted(CASES))
def test_hand_worked_geometry(loss_id):
    pred = _boxes(B1, B2, B2, B2)
    target = _boxes(B1, B1, B3, B4)
    got = zoo.build(loss_id)(pred, target)
    torch.testing.assert_close(got, torch.tensor(CASES[loss_id], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_ciou_aspect_term_and_stop_gradient():
    # same centre, same area, aspect 2:1 vs 1:2 -> v = 4/pi^2 (atan 2 - atan 1/2)^2
    pred = _boxes([0, 0, 2, 1])
    target = _boxes([0.5, -0.5, 1.5, 1.5])
    v = 4 / math.pi ** 2 * (math.atan(0.5) - math.atan(2.0)) ** 2
    iou = 1 / 3
    alpha = v / (1 - iou + v)
    enclose_diag = 2 ** 2 + 2 ** 2
    expected = 1 - iou + 0 / enclose_diag + alpha * v
    assert zoo.build("ciou")(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_invariants():
    x, t = sample("sigmoid", 500, 3)
    bce = zoo.build("bce")(x, t)
    assert torch.all(zoo.build("focal")(x, t) <= bce + 1e-12)
    torch.testing.assert_close(zoo.build("focal", alpha=-1.0, gamma=0.0)(x, t), bce)


def test_qfl_reduces_to_bce_weighting():
    x, t = sample("sigmoid", 100, 4)
    p = torch.sigmoid(x)
    torch.testing.assert_close(zoo.build("qfl", beta=0.0)(x, t), zoo.build("bce")(x, t))
    torch.testing.assert_close(zoo.build("qfl")(x, t), (t - p).abs() ** 2 * zoo.build("bce")(x, t))


def test_siou_follows_the_papers_sign():
    # moving a disjoint prediction further away must increase the loss (mmdetection's
    # default neg_gamma=False decreases it)
    target = _boxes(*[[0, 0, 1, 1]] * 5)
    pred = _boxes(*[[1.5 + k, 0.2 * k, 2.5 + k, 1 + 0.2 * k] for k in range(5)])
    values = zoo.build("siou")(pred, target)
    assert torch.all(values[1:] > values[:-1])


def test_cse_autoloss_b_reg_range():
    target = _boxes([0, 0, 100, 100], [0, 0, 100, 100])
    pred = _boxes([0, 0, 100, 100], [1000, 1000, 1100, 1100])
    values = zoo.build("cse_autoloss_b_reg")(pred, target)
    assert values[0].item() == pytest.approx(-3.0, abs=2e-3)
    assert -1.5 < values[1].item() < -0.9


def test_cse_autoloss_a_cls_quality_defaults_to_one():
    logits, labels, _ = sample("softmax", 50, 0)
    ce = zoo.build("softmax_ce")(logits, labels)
    torch.testing.assert_close(zoo.build("cse_autoloss_a_cls")(logits, labels), (1 + math.sin(1)) * ce)


def test_dfl_minimum_at_the_split_distribution():
    # DFL is minimal where the two neighbouring bins hold (wl, wr)
    target = torch.tensor([2.3], dtype=torch.float64)
    probs = torch.full((1, 5), 1e-12, dtype=torch.float64)
    probs[0, 2], probs[0, 3] = 0.7, 0.3
    best = zoo.build("dfl")(probs.log(), target)
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert best.item() == pytest.approx(entropy, rel=1e-6)


def test_poly1_focal_is_focal_plus_the_poly_term():
    x, t = sample("sigmoid", 200, 6)
    torch.testing.assert_close(zoo.build("poly1_focal", epsilon=0.0)(x, t), zoo.build("focal")(x, t))
    pt = torch.sigmoid(x) * t + (1 - torch.sigmoid(x)) * (1 - t)
    torch.testing.assert_close(zoo.build("poly1_focal", epsilon=0.5)(x, t),
                               zoo.build("focal")(x, t) + 0.5 * (1 - pt) ** 3)


def test_gaussian_focal_on_binary_targets_is_unbalanced_focal():
    # t in {0, 1}: -(1 - p)^alpha log p at t = 1, -p^alpha log(1 - p) at t = 0
    x, t = sample("sigmoid", 200, 7)
    binary = (t >= 1).to(t.dtype)
    torch.testing.assert_close(zoo.build("gaussian_focal")(x, binary),
                               zoo.build("focal", alpha=-1.0, gamma=2.0)(x, binary))
    # soft entries are negatives, pushed down less near a centre: (1 - t)^gamma
    soft = torch.tensor([[0.0, 0.5, 0.9]], dtype=torch.float64)
    got = zoo.build("gaussian_focal")(torch.zeros(1, 3, dtype=torch.float64), soft)
    torch.testing.assert_close(got, 0.25 * math.log(2) * (1 - soft) ** 4)


def test_class_balanced_weights_by_the_effective_number():
    beta, counts = 0.99, torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)
    x = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.5, -0.5], [0.2, 0.1, -3.0],
                      [-1.0, -2.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0.6], [0, 0, 0]], dtype=torch.float64)
    w = (1 - beta) / (1 - beta ** counts)
    w = w / w.sum() * 3
    focal = zoo.build("class_balanced", beta=beta)(x, t)  # no counts: every class alike
    got = zoo.build("class_balanced", beta=beta)(x, t, counts)
    row = torch.tensor([w[0], w[1], w[2], 1.0], dtype=torch.float64)  # background: 1
    torch.testing.assert_close(got, row[:, None] * focal)
    # equal counts are no counts; on binary targets, no counts is focal without alpha
    torch.testing.assert_close(zoo.build("class_balanced")(x, t, torch.full((3,), 7.0,
                                                                          dtype=torch.float64)),
                               zoo.build("class_balanced")(x, t))
    binary = (t > 0).to(t.dtype)
    torch.testing.assert_close(zoo.build("class_balanced")(x, binary),
                               zoo.build("focal", alpha=-1.0)(x, binary))
    # integer counts are taken as they are
    torch.testing.assert_close(zoo.build("class_balanced")(x, t, torch.tensor([1, 10, 100])),
                               zoo.build("class_balanced")(x, t, counts))


def test_eql_spares_rare_classes_the_negative_gradient_of_foreground_samples():
    lam = 0.00177
    freq = torch.tensor([1e-4, 0.5, 1e-3], dtype=torch.float64)  # classes 0 and 2 are rare
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    bce = zoo.build("bce")(x, t)
    got = zoo.build("eql")(x, t, None, freq)
    keep = torch.tensor([[0.0, 1.0, 0.0],    # foreground of class 1: rare 0 and 2 spared
                         [1.0, 1.0, 0.0],    # its own class is kept even when rare
                         [1.0, 1.0, 1.0]],   # background (exclude function 0): plain BCE
                        dtype=torch.float64)
    torch.testing.assert_close(got, keep * bce)
    torch.testing.assert_close(zoo.build("eql")(x, t), bce)  # no frequencies: none is rare
    torch.testing.assert_close(zoo.build("eql", lambda_=1e-5)(x, t, None, freq), bce)
    assert zoo.get("eql").defaults == {"lambda_": lam}


def test_iou_branch_is_bce_that_leaves_the_target_alone():
    x, t = sample("sigmoid", 60, 8)
    q = t.clone().requires_grad_(True)
    torch.testing.assert_close(zoo.build("iou_branch")(x, q), zoo.build("bce")(x, t))
    (g,) = torch.autograd.grad(zoo.build("iou_branch")(x, q).sum(), q, allow_unused=True)
    assert g is None or not g.any()


@pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
def test_alpha_iou_family_agrees_with_the_official_code(mode):
    # the repo's own eps (1e-9 in heights and inside every power) against the zoo's (1e-7
    # in the denominators): equal to far better than rtol 1e-4 on boxes of 0.5-8.5 px
    pred, target = sample("box", 400, 9)
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    mine = zoo.build(f"alpha_{mode}")(a, target)
    theirs = _alpha_iou_official(b, target, mode)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-7)
    w = torch.rand(mine.shape, generator=torch.Generator().manual_seed(0), dtype=mine.dtype)
    torch.testing.assert_close(torch.autograd.grad((mine * w).sum(), a)[0],
                               torch.autograd.grad((theirs * w).sum(), b)[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["giou", "diou", "ciou"])
def test_alpha_iou_family_at_alpha_one_is_the_plain_loss(mode):
    pred, target = sample("box", 100, 10)
    torch.testing.assert_close(zoo.build(f"alpha_{mode}", alpha=1.0)(pred, target),
                               zoo.build(mode)(pred, target), rtol=1e-6, atol=1e-9)


def test_wing_by_hand():
    omega, epsilon = 10.0, 2.0
    c = omega - omega * math.log(1 + omega / epsilon)
    d = torch.tensor([[0.0, 1.0, -1.0, 20.0]], dtype=torch.float64)
    want = [0.0, omega * math.log(1.5), omega * math.log(1.5), 20.0 - c]
    torch.testing.assert_close(zoo.build("wing")(d, torch.zeros_like(d))[0],
                               torch.tensor(want, dtype=torch.float64))
    # continuous at |d| = omega
    edge = torch.tensor([[omega - 1e-9, omega, omega + 1e-9, 0.0]], dtype=torch.float64)
    got = zoo.build("wing")(edge, torch.zeros_like(edge))[0]
    assert abs(got[0] - got[2]) < 1e-6 and abs(got[1] - omega * math.log(6)) < 1e-6


def test_awing_is_mmposes_on_heatmaps():
    g = torch.Generator().manual_seed(11)
    target = torch.rand(300, 4, generator=g, dtype=torch.float64)
    target[:50] = 1.0
    target[50:100] = 0.0
    pred = target + torch.randn(300, 4, generator=g, dtype=torch.float64) * 0.4
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    mine = zoo.build("awing")(a, target)
    theirs = _awing_mmpose(b, target, target)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(mine.sum(), a)[0],
                               torch.autograd.grad(theirs.sum(), b)[0], rtol=1e-10, atol=1e-12)
    # continuous at |d| = theta
    t = torch.full((1, 4), 0.3, dtype=torch.float64)
    p = t + torch.tensor([[0.5 - 1e-9, 0.5 + 1e-9, -0.5 + 1e-9, -0.5 - 1e-9]], dtype=torch.float64)
    v = zoo.build("awing")(p, t)[0]
    assert (v.max() - v.min()).item() < 1e-6
