"""digits with the registry's assigners: two levels, cached and per-step assignment, soft
targets, one-to-one without NMS (issue 17, item 3). Tiny budgets and scales: seconds."""
from __future__ import annotations

import pytest
import torch

from autoloss import assigners, zoo
from autoloss.assigners import AssignerError, Assignment
from autoloss.errors import AutolossError
from autoloss.proxies import digits as D
from autoloss.proxies import get
from autoloss.proxies.testing import ProxyContract

SCALE = 0.02                                        # 160 training canvases, 8 validation
FOCAL_GIOU = {"cls": zoo.compiled("focal"), "reg": zoo.compiled("giou")}


class TestDigitsTwoLevelTALContract(ProxyContract):
    """The proxy contract (same seed same result, pruning, failures) with an assigner that
    reads the predictions every step."""
    proxy_name = "digits"
    options = {"assigner": "tal", "levels": 2}
    losses = {"cls": "focal", "reg": "giou"}
    budget = 6
    scale = SCALE
    nan_loss = ("reg", "box", "log(iou - 2)")


def _setup(proxy, seed=0):
    data = proxy.data(SCALE)
    (train_x, _, _), _ = D.split(*data)
    torch.manual_seed(seed)
    return train_x, proxy.targets(data), proxy.model(), D.priors(proxy.canvas, proxy.levels), data


def _steps(proxy, losses, steps=3):
    """A few training steps by hand; the losses of each."""
    train_x, targets, model, pts, _ = _setup(proxy)
    opt = torch.optim.AdamW(model.parameters(), lr=proxy.lr)
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(steps):
        idx = torch.randint(0, len(train_x), (proxy.batch,), generator=g)
        total = proxy.step_loss(losses, "box", model(train_x[idx]), pts, targets, idx)
        opt.zero_grad()
        total.backward()
        opt.step()
        values.append(float(total.detach()))
    return values


@pytest.mark.parametrize("name", assigners.names())
def test_every_registry_assigner_trains_digits_with_finite_losses(name):
    proxy = get("digits", assigner=name, levels=2, batch=8)
    values = _steps(proxy, FOCAL_GIOU)
    assert all(torch.isfinite(torch.tensor(values))) and min(values) > 0
    # and through run(): training, evaluation (without NMS for the one-to-one hungarian)
    assert 0.0 <= proxy.run(FOCAL_GIOU, budget=2, scale=SCALE).value <= 1.0
    assert proxy.nms == (name != "hungarian")


def test_two_level_detector_and_priors():
    pts, strides = D.priors(64, 2)
    assert pts.shape == (80, 2) and strides.tolist() == [8.0] * 64 + [16.0] * 16
    assert pts[64].tolist() == [8.0, 8.0] and torch.equal(pts[:64], D.points(64, 8))
    torch.manual_seed(0)
    one = D.Detector()
    torch.manual_seed(0)
    two = D.Detector(levels=2)
    quality = D.Detector(levels=2, quality=True)
    cls, ltrb, iou = quality(torch.zeros(3, 1, 64, 64))
    assert cls.shape == (3, 80, 10) and ltrb.shape == (3, 80, 4) and iou.shape == (3, 80)
    # distances are in stride units: with the box weights zeroed, 1.5 strides per level
    with torch.no_grad():
        quality.reg.weight.zero_()
        ltrb = quality(torch.rand(3, 1, 64, 64))[1]
    assert torch.allclose(ltrb[:, :64], torch.tensor(12.0))
    assert torch.allclose(ltrb[:, 64:], torch.tensor(24.0))
    # the one-level detector has no second level, and shares the two-level one's draws
    assert not any(k.startswith("down") for k in one.state_dict())
    shared = {k: v for k, v in two.state_dict().items() if not k.startswith("down")}
    assert shared.keys() == one.state_dict().keys() and all(torch.equal(one.state_dict()[k], v) for k, v in shared.items())


