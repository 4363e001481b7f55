"""autoloss.assigners against straight ports of their reference implementations
(tests/reference_assigners.py), then the contract suite on every registered assigner.

Agreement: on random scenes (three point levels, strides 8/16/32 on a 128 px canvas,
float64) with several seeds, each of them random, crowded (overlapping boxes in a quarter
of the image, one exact duplicate), tiny (1 to 6 px) and with an image without ground
truth in the batch, the batched assigner gives exactly the reference's matched gt and
label for every prior, and its quality and weight to 1e-9; for default and non-default
parameters. The references run image by image (ultralytics' TAL on the padded batch, as
it does).
"""
from __future__ import annotations

import pytest
import torch

import reference_assigners as ref
from autoloss import assigners
from autoloss.assigners import AssignerError, AssignerInputs
from autoloss.assigners.testing import AssignerContract, sample_inputs
from autoloss.errors import UnknownNameError

SEEDS = (0, 1, 2)
KINDS = ("random", "crowded", "tiny")
GTS = (7, 3, 0, 12)


def scenes():
    for seed in SEEDS:
        for kind in KINDS:
            yield seed, kind


def scene(seed, kind):
    return sample_inputs(seed, gts=GTS, num_classes=5, canvas=128, strides=(8, 16, 32),
                         kind=kind)


def level_sizes(x: AssignerInputs) -> list[int]:
    return [len(i) for i in x.level_slices]


def real(x: AssignerInputs, i: int):
    keep = x.gt_mask[i]
    return x.gt_boxes[i][keep], x.gt_labels[i][keep]


def mmdet_index(gt_inds):
    """mmdetection ``gt_inds`` (1-based, 0 background, -1 ignored) -> (index, ignore)."""
    return torch.where(gt_inds > 0, gt_inds - 1, -1), gt_inds < 0


def expect(ours, i, index, quality=None, weight=None, ignore=None, labels=None):
    pos = index >= 0
    assert torch.equal(ours.gt_index[i], index), \
        f"image {i}: {int((ours.gt_index[i] != index).sum())} priors differ"
    if labels is not None:
        assert torch.equal(ours.labels[i], torch.where(pos, labels, ours.num_classes))
    one = pos.to(ours.quality.dtype)
    torch.testing.assert_close(ours.quality[i], one if quality is None else quality * pos,
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.weight[i], one if weight is None else weight * pos,
                               rtol=1e-9, atol=1e-12)
    if ignore is not None:
        assert torch.equal(ours.ignore[i], ignore)


