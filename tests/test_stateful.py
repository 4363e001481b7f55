"""Stateful zoo losses (``seesaw``, ``eqlv2``, ``wiou_v3``): values, gradients and state
after several training steps against step-by-step ports of the official code
(``tests/reference_stateful.py``) in float64; ``reset()``; no state shared or leaked."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoloss import catalog, zoo
from autoloss.errors import CatalogError, SignatureError, UnsupportedKindError

import reference_stateful as ref
from conftest import MODULE_IDS, sample

STATEFUL = ["seesaw", "eqlv2", "wiou_v3"]
STEPS = 6
RTOL = 1e-4


def _seesaw_batch(step, n=120, k=6):
    """Long-tailed labels (class j drawn ~ 2^-j), a third background (label k)."""
    g = torch.Generator().manual_seed(100 + step)
    logits = torch.randn(n, k + 2, generator=g, dtype=torch.float64) * 2
    probs = 0.5 ** torch.arange(k + 1, dtype=torch.float64)
    probs[k] = probs[:k].sum() / 2
    labels = torch.multinomial(probs, n, replacement=True, generator=g)
    return logits, labels


def _eqlv2_batch(step, n=90, c=5):
    """Logits (N, C + 1) with the objectness channel last, labels in [0, C] (C background)."""
    g = torch.Generator().manual_seed(200 + step)
    logits = torch.randn(n, c + 1, generator=g, dtype=torch.float64) * 2 - 1
    probs = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.25, 10.0], dtype=torch.float64)[:c + 1]
    labels = torch.multinomial(probs, n, replacement=True, generator=g)
    return logits, labels


def _boxes(step, n=80):
    g = torch.Generator().manual_seed(300 + step)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 5
    target = torch.cat([xy, xy + wh], 1)
    shift = torch.randn(n, 4, generator=g, dtype=torch.float64) * (3.0 + step)
    return target + shift.clamp(-wh.repeat(1, 2) / 2.5, wh.repeat(1, 2) / 2.5), target


def _grad(value, x):
    (g,) = torch.autograd.grad(value, x)
    return g


def test_seesaw_matches_mmdet_over_several_steps():
    zoo_loss = zoo.build("seesaw", reduction="mean")
    port = ref.SeesawPort(num_classes=6)
    for step in range(STEPS):
        logits, labels = _seesaw_batch(step)
        x, x_ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        n = float(len(labels))
        got = zoo_loss(x, labels, avg_factor=n)  # as mmdetection's bbox head calls it
        classes, objectness = port(x_ref, labels, avg_factor=n)
        want = classes + objectness
        torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
        torch.testing.assert_close(_grad(got, x), _grad(want, x_ref), rtol=RTOL, atol=1e-12)
        counts = zoo_loss.state_dict()["loss.impl.counts"]
        torch.testing.assert_close(counts.double(), port.cum_samples.double(), rtol=0, atol=0)
    assert int(counts.sum()) == STEPS * 120


def test_eqlv2_matches_mmdet_over_several_steps():
    """mmdetection's head has an objectness channel (last, weight 1, no statistics): its
    loss is the zoo's over the C class columns plus plain BCE of that channel, over N."""
    zoo_loss = zoo.build("eqlv2", reduction="sum")
    c = 5
    port = ref.EQLv2Port(num_classes=c)
    for step in range(STEPS):
        logits, labels = _eqlv2_batch(step, c=c)
        x, x_ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        onehot = F.one_hot(labels, c + 1).double()
        n = len(labels)
        objectness = F.binary_cross_entropy_with_logits(x[:, c], onehot[:, c], reduction="sum")
        got = (zoo_loss(x[:, :c], onehot[:, :c]) + objectness) / n
        want = port(x_ref, labels)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
        torch.testing.assert_close(_grad(got, x), _grad(want, x_ref), rtol=RTOL, atol=1e-12)
        state = zoo_loss.state_dict()
        for mine, theirs in (("pos_grad", port.pos_grad), ("neg_grad", port.neg_grad),
                             ("ratio", port.pos_neg)):
            torch.testing.assert_close(state[f"loss.impl.{mine}"].double(), theirs.double(),
                                       rtol=RTOL, atol=0)
    # the weights moved away from 1: some class's negatives are down-weighted
    assert (torch.sigmoid(12 * (port.pos_neg - 0.8)) < 0.9).any()


def test_wiou_v3_matches_official_over_several_steps():
    n_batches, epochs = 3, 2  # momentum 1 - 0.05^(1/6): the mean moves visibly
    zoo_loss = zoo.build("wiou_v3", steps=n_batches * epochs)
    port = ref.WIoUPort(n_batches, epochs)
    for step in range(STEPS):
        pred, target = _boxes(step)
        p, p_ref = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        got, want = zoo_loss(p, target), port(p_ref, target)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-12)
        w = torch.randn(got.shape, generator=torch.Generator().manual_seed(step),
                        dtype=torch.float64)
        torch.testing.assert_close(_grad((got * w).sum(), p), _grad((want * w).sum(), p_ref),
                                   rtol=RTOL, atol=1e-12)
        mean = zoo_loss.state_dict()["loss.impl.mean"]
        torch.testing.assert_close(mean.double(), port.iou_mean.data.double(), rtol=RTOL, atol=0)
    assert abs(float(mean) - 1.0) > 0.3


