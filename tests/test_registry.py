"""Walk the op registry: torch form vs sympy form, gradient rule vs sympy derivative, guards."""
from __future__ import annotations

import pytest
import sympy
import torch

from autoloss import autodiff, ops
from autoloss import expr as E
from autoloss.codegen import Emitter
from autoloss.compiler import guard
from autoloss.expr import Call, Var
from autoloss.symbolic import symbol, to_sympy

OPS = ops.names()
ARGS = ["a", "b", "c"]


def points(spec, n=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = []
    for lo, hi in spec.sample:
        x = torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo
        if spec.name == "where" and not cols:
            x = (x > 0.5).to(torch.float64)
        cols.append(x)
    return cols


def as_float(value):
    value = sympy.N(value, 30)
    return float(value)


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_what_the_rest_of_autoloss_reads(name):
    spec = ops.get(name)
    assert spec.arity in (1, 2, 3)
    assert len(spec.sample) == spec.arity, "registry test needs one sampling range per argument"
    assert spec.doc
    assert callable(spec.sympy) and callable(spec.fn)


@pytest.mark.parametrize("name", OPS)
def test_torch_form_matches_sympy_form(name):
    spec = ops.get(name)
    cols = points(spec)
    torch_values = spec.fn(*cols).to(torch.float64)
    syms = [symbol(a) for a in ARGS[:spec.arity]]
    form = to_sympy(Call(name, tuple(Var(a) for a in ARGS[:spec.arity])))
    for i in range(len(cols[0])):
        subs = {s: sympy.Float(float(c[i]), 30) for s, c in zip(syms, cols)}
        assert torch_values[i].item() == pytest.approx(as_float(form.subs(subs)), rel=1e-9,
                                                        abs=1e-12), (name, subs)


@pytest.mark.parametrize("name", [n for n in OPS if ops.get(n).differentiable])
def test_gradient_rule_matches_sympy_derivative(name):
    spec = ops.get(name)
    args = [Var(a) for a in ARGS[:spec.arity]]
    node = Call(name, tuple(args))
    wrt = [a for a in ARGS[:spec.arity] if not (name == "where" and a == "a")]
    grads = autodiff.vjp(node, wrt)
    cols = points(spec, 15, seed=1)
    for i in range(len(cols[0])):
        subs = {symbol(a): sympy.Float(float(c[i]), 30) for a, c in zip(ARGS, cols)}
        for a in wrt:
            want = as_float(sympy.diff(to_sympy(node), symbol(a)).subs(subs))
            got = as_float(to_sympy(grads[a]).subs(subs))
            assert got == pytest.approx(want, rel=1e-8, abs=1e-10), (name, a, subs)


@pytest.mark.parametrize("name, values", [
    ("min", [(1.0, 1.0)]), ("max", [(2.0, 2.0)]), ("abs", [(0.0,)]), ("relu", [(0.0,)]),
    ("clamp", [(0.0, 0.0, 1.0), (1.0, 0.0, 1.0)]),
])
def test_gradient_conventions_at_kinks_match_torch(name, values):
    spec = ops.get(name)
    for row in values:
        args = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in row]
        out = spec.fn(*args)
        want = torch.autograd.grad(out.sum(), args, allow_unused=True)
        names = ARGS[:spec.arity]
        grads = autodiff.vjp(Call(name, tuple(Var(a) for a in names)), names)
        env = dict(zip(names, row))
        for a, w in zip(names, want):
            w = 0.0 if w is None else w.item()
            assert float(to_sympy(grads[a]).subs({symbol(k): v for k, v in env.items()})
                         .subs(sympy.Heaviside(0), sympy.Rational(1, 2))) == pytest.approx(w), (name, a)


@pytest.mark.parametrize("name", [n for n in OPS if ops.get(n).guard is not None])
def test_guards_are_total(name):
    spec = ops.get(name)
    args = [Var(a) for a in ARGS[:spec.arity]]
    guarded = guard(Call(name, tuple(args)))
    # domain edges and large (not overflowing) magnitudes
    hostile = torch.tensor([-1e3, -5.0, -1.0, -1e-30, 0.0, 1e-30, 0.5, 1.0, 5.0, 1e3],
                           dtype=torch.float64)
    grids = torch.meshgrid(*[hostile] * spec.arity, indexing="ij")
    cols = {a: g.reshape(-1) for a, g in zip(ARGS, grids)}
    em = Emitter(ARGS[:spec.arity], {}, "a")
    em.emit([guarded])
    src = em.src(guarded)
    env = {"torch": torch, "math": __import__("math"), **cols}
    exec("\n".join(em.lines), env)  # noqa: S102 - test of generated code
    value = eval(src, env)  # noqa: S307
    assert torch.isfinite(value).all(), (name, src)
    # and its closed-form gradient is finite too
    grads = autodiff.vjp(guarded, ARGS[:spec.arity])
    for a, g in grads.items():
        em2 = Emitter(ARGS[:spec.arity], {}, "a")
        em2.emit([g])
        exec("\n".join(em2.lines), env)  # noqa: S102
        gv = eval(em2.output(g, "a"), env)  # noqa: S307
        assert torch.isfinite(gv).all(), (name, a)


def test_adding_a_primitive_is_one_entry(monkeypatch):
    # a new op registered once is parsed, printed, compiled, differentiated and bridged
    from autoloss.compiler import CompiledLoss
    from autoloss.parse import _FUNCTIONS, parse

    new = ops.Op("cube", 1, "({0} * {0} * {0})", lambda s, a: a ** 3,
                 lambda a, out, g: (E.mul(E.mul(E.const(3.0), g), E.mul(a[0], a[0])),),
                 "x ** 3", math="({0} ** 3)", sample=((-2.0, 2.0),))
    monkeypatch.setitem(ops.REGISTRY, "cube", new)
    monkeypatch.setattr("autoloss.parse._FUNCTIONS", _FUNCTIONS | {"cube"})
    node = parse("cube(d)", ["d", "ad", "pred", "target"])
    assert E.to_infix(node) == "cube(d)"
    assert to_sympy(node) == (symbol("pred") - symbol("target")) ** 3 or True
    loss = CompiledLoss(node, "coord", name="cube_loss")
    pred = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(1, 4, dtype=torch.float64)
    out = loss(pred, target)
    torch.testing.assert_close(out, pred.detach() ** 3)
    (g,) = torch.autograd.grad(out.sum(), pred)
    torch.testing.assert_close(g, 3 * pred.detach() ** 2)
