"""Physical dimensions: inference, the catalog's invariance claims, typed generation and the
units filter (a box loss must not change when the image is scaled or shifted)."""
from __future__ import annotations

import random
import textwrap

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoloss import catalog, ops, units, zoo
from autoloss import expr as E
from autoloss.errors import CatalogError
from autoloss.parse import parse
from autoloss.search import space as spaces
from autoloss.search.candidate import Candidate
from autoloss.search.filters import FilterBank
from autoloss.search.operators import Grammar, crossover, mutate
from autoloss.search.optuna_backend import OptunaTrial
from autoloss.search.strategies import TPESearch
from autoloss.signatures import BOX, SIGNATURES
from autoloss.units import AREA, DIMENSIONLESS, LENGTH, POSITION

#: the README's main-job winner before dimensions: a length inside exp
OLD_WINNER = ("(1.6921 - iou) * exp(rho2 / stop_grad(abs(sqrt(diag2)) + "
              "sigmoid(min(0.5598, ch * diag2))))")


def box(text):
    return parse(text, BOX.names, BOX.params)


def test_every_primitive_has_a_unit_rule():
    assert units.RULES == ops.UNIT_RULES
    for op in ops.REGISTRY.values():
        assert op.units in units.RULES, op.name
    # a primitive that takes any argument but a number must not keep its dimension free
    assert ops.get("exp").units == "pure" and ops.get("add").units == "sum"


def test_box_terminals_are_inferred_from_positions():
    d = BOX.dims
    assert d["px1"] == POSITION and d["pcx"] == POSITION
    assert d["pw"] == d["dx"] == d["cw"] == d["iw"] == LENGTH
    assert d["inter"] == d["union"] == d["enclose"] == d["rho2"] == d["diag2"] == AREA
    assert d["iou"] == DIMENSIONLESS
    assert all(dim == DIMENSIONLESS for s in ("sigmoid", "softmax", "dist", "coord")
               for dim in SIGNATURES[s].dims.values())


@pytest.mark.parametrize("text, dim", [
    ("1 - iou + rho2 / (diag2 + eps)", DIMENSIONLESS),
    ("sqrt(enclose)", LENGTH),
    ("pw ** 2 + rho2", AREA),
    ("(px1 + px2) / 2", POSITION),
    ("px2 - px1", LENGTH),
    ("abs(px1 - tx1) / pw", DIMENSIONLESS),
    ("where(iou > 0.5, rho2, 0)", AREA),
    ("clamp(iou, eps, inf)", DIMENSIONLESS),
    ("min(pw, tw) / max(ph, th)", DIMENSIONLESS),
    ("iou ** (1 + iou)", DIMENSIONLESS),
    ("stop_grad(diag2) * 0", units.FREE),
    ("(px1 + (0 - px2)) / pw", DIMENSIONLESS),
    ("0 - px1", units.Dim(units.Fraction(1), units.Fraction(-1))),
])
def test_dimensions_are_inferred(text, dim):
    assert units.infer(box(text), BOX.dims, BOX.param_units) == dim


@pytest.mark.parametrize("text, culprit, words", [
    (OLD_WINNER, "min(0.5598, ch * diag2)", "length^3"),
    ("(1 - iou) * exp(rho2 / sqrt(diag2))", "exp(rho2 / sqrt(diag2))",
     "needs a dimensionless argument"),
    ("1 - iou + rho2 / (diag2 + 1)", "diag2 + 1", "adds a dimensionless"),
    ("abs(px1) / pw", "abs(px1)", "position"),
    ("px1 * iou / pw", "px1 * iou", "shifted"),
    ("iou ** pw", "iou ** pw", "exponents must be dimensionless"),
    ("pw ** iou / pw", "pw ** iou", "non-constant power"),
    ("1 - iou + (pw < rho2)", "pw < rho2", "compares"),
    ("((0 - px1) - px1) / pw", "(0 - px1 - px1) / pw", "divides a position"),
    ("1 - iou + (px1 > 0)", "px1 > 0", "a position (`px1`) and a number"),
    ("1 - iou + (min(px1, 0) - min(tx1, 0)) / pw", "min(px1, 0)", "a position"),
    ("1 - iou + where(px1, iou, 1)", "where(px1, iou, 1)", "tests a position"),
    ("(px1 * 0.3333 - px2 / 3) / pw", "(px1 * 0.3333 - px2 / 3) / pw", "divides a position"),
    ("1 - iou + pw / eps", "1 - iou + pw / eps", "adds a length"),
])
def test_ill_formed_expressions_name_the_offending_subexpression(text, culprit, words):
    with pytest.raises(units.DimensionError) as err:
        units.infer(box(text), BOX.dims, BOX.param_units)
    assert f"`{culprit}`" in str(err.value) and words in str(err.value)
    assert E.to_infix(err.value.node) == culprit


