"""rboxsim: the DIoU-paper simulation with rotated boxes (issue 15, deliverable 4)."""
from __future__ import annotations

import math

import pytest
import torch

from autoloss.evaluate import evaluate
from autoloss.errors import AutolossError
from autoloss.proxies import CandidateFailure, get
from autoloss.proxies.rboxsim import ANGLES, ASPECTS, cases
from autoloss.proxies.testing import ProxyContract
from autoloss.rotated import iou as rotated_iou

RUN = dict(seeds=[0], scale=0.0004, budget=40)  # 2 points: 3,528 cases, well under a second
RGIOU = "1 - riou + (renclose - runion) / (renclose + eps)"


class TestRBoxSimContract(ProxyContract):
    proxy_name = "rboxsim"
    losses = {"reg": "rotated_giou"}
    budget = 10
    scale = 0.0004
    nan_loss = ("reg", "rbox", "log(riou - 2)")


def rboxsim(loss: str, budget: int = RUN["budget"], **options):
    return evaluate("rboxsim", {"reg": loss}, options=options, **{**RUN, "budget": budget})


def test_cases_cover_the_aspects_angles_and_the_boundary():
    anchors, targets = cases(scale=0.0004, dtype=torch.float64)
    assert anchors.shape == targets.shape == (2 * 36 * 49, 5)
    area = targets[:, 2] * targets[:, 3]
    torch.testing.assert_close(area, torch.ones_like(area))
    ratios = set(torch.round(targets[:, 2] / targets[:, 3] * 1000).unique().tolist())
    assert ratios == {round(a * 1000) for a in ASPECTS}
    assert set(targets[:, 4].unique().tolist()) == set(ANGLES)
    assert (math.pi / 2 - targets[:, 4].abs()).min() < 0.05  # targets near the le90 boundary
    assert ((anchors[:, :2] - 10).norm(dim=1) <= 3 + 1e-9).all()
    # the error is measured with the exact rotated IoU: an angle off by pi is no error
    flipped = targets.clone()
    flipped[:, 4] += math.pi
    torch.testing.assert_close(rotated_iou(flipped, targets), torch.ones(len(targets),
                                                                         dtype=torch.float64))


def test_a_multiple_of_a_loss_scores_as_the_loss():
    base = rboxsim(RGIOU)
    for k in (0.2, 5.0):
        scaled = rboxsim(f"{k} * ({RGIOU})")
        assert abs(scaled.values[0] / base.values[0] - 1) < 0.02
        assert scaled.extra["step_scale"][0] * k == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("loss", ["rotated_giou", "gwd"])
def test_pixel_units_score_a_scale_invariant_loss_the_same(loss):
    unit_boxes = rboxsim(loss).values[0]
    assert abs(rboxsim(loss, unit=64).values[0] / unit_boxes - 1) < 2e-3


def test_pixel_units_change_a_loss_with_a_length_inside_exp():
    length_in_exp = "(1 - riou) * exp(rho2 / sqrt(rdiag2))"
    unit_boxes = rboxsim(length_in_exp, budget=200).values[0]
    assert abs(rboxsim(length_in_exp, budget=200, unit=4).values[0] / unit_boxes - 1) > 0.05
    with pytest.raises(CandidateFailure, match="non-finite"):
        rboxsim(length_in_exp, unit=64)


def test_the_distance_terms_converge_where_iou_alone_stalls():
    # the DIoU paper's finding, with rotated boxes: disjoint anchors get no IoU gradient
    # (10 points, 17,640 cases: with 2 points no anchor overlaps a target)
    final = {loss: evaluate("rboxsim", {"reg": loss}, seeds=[0], scale=0.002
                            ).extra["final_error_ratio"][0]
             for loss in ("rotated_iou", "rotated_diou")}
    assert final["rotated_iou"] > 0.8
    assert final["rotated_diou"] < 0.5


def test_options_are_checked():
    assert get("rboxsim").gradient_scale_matters is False
    assert get("rboxsim", step="fixed").gradient_scale_matters is True
    with pytest.raises(AutolossError, match="did you mean 'fixed'"):
        get("rboxsim", step="fix")
    with pytest.raises(AutolossError, match="unit must be a positive length"):
        get("rboxsim", unit=0)
    with pytest.raises(CandidateFailure, match="zero gradient at the start"):
        rboxsim(f"stop_grad({RGIOU})")