# ------------------------------------------------------------------------------- max-IoU
@pytest.mark.parametrize("params", [{}, {"pos_iou_thr": 0.4, "neg_iou_thr": 0.3,
                                          "min_pos_iou": 0.1, "gt_max_assign_all": False},
                                    {"match_low_quality": False, "anchor_scale": 6.0}])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_maxiou_matches_mmdetection(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("maxiou", **params)
    ours = a(x)
    anchors = x.prior_boxes(a.anchor_scale)
    for i in range(x.batch):
        boxes, labels = real(x, i)
        gt_inds, lab = ref.max_iou_assign(
            anchors, boxes, labels, a.pos_iou_thr, a.neg_iou_thr, a.min_pos_iou,
            a.gt_max_assign_all, a.match_low_quality)
        index, ignore = mmdet_index(gt_inds)
        expect(ours, i, index, ignore=ignore, labels=lab)


def test_maxiou_low_quality_match_needs_an_overlap():
    """The one place autoloss differs from mmdetection on purpose: a gt that overlaps no
    anchor takes every anchor there under mmdetection (IoU 0 >= min_pos_iou 0)."""
    x = scene(0, "random")
    boxes = x.gt_boxes.clone()
    boxes[0, 0] = torch.tensor([400.0, 400.0, 420.0, 430.0], dtype=boxes.dtype)
    x = x.replace(gt_boxes=boxes)
    a = assigners.build("maxiou")
    b, lab = real(x, 0)
    gt_inds, _ = ref.max_iou_assign(x.prior_boxes(a.anchor_scale), b, lab)
    assert int((gt_inds == 1).sum()) > 0.5 * x.num_priors     # mmdetection: most anchors
    assert not bool((a(x).gt_index[0] == 0).any())            # autoloss: none


# ---------------------------------------------------------------------------------- FCOS
@pytest.mark.parametrize("params", [{}, {"center_sampling": False}, {"radius": 2.5,
                                                                      "range_scale": 0.4}])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_fcos_matches_mmdetection(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("fcos", **params)
    ours = a(x)
    sizes = level_sizes(x)
    ranges = [(lo * a.range_scale, hi * a.range_scale) for lo, hi in a.regress_ranges]
    for i in range(x.batch):
        boxes, labels = real(x, i)
        lab, inds, _, centerness = ref.fcos_targets(
            x.priors, sizes, [8, 16, 32], boxes, labels, x.num_classes, ranges,
            a.center_sampling, a.radius)
        index = torch.where(lab != x.num_classes, inds, -1)
        expect(ours, i, index, weight=centerness, labels=lab)


# ---------------------------------------------------------------------------------- ATSS
@pytest.mark.parametrize("params", [{}, {"topk": 4, "anchor_scale": 4.0}])
@pytest.mark.parametrize("anchors", [False, True])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_atss_matches_mmdetection(seed, kind, anchors, params):
    x = sample_inputs(seed, gts=GTS, num_classes=5, canvas=128, strides=(8, 16, 32),
                      kind=kind, anchors=anchors)
    a = assigners.build("atss", **params)
    ours = a(x)
    boxes_all = x.prior_boxes(a.anchor_scale)
    for i in range(x.batch):
        boxes, labels = real(x, i)
        gt_inds, lab = ref.atss_assign(boxes_all, level_sizes(x), boxes, labels, a.topk)
        index, _ = mmdet_index(gt_inds)
        expect(ours, i, index, labels=lab)
    assert ours.num_positive > 0


# --------------------------------------------------------------------------- SimOTA, DSL
def strided_priors(x):
    """mmdetection's (x, y, stride_w, stride_h) priors."""
    return torch.cat([x.centers, x.strides[:, None], x.strides[:, None]], 1)


@pytest.mark.parametrize("params", [{}, {"center_radius": 1.5, "candidate_topk": 5,
                                          "iou_weight": 1.0, "cls_weight": 2.0}])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_simota_matches_mmdetection(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("simota", **params)
    ours = a(x)
    for i in range(x.batch):
        boxes, labels = real(x, i)
        gt_inds, lab, ious = ref.simota_assign(
            strided_priors(x), x.pred_boxes[i], x.scores[i].sigmoid(), boxes, labels,
            a.center_radius, a.candidate_topk, a.iou_weight, a.cls_weight)
        index, _ = mmdet_index(gt_inds)
        expect(ours, i, index, quality=torch.where(index >= 0, ious, 0.0), labels=lab)
    assert ours.num_positive > 0


@pytest.mark.parametrize("params", [{}, {"soft_center_radius": 2.0, "topk": 5,
                                          "iou_weight": 1.0}])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_dsl_matches_mmdetection(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("dsl", **params)
    ours = a(x)
    for i in range(x.batch):
        boxes, labels = real(x, i)
        gt_inds, lab, ious = ref.dsl_assign(strided_priors(x), x.pred_boxes[i], x.scores[i],
                                            boxes, labels, a.soft_center_radius, a.topk,
                                            a.iou_weight)
        index, _ = mmdet_index(gt_inds)
        expect(ours, i, index, quality=torch.where(index >= 0, ious, 0.0), labels=lab)
    assert ours.num_positive > 0


# ----------------------------------------------------------------------------------- TAL
@pytest.mark.parametrize("params", [{}, {"iou": "ciou"}, {"topk": 10, "alpha": 0.5,
                                                          "iou": "ciou"}])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_tal_matches_ultralytics(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("tal", **params)
    ours = a(x)
    target_labels, target_scores, fg, gt_idx = ref.tal_assign(
        x.scores.sigmoid(), x.pred_boxes, x.centers, x.gt_labels.clamp(min=0)[..., None],
        x.gt_boxes, x.gt_mask[..., None].to(x.dtype), a.topk, x.num_classes, a.alpha, a.beta,
        ciou=a.iou == "ciou")
    index = torch.where(fg, gt_idx, -1)
    soft = target_scores.sum(-1)
    for i in range(x.batch):
        expect(ours, i, index[i], quality=soft[i], weight=soft[i], labels=target_labels[i])
    assert ours.num_positive > 0


# ----------------------------------------------------------------------------------- OTA
@pytest.mark.parametrize("params", [{}, {"sinkhorn_iters": 20, "sinkhorn_eps": 0.2,
                                          "topk": 8, "reg_weight": 3.0},
                                    {"sinkhorn_eps": 0.002}])  # both paths: see below
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_ota_matches_official(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("ota", **params)
    ours = a(x)
    sizes = level_sizes(x)
    shifts = list(x.centers.split(sizes))
    pts = x.centers
    for i in range(x.batch):
        boxes, labels = real(x, i)
        if boxes.shape[0] == 0:
            assert not bool(ours.positive[i].any())
            continue
        p = x.pred_boxes[i]
        ltrb = torch.cat([pts - p[:, :2], p[:, 2:] - pts], 1)
        classes, matched, ious = ref.ota_assign(
            shifts, [8, 16, 32], x.scores[i], ltrb, boxes, labels, x.num_classes,
            a.center_radius, a.reg_weight, a.topk, a.sinkhorn_eps, a.sinkhorn_iters,
            a.focal_alpha, a.focal_gamma)
        # the official IoU is taken on (l, t, r, b) relative to the point: equal to ours up
        # to rounding, hence the tolerance on quality and weight only
        assert torch.equal(ours.gt_index[i], matched)
        assert torch.equal(ours.labels[i], classes)
        torch.testing.assert_close(ours.quality[i], ious, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ours.weight[i], ious, rtol=1e-9, atol=1e-12)
    assert ours.num_positive > 0


def _transport(seed: int, dtype=torch.float64, batch=4, gts=5, priors=60):
    """Supplies, costs (a 1e6 penalty outside a random region) and real rows, as OTA's."""
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, gts + 1, priors, generator=g, dtype=dtype) * 30
    region = torch.rand(batch, gts, priors, generator=g) < 0.3
    region[..., 0] = True  # every gt has a prior in its region
    cost[:, :gts] += 1e6 * (~region)
    rows = torch.ones(batch, gts + 1, dtype=torch.bool)
    rows[1:, 3:gts] = False  # padding
    mu = torch.randint(1, 6, (batch, gts + 1), generator=g).to(dtype) * rows
    mu[:, -1] = priors - mu[:, :gts].sum(1)
    return mu, cost, rows


@pytest.mark.parametrize("params", [{}, {"sinkhorn_eps": 0.2, "sinkhorn_iters": 20},
                                    {"sinkhorn_eps": 0.02}])
@pytest.mark.parametrize("empty_region", [False, True])
def test_ota_matrix_scaling_is_the_log_domain_plan(params, empty_region):
    a = assigners.build("ota", **params)
    for seed in range(3):
        mu, cost, rows = _transport(seed)
        if empty_region:  # a gt with no prior in its region: all its costs carry the penalty
            cost[0, 1] += 1e6
        slow = a._log_domain(mu, cost, rows)
        if empty_region:  # either path; the log domain cancels 1e7-sized potentials, which
            fast, rtol = a._sinkhorn(mu, cost, rows), 1e-8  # float64 holds to ~2e-9
        else:
            fast, rtol = a._scaling(mu, cost, rows), 1e-10
            assert fast is not None
        torch.testing.assert_close(fast, slow, rtol=rtol, atol=rtol * float(slow.max()))
        # float32 costs: the plan is float32, as close to the float64 plan as float32 holds
        # (closer than float32 log-domain iterations, off by up to 3e-3 at eps 0.0005)
        plan = a._sinkhorn(mu.float(), cost.float(), rows)
        assert plan.dtype == torch.float32
        torch.testing.assert_close(plan.double(), a._log_domain(mu, cost.float().double(), rows),
                                   rtol=1e-5, atol=1e-6 * float(slow.max()))


def test_ota_falls_back_to_the_log_domain_where_scaling_underflows(monkeypatch):
    # at a tiny eps a column's kernel underflows to zero where the log domain still has
    # (astronomically small) mass: the scaling is refused, the log domain decides
    mu, cost, rows = _transport(0)
    a = assigners.build("ota", sinkhorn_eps=0.002)
    assert a._scaling(mu, cost, rows) is None
    torch.testing.assert_close(a._sinkhorn(mu, cost, rows), a._log_domain(mu, cost, rows))
    used, scaling = [], type(a)._scaling

    def spy(self, *args):
        plan = scaling(self, *args)
        used.append(plan is not None)
        return plan

    monkeypatch.setattr(type(a), "_scaling", spy)
    for kind, eps in (("random", 0.1), ("tiny", 0.1), ("crowded", 0.002)):
        assigners.build("ota", sinkhorn_eps=eps)(scene(0, kind))
    assert used == [True, True, False]  # the official comparisons above see both paths


def test_ota_demand_above_the_priors_stays_finite():
    """Gts asking for more units than there are priors (20 priors; one box covering the
    canvas, predicted exactly by all of them, asks for 20): the official code's background
    supply turns negative and its plan NaN; here the background gets 0."""
    x = sample_inputs(0, gts=(6,), canvas=32, strides=(8, 16), num_classes=3)
    boxes = x.gt_boxes.clone()
    boxes[0, 0] = torch.tensor([0.0, 0.0, 32.0, 32.0], dtype=boxes.dtype)
    whole = boxes[0, 0].expand(1, x.num_priors, 4)
    x = x.replace(gt_boxes=boxes, pred_boxes=whole.clone())
    result = assigners.build("ota")(x)
    AssignerContract().check(result, x)
    assert result.num_positive > 0


# ----------------------------------------------------------------------------- Hungarian
@pytest.mark.parametrize("params", [{}, {"class_cost": "softmax"}, {"cost_class": 2.0,
                                                                     "cost_giou": 0.5}])
@pytest.mark.parametrize("seed,kind", list(scenes()))
def test_hungarian_matches_mmdetection(seed, kind, params):
    x = scene(seed, kind)
    a = assigners.build("hungarian", **params)
    ours = a(x)
    for i in range(x.batch):
        boxes, labels = real(x, i)
        gt_inds, lab = ref.hungarian_assign(
            x.scores[i], x.pred_boxes[i], boxes, labels, (128, 128), a.cost_class,
            a.cost_bbox, a.cost_giou, a.class_cost, a.focal_alpha, a.focal_gamma)
        index, _ = mmdet_index(gt_inds)
        expect(ours, i, index, labels=lab)
        assert int((index >= 0).sum()) == boxes.shape[0]


# -------------------------------------------------------------------------------- registry
def test_registry_lists_the_survey_assigners():
    assert assigners.names() == sorted(["maxiou", "fcos", "atss", "simota", "tal", "dsl",
                                        "ota", "hungarian"])
    with pytest.raises(UnknownNameError, match="did you mean 'atss'"):
        assigners.get("atts")
    assert assigners.get("hungarian").one_to_one


def test_parameter_errors_name_the_parameter():
    with pytest.raises(AssignerError, match="'topk'"):
        assigners.build("atss", topk=0)
    with pytest.raises(AssignerError, match="'topk' must be an int"):
        assigners.build("atss", topk=2.5)
    with pytest.raises(AssignerError, match="neg_iou_thr"):
        assigners.build("maxiou", neg_iou_thr=0.6, pos_iou_thr=0.5)
    with pytest.raises(AssignerError, match="one of"):
        assigners.build("tal", iou="giou")
    with pytest.raises(AssignerError, match="regress_ranges"):
        assigners.build("fcos", regress_ranges=((-1, 64),))(scene(0, "random"))


def test_inputs_from_lists_pad_the_batch():
    pts = torch.tensor([[4.0, 4.0], [12.0, 4.0]])
    x = AssignerInputs.from_lists(pts, 8.0, [torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
                                             torch.zeros(0, 4)],
                                  [torch.tensor([2]), torch.zeros(0, dtype=torch.long)],
                                  num_classes=3)
    assert x.gt_boxes.shape == (2, 1, 4) and x.gt_mask.tolist() == [[True], [False]]
    r = assigners.build("fcos")(x)
    assert r.gt_index.tolist() == [[0, -1], [-1, -1]] and r.labels.tolist() == [[2, 3], [3, 3]]
    with pytest.raises(AssignerError, match="num_classes"):
        AssignerInputs(priors=pts, strides=8.0, gt_boxes=x.gt_boxes, gt_labels=x.gt_labels)
    with pytest.raises(AssignerError, match=r"\[0, 3\)"):
        AssignerInputs(priors=pts, strides=8.0, gt_boxes=x.gt_boxes,
                       gt_labels=x.gt_labels + 5, gt_mask=x.gt_mask, num_classes=3)


def test_soft_targets_and_matched_boxes():
    x = scene(0, "random")
    r = assigners.build("tal")(x)
    soft = r.soft_targets()
    assert soft.shape == (x.batch, x.num_priors, x.num_classes)
    torch.testing.assert_close(soft.sum(-1), r.quality)
    boxes = r.matched_boxes(x.gt_boxes)
    pos = r.positive
    assert torch.equal(boxes[pos], x.gt_boxes[torch.nonzero(pos)[:, 0], r.gt_index[pos]])


# -------------------------------------------------------------------------------- contract
class TestMaxIoU(AssignerContract):
    name = "maxiou"


class TestFCOS(AssignerContract):
    name = "fcos"


class TestATSS(AssignerContract):
    name = "atss"
    params = {"anchor_scale": 4.0}


class TestSimOTA(AssignerContract):
    name = "simota"
    matches_outside = True      # a far gt takes its cheapest candidate (YOLOX does too)


class TestDSL(AssignerContract):
    name = "dsl"
    matches_outside = True      # no in-box term in the cost: as mmdetection


class TestTAL(AssignerContract):
    name = "tal"


class TestOTA(AssignerContract):
    name = "ota"
    matches_outside = True      # every gt supplies >= 1 unit, wherever it is


class TestHungarian(AssignerContract):
    name = "hungarian"
    matches_outside = True      # one-to-one: every gt is matched
