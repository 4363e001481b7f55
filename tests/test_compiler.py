"""Compiler: sympy agreement, cache, tracebacks, search mode, chunking, population evaluator."""
from __future__ import annotations

import subprocess
import sys
import traceback

import numpy as np
import pytest
import sympy
import torch

from autoloss import compiler, runtime, zoo
from autoloss import expr as E
from autoloss.compiler import CompiledLoss, compile_loss
from autoloss.errors import ExpressionError
from autoloss.parse import parse
from autoloss.population import Failure, PopulationEvaluator, Result
from autoloss.signatures import BOX, SIGNATURES
from autoloss.symbolic import lambdify, symbol, to_sympy
from conftest import ZOO_IDS, sample, zoo_sample


def box_expr(text, **params):
    ps = dict(BOX.params)
    ps.update({k: E.Param(k, v) for k, v in params.items()})
    return parse(text, BOX.names, ps)


def columns_of(signature, inputs):
    sig = SIGNATURES[signature]
    with torch.no_grad():
        prep = sig.prepare("test", *sig.check(inputs))
    return dict(zip(sig.columns, prep.columns)), prep


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_compiled_agrees_with_sympy(loss_id):
    spec = zoo.get(loss_id)
    sig = SIGNATURES[spec.signature]
    inputs = zoo_sample(loss_id, 40, 3)
    cols, _ = columns_of(spec.signature, inputs)
    f = lambdify(spec.expression, sig.columns, inline=sig.definitions)
    with np.errstate(all="ignore"):
        want = f(*[c.numpy() for c in cols.values()])
    got = zoo.build(loss_id)(*inputs)
    np.testing.assert_allclose(got.numpy(), np.broadcast_to(want, got.shape), rtol=1e-9, atol=1e-12)


# (sympy's diff of SIoU's nested piecewise terms takes minutes: SIoU's gradient is checked
# against autograd and the mmdetection-style reference instead)
@pytest.mark.parametrize("loss_id", ["giou", "ciou", "focal", "qfl", "balanced_l1", "dfl",
                                     "poly1", "eiou", "cse_autoloss_b_cls"])
def test_closed_form_gradient_agrees_with_sympy_derivative(loss_id):
    spec = zoo.get(loss_id)
    sig = SIGNATURES[spec.signature]
    compiled = zoo.compiled(loss_id)
    needs = [i == 0 for i in sig.column_input]
    grads = compiled.gradients(needs)
    symbolic = to_sympy(spec.expression, inline=sig.definitions, bind_params=True)
    inputs = sample(spec.signature, 3, 8)
    cols, _ = columns_of(spec.signature, inputs)
    flat = {k: v.reshape(-1)[:4] for k, v in cols.items()}
    for col, g in zip(sig.columns, grads):
        if g is None:
            continue
        want = sympy.diff(symbolic, symbol(col))
        got = E.substitute(g, {p: E.Const(p.default) for p in E.params(g).values()})
        f_want = sympy.lambdify([symbol(c) for c in sig.columns], want,
                                modules=[{"Heaviside": lambda x, h0=0.5: np.heaviside(x, 0.5)},
                                         __import__("autoloss.symbolic").symbolic.NUMPY_FUNCS,
                                         "numpy"])
        f_got = lambdify(got, sig.columns)
        args = [flat[c].numpy() for c in sig.columns]
        np.testing.assert_allclose(np.broadcast_to(f_got(*args), args[0].shape),
                                   np.broadcast_to(f_want(*args), args[0].shape),
                                   rtol=1e-7, atol=1e-9)


def test_cache_by_canonical_hash():
    a = compile_loss(box_expr("1 - iou + (enclose - union) / enclose"), BOX)
    b = compile_loss(box_expr("(enclose - union) / enclose + 1 - iou"), BOX)
    c = compile_loss(box_expr("1 - iou"), BOX)
    assert a is b and a is not c
    assert compile_loss(a.expression, BOX, mode="search") is not a


def test_generated_source_is_readable_and_named():
    src = zoo.compiled("giou").source
    for name in ("iou = (inter / (union + eps))", "enclose = (cw * ch)", "def giou_vjp("):
        assert name in src
    assert "del " in src  # temporaries are freed as soon as they are dead


def test_traceback_shows_generated_code():
    loss = CompiledLoss(box_expr("1 - iou"), BOX, name="tb_check")
    fn = loss.function([False] * 8)
    with pytest.raises(TypeError) as err:
        fn("not a tensor", *([torch.zeros(2)] * 7), 1e-7)
    text = "".join(traceback.format_exception(err.value))
    assert "<autoloss tb_check" in text and "torch." in text


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_generated_code_scripts_with_torchscript():
    for loss_id in ("giou", "focal", "dfl", "smooth_l1"):
        compiled = zoo.compiled(loss_id)
        for needs in ([False] * len(compiled.signature.columns),
                      [i == 0 for i in compiled.signature.column_input]):
            torch.jit.script(compiled.function(needs))