def test_static_assigner_is_computed_once_and_matches_a_per_batch_call(monkeypatch):
    calls = []
    original = assigners.ATSSAssigner.assign
    monkeypatch.setattr(assigners.ATSSAssigner, "assign",
                        lambda self, x: calls.append(x.batch) or original(self, x))
    D._STATIC.clear()
    proxy = get("digits", assigner="atss", levels=2)
    proxy.run(FOCAL_GIOU, budget=3, scale=SCALE)
    proxy.run(FOCAL_GIOU, budget=3, scale=SCALE, seed=1)
    assert calls == [160]                           # the whole training set, once
    gt, cached = proxy.targets(proxy.data(SCALE))
    idx = torch.tensor([5, 0, 17])
    boxes, labels, mask = D.padded_targets(*proxy.data(SCALE))
    pts, strides = D.priors(64, 2)
    direct = proxy.assigner(assigners.AssignerInputs(
        priors=pts, strides=strides, gt_boxes=boxes[idx], gt_labels=labels[idx],
        gt_mask=mask[idx], num_classes=10))
    rows = D._rows(cached, idx)
    assert torch.equal(rows.gt_index, direct.gt_index) and direct.num_positive > 0
    assert torch.equal(gt[idx], boxes[idx])


def test_prediction_aware_assigner_runs_every_step_on_the_current_predictions(monkeypatch):
    seen = []
    original = assigners.TaskAlignedAssigner.assign
    monkeypatch.setattr(assigners.TaskAlignedAssigner, "assign",
                        lambda self, x: seen.append(x) or original(self, x))
    proxy = get("digits", assigner="tal", levels=2)
    proxy.run(FOCAL_GIOU, budget=4, scale=SCALE)
    assert len(seen) == 4                            # once per training step
    assert all(x.scores.shape == (48, 80, 10) and x.pred_boxes.shape == (48, 80, 4)
               for x in seen)
    assert not torch.equal(seen[0].scores, seen[-1].scores)   # training moved them
    # what it reads is the detector's output of that step, detached
    train_x, targets, model, pts, _ = _setup(proxy)
    idx = torch.arange(48)
    outputs = model(train_x[idx])
    seen.clear()
    total = proxy.step_loss(FOCAL_GIOU, "box", outputs, pts, targets, idx)
    (x,) = seen
    cls, ltrb, _ = outputs
    assert torch.equal(x.scores, cls.detach()) and not x.scores.requires_grad
    assert torch.equal(x.pred_boxes[..., 2:], (pts[0] + ltrb[..., 2:]).detach())
    total.backward()
    assert model.cls.weight.grad is not None and model.reg.weight.grad.abs().sum() > 0


def _recording(loss):
    def record(logits, target, reduction="none"):
        record.seen = (logits, target)
        return loss(logits, target, reduction=reduction)
    return record


def test_quality_targets_feed_the_classification_loss():
    proxy = get("digits", assigner="tal", levels=2, cls_target="quality")
    train_x, targets, model, pts, _ = _setup(proxy)
    idx = torch.arange(48)
    outputs = model(train_x[idx])
    cls = _recording(zoo.compiled("qfl"))
    proxy.step_loss({"cls": cls, "reg": FOCAL_GIOU["reg"]}, "box", outputs, pts, targets, idx)
    a = proxy.assign(outputs, pts, targets, idx)
    _, target = cls.seen
    pos = a.positive.reshape(-1)
    labels, quality = a.labels.reshape(-1)[pos], a.quality.reshape(-1)[pos]
    at_label = target[pos].gather(1, labels[:, None])[:, 0]
    assert torch.equal(at_label, quality.clamp(min=1e-6))
    assert torch.equal(target[pos].sum(1), at_label)         # nothing at the other classes
    soft = target[pos].amax(1)
    assert ((soft > 0) & (soft < 1)).any() and (target[~pos] == 0).all()
    # onehot under the same assigner: 1 at the positives
    proxy.cls_target = "onehot"
    proxy.step_loss({"cls": cls, "reg": FOCAL_GIOU["reg"]}, "box", outputs, pts, targets, idx)
    assert (cls.seen[1][pos].amax(1) == 1).all()


def test_max_iou_ignored_priors_are_left_out_of_classification():
    proxy = get("digits", assigner="maxiou", levels=2)
    train_x, targets, model, pts, _ = _setup(proxy)
    idx = torch.arange(48)
    a = proxy.assign(None, pts, targets, idx)
    assert a.ignore.any()
    cls = _recording(zoo.compiled("focal"))
    proxy.step_loss({"cls": cls, "reg": FOCAL_GIOU["reg"]}, "box", model(train_x[idx]), pts,
                    targets, idx)
    assert cls.seen[0].shape == (48 * 80 - int(a.ignore.sum()), 10)


