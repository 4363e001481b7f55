"""The oriented-box references (tests/reference_rotated.py) against shapely and hand-worked
geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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
