"""The rotated-box core (:mod:`autoloss.rotated`) and the ``rbox`` signature built on it.

shapely is the oracle for the intersection area (float64, random and degenerate pairs);
gradcheck checks its gradient; invariances, float32, TorchScript, the compiled loss
``1 - riou`` and the population evaluator on rbox follow.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoloss import export, rotated
from autoloss.compiler import compile_loss
from autoloss.parse import parse
from autoloss.population import PopulationEvaluator
from autoloss.signatures import RBOX, rbox

shapely = pytest.importorskip("shapely")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
F64 = torch.float64


def oracle(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection areas by shapely (GEOS), from the same corners."""
    a = shapely.polygons(rotated.corners(pred.detach().double()).numpy())
    b = shapely.polygons(rotated.corners(target.detach().double()).numpy())
    return torch.from_numpy(shapely.area(shapely.intersection(a, b)))


def random_pairs(n: int, seed: int = 0, dtype=F64):
    """Boxes of sizes 0.2-6 at any aspect and angle (-2 pi ... 2 pi), centres within a few
    sizes of each other: disjoint, crossing, nested, mostly overlapping."""
    g = torch.Generator().manual_seed(seed)

    def boxes(spread):
        c = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * spread
        wh = torch.rand(n, 2, generator=g, dtype=dtype) * 5.8 + 0.2
        theta = (torch.rand(n, 1, generator=g, dtype=dtype) - 0.5) * 4 * math.pi
        return torch.cat([c, wh, theta], 1)

    return boxes(6.0), boxes(3.0)


def named_degenerate():
    """The signature's degenerate pairs and a few more, each with a name."""
    a = 0.3
    t = [0.0, 0.0, 2.0, 1.0, a]
    extra = [
        ("theta + pi, both ways", [0.0, 0.0, 2.0, 1.0, a - math.pi], t),
        ("identical, axis-aligned", [1.0, 2.0, 3.0, 4.0, 0.0], [1.0, 2.0, 3.0, 4.0, 0.0]),
        ("touching, rotated, opposite", [2 * math.cos(a), 2 * math.sin(a), 2.0, 1.0, a], t),
        ("shared corner, axis-aligned", [0.0, 0.0, 2.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0, 0.0]),
        ("half overlap, axis-aligned", [0.0, 0.0, 2.0, 2.0, 0.0], [1.0, 1.0, 2.0, 2.0, 0.0]),
        ("shared edge line, same side", [0.0, 0.0, 2.0, 2.0, 0.0], [0.5, 0.0, 1.0, 2.0, 0.0]),
        ("near-parallel 1e-13", [0.0, 0.0, 2.0, 1.0, a], [0.2, 0.1, 2.0, 1.0, a + 1e-13]),
        ("near-parallel 1e-6", [0.0, 0.0, 2.0, 1.0, a], [0.2, 0.1, 2.0, 1.0, a + 1e-6]),
        ("edge through a corner", [0.0, 0.0, 2.0, 2.0, 0.0],
         [1.0 + 0.5 ** 0.5, 0.0, 1.0, 1.0, math.pi / 4]),
        ("cross", [0.0, 0.0, 4.0, 1.0, 0.0], [0.0, 0.0, 1.0, 4.0, 0.0]),
        ("square at 45 degrees inside", [0.0, 0.0, 2.0, 2.0, 0.0],
         [0.0, 0.0, 2 ** 0.5, 2 ** 0.5, math.pi / 4]),
        ("thin along an edge", [1.0, 0.0, 1e-5, 2.0, 0.0], [0.0, 0.0, 2.0, 2.0, 0.0]),
        ("tiny far away", [1e4, 1e4, 1e-3, 1e-3, 0.7], t),
    ]
    p, q = RBOX.degenerate(F64)
    names = [f"signature degenerate #{i}" for i in range(len(p))]
    names += [name for name, _, _ in extra]
    pred = torch.cat([p, torch.tensor([x for _, x, _ in extra], dtype=F64)])
    target = torch.cat([q, torch.tensor([y for _, _, y in extra], dtype=F64)])
    return names, pred, target


