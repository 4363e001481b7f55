"""Kinds of losses: elementwise (E), batch-level (B: terms over the whole batch computed
once, before the chunked elementwise part, without gradient) and set-level (S: refused)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autoloss import catalog, compiler, export, ops, runtime, zoo
from autoloss import expr as E
from autoloss.errors import CatalogError, UnsupportedKindError
from autoloss.parse import parse
from autoloss.population import PopulationEvaluator
from autoloss.search.filters import FilterBank

import reference
from conftest import ZOO_IDS


def mmdet_ghmc(pred, target, bins=10):
    """mmdetection's ``GHMC.forward`` with momentum 0 and every element valid: the sum of
    the reference's weighted elements divided by the total (``tests/reference.py``)."""
    return reference.ghm_c(pred, target, bins).sum() / max(float(pred.numel()), 1.0)


def _cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3
    t = (torch.rand(64, 5, generator=g) > 0.8).double()
    yield "random", x, t, 10
    yield "random_30_bins", x, t, 30
    # g = |sigmoid(x) - t| only near 0.05 and 0.9: most bins empty
    t2 = (torch.arange(40) % 2).double()[:, None].repeat(1, 3)
    x2 = torch.where(t2 > 0, torch.tensor(2.944), torch.tensor(2.197)).double()
    x2 = x2 + torch.rand(40, 3, generator=g, dtype=torch.float64) * 0.05
    yield "empty_bins", x2, t2, 10
    # saturated logits on the labels: every element in the first bin (weights 1)
    yield "one_bin", (t * 2 - 1) * 12.0, t, 10


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_ghm_c_matches_mmdet_ghmc_values_and_gradients(case):
    _, x, t, bins = case
    xa = x.clone().requires_grad_(True)
    want = mmdet_ghmc(xa, t, bins)
    (gw,) = torch.autograd.grad(want, xa)
    xb = x.clone().requires_grad_(True)
    got = zoo.build("ghm_c", reduction="mean", bins=bins)(xb, t)
    (gg,) = torch.autograd.grad(got, xb)
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(gg, gw, rtol=1e-10, atol=1e-14)