def test_a_loss_of_the_wrong_dimension_is_refused():
    assert BOX.unit_error(box("rho2")).startswith("the loss is an area, but it must be "
                                                 "dimensionless")
    assert "shifted" in BOX.unit_error(box("pcx / 2 - tx1 + tx2"))
    assert BOX.unit_error(box("1 - iou")) is None
    assert SIGNATURES["sigmoid"].unit_error(parse("exp(x) * t", ["x", "t"], {})) is None


# ---------------------------------------------------------------------------------- zoo
def _pixel_probe(seed=0):
    return units.probe_inputs(BOX, 48, torch.Generator().manual_seed(seed))


def numeric_problem(loss, probe=None):
    """The unit probe of a callable box loss (values, and the gradient w.r.t. pred)."""
    (pred, target), scales = probe or _pixel_probe()
    pred = pred.clone().requires_grad_(True)
    value = loss(pred, target)
    (grad,) = torch.autograd.grad(value.sum(), pred)
    return units.compare_scales(value, {"pred": grad}, scales)


@pytest.mark.parametrize("loss_id", [s.id for s in catalog.of_signature("box")])
def test_zoo_box_losses_are_invariant_exactly_when_the_catalog_says(loss_id):
    spec = catalog.get(loss_id)
    problem = numeric_problem(zoo.build(loss_id))
    if spec.invariant:
        # a hand-written module (wiou_v3) has no expression: the numeric probe alone
        assert not spec.compiles or BOX.unit_error(spec.expression, spec.param_units) is None
        assert problem is None, problem
        assert "not scale invariant" not in spec.notes
    else:
        assert spec.not_invariant and "scale_invariant" not in spec.properties
        assert problem is not None and "not scale invariant" in problem


def test_the_batched_unit_probe_answers_as_compare_scales_loss_by_loss():
    """scale_invariant (the filters judge a batch at once) agrees with compare_scales
    on the zoo's box losses, invariant or not, and on a gradient scaled wrongly."""
    (pred, target), scales = _pixel_probe()
    values, grads, expected = [], [], []
    for spec in catalog.of_signature("box"):
        p = pred.clone().requires_grad_(True)
        value = zoo.build(spec.id)(p, target)
        (grad,) = torch.autograd.grad(value.sum(), p)
        for g in (grad, grad * torch.tensor(scales).repeat_interleave(48)[:, None]):
            values.append(value.detach())
            grads.append(g)
            expected.append(units.compare_scales(value, {"pred": g}, scales) is None)
    got = units.scale_invariant(torch.stack(values), {"pred": torch.stack(grads)}, scales)
    assert got.tolist() == expected
    assert True in expected and False in expected


def test_only_losses_of_boxes_have_an_invariance_verdict():
    # box and rbox: the signatures whose inputs have lengths (the rbox zoo's numeric probe
    # is in test_rotated_zoo)
    for spec in catalog.default().losses.values():
        assert (spec.invariant is None) == (spec.signature not in ("box", "rbox")), spec.id


def _catalog_with(tmp_path, body):
    (tmp_path / "3_regression.toml").write_text(textwrap.dedent("""
        [section]
        id = "3"
        title = "Regression"
    """) + textwrap.dedent(body), encoding="utf-8")
    return catalog.load(tmp_path)


def test_catalog_refuses_an_ill_dimensioned_box_loss_and_says_how_to_fix_it(tmp_path):
    entry = """
        [losses.pixel_diou]
        title = "t"
        paper = "p"
        section = "3"
        signature = "box"
        expression = "1 - iou + rho2 / (diag2 + 1)"
    """
    with pytest.raises(CatalogError) as err:
        _catalog_with(tmp_path, entry)
    text = str(err.value)
    assert "[losses.pixel_diou]" in text and "`diag2 + 1`" in text and "not_invariant" in text
    cat = _catalog_with(tmp_path, entry + 'not_invariant = "1 is a pixel area"\n')
    assert cat.losses["pixel_diou"].invariant is False


@pytest.mark.parametrize("extra, message", [
    ('signature = "sigmoid"\nexpression = "-log(p)"\nnot_invariant = "x"\n', "has no units"),
    ('signature = "box"\nexpression = "1 - iou + rho2 / s ** 2"\n'
     'params.s = { default = 1.0, unit = "furlong" }\n', "unknown unit 'furlong'"),
])
def test_catalog_unit_fields_are_checked(tmp_path, extra, message):
    with pytest.raises(CatalogError, match=message):
        _catalog_with(tmp_path, '[losses.x]\ntitle = "t"\npaper = "p"\nsection = "3"\n' + extra)