def test_search_mode_guards_instead_of_nan():
    expr = box_expr("log(iou - 0.5) + sqrt(0.2 - iou) / (iou - iou)")
    pred, target = sample("box", 64, 0)
    pred = pred.clone().requires_grad_(True)
    exact = CompiledLoss(expr, BOX, name="bad_exact")(pred, target)
    assert not torch.isfinite(exact).all()
    search = CompiledLoss(expr, BOX, name="bad_search", mode="search")
    out = search(pred, target)
    assert torch.isfinite(out).all()
    (g,) = torch.autograd.grad(out.sum(), pred)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_evaluation_equals_whole_batch(monkeypatch, threads):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the runtime's split
    pred, target = sample("box", 1000, 1)
    pred = pred.clone().requires_grad_(True)
    full = zoo.build("ciou")(pred, target)
    (g_full,) = torch.autograd.grad(full.sum(), pred)
    x, t = sample("sigmoid", 300, 2)
    x = x.clone().requires_grad_(True)
    focal_full = zoo.build("focal")(x, t)
    (gx_full,) = torch.autograd.grad(focal_full.sum(), x)
    monkeypatch.setattr(runtime, "CHUNK", 37)
    chunked = zoo.build("ciou")(pred, target)
    (g_chunked,) = torch.autograd.grad(chunked.sum(), pred)
    torch.testing.assert_close(full, chunked, rtol=0, atol=0)
    torch.testing.assert_close(g_full, g_chunked, rtol=0, atol=0)
    focal_chunked = zoo.build("focal")(x, t)  # (N, C) rows, chunks of 9 rows
    (gx_chunked,) = torch.autograd.grad(focal_chunked.sum(), x)
    # transcendental kernels may round the last bit differently on a shorter vector
    close = dict(rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(focal_full, focal_chunked, **close)
    torch.testing.assert_close(gx_full, gx_chunked, **close)
    with torch.no_grad():  # the value-only chunked path
        torch.testing.assert_close(zoo.build("focal")(x, t), focal_full, **close)


def test_threaded_chunks_run_the_scripted_function(monkeypatch):
    """Worker threads run each chunk through TorchScript (no GIL held per op), with the
    same values as the Python function on one thread."""
    monkeypatch.setattr(runtime, "CHUNK", 64)
    x, t = sample("sigmoid", 500, 4)
    x = x.clone().requires_grad_(True)
    loss = zoo.build("focal")
    serial = loss(x, t)
    (g_serial,) = torch.autograd.grad(serial.sum(), x)
    fn = zoo.compiled("focal").function([True, False, False, False])
    fn.__dict__.pop("__scripted__", None)  # an earlier test may have run it threaded
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    threaded = loss(x, t)
    (g_threaded,) = torch.autograd.grad(threaded.sum(), x)
    assert isinstance(fn.__scripted__, torch.jit.ScriptFunction)
    torch.testing.assert_close(threaded, serial, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g_threaded, g_serial, rtol=1e-13, atol=1e-15)


def test_whole_batch_or_chunks(monkeypatch):
    """A GPU batch runs whole (chunks would launch every op once per chunk); a CPU batch
    between one and two chunks runs whole on one thread and in chunks on several."""
    assert runtime.whole(torch.empty(100 * runtime.CHUNK, device="meta"))
    middle = torch.empty(runtime.CHUNK + 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert runtime.whole(middle) and not runtime.whole(torch.empty(2 * runtime.CHUNK + 1))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not runtime.whole(middle) and runtime.whole(torch.empty(runtime.CHUNK))
    with torch.inference_mode():  # one thread runs it: the one-thread rule
        assert runtime.whole(middle)


def test_a_function_torchscript_refuses_runs_as_python():
    def square(*cols):  # TorchScript has no variadic arguments
        return cols[0] * cols[0]

    assert runtime.scripted(square) is square
    value = torch.empty(300)
    runtime.run_chunks(square, [torch.arange(300.0)], (), value, None)
    torch.testing.assert_close(value, torch.arange(300.0) ** 2)


def test_constant_and_unused_input_expressions():
    pred, target = sample("box", 5, 0)
    pred = pred.clone().requires_grad_(True)
    const = CompiledLoss(box_expr("2 + 0 * iou"), BOX, name="const_loss")
    out = const(pred, target)
    torch.testing.assert_close(out, torch.full((5,), 2.0, dtype=torch.float64))
    (g,) = torch.autograd.grad(out.sum(), pred, allow_unused=True)
    assert g is None or not g.any()
    only_target = CompiledLoss(box_expr("tw * th"), BOX, name="target_area")
    out = only_target(pred, target)
    (g,) = torch.autograd.grad(out.sum(), pred, allow_unused=True)
    assert g is None or not g.any()  # the prediction does not enter it
    torch.testing.assert_close(out.detach(), (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1]))


def test_unknown_names_and_bad_names_are_rejected():
    with pytest.raises(ExpressionError, match="'x' is not a terminal of the 'box' signature"):
        CompiledLoss(parse("x + 1", ["x"]), BOX)
    with pytest.raises(ExpressionError, match="not a usable name"):
        CompiledLoss(box_expr("iou"), BOX, name="bad name")
    with pytest.raises(ExpressionError, match="not a usable name"):
        CompiledLoss(parse("iou * import_", BOX.names, {"import_": E.Param("_hidden", 1.0)}), BOX)


def test_double_backward_is_refused_with_a_clear_error():
    pred, target = sample("box", 4, 0)
    pred = pred.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(zoo.build("giou")(pred, target).sum(), pred, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


# ------------------------------------------------------------------------- population
def population():
    texts = ["1 - iou", "1 - iou + (enclose - union) / (enclose + eps)",
             "1 - iou + rho2 / (diag2 + eps)", "(1 - iou) ** 2 + rho2 / (diag2 + eps)",
             "exp(1 - iou) - 1", "log(iou - 2)", "1 - iou ** gamma"]
    return [box_expr(t, gamma=3.0) for t in texts]


def test_population_matches_compiled_one_by_one():
    pred, target = sample("box", 200, 4)
    ev = PopulationEvaluator("box", (pred, target), mode="search")
    results = ev.evaluate(population(), grad=True)
    for expr, res in zip(population(), results):
        assert isinstance(res, Result)
        loss = CompiledLoss(expr, BOX, name="one", mode="search")
        p = pred.clone().requires_grad_(True)
        value = loss(p, target)
        (g,) = torch.autograd.grad(value.sum(), p)
        torch.testing.assert_close(res.value, value.detach(), rtol=1e-10, atol=1e-12)
        got = torch.stack([res.grads[c] for c in ("px1", "py1", "px2", "py2")], 1)
        torch.testing.assert_close(got, g, rtol=1e-10, atol=1e-12)


def test_population_shares_terminals_across_calls_and_candidates():
    pred, target = sample("box", 50, 4)
    ev = PopulationEvaluator("box", (pred, target))
    ev.evaluate(population()[:3])
    first = ev.nodes_evaluated
    ev.evaluate(population()[:3])
    second = ev.nodes_evaluated - first
    assert second < first  # iou, union, enclose ... were kept from the first call
    # the same candidate twice costs nothing extra
    before = ev.nodes_evaluated
    ev.evaluate([population()[2]] * 5)
    assert ev.nodes_evaluated - before <= second


def test_population_reports_failures_without_raising():
    pred, target = sample("box", 10, 4)
    ev = PopulationEvaluator("box", (pred, target))
    bad = parse("x + 1", ["x"])
    res = ev.evaluate([bad, population()[0]])
    assert isinstance(res[0], Failure) and "not a terminal" in res[0].reason
    assert isinstance(res[1], Result)


@pytest.mark.parametrize("signature", sorted(SIGNATURES))
def test_population_on_every_signature(signature):
    specs = [s for s in (zoo.get(i) for i in ZOO_IDS) if s.signature == signature]
    inputs = sample(signature, 30, 9)
    ev = PopulationEvaluator(signature, inputs, mode="exact")
    values = ev.values([s.expression for s in specs])
    for spec, value in zip(specs, values):
        torch.testing.assert_close(value, zoo.build(spec.id)(*inputs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("signature", ["box", "sigmoid", "softmax"])
def test_in_place_code_computes_what_out_of_place_code_does(signature, monkeypatch):
    """The fused functions overwrite temporaries only they hold; on random trees over every
    primitive (views: stop_grad, branches picked by a parameter) the values and gradients
    are bit-for-bit those of the same code without in-place ops."""
    import random

    from autoloss import codegen, ops
    from autoloss.search.operators import Grammar

    sig = SIGNATURES[signature]
    # (batch ops take numbers after their tensor and are in no grammar unless listed)
    grammar = Grammar([n for n in ops.REGISTRY if not ops.get(n).batch], sig.names,
                      max_depth=6, max_nodes=40)
    rng = random.Random(0)
    inputs = sample(signature, 64, 3)
    plain = codegen.function
    checked = in_place_seen = 0
    trees = [grammar.tree(rng) for _ in range(150)]
    if signature == "box":  # a view (stop_grad) of a temporary that is later overwritten
        trees.append(box_expr("where(stop_grad(ph), ph + where(pw, where(0.5, 0.5 > pw, pw), "
                              "iou + (iou > ph)), ph)"))
        trees.append(box_expr("(stop_grad(rho2) - pw) * stop_grad(rho2) - "
                              "stop_grad(exp(pw > ph)) - pw"))  # ... whose buffer is reused
    for i, tree in enumerate(trees):
        with monkeypatch.context() as m:
            m.setattr(codegen, "function", lambda *a, **k: plain(*a, **dict(k, inplace=False)))
            reference = CompiledLoss(tree, sig, name=f"plain{i}", mode="search")
            expected = _value_and_grads(reference, inputs)
        fused = CompiledLoss(tree, sig, name=f"fused{i}", mode="search")
        got = _value_and_grads(fused, inputs)
        for a, b in zip(expected, got):
            torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
        checked += 1
        in_place_seen += "_(" in fused.source
    assert checked == len(trees) and in_place_seen > 50


def _value_and_grads(loss, inputs):
    leaves = [t.clone().requires_grad_(t.is_floating_point()) if t is not None else None
              for t in inputs]
    value = loss(*leaves)
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad(value.sum(), wrt, allow_unused=True)
    return [value.detach()] + [torch.zeros_like(w) if g is None else g
                               for w, g in zip(wrt, grads)]


def test_bce_pattern_runs_as_one_fused_kernel():
    """y logsigmoid(x) + (1 - y) logsigmoid(-x) compiles to torch's BCE-with-logits (the
    zoo's BCE, focal, QFL, VFL); near misses keep their own terms."""
    from autoloss import canon
    from autoloss.signatures import SIGMOID

    for name in ("bce", "focal", "qfl", "vfl"):
        assert "binary_cross_entropy_with_logits" in zoo.compiled(name).source_for((True, False))
    names, params = SIGMOID.names, dict(SIGMOID.params)
    fused = canon.fuse_bce([parse("-(t * logsigmoid(x) + (1 - t) * logsigmoid(-x))", names,
                                  params)])[0]
    assert fused == E.Call("bce_logits", (E.Var("x"), E.Var("t")))
    for text in ("t * logsigmoid(x) + (1 - p) * logsigmoid(-x)",  # not complementary
                 "t * logsigmoid(x) + (1 - t) * logsigmoid(x)"):  # not the mirrored logit
        e = parse(text, names, params)
        assert "bce_logits" not in E.to_infix(canon.fuse_bce([e])[0])
    x = torch.tensor([[-60.0, -3.0, 0.0, 4.0, 60.0]] * 2, dtype=torch.float64)
    t = torch.tensor([[0.0] * 5, [1.0, 0.3, 1.0, 0.0, 1.0]], dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    value = zoo.build("bce")(xr, t)
    (grad,) = torch.autograd.grad(value.sum(), xr)
    torch.testing.assert_close(value.detach(), torch.nn.functional.binary_cross_entropy_with_logits(
        x, t, reduction="none"))
    torch.testing.assert_close(grad, torch.sigmoid(x) - t)


def test_compile_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(compiler, "CACHE_SIZE", 3)
    monkeypatch.setattr(compiler, "_CACHE", type(compiler._CACHE)())
    first = compile_loss(box_expr("1 - iou"), BOX, name="c0")
    assert compile_loss(box_expr("1 - iou"), BOX, name="c0") is first  # a hit
    for k in range(1, 4):
        compile_loss(box_expr(f"{k + 1} - iou"), BOX, name="c0")
    assert len(compiler._CACHE) == 3
    assert compile_loss(box_expr("1 - iou"), BOX, name="c0") is not first  # evicted


def test_threaded_chunks_respect_per_thread_states(monkeypatch):
    """Inference mode, autocast and tracing compilers are per-thread: those calls stay on the
    caller's thread (a worker would fail to write into an inference tensor)."""
    monkeypatch.setattr(runtime, "CHUNK", 64)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    x, t = sample("sigmoid", 500, 3)
    expected = zoo.build("focal")(x, t)
    with torch.inference_mode():
        torch.testing.assert_close(zoo.build("focal")(x, t), expected, rtol=1e-13, atol=1e-15)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert runtime.serial_only(x)


def test_threaded_chunks_work_in_a_forked_child():
    """A forked child inherits the parent's worker pool object but not its threads."""
    code = """
import os, torch
from autoloss import runtime, zoo
runtime.CHUNK = 64
torch.set_num_threads(2)
x = torch.randn(4000, 4); t = (torch.rand(4000, 4) > 0.8).float()
zoo.build("focal")(x, t)  # starts the parent's pool
pid = os.fork()
if pid == 0:
    zoo.build("focal")(x, t)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(status)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", out.stderr[-2000:]