def _inputs(loss_id, step):
    if loss_id == "seesaw":
        return _seesaw_batch(step)
    if loss_id == "eqlv2":
        logits, labels = _eqlv2_batch(step)
        return logits[:, :5].contiguous(), F.one_hot(labels, 6)[:, :5].double()
    return _boxes(step)


def _build(loss_id, **kw):
    extra = {"steps": 6.0} if loss_id == "wiou_v3" else {}
    return zoo.build(loss_id, reduction="sum", **extra, **kw)


def _run(module, loss_id, steps=range(STEPS)):
    return [module(*_inputs(loss_id, s)).item() for s in steps]


@pytest.mark.parametrize("loss_id", STATEFUL)
def test_the_state_changes_the_loss_and_reset_forgets_it(loss_id):
    module = _build(loss_id)
    fresh = _run(module, loss_id)
    assert fresh[1:] != _run(_build(loss_id).eval(), loss_id)[1:]  # the state matters
    module.reset()
    for value in module.state_dict().values():
        assert value.numel() <= 1  # per-class state emptied; WIoU's mean back to 1
    # a search-like sequence: the same steps after reset() give the same values exactly
    assert _run(module, loss_id) == fresh


@pytest.mark.parametrize("loss_id", STATEFUL)
def test_modules_of_one_id_share_no_state(loss_id):
    a, b = _build(loss_id), _build(loss_id)
    first = _run(a, loss_id)
    assert _run(b, loss_id) == first  # b starts where a started, not where a ended
    one, two = zoo.loss(loss_id), zoo.loss(loss_id)
    assert one is not two and one.impl is not two.impl
    inputs = _inputs(loss_id, 0)
    for _ in range(3):
        one(*inputs)
    torch.testing.assert_close(two(*inputs), zoo.loss(loss_id)(*inputs))


@pytest.mark.parametrize("loss_id", STATEFUL)
def test_eval_mode_reads_the_state_and_leaves_it(loss_id):
    module = _build(loss_id)
    _run(module, loss_id, range(3))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.eval()
    inputs = _inputs(loss_id, 7)
    first = module(*inputs)
    torch.testing.assert_close(module(*inputs), first, rtol=0, atol=0)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    x = inputs[0][:6].clone().requires_grad_(True)
    rest = tuple(t[:6] for t in inputs[1:])
    if loss_id == "eqlv2":
        # its weights come from the state alone: with the state frozen the loss is an
        # ordinary differentiable function (Seesaw's compensation and WIoU v3's focusing
        # read the batch without gradient, by design; their gradients are checked against
        # the official code above)
        assert torch.autograd.gradcheck(lambda z: module(z, *rest), (x,))
    else:
        assert torch.isfinite(_grad(module(x, *rest), x)).all()


@pytest.mark.parametrize("loss_id", STATEFUL)
def test_state_dict_saves_and_restores_the_state(loss_id):
    module = _build(loss_id)
    _run(module, loss_id, range(3))
    restored = _build(loss_id)  # empty per-class buffers: any saved size loads
    restored.load_state_dict(module.state_dict())
    assert _run(restored, loss_id, range(3, 6)) == _run(module, loss_id, range(3, 6))