# ---------------------------------------------------------------- values against shapely
def test_area_matches_shapely_on_random_pairs():
    pred, target = random_pairs(4000)
    ours, theirs = rotated.intersection_area(pred, target), oracle(pred, target)
    assert (theirs > 0).float().mean() > 0.3 and (theirs == 0).any()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-10)
    # the signature's own samples too
    pred, target = RBOX.sample(2000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(rotated.intersection_area(pred, target), oracle(pred, target),
                               rtol=1e-4, atol=1e-10)


def test_area_matches_shapely_on_every_degenerate_class():
    names, pred, target = named_degenerate()
    ours, theirs = rotated.intersection_area(pred, target), oracle(pred, target)
    for name, a, b in zip(names, ours.tolist(), theirs.tolist()):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-10), name


def test_exact_where_the_answer_is_exact():
    """Identical boxes count their boundary once, touching boxes meet in a line, a box
    without area intersects nothing: exactly, not up to rounding."""
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0, 0.3], [5.0, -1.0, 3.0, 4.0, 0.0],
                          [1e3, 2e3, 0.5, 7.0, -2.0]], dtype=F64)
    assert torch.equal(rotated.intersection_area(boxes, boxes), boxes[:, 2] * boxes[:, 3])
    square = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=F64)
    for shift in ([2.0, 0.0], [0.0, -2.0], [2.0, 2.0], [-2.0, 2.0]):  # edges and corners
        other = square.clone()
        other[0, :2] = torch.tensor(shift, dtype=F64)
        assert rotated.intersection_area(square, other).item() == 0.0
        assert rotated.intersection_area(other, square).item() == 0.0
    flat = torch.tensor([[0.2, 0.1, 0.0, 1.0, 0.3], [0.2, 0.1, 1.0, 0.0, 0.3],
                         [0.2, 0.1, 0.0, 0.0, 0.3], [1.0, 0.0, 0.0, 2.0, 0.0]], dtype=F64)
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0, 0.0]], dtype=F64).repeat(4, 1)
    assert torch.equal(rotated.intersection_area(flat, target), torch.zeros(4, dtype=F64))
    assert torch.equal(rotated.intersection_area(target, flat), torch.zeros(4, dtype=F64))


# -------------------------------------------------------------------------- gradients
def test_gradcheck_float64_on_generic_pairs():
    pred, target = random_pairs(40, seed=2)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    assert torch.autograd.gradcheck(rotated.intersection_area, (pred, target))
    assert torch.autograd.gradcheck(lambda p, t: rotated.iou(p, t), (pred, target))


def test_gradient_matches_central_differences_on_many_pairs():
    """The gradient (a linear term whose coefficients are the area's partial derivatives,
    its shape derivative) against central differences, every parameter of both boxes, on
    thousands of pairs at once (gradcheck above does a few, one entry at a time)."""
    pred, target = random_pairs(3000, seed=3)
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    ours = torch.autograd.grad(rotated.intersection_area(p, t).sum(), [p, t])
    h = 1e-6
    for which, grad in enumerate(ours):
        for k in range(5):
            step = torch.zeros_like(pred)
            step[:, k] = h
            a, b = (pred, target) if which == 0 else (target, pred)
            plus = (a + step, b) if which == 0 else (b, a + step)
            minus = (a - step, b) if which == 0 else (b, a - step)
            numeric = (rotated.intersection_area(*plus)
                       - rotated.intersection_area(*minus)) / (2 * h)
            torch.testing.assert_close(grad[:, k], numeric, rtol=1e-5, atol=1e-6)


def test_gradient_is_finite_at_every_degenerate_pair():
    _, pred, target = named_degenerate()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    for fn in (rotated.intersection_area, rotated.iou, lambda p, t: 1 - rotated.iou(p, t)):
        grads = torch.autograd.grad(fn(pred, target).sum(), [pred, target])
        assert all(torch.isfinite(g).all() for g in grads)


