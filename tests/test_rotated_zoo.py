"""The oriented-box zoo (primitives/4_oriented.toml): its references (tests/reference_rotated.py)
against shapely, the entries against those references on hard pairs, the invariances each
loss has and the ones it breaks (and why), and hand-worked geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoloss import catalog, units, zoo
from autoloss.signatures import get as get_signature

import reference_rotated as R

F64 = torch.float64


def rboxes(*rows):
    return torch.tensor(rows, dtype=F64)


def random_pairs(n: int, seed: int):
    """Targets anywhere in a 20 x 20 field at any angle; predictions nearby, some
    near-square, some on the other side of the angle boundary (theta near +-pi/2)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, generator=g, dtype=F64) * 20
    wh = torch.rand(n, 2, generator=g, dtype=F64) * 8 + 0.5
    t = (torch.rand(n, 1, generator=g, dtype=F64) - 0.5) * math.pi
    target = torch.cat([c, wh, t], 1)
    pred = target + torch.randn(n, 5, generator=g, dtype=F64) * torch.tensor(
        [1.5, 1.5, 1.0, 1.0, 0.4], dtype=F64)
    pred[:, 2:4] = pred[:, 2:4].abs() + 0.2
    k = n // 4
    pred[:k, 3] = pred[:k, 2] * (1 + 1e-3 * torch.randn(k, generator=g, dtype=F64))  # squares
    target[k:2 * k, 4] = math.pi / 2 - 0.01 * torch.rand(k, generator=g, dtype=F64)
    pred[k:2 * k, 4] = -math.pi / 2 + 0.05 * torch.rand(k, generator=g, dtype=F64)
    return pred, target


SPECIAL = [
    # (pred, target): identical, nested, disjoint, touching, the square and its 45-degree
    # turn, a cross of two thin bars, a rotated copy of itself by pi
    ([0, 0, 2, 2, 0], [0, 0, 2, 2, 0]),
    ([0.2, 0.1, 1, 0.5, 0.3], [0, 0, 4, 3, 0.1]),
    ([10, 10, 2, 2, 0.5], [0, 0, 2, 2, 0]),
    ([2, 0, 2, 2, 0], [0, 0, 2, 2, 0]),
    ([0, 0, 1, 1, math.pi / 4], [0, 0, 1, 1, 0]),
    ([0, 0, 6, 0.5, 0.0], [0, 0, 6, 0.5, math.pi / 2]),
    ([1, 2, 3, 1, 0.4 + math.pi], [1, 2, 3, 1, 0.4]),
]


def test_polygon_clipping_agrees_with_shapely():
    pred, target = random_pairs(400, 0)
    special_p = rboxes(*[p for p, _ in SPECIAL])
    special_t = rboxes(*[t for _, t in SPECIAL])
    pred, target = torch.cat([pred, special_p]), torch.cat([target, special_t])
    mine = R.intersection(pred, target).numpy()
    oracle = R.shapely_intersection(pred, target)
    np.testing.assert_allclose(mine, oracle, rtol=1e-10, atol=1e-12)
    assert (oracle > 0).mean() > 0.5  # mostly overlapping pairs: the clipping is exercised


def test_hand_worked_rotated_overlaps():
    # a unit square and its 45-degree turn share a regular octagon of area 2 (sqrt 2 - 1)
    octagon = 2 * (math.sqrt(2) - 1)
    got = R.shapely_intersection(rboxes([0, 0, 1, 1, math.pi / 4]), rboxes([0, 0, 1, 1, 0]))
    assert got[0] == pytest.approx(octagon, rel=1e-12)
    loss = R.rotated_iou(rboxes([0, 0, 1, 1, math.pi / 4]), rboxes([0, 0, 1, 1, 0]))
    assert loss.item() == pytest.approx(1 - octagon / (2 - octagon), rel=1e-6)
    # crossing bars 6 x 0.5: intersection 0.25, union 5.75; the target-aligned enclosing
    # rectangle is 6 x 6
    p, t = rboxes([0, 0, 6, 0.5, math.pi / 2]), rboxes([0, 0, 6, 0.5, 0])
    assert R.rotated_iou(p, t).item() == pytest.approx(1 - 0.25 / 5.75, rel=1e-6)
    assert R.rotated_giou(p, t).item() == pytest.approx(1 - 0.25 / 5.75 + (36 - 5.75) / 36,
                                                        rel=1e-6)


