"""Walk the op registry: torch form vs sympy form, gradient rule vs sympy derivative, guards."""
from __future__ import annotations

import pytest
import sympy
import torch

from autoloss import autodiff, ops, symbolic
from autoloss import expr as E
from autoloss.codegen import Emitter
from autoloss.compiler import guard
from autoloss.expr import Call, Var
from autoloss.symbolic import from_sympy, symbol, to_sympy

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


@pytest.mark.parametrize("name", [n for n in OPS if not ops.get(n).batch])
def test_torch_form_matches_sympy_form(name):
    """(Batch-level ops have no value at one point: tests/test_kinds.py checks them.)"""
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


@pytest.mark.parametrize("name", OPS)
def test_sympy_form_maps_back_to_the_op(name):
    """from_sympy reads every op's sympy form backwards: the op comes back, not just its value."""
    spec = ops.get(name)
    node = Call(name, tuple(Var(a) for a in ARGS[:spec.arity]))
    assert from_sympy(to_sympy(node)) == node


class cube(sympy.Function):  # noqa: N801 - printed name
    """The sympy counterpart of the test primitive below."""

    def fdiff(self, argindex=1):
        return 3 * self.args[0] ** 2

    def _eval_evalf(self, prec):
        return (self.args[0] ** 3)._eval_evalf(prec)


@pytest.fixture
def cube_op():
    """A primitive that exists for one test: registered, then removed."""
    op = ops.Op("cube", 1, "({0} * {0} * {0})", lambda s, a: cube(a),
                lambda a, out, g: (E.mul(E.mul(E.const(3.0), g), E.mul(a[0], a[0])),),
                "a ** 3", math="({0} ** 3)", sample=((-2.0, 2.0),), units="keep")
    ops._register(op)
    yield op
    del ops.REGISTRY["cube"]


def test_adding_a_primitive_is_one_entry(cube_op):
    """One registry entry, and nothing else: the new op is parsed, printed, bridged to
    sympy both ways, compiled, differentiated and scored by the population evaluator."""
    from autoloss.compiler import CompiledLoss
    from autoloss.parse import parse
    from autoloss.population import PopulationEvaluator
    from autoloss.signatures import SIGNATURES

    coord = SIGNATURES["coord"]
    node = parse("cube(d) + 2", coord.names)
    assert E.to_infix(node) == "cube(d) + 2"
    d, pred, target = symbol("d"), symbol("pred"), symbol("target")
    assert to_sympy(node) == cube(d) + 2
    assert to_sympy(node, inline=coord.definitions) == cube(pred - target) + 2
    assert from_sympy(to_sympy(node), coord.names) == parse("2 + cube(d)", coord.names)
    assert symbolic.simplify(parse("cube(d) * 2 - cube(d)", coord.names)) == parse("cube(d)",
                                                                                  coord.names)
    # the closed-form gradient rule agrees with sympy's derivative of the sympy form
    (grad,) = autodiff.vjp(Call("cube", (Var("a"),)), ["a"]).values()
    assert sympy.simplify(to_sympy(grad) - sympy.diff(cube(symbol("a")), symbol("a"))) == 0

    pred_t = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    target_t = torch.zeros(1, 4, dtype=torch.float64)
    for mode in ("exact", "search"):
        loss = CompiledLoss(node, "coord", name="cube_loss", mode=mode)
        out = loss(pred_t, target_t)
        torch.testing.assert_close(out, pred_t.detach() ** 3 + 2)
        (g,) = torch.autograd.grad(out.sum(), pred_t)
        torch.testing.assert_close(g, 3 * pred_t.detach() ** 2)
    evaluator = PopulationEvaluator("coord", [pred_t.detach(), target_t])
    (result,) = evaluator.evaluate([node], grad=True)
    torch.testing.assert_close(result.value, pred_t.detach() ** 3 + 2)
    torch.testing.assert_close(result.grads["pred"], 3 * pred_t.detach() ** 2)