def test_ghm_density_is_over_the_whole_batch_not_per_chunk():
    """A batch larger than the row chunks: the density still counts the whole batch."""
    g = torch.Generator().manual_seed(1)
    n = 2 * runtime.CHUNK // 4 + 5000
    x = torch.randn(n, 4, generator=g, dtype=torch.float64) * 2
    t = (torch.rand(n, 4, generator=g) > 0.7).double()
    xa = x.clone().requires_grad_(True)
    want = mmdet_ghmc(xa, t)
    (gw,) = torch.autograd.grad(want, xa)
    xb = x.clone().requires_grad_(True)
    got = zoo.build("ghm_c", reduction="mean")(xb, t)
    (gg,) = torch.autograd.grad(got, xb)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(gg, gw, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("rows, mu, bins", [
    (50, 0.02, 10), (2 * runtime.CHUNK // 4 + 3000, 0.02, 10), (300, 0.2, 30)])
def test_ghm_r_matches_mmdet_ghmr_over_the_whole_batch(rows, mu, bins):
    """mmdetection's GHMR (momentum 0, every element valid) is sum / total: reduction
    "mean"; its last bin edge 1e3 bins g = abs(d) / sqrt(d^2 + mu^2) < 1 as ghm_density."""
    g = torch.Generator().manual_seed(rows)
    target = torch.randn(rows, 4, generator=g, dtype=torch.float64)
    # most deltas tiny (g near 0), some large (g near 1): unequal bins
    scale = torch.where(torch.rand(rows, 4, generator=g) < 0.7, 0.01, 2.0).double()
    pred = target + torch.randn(rows, 4, generator=g, dtype=torch.float64) * scale
    pa, pb = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    want = reference.ghm_r(pa, target, mu, bins).sum() / pred.numel()
    got = zoo.build("ghm_r", reduction="mean", mu=mu, bins=bins)(pb, target)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    (gw,) = torch.autograd.grad(want, pa)
    (gg,) = torch.autograd.grad(got, pb)
    torch.testing.assert_close(gg, gw, rtol=1e-9, atol=1e-15)


def test_ghm_c_gradcheck_with_the_density_fixed():
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(8, 3, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    t = (torch.rand(8, 3, generator=g) > 0.6).double()
    loss = zoo.compiled("ghm_c")
    # the elementwise part with the density as a fixed column: exact closed-form gradient
    assert torch.autograd.gradcheck(lambda z: loss(z, t), (x,))
    # and the fused gradient equals autograd of the generated value function
    prep = loss.signature.prepare("test", x, t)
    cols = list(prep.columns) + loss.batch_columns(prep.columns, loss.values({}))
    eager = loss.function([False] * len(prep.columns))(*cols, *loss.values({}))
    (ge,) = torch.autograd.grad(eager.sum(), x)
    (gf,) = torch.autograd.grad(loss(x, t).sum(), x)
    torch.testing.assert_close(gf, ge)


def test_batch_terms_are_split_from_the_elementwise_part():
    loss = zoo.compiled("ghm_c")
    assert [name for name, _ in loss.batch_terms] == ["batch0"]
    assert loss.columns == loss.signature.columns + ("batch0",)
    assert not compiler.batch_nodes(loss.graph)
    assert "_ghm_density" in loss.prepass_source and "_ghm_density" not in loss.source_for(
        [i == 0 for i in loss.signature.column_input])


def test_batch_mean_is_the_batch_mean_without_gradient():
    sig = "coord"
    expr = parse("abs(d) * batch_mean(abs(d))", ["d", "pred", "target"], {})
    loss = compiler.compile_loss(expr, sig, name="scaled_l1")
    pred = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(50, 4, dtype=torch.float64)
    d = (pred - target).abs()
    want = d * d.detach().mean()
    got = loss(pred, target)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), pred)[0],
                               torch.autograd.grad(want.sum(), pred)[0])


def test_export_writes_the_batch_prepass(tmp_path):
    compiled = zoo.compiled("ghm_c")
    path = tmp_path / "ghm.py"
    export.to_file(compiled, path)
    assert "def _batch_terms" in path.read_text()
    report = export.check(path, compiled)
    assert report["value"] < 1e-9 and report["grad"] < 1e-9
    module = export.load(path)
    x = torch.randn(30, 4, dtype=torch.float64)
    t = (torch.rand(30, 4) > 0.7).double()
    scripted = torch.jit.script(module.GhmCLoss(reduction="mean"))
    torch.testing.assert_close(scripted(x, t), mmdet_ghmc(x, t))


def test_population_and_probes_take_batch_terms_over_their_batch():
    x, t = next(_cases())[1:3]
    expr = zoo.get("ghm_c").expression
    r = PopulationEvaluator("sigmoid", (x, t), mode="exact").evaluate([expr], grad=True)[0]
    torch.testing.assert_close(r.value.mean(), mmdet_ghmc(x, t))
    bank = FilterBank({"cls": "sigmoid"})
    probes = bank.probes["cls"]
    _, rand, edges, _ = probes.evaluate([expr])
    alone = PopulationEvaluator("sigmoid", probes.groups[1], mode="search").evaluate([expr])[0]
    torch.testing.assert_close(edges[0].value, alone.value)


def test_search_spaces_leave_batch_ops_out_unless_listed():
    from autoloss.search import space

    assert ops.batch_ops() == ["batch_mean", "ghm_density"]
    for name in space.names():
        for slot in space.load(name).slots.values():
            assert not set(slot.primitives) & set(ops.batch_ops()), (name, slot)


@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_declared_kind_matches_the_expression(loss_id):
    spec = zoo.get(loss_id)
    used = {n.op for n in E.postorder(spec.expression)
            if type(n) is E.Call and ops.get(n.op).batch}
    assert spec.kind in ("E", "B")
    assert bool(used) == (spec.kind == "B"), (loss_id, spec.kind, used)


def _catalog_with(tmp_path, entry: str) -> Path:
    src = catalog.default_dir()
    shutil.copy(src / "2_classification.toml", tmp_path / "2_classification.toml")
    with open(tmp_path / "2_classification.toml", "a", encoding="utf-8") as f:
        f.write(entry)
    return tmp_path


_ENTRY = '''
[losses.test_kind]
title = "t"
paper = "p"
section = "2.4"
signature = "sigmoid"
kind = "{kind}"
expression = "{expression}"
'''


def test_catalog_checks_the_kind_against_the_expression(tmp_path):
    with pytest.raises(CatalogError, match='declare kind = "B"'):
        catalog.load(_catalog_with(tmp_path, _ENTRY.format(
            kind="E", expression="ghm_density(abs(p - t), 10) * x")))
    with pytest.raises(CatalogError, match="needs a batch-level op"):
        catalog.load(_catalog_with(tmp_path, _ENTRY.format(kind="B", expression="x * t")))


_SET_LEVEL = '''
[losses.test_set]
title = "t"
paper = "p"
section = "2.5"
signature = "sigmoid"
kind = "S"
{body}
'''


def test_a_set_level_entry_names_a_shipped_function_that_takes_its_params(tmp_path):
    for body, msg in (
            ('expression = "x * t"\nimplementation = "autoloss.ranking:ap_loss"',
             "is a function, not an expression"),
            ("", "'implementation': is required"),
            ('implementation = "os:system"', "must be 'autoloss.<module>:<function>'"),
            ('implementation = "autoloss.ranking:no_such"', "cannot load"),
            ('implementation = "autoloss.ranking:ap_loss"\nparams.gamma = 2.0',
             "takes no keyword 'gamma'; it takes delta")):
        with pytest.raises(CatalogError, match=msg):
            catalog.load(_catalog_with(tmp_path, _SET_LEVEL.format(body=body)))
    with pytest.raises(CatalogError, match="only a set-level loss"):
        catalog.load(_catalog_with(tmp_path, _ENTRY.format(kind="E", expression="x * t")
                                   + 'implementation = "autoloss.ranking:ap_loss"\n'))


def test_set_level_is_a_function_the_zoo_calls_and_the_compiler_refuses():
    spec = catalog.get("ap_loss")
    assert spec.kind == "S" and not spec.compiles and spec.latex() == ""
    from autoloss.ranking import ap_loss

    x = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(50, 4, generator=torch.Generator().manual_seed(0)) < 0.1).double() * 0.7
    module = zoo.build("ap_loss")  # reduction "none" is one value for the batch, too
    value = module(x, t)
    # flattened, the quality target counting as positive
    torch.testing.assert_close(value, ap_loss(x.reshape(-1), (t.reshape(-1) > 0).double()))
    (grad,) = torch.autograd.grad(value, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0
    with pytest.raises(Exception, match="reduction must be 'mean' or 'sum'"):
        zoo.loss("ap_loss")(x, t, reduction="none")
    with pytest.raises(Exception, match="no per-element weight"):
        zoo.loss("ap_loss")(x, t, weight=torch.ones(50, 4))
    msg = "set-level losses are hand-written functions over the whole batch, not expressions"
    with pytest.raises(UnsupportedKindError, match=msg + ".*the zoo"):
        zoo.compiled("ap_loss")
    with pytest.raises(UnsupportedKindError, match=msg + ".*export"):
        export.zoo_provenance("ap_loss")
    expr = catalog.get("focal").expression
    with pytest.raises(UnsupportedKindError, match=msg + ".*the compiler"):
        compiler.compile_loss(expr, "sigmoid", kind="S")
    x, t = next(_cases())[1:3]
    with pytest.raises(UnsupportedKindError, match=msg + ".*the population evaluator"):
        PopulationEvaluator("sigmoid", (x, t), kind="S")
    with pytest.raises(UnsupportedKindError, match=msg + ".*the search filters"):
        FilterBank({"cls": "sigmoid"}, kind="S")


def test_rank_and_sort_gets_the_quality_targets():
    from autoloss.ranking import rs_loss

    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    t = (torch.rand(40, 3, generator=g) < 0.2).double() * torch.rand(40, 3, generator=g,
                                                                      dtype=torch.float64)
    torch.testing.assert_close(zoo.loss("rs_loss")(x, t), rs_loss(x.reshape(-1), t.reshape(-1)))


def test_proxies_take_a_set_level_loss_as_it_normalises_itself():
    from autoloss.evaluate import evaluate

    res = evaluate("clssim", {"cls": "ap_loss"}, seeds=[0], scale=0.03, budget=8)
    assert 0.0 <= res.values[0] <= 1.0
    res = evaluate("digits", {"cls": "dr_loss", "reg": "giou"}, seeds=[0], scale=0.02, budget=4)
    assert 0.0 <= res.values[0] <= 1.0


def test_zoo_module_has_reset():
    m = zoo.build("ghm_c")
    m.reset()
    assert isinstance(m, torch.nn.Module)


def test_convergence_ladder_takes_batch_terms_per_step():
    """The ladder's steps are separate batches for a batch-level candidate: its batch mean
    is each step's own, not one mean over the whole ladder."""
    from autoloss.search.filters import STEPS, _Ladder, convergence_inputs
    from autoloss.signatures import BOX

    inputs = convergence_inputs("box", m=6)
    ladder = _Ladder(BOX, inputs)
    iou_mean, iou = (parse(text, BOX.names) for text in ("batch_mean(iou)", "iou"))
    graphs = ladder.joint.graphs([iou_mean, iou])
    per_step, rowwise = ladder.evaluate_graphs(graphs)
    blocks = rowwise.value.reshape(len(STEPS), 6)
    torch.testing.assert_close(per_step.value.reshape(len(STEPS), 6),
                               blocks.mean(1, keepdim=True).expand(-1, 6))