def test_enclosing_rectangle_is_aligned_with_the_target():
    # the target turned by 0.3 and the prediction its copy shifted along the target's
    # width axis by 1: the enclosing rectangle is (w + 1) x h in the target's frame
    t = rboxes([5, 5, 4, 2, 0.3])
    p = t.clone()
    p[0, 0] += math.cos(0.3)
    p[0, 1] += math.sin(0.3)
    cw, ch = R.enclosing_in_target_frame(p, t)
    assert (cw.item(), ch.item()) == (pytest.approx(5.0), pytest.approx(2.0))


def test_smooth_l1_rbox_reference_wraps_the_angle():
    target = rboxes([0, 0, 2, 1, math.pi / 2 - 0.01])
    pred = rboxes([0, 0, 2, 1, -math.pi / 2 + 0.01])  # the same box: 0.02 apart modulo pi
    assert R.smooth_l1_rbox(pred, target).item() == pytest.approx(0.5 * 0.02 ** 2, rel=1e-6)


def test_gaussian_references_at_a_perfect_prediction():
    _, target = random_pairs(32, 1)
    assert R.gwd(target, target).abs().max() < 1e-6
    assert R.kld(target, target).abs().max() < 2e-6  # the 1e-6 clamp
    torch.testing.assert_close(R.kfiou(target, target),
                               torch.full((32,), 2 / 3, dtype=F64), rtol=1e-5, atol=0)
    torch.testing.assert_close(R.probiou(target, target),
                               torch.full((32,), math.sqrt(2e-7), dtype=F64), rtol=1e-3, atol=0)


# ------------------------------------------------------------------------- the zoo entries
RBOX = get_signature("rbox")
RBOX_IDS = [s.id for s in catalog.of_signature("rbox")]
SURVEYED = {"gwd", "kld", "kfiou", "probiou", "rotated_iou", "rotated_giou", "rotated_diou",
            "smooth_l1_rbox"}


def test_section_4_holds_the_surveyed_oriented_losses():
    assert SURVEYED <= set(RBOX_IDS)
    for loss_id in SURVEYED:
        spec = catalog.get(loss_id)
        assert spec.file == "4_oriented.toml" and spec.section in ("4.1", "4.2")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss_id", sorted(SURVEYED))
def test_values_and_gradients_match_reference_on_hard_pairs(loss_id, seed):
    """Near-square boxes and targets at the angle boundary with predictions across it."""
    pred, target = random_pairs(96, seed + 10)
    mine = [pred.clone().requires_grad_(True), target.clone().requires_grad_(True)]
    theirs = [pred.clone().requires_grad_(True), target.clone().requires_grad_(True)]
    out = zoo.build(loss_id)(*mine)
    ref = R.ROTATED_REFERENCES[loss_id](*theirs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-9)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for i, (a, b) in enumerate(zip(torch.autograd.grad((out * w).sum(), mine),
                                   torch.autograd.grad((ref * w).sum(), theirs))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8, msg=f"gradient of input {i}")


# ------------------------------------------------------------------------------ invariances
def _turn(boxes, k=1):
    """theta + k pi: the same rectangle."""
    out = boxes.clone()
    out[:, 4] += k * math.pi
    return out


def _swap(boxes):
    """(w, h, theta) -> (h, w, theta + pi/2): the same rectangle."""
    out = boxes.clone()
    out[:, 2], out[:, 3] = boxes[:, 3], boxes[:, 2]
    out[:, 4] += math.pi / 2
    return out