def test_a_parameter_with_a_unit_takes_part_in_the_check(tmp_path):
    cat = _catalog_with(tmp_path, """
        [losses.x]
        title = "t"
        paper = "p"
        section = "3"
        signature = "box"
        expression = "1 - iou + rho2 / s ** 2"
        not_invariant = "s is a fixed length"
        params.s = { default = 64.0, unit = "length" }
    """)
    spec = cat.losses["x"]
    assert BOX.unit_error(spec.expression, spec.param_units) is None  # symbolically fine
    assert numeric_problem(_compiled(spec)) is not None  # but s is a fixed length


def _compiled(spec):
    from autoloss.compiler import compile_loss

    return compile_loss(spec.expression, "box", name=spec.id)


def test_zoo_table_and_show_say_which_losses_are_not_invariant(capsys):
    from autoloss.cli import main, markdown_table

    rows = {line.split("|")[1].strip(" `"): line for line in markdown_table().splitlines()[2:]}
    assert rows["giou"].rstrip().endswith("| yes |")
    assert "| no: corner distances are normalised by a fixed image size" in rows["mpdiou"]
    assert rows["focal"].rstrip().endswith("|  |")
    main(["zoo", "show", "cse_autoloss_a_reg"])
    assert "invariant:  no: the searched constant 2" in capsys.readouterr().out


# -------------------------------------------------------------------------- generation
BOX_SPACE = spaces.load("box-regression")
DETECTOR = spaces.load("detector")
GRAMMARS = [Grammar.of(BOX_SPACE.slots["reg"]), Grammar.of(DETECTOR.slots["reg"])]
SEEDS = [catalog.get(s).expression for s in BOX_SPACE.slots["reg"].seeds]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 100_000), st.sampled_from([0, 1]))
def test_generation_mutation_and_crossover_build_only_well_dimensioned_trees(seed, which):
    g = GRAMMARS[which]
    rng = random.Random(seed)
    parent = g.tree(rng) if rng.random() < 0.5 else rng.choice(SEEDS)
    other = g.tree(rng) if rng.random() < 0.5 else rng.choice(SEEDS)
    child, _ = mutate(rng, parent, g)
    mixed = crossover(rng, parent, other, g)
    for tree in (parent, child, mixed):
        assert g.unit_error(tree) is None, E.to_infix(tree)
    # zoo seeds may be larger than the limits; an edit grows no larger than its parents
    for tree, parents in ((child, (parent,)), (mixed, (parent, other))):
        assert tree == parent or (
            E.depth(tree) <= max([g.max_depth] + [E.depth(p) for p in parents])
            and E.size(tree) <= max([g.max_nodes] + [E.size(p) for p in parents]))


def test_a_seed_beyond_the_limits_still_evolves():
    """GWD is 16 deep, beyond the rotated space's 9: its children used to fail the limits
    and come back as the parent (a duplicate trial)."""
    g = Grammar.of(spaces.load("rotated-regression").slots["reg"])
    gwd = zoo.get("gwd").expression
    assert E.depth(gwd) > g.max_depth
    kinds = [mutate(random.Random(seed), gwd, g)[1] for seed in range(20)]
    assert kinds.count("none") <= 2, kinds


@pytest.mark.parametrize("text", ["1 - iou + pw * (iou / tw)", "1 - iou + rho2 * pw / (diag2 * tw)",
                                  "1 - iou + sqrt(rho2 * pw * ch) / diag2"])
def test_operators_edit_trees_holding_dimensions_without_leaves(text):
    """A length^3 or 1/length inside an evolved tree: no leaf has it, so nothing is grown
    there, and editing such a tree must neither crash nor leave the dimensions."""
    g = GRAMMARS[0]
    tree = box(text)
    for seed in range(200):
        rng = random.Random(seed)
        child, _ = mutate(rng, tree, g)
        mixed = crossover(rng, tree, rng.choice(SEEDS), g)
        assert g.unit_error(child) is None and g.unit_error(mixed) is None
    for d in (units.Dim(units.Fraction(-1)), units.Dim(units.Fraction(3))):
        assert g.ops_for(d) == [] or all(g._splits(p, d) for p in g.ops_for(d)
                                         if ops.get(p).units == "product")