def test_hungarian_is_one_to_one_and_evaluates_without_nms():
    proxy = get("digits", assigner="hungarian", levels=2)
    assert proxy.nms is False and get("digits", assigner="hungarian", nms=True).nms is True
    train_x, targets, model, pts, data = _setup(proxy)
    idx = torch.arange(48)
    a = proxy.assign(model(train_x[idx]), pts, targets, idx)
    (_, boxes, _), _ = D.split(*data)
    for i, b in enumerate(idx.tolist()):
        matched = a.gt_index[i][a.gt_index[i] >= 0]
        assert sorted(matched.tolist()) == list(range(len(boxes[b])))   # each gt once
    # without NMS two overlapping detections of one class both stay
    cls = torch.full((1, 2, 10), -9.0)
    cls[0, :, 3] = 3.0
    ltrb = torch.full((1, 2, 4), 6.0)
    p = torch.tensor([[20.0, 20.0], [21.0, 20.0]])
    assert len(D.detect(cls, ltrb, None, p)[0][0]) == 1
    assert len(D.detect(cls, ltrb, None, p, nms_threshold=None)[0][0]) == 2


def test_fcos_ranges_split_the_digits_across_the_two_levels():
    proxy = get("digits", assigner="fcos", levels=2)
    assert proxy.assigner.regress_ranges == D.DIGITS_DEFAULTS["fcos"]["regress_ranges"][2]
    _, a = proxy.targets(proxy.data(SCALE))
    on_16 = a.positive[:, 64:].sum()
    assert 0 < on_16 < a.positive[:, :64].sum()
    # a parameter given wins over digits' scale default
    wide = get("digits", assigner="fcos", levels=2,
               assigner_params={"regress_ranges": ((-1, 1e9), (1e9, 2e9))})
    _, b = wide.targets(wide.data(SCALE))
    assert b.positive[:, 64:].sum() == 0


@pytest.mark.parametrize("options, error, match", [
    ({"levels": 3}, ValueError, "levels must be 1 .* or 2"),
    ({"levels": True}, ValueError, "levels must be"),
    ({"assigner": "atsss"}, ValueError, "assigner must be one of .*atss"),
    ({"assigner": 3}, ValueError, "assigner must be a name"),
    ({"assigner": "center_sampling", "assigner_params": {"radius": 2}}, ValueError,
     "takes none"),
    ({"assigner": "atss", "assigner_params": [("topk", 3)]}, ValueError,
     "assigner_params must be a mapping"),
    ({"assigner": "atss", "assigner_params": {"top_k": 3}}, AutolossError,
     "has no parameter 'top_k'.*topk"),
    ({"assigner": "atss", "assigner_params": {"topk": 0}}, AssignerError, "topk"),
    ({"assigner": "atss", "assigner_params": "topk=3"}, ValueError, "JSON object"),
    ({"cls_target": "quality"}, ValueError, "cls_target='quality' reads the soft quality"),
    ({"assigner": "tal", "nms": "yes"}, ValueError, "nms must be True, False or None"),
])
def test_bad_options_are_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        get("digits", **options)


def test_assigner_params_from_the_command_line():
    from autoloss.cli import parse_options

    options = parse_options(["assigner=atss", 'assigner_params={"topk": 5}', "levels=2"])
    assert get("digits", **options).assigner.topk == 5


def test_a_built_assigner_is_taken_as_it_is():
    built = assigners.build("simota", center_radius=1.5)
    proxy = get("digits", assigner=built, levels=2, batch=4)
    assert proxy.assigner is built and proxy.dynamic
    assert isinstance(proxy.assign(proxy.model()(torch.zeros(4, 1, 64, 64)),
                                   D.priors(64, 2), proxy.targets(proxy.data(SCALE)),
                                   torch.arange(4)), Assignment)


def test_the_assigner_table_has_a_row_per_assigner(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "assigner_table.py"
    spec = importlib.util.spec_from_file_location("assigner_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    rows = table.rows(soft=True)
    labels = [label for label, _, _ in rows]
    assert len(labels) == len(set(labels))
    assert {o.get("assigner") for _, _, o in rows} >= set(assigners.names())
    for _, losses, options in rows:                 # every row is a valid digits setting
        get("digits", **options)
    table.main(["--cached", "--out", str(tmp_path), "--only", "tal"])   # nothing run yet
    assert "| assigner | levels | mAP |" in capsys.readouterr().out