def test_a_changed_class_count_is_an_error_until_reset():
    module = zoo.build("eqlv2")
    module(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(SignatureError, match="holds 3 classes, the logits give 5; call reset"):
        module(torch.zeros(4, 5), torch.zeros(4, 5))
    module.reset()
    assert module(torch.zeros(4, 5), torch.zeros(4, 5)).shape == (4, 5)
    with pytest.raises(SignatureError, match="K \\+ 2 columns"):
        zoo.build("seesaw")(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_wiou_v3_is_wiou_v1_times_its_focusing_coefficient():
    pred, target = _boxes(0)
    v1 = zoo.build("wiou")(pred, target)
    iou_loss = zoo.build("iou")(pred, target)
    module = zoo.build("wiou_v3", alpha=1.9, delta=3.0).eval()  # mean 1: beta = L_IoU
    r = iou_loss / (3.0 * 1.9 ** (iou_loss - 3.0))
    torch.testing.assert_close(module(pred, target), r * v1)
    # beta = delta is the anchor of the focusing: r = 1 there
    assert (3.0 / (3.0 * 1.9 ** 0.0)) == 1.0


def test_proxy_seeds_start_from_a_fresh_state():
    """evaluate() resets a stateful loss before each seed: the same seed twice gives the
    same value, as a search that scores a stateful candidate twice must."""
    from autoloss.evaluate import evaluate

    res = evaluate("clssim", {"cls": "eqlv2"}, seeds=[0, 0], scale=0.03, budget=6)
    assert res.values[0] == res.values[1]


def test_the_catalog_checks_a_module_implementation(tmp_path):
    from test_kinds import _catalog_with

    entry = '''
[losses.test_mod]
title = "t"
paper = "p"
section = "2.3"
signature = "sigmoid"
kind = "{kind}"
{body}
'''
    for kind, body, msg in (
            ("B", 'implementation = "autoloss.ranking:ap_loss"', "not a torch.nn.Module class"),
            ("S", 'implementation = "autoloss.stateful:EQLv2Loss"', "is not a function"),
            ("B", 'implementation = "autoloss.stateful:EQLv2Loss"\nparams.beta = 1.0',
             "takes no keyword 'beta'; it takes gamma, mu, alpha"),
            ("B", 'implementation = "autoloss.stateful:EQLv2Loss"\nexpression = "x"',
             "is a module, not an expression")):
        with pytest.raises(CatalogError, match=msg):
            catalog.load(_catalog_with(tmp_path, entry.format(kind=kind, body=body)))
    spec = catalog.get("eqlv2")
    assert spec.module and not spec.compiles and "hand-written module" in spec.formula()
    with pytest.raises(UnsupportedKindError, match="hand-written batch-level module"):
        zoo.compiled("eqlv2")


def test_zoo_show_describes_a_hand_written_entry(capsys):
    from autoloss.cli import main

    assert main(["zoo", "show", "seesaw"]) == 0
    out = capsys.readouterr().out
    assert "autoloss.stateful:SeesawLoss (hand-written)" in out and "0.8" in out


def _module_inputs(loss_id, n=64, seed=0):
    spec = zoo.get(loss_id)
    inputs = sample(spec.signature, n, seed)
    if loss_id == "seesaw":  # K classes then 2 objectness logits: labels in [0, K]
        logits, labels = inputs[0], inputs[1]
        inputs = (logits, labels.clamp(max=logits.shape[1] - 2)) + tuple(inputs[2:])
    return inputs


@pytest.mark.parametrize("loss_id", MODULE_IDS)
def test_every_hand_written_module_follows_the_zoo_conventions(loss_id):
    from autoloss.signatures import get as get_signature

    spec = zoo.get(loss_id)
    inputs = _module_inputs(loss_id)
    x = inputs[0].clone().requires_grad_(True)
    module = zoo.build(loss_id)
    value = module(x, *inputs[1:])
    dims = [d for d in get_signature(spec.signature).output.strip("()").split(",") if d.strip()]
    assert value.dim() == len(dims) and value.shape[0] == len(x)  # "(N,)", "(N, C)"
    assert (value >= 0).all() == ("nonnegative" in spec.properties)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for reduction, reduce in (("sum", torch.sum), ("mean", torch.mean)):
        torch.testing.assert_close(zoo.build(loss_id, reduction=reduction).eval()(*inputs),
                                   reduce(zoo.build(loss_id).eval()(*inputs)))
    # what a proxy calls: per element by default, as a compiled loss
    torch.testing.assert_close(zoo.loss(loss_id).eval()(*inputs),
                               zoo.build(loss_id).eval()(*inputs))
    module.reset()
    assert callable(module.loss.impl.reset)
    with pytest.raises(Exception, match="unknown parameter 'nope'"):
        zoo.build(loss_id, nope=1.0)


def test_zero_at_a_perfect_prediction():
    labels = torch.tensor([0, 2, 3, 1])  # seesaw: K = 3 classes, 3 the background
    logits = torch.full((4, 5), -40.0, dtype=torch.float64)
    logits[torch.arange(4), labels.clamp(max=2)] = 40.0
    logits[:, 3] = torch.where(labels < 3, 40.0, -40.0)  # objectness: foreground
    logits[:, 4] = -logits[:, 3]
    logits[2, :3] = 0.0  # a background sample's class logits do not matter
    assert zoo.build("seesaw", reduction="sum")(logits, labels).item() < 1e-12
    t = torch.eye(3, dtype=torch.float64)[[0, 2, 1]]
    assert zoo.build("eqlv2", reduction="sum")((t * 2 - 1) * 40, t).item() < 1e-12
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 4.0, 2.0]], dtype=torch.float64)
    assert zoo.build("wiou_v3", reduction="sum")(boxes.clone(), boxes).item() < 1e-6
    perfect = torch.tensor([[40.0, -40.0, -40.0], [-40.0, -40.0, 40.0]], dtype=torch.float64)
    for loss_id in ("ssd_hnm", "ohem"):
        assert zoo.build(loss_id, reduction="sum")(perfect, torch.tensor([0, 2])).item() < 1e-12
