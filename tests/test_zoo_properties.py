"""Declared properties (hypothesis), gradcheck, degenerate inputs, reductions, errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoloss import zoo
from autoloss.errors import SignatureError, UnknownNameError
from autoloss.expr import ops_used
from autoloss.signatures import get as get_signature
from conftest import (ZOO_IDS, degenerate, float_inputs, perfect, reads_per_class, row_inputs,
                      sample, zoo_sample)

BOX_IDS = [i for i in ZOO_IDS if zoo.get(i).signature == "box"]
#: losses whose eps is an absolute length (bounded_iou: mmdetection's 1e-3) hold their
#: "zero at perfect" and "scale invariant" properties only up to eps / box size; 1 - ProbIoU
#: is sqrt(2 eps) = 4.5e-4 at a perfect prediction (ultralytics' eps inside the Hellinger root)
LOOSE = {"bounded_iou": 100.0, "probiou": 100.0}
#: signatures whose inputs have units: the ones scale invariance is defined (and tested) for
SCALED = ("box", "rbox")


def with_property(prop):
    return [i for i in ZOO_IDS if prop in zoo.get(i).properties]


coord = st.floats(-50, 50, allow_nan=False, width=64)
size = st.floats(0.05, 40, allow_nan=False, width=64)


@st.composite
def box_pairs(draw, n=8):
    rows = []
    for _ in range(2 * n):
        x, y, w, h = draw(coord), draw(coord), draw(size), draw(size)
        rows.append([x, y, x + w, y + h])
    t = torch.tensor(rows, dtype=torch.float64)
    return t[:n], t[n:]


@st.composite
def inputs_for(draw, loss_id):
    seed = draw(st.integers(0, 2 ** 16))
    if zoo.get(loss_id).signature == "box":
        return draw(box_pairs())
    return zoo_sample(loss_id, 24, seed)


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("loss_id", with_property("nonnegative"))
@SETTINGS
@given(data=st.data())
def test_nonnegative(loss_id, data):
    inputs = data.draw(inputs_for(loss_id))
    assert torch.all(zoo.build(loss_id)(*inputs) >= -1e-9)


@pytest.mark.parametrize("loss_id", with_property("symmetric"))
@SETTINGS
@given(pair=box_pairs())
def test_symmetric(loss_id, pair):
    spec = zoo.get(loss_id)
    a, b = pair if spec.signature == "box" else sample(spec.signature, 16, 0)
    loss = zoo.build(loss_id)
    torch.testing.assert_close(loss(a, b), loss(b, a), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_id", with_property("scale_invariant"))
@SETTINGS
@given(pair=box_pairs(), scale=st.floats(0.5, 20), seed=st.integers(0, 2 ** 16))
def test_scale_invariant(loss_id, pair, scale, seed):
    # up to the eps in denominators (1e-7; 1e-3 in bounded_iou): boxes of a few pixels
    # or more keep it negligible
    signature = get_signature(zoo.get(loss_id).signature)
    if signature.name == "box":
        a, b = pair
        a = torch.cat([a[:, :2], a[:, :2] + (a[:, 2:] - a[:, :2]).clamp(min=8.0)], 1)
        b = torch.cat([b[:, :2], b[:, :2] + (b[:, 2:] - b[:, :2]).clamp(min=8.0)], 1)
    else:  # the signature's boxes times 4 (sides of 2-32 pixels)
        a, b = signature.rescale(*sample(signature.name, 16, seed), 4.0, 0.0)
    loss = zoo.build(loss_id)
    rtol = 1e-4 * LOOSE.get(loss_id, 1.0) ** 0.5
    scaled = signature.rescale(a, b, scale, 0.0)
    torch.testing.assert_close(loss(*scaled), loss(a, b), rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("loss_id", with_property("zero_at_perfect"))
@pytest.mark.parametrize("seed", [0, 1])
def test_zero_at_a_perfect_prediction(loss_id, seed):
    inputs = perfect(zoo.get(loss_id).signature, seed=seed, loss_id=loss_id)
    assert zoo.build(loss_id)(*inputs).abs().max().item() < 1e-5 * LOOSE.get(loss_id, 1.0)


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_properties_are_declared_only_where_tested(loss_id):
    spec = zoo.get(loss_id)
    if "symmetric" in spec.properties or "scale_invariant" in spec.properties:
        assert spec.signature in ("coord",) + SCALED
    if "scale_invariant" in spec.properties:
        assert spec.signature in SCALED


def _uses_stop_grad(loss_id):
    return "stop_grad" in ops_used(zoo.get(loss_id).expression)


@pytest.mark.parametrize("loss_id", [i for i in ZOO_IDS if not _uses_stop_grad(i)])
def test_gradcheck_float64(loss_id):
    """Closed-form gradients against finite differences.

    Losses with a stop-gradient (ciou, wiou, bounded_iou) are not the gradient of their
    value by definition; they are checked against autograd below and against the
    references in test_zoo_reference.
    """
    spec = zoo.get(loss_id)
    inputs = list(zoo_sample(loss_id, 6, 11))
    idx = [i for i in float_inputs(inputs) if i in row_inputs(spec.signature)]
    if spec.signature in ("sigmoid", "dist"):
        idx = [0]  # targets: the [t > 0] label and floor(y) are piecewise constant
    for i in idx:
        inputs[i] = inputs[i].clone().requires_grad_(True)
    loss = zoo.build(loss_id)
    assert torch.autograd.gradcheck(lambda *a: loss(*a), tuple(inputs), eps=1e-6, atol=1e-5,
                                    rtol=1e-4)


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_closed_form_gradient_matches_autograd_of_the_generated_code(loss_id):
    inputs = list(zoo_sample(loss_id, 64, 12))
    idx = float_inputs(inputs)
    fused = [x.clone().requires_grad_(True) if i in idx else x for i, x in enumerate(inputs)]
    eager = [x.clone().requires_grad_(True) if i in idx else x for i, x in enumerate(inputs)]
    compiled = zoo.compiled(loss_id)
    a, b = compiled(*fused), compiled.eager(*eager)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    w = torch.rand(a.shape, dtype=a.dtype)
    ga = torch.autograd.grad((a * w).sum(), [fused[i] for i in idx], allow_unused=True)
    gb = torch.autograd.grad((b * w).sum(), [eager[i] for i in idx], allow_unused=True)
    for x, y in zip(ga, gb):
        if x is None or y is None:
            assert (x is None or not x.any()) and (y is None or not y.any())
        else:
            torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_degenerate_inputs_give_finite_values_and_gradients(loss_id):
    spec = zoo.get(loss_id)
    inputs = list(degenerate(spec.signature))
    idx = float_inputs(inputs)
    for i in idx:
        inputs[i] = inputs[i].clone().requires_grad_(True)
    out = zoo.build(loss_id)(*inputs)
    assert torch.isfinite(out).all(), out
    grads = torch.autograd.grad(out.sum(), [inputs[i] for i in idx], allow_unused=True)
    for g in grads:
        assert g is None or torch.isfinite(g).all(), g


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_reductions_and_empty_batch(loss_id):
    spec = zoo.get(loss_id)
    inputs = zoo_sample(loss_id, 10, 0)
    none = zoo.build(loss_id)(*inputs)
    torch.testing.assert_close(zoo.build(loss_id, reduction="sum")(*inputs), none.sum())
    torch.testing.assert_close(zoo.build(loss_id, reduction="mean")(*inputs), none.mean())
    rows = row_inputs(spec.signature)  # per-class constants are not cut with the rows
    empty = [x[:0].clone() if k in rows else x for k, x in enumerate(inputs)]
    idx = float_inputs(empty)
    empty[idx[0]].requires_grad_(True)
    mean = zoo.build(loss_id, reduction="mean")(*empty)
    assert mean.shape == () and mean.item() == 0.0
    mean.backward()
    assert empty[idx[0]].grad is not None and empty[idx[0]].grad.shape == empty[idx[0]].shape


def test_weight_and_avg_factor():
    p, t = sample("box", 8, 0)
    w = torch.rand(8, dtype=torch.float64)
    none = zoo.build("giou")(p, t)
    torch.testing.assert_close(zoo.build("giou", reduction="sum")(p, t, weight=w), (none * w).sum())
    got = zoo.build("giou", reduction="mean")(p, t, weight=w, avg_factor=4.0)
    torch.testing.assert_close(got, (none * w).sum() / (4.0 + torch.finfo(torch.float32).eps))
    x, y = sample("sigmoid", 8, 0)
    per_sample = torch.rand(8, dtype=torch.float64)
    torch.testing.assert_close(zoo.build("bce", reduction="sum")(x, y, weight=per_sample),
                               (zoo.build("bce")(x, y) * per_sample[:, None]).sum())


def test_parameters_override_defaults():
    x, t = sample("sigmoid", 20, 0)
    assert not torch.allclose(zoo.build("focal", gamma=0.5)(x, t), zoo.build("focal")(x, t))
    loss = zoo.build("focal", gamma=0.5)
    assert "gamma=0.5" in repr(loss)


@pytest.mark.parametrize("bad_call, message", [
    (lambda: zoo.build("gio"), "unknown zoo id 'gio'; did you mean 'giou'"),
    (lambda: zoo.build("giou", gama=1.0), "unknown parameter 'gama'"),
    (lambda: zoo.build("focal", gama=1.0), "did you mean 'gamma'"),
    (lambda: zoo.build("focal", gamma="big"), "must be a real number"),
    (lambda: zoo.build("giou", reduction="avg"), "reduction must be one of"),
])
def test_bad_arguments_raise_clear_errors(bad_call, message):
    with pytest.raises((UnknownNameError, ValueError)) as err:
        bad_call()
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(3, 5), torch.zeros(3, 5)), "must be a 2-D tensor of shape (N, 4), got shape (3, 5)"),
    ((torch.zeros(3, 4), torch.zeros(2, 4)), "must have the same shape, got (3, 4) and (2, 4)"),
    ((torch.zeros(3, 4), torch.zeros(1, 4)), "nothing is broadcast"),
    ((torch.zeros(4), torch.zeros(4)), "argument 'pred' must be a 2-D tensor"),
    ((torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4, dtype=torch.int64)), "floating-point"),
    ((torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)), "same dtype"),
    ((torch.zeros(3, 4),), "takes (pred, target), got 1 argument"),
    (([[0, 0, 1, 1]], torch.zeros(1, 4)), "must be a torch.Tensor"),
])
def test_wrong_box_inputs_raise(args, message):
    with pytest.raises(SignatureError) as err:
        zoo.build("giou")(*args)
    assert message in str(err.value)


def test_wrong_classification_inputs_raise():
    with pytest.raises(SignatureError, match=r"values in \[0, 1\]"):
        zoo.build("focal")(torch.zeros(2, 3), torch.full((2, 3), 2.0))
    with pytest.raises(SignatureError, match=r"'labels' must lie in \[0, 3\)"):
        zoo.build("softmax_ce")(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(SignatureError, match="integer tensor"):
        zoo.build("softmax_ce")(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(SignatureError, match=r"'target' must lie in \[0, B - 1\)"):
        zoo.build("dfl")(torch.zeros(2, 5), torch.tensor([0.5, 4.0]))
    with pytest.raises(SignatureError, match="quality"):
        zoo.build("cse_autoloss_a_cls")(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(3))


def test_wrong_per_class_inputs_raise():
    x, t = sample("sigmoid", 4, 0)
    focal = zoo.build("focal")
    with pytest.raises(SignatureError, match=r"'counts' must be a 1-D tensor of shape \(4,\)"):
        focal(x, t, torch.ones(3, dtype=x.dtype))
    with pytest.raises(SignatureError, match=r"'counts' must hold values positive"):
        focal(x, t, torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=x.dtype))
    with pytest.raises(SignatureError, match=r"'freq' must hold values in \[0, 1\]"):
        focal(x, t, None, torch.tensor([0.5, 1.5, 0.0, 0.1], dtype=x.dtype))
    with pytest.raises(SignatureError, match="real tensor"):
        focal(x, t, torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("loss_id", [i for i in ZOO_IDS if zoo.get(i).signature == "sigmoid"
                                     and not reads_per_class(i)])
def test_per_class_inputs_leave_the_other_sigmoid_losses_as_they_were(loss_id):
    x, t, counts, freq = get_signature("sigmoid").sample(
        50, torch.Generator().manual_seed(3), per_class=True)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    without, with_them = zoo.build(loss_id)(a, t), zoo.build(loss_id)(b, t, counts, freq)
    assert torch.equal(without, with_them)
    w = torch.rand(without.shape, dtype=without.dtype)
    assert torch.equal(torch.autograd.grad((without * w).sum(), a)[0],
                       torch.autograd.grad((with_them * w).sum(), b)[0])


def test_docstring_carries_the_formula():
    doc = type(zoo.build("ciou")).__doc__
    assert "alpha = stop_grad(v / (1 - iou + v + eps))" in doc
    assert "Zheng" in doc and "(N, 4)" in doc