def test_float32_is_close_to_float64():
    pred, target = random_pairs(3000, seed=4)
    p32, t32 = pred.float().requires_grad_(True), target.float().requires_grad_(True)
    p64, t64 = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    a32, a64 = rotated.intersection_area(p32, t32), rotated.intersection_area(p64, t64)
    assert a32.dtype == torch.float32
    torch.testing.assert_close(a32.double(), a64, rtol=1e-4, atol=1e-4)
    g32 = torch.autograd.grad(rotated.iou(p32, t32).sum(), [p32, t32])
    g64 = torch.autograd.grad(rotated.iou(p64, t64).sum(), [p64, t64])
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3)
    _, dp, dt = named_degenerate()
    d32 = rotated.intersection_area(dp.float(), dt.float())
    torch.testing.assert_close(d32.double(), rotated.intersection_area(dp, dt),
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- invariances
def _turned(boxes, d_theta):
    out = boxes.clone()
    out[:, 4] = out[:, 4] + d_theta
    return out


def _swapped_sides(boxes):
    return torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 3], boxes[:, 2],
                        boxes[:, 4] + math.pi / 2], 1)


def test_invariances():
    pred, target = random_pairs(2000, seed=5)
    area = rotated.intersection_area(pred, target)

    def close(other):
        torch.testing.assert_close(other, area, rtol=1e-9, atol=1e-11)

    close(rotated.intersection_area(_turned(pred, math.pi), target))  # theta + pi
    close(rotated.intersection_area(pred, _turned(target, -math.pi)))
    close(rotated.intersection_area(_swapped_sides(pred), target))  # (h, w, theta + pi/2)
    close(rotated.intersection_area(pred, _swapped_sides(target)))
    close(rotated.intersection_area(target, pred))  # symmetric
    # translation, rotation of the whole scene about the origin, scale
    shift = torch.tensor([37.0, -11.0, 0.0, 0.0, 0.0], dtype=F64)
    close(rotated.intersection_area(pred + shift, target + shift))
    phi = 0.7

    def rotate(b):
        c, s = math.cos(phi), math.sin(phi)
        return torch.stack([c * b[:, 0] - s * b[:, 1], s * b[:, 0] + c * b[:, 1], b[:, 2],
                            b[:, 3], b[:, 4] + phi], 1)

    close(rotated.intersection_area(rotate(pred), rotate(target)))
    for s in (1e-2, 1e3):
        scale = torch.tensor([s, s, s, s, 1.0], dtype=F64)
        torch.testing.assert_close(rotated.intersection_area(pred * scale, target * scale),
                                   area * s * s, rtol=1e-9, atol=1e-11 * s * s)


def test_corners_follow_mmrotate():
    box = torch.tensor([[1.0, 2.0, 4.0, 2.0, math.pi / 2]], dtype=F64)
    # R(pi/2) (w/2, -h/2) = (h/2, w/2): the first corner after (-w/2, -h/2), counter-clockwise
    expected = torch.tensor([[[2.0, 0.0], [2.0, 4.0], [0.0, 4.0], [0.0, 0.0]]], dtype=F64)
    torch.testing.assert_close(rotated.corners(box), expected, atol=1e-12, rtol=0)
    assert shapely.polygons(rotated.corners(box).numpy()[0]).exterior.is_ccw


# -------------------------------------------------------------------------- TorchScript
def test_scripts_and_the_exported_text_is_this_module():
    pred, target = random_pairs(50, seed=6)
    for fn in (rotated.corners, rotated.intersection_area, rotated.iou):
        torch.jit.script(fn)
    scripted = torch.jit.script(rotated.intersection_area)
    torch.testing.assert_close(scripted(pred, target), rotated.intersection_area(pred, target))
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(scripted(p, t).sum(), [p])
    (want,) = torch.autograd.grad(rotated.intersection_area(p, t).sum(), [p])
    torch.testing.assert_close(g, want)
    text = rotated.source("_r_")
    assert "def _r_intersection_area(" in text and "def intersection_area(" not in text
    for name in rotated.EXPORTED_NAMES:  # read from the module: its docstrings are there
        assert getattr(rotated, name).__doc__.splitlines()[0] in text, name


def test_exported_rbox_loss_embeds_the_geometry(tmp_path):
    loss = compile_loss(parse("1 - riou", RBOX.names, dict(RBOX.params)), "rbox",
                        name="riou_loss")
    path = export.to_file(loss, tmp_path / "riou.py", name="RotatedIoULoss")
    assert rotated.source(rbox.EXPORT_PREFIX) in path.read_text()
    report = export.check(path, loss)
    assert report["units"] == "invariant"
    module = export.load(path)
    pred, target = RBOX.sample(20, torch.Generator().manual_seed(7))
    scripted = torch.jit.script(module.RotatedIoULoss())
    torch.testing.assert_close(scripted(pred, target), 1 - rotated.iou(pred, target))