def _rotate_image(boxes, phi=0.7):
    out = boxes.clone()
    c, s = math.cos(phi), math.sin(phi)
    out[:, 0] = c * boxes[:, 0] - s * boxes[:, 1]
    out[:, 1] = s * boxes[:, 0] + c * boxes[:, 1]
    out[:, 4] += phi
    return out


TRANSFORMS = {
    "pred theta+pi": lambda p, t: (_turn(p), t),
    "target theta-pi": lambda p, t: (p, _turn(t, -1)),
    "pred w<->h": lambda p, t: (_swap(p), t),
    "target w<->h": lambda p, t: (p, _swap(t)),
    "both w<->h": lambda p, t: (_swap(p), _swap(t)),
    "scale": lambda p, t: RBOX.rescale(p, t, 3.7, 0.0),
    "shift": lambda p, t: RBOX.rescale(p, t, 1.0, 23.0),
    "rotate image": lambda p, t: (_rotate_image(p), _rotate_image(t)),
}

#: the invariances each loss breaks, and why (every other transform leaves it unchanged)
BREAKS = {
    "smooth_l1_rbox": {
        "pred w<->h": "compares w with w and h with h: the same rectangle described the other "
                      "way round costs |w - h| twice plus pi/2 (exchangeability of edges)",
        "target w<->h": "the same, from the target's side",
        "scale": "sums lengths in pixels with an angle in radians",
        "rotate image": "the centre offset is measured along the image axes, not the box's",
    },
    "probiou": {"scale": "the variance floor (0.01) is an absolute area"},
}


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize("loss_id", sorted(SURVEYED))
def test_invariances_are_exactly_the_ones_listed(loss_id, transform):
    pred, target = RBOX.rescale(*RBOX.sample(64, torch.Generator().manual_seed(3)), 2.0, 0.0)
    loss = zoo.build(loss_id)
    before, after = loss(pred, target), loss(*TRANSFORMS[transform](pred, target))
    close = torch.allclose(after, before, rtol=1e-6, atol=1e-9)
    if transform in BREAKS.get(loss_id, {}):
        assert not close, f"{loss_id} is invariant under {transform} after all"
        assert (after - before).abs().max() > 1e-3 * before.abs().max()
    else:
        assert close, f"{loss_id} changes under {transform}: {(after - before).abs().max():.3g}"


@pytest.mark.parametrize("loss_id", sorted(SURVEYED))
def test_declared_scale_invariance_matches_the_table_and_the_unit_probe(loss_id):
    spec = catalog.get(loss_id)
    breaks_scale = "scale" in BREAKS.get(loss_id, {})
    assert ("scale_invariant" in spec.properties) == (not breaks_scale)
    assert spec.invariant is (not breaks_scale)  # not_invariant given exactly when it breaks
    if spec.invariant:
        assert RBOX.unit_error(spec.expression, spec.param_units) is None
    (pred, target), scales = units.probe_inputs(RBOX, 48, torch.Generator().manual_seed(0))
    pred = pred.clone().requires_grad_(True)
    value = zoo.build(loss_id)(pred, target)
    (grad,) = torch.autograd.grad(value.sum(), pred)
    problem = units.compare_scales(value, {"pred": grad}, scales,
                                   powers={"pred": [1.0, 1.0, 1.0, 1.0, 0.0]})
    assert (problem is None) == (not breaks_scale), problem


def test_symmetric_exactly_where_declared():
    pred, target = RBOX.sample(64, torch.Generator().manual_seed(4))
    for loss_id in sorted(SURVEYED):
        loss = zoo.build(loss_id)
        swapped = torch.allclose(loss(pred, target), loss(target, pred), rtol=1e-6, atol=1e-9)
        assert swapped == ("symmetric" in catalog.get(loss_id).properties), loss_id


# ---------------------------------------------------------------------- hand-worked cases
def _xyxy(boxes):
    half = boxes[:, 2:4] / 2
    return torch.cat([boxes[:, :2] - half, boxes[:, :2] + half], 1)


@pytest.mark.parametrize("rotated, axis_aligned", [
    ("rotated_iou", "iou"), ("rotated_giou", "giou"), ("rotated_diou", "diou")])