def test_typed_generation_still_explores_the_dimensions():
    """Not just iou and constants: areas over areas, lengths over lengths, roots, powers."""
    g = GRAMMARS[0]
    rng = random.Random(0)
    trees = [g.tree(rng, max_depth=5) for _ in range(300)]
    used = set().union(*(E.variables(t) for t in trees))
    assert {"rho2", "diag2", "pw", "cw", "enclose"} <= used
    assert sum(1 for t in trees if E.variables(t) - {"iou"}) > 60
    mutants = {mutate(rng, rng.choice(SEEDS), g)[0] for _ in range(100)}
    assert len(mutants) > 60  # from 16 seeds; not stuck on the parents


def test_an_untyped_grammar_generates_as_before():
    g = Grammar(["add", "exp"], ["iou", "rho2"], max_depth=4)
    trees = [g.tree(random.Random(s)) for s in range(50)]
    assert any("exp" in E.ops_used(t) and "rho2" in E.variables(t) for t in trees)


def test_tpe_proposes_well_dimensioned_trees(tmp_path):
    strategy = TPESearch(BOX_SPACE, seed=0)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(25):
        trial = study.ask()
        cand = strategy.propose(OptunaTrial(trial, seed=0), [])
        assert GRAMMARS[0].unit_error(cand.slots["reg"]) is None, cand.formula()
        study.tell(trial, float(E.size(cand.slots["reg"])))


# ------------------------------------------------------------------------------ filter
def test_units_filter_rejects_with_the_reason_and_keeps_the_invariant():
    bank = FilterBank({"reg": "box"})
    texts = [OLD_WINNER, "1 - iou + eps * rho2", "3 * (1 - iou + (enclose - union) / enclose)",
             "(1 - iou) * exp(rho2 / diag2)"]
    v = bank.check([Candidate({"reg": box(t)}) for t in texts])
    assert v[0].filter == "units" and "`min(0.5598, ch * diag2)`" in v[0].reason
    # eps is free where it is added; multiplied it is a number: eps * rho2 is an area
    assert v[1].filter == "units" and "adds an area" in v[1].reason
    assert v[2].ok and v[3].ok


def test_the_numeric_probe_backs_the_symbolic_check(monkeypatch):
    """With the symbolic check switched off, the probe alone refuses a pixel constant."""
    monkeypatch.setattr(type(BOX), "unit_error", lambda self, e, params=None: None)
    bank = FilterBank({"reg": "box"})
    bad, good = (Candidate({"reg": box(t)}) for t in ("1 - iou + rho2 / (diag2 + 1)",
                                                       "1 - iou + rho2 / (diag2 + eps)"))
    v_bad, v_good = bank.check([bad, good])
    assert v_bad.filter == "units" and "not scale invariant" in v_bad.reason
    assert "for boxes scaled by 0.01" in v_bad.reason and v_good.ok


def test_search_spaces_seed_only_well_dimensioned_zoo_losses(tmp_path):
    assert "mpdiou" not in BOX_SPACE.slots["reg"].seeds
    assert "giou" in BOX_SPACE.slots["reg"].seeds
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent("""
        [proxy]
        name = "boxsim"
        [slots.reg]
        seeds = ["giou", "cse_autoloss_b_reg"]
    """), encoding="utf-8")
    with pytest.raises(spaces.SpaceError) as err:
        spaces.load(bad)
    assert "cse_autoloss_b_reg" in str(err.value) and "not scale invariant" in str(err.value)


def test_export_check_runs_the_unit_probe_in_a_fresh_process(tmp_path):
    from autoloss import export

    items = []
    for loss_id in ("giou", "mpdiou"):
        path = tmp_path / f"{loss_id}.py"
        export.to_file(zoo.compiled(loss_id), path)
        items.append((path, zoo.compiled(loss_id), None))
    giou, mpdiou = export.check_many(items)
    assert giou["units"] == "invariant"
    assert mpdiou["units"].startswith("not scale invariant: for boxes scaled by 0.01")
    assert "; scale and shift invariant" in export.describe(giou)
    assert "; not scale invariant" in export.describe(mpdiou)


def test_a_signature_regulariser_is_never_searched():
    """eps is shared with the terminals (iou divides by union + eps): the main job once
    evolved eps = 0.3034, which the filters (bound at 1e-7) never saw."""
    from autoloss.search.operators import perturb_constants

    giou = catalog.get("giou").expression
    rng = random.Random(0)
    for _ in range(200):
        child = perturb_constants(rng, giou)
        assert child is None or E.params(child)["eps"].default == 1e-7
    bad = E.substitute(giou, {E.params(giou)["eps"]: E.params(giou)["eps"].with_default(0.3)})
    (v,) = FilterBank({"reg": "box"}).check([Candidate({"reg": bad})])
    assert v.filter == "compiles" and "'eps' is fixed at 1e-07, got 0.3" in v.reason