# --------------------------------------------------------------- the rbox compiled loss
@pytest.mark.parametrize("pred_grad, target_grad", [(True, False), (True, True), (False, True)])
def test_compiled_one_minus_riou_matches_autograd_through_rotated_iou(pred_grad, target_grad):
    loss = compile_loss(parse("1 - riou", RBOX.names, dict(RBOX.params)), "rbox")
    g = torch.Generator().manual_seed(8)
    pred, target = RBOX.sample(400, g)
    _, dp, dt = named_degenerate()
    pred, target = torch.cat([pred, dp]), torch.cat([target, dt])
    w = torch.rand(len(pred), dtype=F64, generator=g)
    idx = [i for i, want in enumerate((pred_grad, target_grad)) if want]

    def leaves():
        return [pred.clone().requires_grad_(pred_grad), target.clone().requires_grad_(target_grad)]

    mine, theirs, eager = leaves(), leaves(), leaves()
    value = loss(*mine)
    reference = 1 - rotated.iou(*theirs)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((value * w).sum(), [mine[i] for i in idx])
    want = torch.autograd.grad((reference * w).sum(), [theirs[i] for i in idx])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the eager path (autograd through prepare's columns) agrees
    e = loss.eager(*eager)
    for a, b in zip(got, torch.autograd.grad((e * w).sum(), [eager[i] for i in idx])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_compiled_loss_in_chunks():
    """A batch large enough for the chunked fused path."""
    loss = compile_loss(parse("1 - riou + rho2 / rdiag2", RBOX.names, dict(RBOX.params)),
                        "rbox")
    pred, target = RBOX.sample(150_000, torch.Generator().manual_seed(9))
    a, b = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    loss(a, target).sum().backward()
    loss.eager(b, target).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_population_evaluator_computes_rinter_once_per_batch(monkeypatch):
    calls = []
    terms = rotated.intersection_terms

    def counted(pred, target):
        calls.append(len(pred))
        return terms(pred, target)

    monkeypatch.setattr(rotated, "intersection_terms", counted)
    pred, target = RBOX.sample(64, torch.Generator().manual_seed(10))
    texts = ["1 - riou", "1 - riou + rho2 / rdiag2", "1 - riou + (renclose - runion) / renclose",
             "-log(riou + eps)", "1 - riou + wrap(dt, pi) ** 2"]
    exprs = [parse(t, RBOX.names, dict(RBOX.params)) for t in texts]
    evaluator = PopulationEvaluator("rbox", [pred, target], mode="exact")
    results = evaluator.evaluate(exprs, grad=True)
    evaluator.evaluate(exprs[:2])
    assert calls == [64]  # the intersection, once for the batch
    assert "rinter" in evaluator.grad_columns
    for text, expr, r in zip(texts, exprs, results):
        want = compile_loss(expr, "rbox")(pred, target)
        torch.testing.assert_close(r.value, want, rtol=1e-12, atol=1e-12)
        assert set(r.grads) == {"pcx", "pcy", "pw", "ph", "pt", "rinter"}, text


# ------------------------------------------------------------------------------- wrap
def test_wrap_takes_an_angle_difference_modulo_pi():
    loss = compile_loss(parse("wrap(pt - tt, pi) ** 2", RBOX.names, dict(RBOX.params)), "rbox")
    pred, target = RBOX.sample(200, torch.Generator().manual_seed(11))
    pred[:, 4] += torch.randint(-3, 4, (200,), generator=torch.Generator().manual_seed(0)) * math.pi
    p = pred.clone().requires_grad_(True)
    value = loss(p, target)
    d = pred[:, 4] - target[:, 4]
    wrapped = d - math.pi * torch.round(d / math.pi)
    assert wrapped.abs().max() <= math.pi / 2 + 1e-12
    torch.testing.assert_close(value, wrapped ** 2)
    (g,) = torch.autograd.grad(value.sum(), p)
    torch.testing.assert_close(g[:, 4], 2 * wrapped)
    assert not g[:, :4].any()
    assert RBOX.unit_error(parse("wrap(pw, pi)", RBOX.names)) is not None  # a length mod pi