def test_axis_aligned_boxes_give_the_box_losses(rotated, axis_aligned):
    pred, target = RBOX.sample(64, torch.Generator().manual_seed(5))
    pred[:, 4] = 0.0
    target[:, 4] = 0.0
    expected = zoo.build(axis_aligned)(_xyxy(pred), _xyxy(target))
    torch.testing.assert_close(zoo.build(rotated)(pred, target), expected, rtol=1e-9,
                               atol=1e-12)
    # the whole scene turned by 0.7: unchanged (the enclosing rectangle follows the target)
    turned = zoo.build(rotated)(_rotate_image(pred), _rotate_image(target))
    torch.testing.assert_close(turned, expected, rtol=1e-9, atol=1e-12)


def test_square_and_its_45_degree_turn():
    octagon = 2 * (math.sqrt(2) - 1)
    pred, target = rboxes([0, 0, 1, 1, math.pi / 4]), rboxes([0, 0, 1, 1, 0])
    iou = octagon / (2 - octagon)
    assert zoo.build("rotated_iou")(pred, target).item() == pytest.approx(1 - iou, rel=1e-6)
    # the turned square spans sqrt(2) x sqrt(2) in the target's frame
    assert zoo.build("rotated_giou")(pred, target).item() == pytest.approx(
        1 - iou + (2 - (2 - octagon)) / 2, rel=1e-6)
    # same centre, same covariance (a square's is isotropic): the Gaussian losses see no error
    for loss_id in ("gwd", "kld"):
        assert zoo.build(loss_id)(pred, target).item() < 2e-6


def test_smooth_l1_rbox_takes_the_angle_modulo_pi():
    target = rboxes([0, 0, 2, 1, math.pi / 2 - 0.01])
    pred = rboxes([0, 0, 2, 1, -math.pi / 2 + 0.01])
    assert zoo.build("smooth_l1_rbox")(pred, target).item() == pytest.approx(0.5 * 0.02 ** 2,
                                                                             rel=1e-6)
    # the other description of the same rectangle is not free: |w - h| twice, plus pi/2
    swapped = _swap(target)
    expected = 2 * (1 - 0.5) + (math.pi / 2 - 0.5)
    assert zoo.build("smooth_l1_rbox")(swapped, target).item() == pytest.approx(expected)


def test_kfiou_is_two_thirds_at_a_perfect_prediction():
    _, target = RBOX.sample(16, torch.Generator().manual_seed(6))
    torch.testing.assert_close(zoo.build("kfiou")(target.clone(), target),
                               torch.full((16,), 2 / 3, dtype=F64), rtol=1e-6, atol=0)


def test_probiou_floor_keeps_sub_stride_boxes_finite_and_large_boxes_unchanged():
    target = rboxes(*[[0, 0, 0.5, 0.3, 0.2]] * 4)
    pred = rboxes([0, 0, 0.0, 0.0, 0.0], [0.1, 0, 1e-4, 0.2, 1.0], [0, 0.1, 0.5, 0.3, 0.2],
                  [5, 5, 0.0, 0.0, 0.0]).requires_grad_(True)
    out = zoo.build("probiou")(pred, target)
    (grad,) = torch.autograd.grad(out.sum(), pred)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    # boxes of 10-80 units: the floor (0.01) moves the loss by less than 1e-3
    big_p, big_t = RBOX.rescale(*RBOX.sample(32, torch.Generator().manual_seed(7)), 10.0, 0.0)
    torch.testing.assert_close(zoo.build("probiou")(big_p, big_t),
                               zoo.build("probiou", floor=1e-12)(big_p, big_t),
                               rtol=1e-3, atol=1e-5)
    # without the floor it is scale invariant (up to eps)
    p, t = RBOX.sample(32, torch.Generator().manual_seed(8))
    loss = zoo.build("probiou", floor=0.0)
    torch.testing.assert_close(loss(*RBOX.rescale(p, t, 5.0, 3.0)), loss(p, t), rtol=1e-5,
                               atol=1e-6)
