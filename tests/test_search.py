"""The search engine: spaces, operators, filters, strategies, runs, resume, reports."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoloss import catalog, units
from autoloss import expr as E
from autoloss.search import Search, space as spaces
from autoloss.search.candidate import Candidate
from autoloss.search.filters import FilterBank
from autoloss.search.operators import Grammar, crossover, mutate
from autoloss.search.runs import storage
from autoloss.search.space import SpaceError
from autoloss.search.strategies import NAMES, rank_and_crowding
from autoloss.signatures import BOX

TINY = textwrap.dedent("""
    [search]
    strategy = "evolution"
    trials = 14
    population = 6
    tournament = 3

    [proxy]
    name = "boxsim"
    budget = 20
    scale = 0.002

    [slots.reg]
    signature = "box"
    seeds = ["iou", "giou", "diou", "ciou"]
    primitives = ["add", "sub", "mul", "div", "exp", "log", "sqrt", "min", "max"]
    terminals = ["iou", "union", "enclose", "rho2", "diag2", "pw", "tw"]
    max_depth = 7
    max_nodes = 60

    [validation]
    top_k = 2
    seeds = 2
    scale = 0.003
    held_out = { scale = 0.004, seeds = 1 }
""")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


# -------------------------------------------------------------------------------- spaces
def test_shipped_spaces_load():
    assert {"box-regression", "dense-classification", "detector", "focal-tuning"} <= set(
        spaces.names())
    for name in spaces.names():
        space = spaces.load(name)
        assert space.slots and space.proxy and space.strategy in ("random", "tpe", "evolution",
                                                                  "nsga2")
    detector = spaces.load("detector")
    assert set(detector.slots) == {"cls", "reg"} and "weights.reg" in detector.choices
    assert spaces.load("focal-tuning").slots["cls"].mode == "params"


@pytest.mark.parametrize("edit, message", [
    (("trials = 14", "trials = 0"), "[search] field 'trials': must be at least 1"),
    (('strategy = "evolution"', 'strategy = "annealing"'), "unknown strategy 'annealing'"),
    (('name = "boxsim"', 'name = "boxsimm"'), "did you mean 'boxsim'"),
    (('signature = "box"', 'signature = "sigmoid"'), "the proxy's slot takes box"),
    (('seeds = ["iou", "giou", "diou", "ciou"]', 'seeds = ["giou", "focal"]'),
     "zoo loss 'focal' has signature 'sigmoid'"),
    (('seeds = ["iou", "giou", "diou", "ciou"]', 'seeds = ["gio"]'), "did you mean 'giou'"),
    (('primitives = ["add",', 'primitives = ["plus", "add",'), "unknown primitive 'plus'"),
    (('terminals = ["iou",', 'terminals = ["iuo", "iou",'), "'iuo' is not a terminal"),
    (("max_depth = 7", "max_depth = 70"), "field 'max_depth': must lie in [2, 32]"),
    (("[slots.reg]", "[slots.cls]"), "[slots] must name the proxy's slots ['reg']"),
    (("budget = 20", "budget = 'twenty'"), "field 'budget': must be int"),
    (("tournament = 3", "tournament = 3\ncolour = 1"), "[search] field 'colour': unknown field"),
])
def test_malformed_spaces_name_file_table_and_field(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace(*edit))
    with pytest.raises(SpaceError) as err:
        spaces.load(path)
    assert message in str(err.value) and "bad.toml" in str(err.value)


def test_unknown_space_name():
    with pytest.raises(SpaceError, match="did you mean 'box-regression'"):
        spaces.load("box-regresion")


# ----------------------------------------------------------------------------- operators
GRAMMAR = Grammar(["add", "sub", "mul", "div", "exp", "log", "sqrt", "min", "max", "pow"],
                  ["iou", "rho2", "enclose", "union"], max_depth=6, max_nodes=40)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000))
def test_operators_keep_trees_valid_and_within_limits(seed):
    rng = random.Random(seed)
    parent = GRAMMAR.tree(rng)
    other = GRAMMAR.tree(rng)
    child, kind = mutate(rng, parent, GRAMMAR)
    mixed = crossover(rng, parent, other, GRAMMAR)
    for tree in (parent, child, mixed):
        assert GRAMMAR.fits(tree)
        assert E.variables(tree) <= {"iou", "rho2", "enclose", "union"}
        assert E.ops_used(tree) <= set(GRAMMAR.primitives)
    assert kind in ("subtree", "point", "insert", "delete", "constant", "none")


def test_operators_recombine_zoo_losses_deterministically():
    giou, diou = catalog.get("giou").expression, catalog.get("diou").expression
    g = Grammar(["add", "mul"], BOX.names, max_depth=9, max_nodes=80)
    a = crossover(random.Random(1), giou, diou, g)
    b = crossover(random.Random(1), giou, diou, g)
    assert a == b and a != giou
    kids = {crossover(random.Random(s), giou, diou, g) for s in range(30)}
    assert any("rho2" in E.variables(k) and "enclose" in E.variables(k) for k in kids)


def test_rank_and_crowding():
    rank, crowd = rank_and_crowding([(1, 5), (2, 2), (3, 1), (3, 3), (4, 4)],
                                    ["minimize", "minimize"])
    assert rank[:3] == [0, 0, 0] and rank[3] == 1 and rank[4] == 2
    assert crowd[0] == crowd[2] == float("inf")


# ------------------------------------------------------------------------------- filters
def box_expr(text):
    return E.Call("add", (E.Const(0.0), E.Const(0.0))) if text is None else \
        __import__("autoloss.parse", fromlist=["parse"]).parse(text, BOX.names, BOX.params)


def test_filters_accept_the_zoo_and_explain_rejections():
    bank = FilterBank({"reg": "box"})
    texts = ["1 - iou", "2 + 0 * iou", "log(iou - 2)", "iou", "1 - iou + rho2 / (diag2 + eps)",
             "(1 - iou) + 0", "tw / th", "tw * th"]
    verdicts = bank.check([Candidate({"reg": box_expr(t)}) for t in texts])
    by = {t: v for t, v in zip(texts, verdicts)}
    assert by["1 - iou"].ok and by["1 - iou + rho2 / (diag2 + eps)"].ok
    assert by["2 + 0 * iou"].filter in ("finite", "convergence")
    assert by["iou"].filter == "convergence" and "rises" in by["iou"].reason
    assert by["(1 - iou) + 0"].filter == "duplicate"
    assert by["tw / th"].filter == "finite" and "zero gradient" in by["tw / th"].reason
    assert by["tw * th"].filter == "units" and "an area" in by["tw * th"].reason
    assert all(v.reason for v in verdicts if not v.ok)
    zoo_box = [s for s in catalog.of_signature("box") if s.compiles]  # expressions only
    zv = bank.check([Candidate({"reg": s.expression}) for s in zoo_box])
    rejected = {s.id: v for s, v in zip(zoo_box, zv) if not v.ok}
    by_design = {s.id for s in zoo_box if not s.invariant}  # pixel constants, image size
    assert by_design and all(rejected[i].filter == "units" for i in by_design)
    assert set(rejected) - by_design <= {"focal_eiou"}  # IoU^gamma weighting: not monotone


def test_ops_undefined_on_their_constants_are_rejected_not_guarded():
    """Search-mode guards keep (1 - iou) / 0 finite; the filter names the op instead."""
    bank = FilterBank({"reg": "box"})
    bad = {"(1 - iou) / 0": "0 ** -1", "(1 - iou) / (iou - iou)": "0 ** -1",
           "1 - iou + log(0)": "log(0)", "1 - iou + sqrt(0 - 1)": "sqrt(-1)"}
    fine = ["(1 - iou) / 2", "1 - iou + log(2)", "(1 - iou) ** 0.5", "1 - log(iou + 1e-7)"]
    verdicts = [bank.check([Candidate({"reg": box_expr(t)})])[0] for t in [*bad, *fine]]
    for (text, op), v in zip(bad.items(), verdicts):
        assert v.filter == "finite" and op in v.reason and "undefined" in v.reason, (text, v)
    assert all(v.ok for v in verdicts[len(bad):])


def test_equivalence_up_to_scale_depends_on_the_proxy():
    a = Candidate({"reg": box_expr("1 - iou")})
    b = Candidate({"reg": box_expr("2 - 2 * iou")})
    for scale_matters, equivalent in ((True, False), (False, True)):
        bank = FilterBank({"reg": "box"}, scale_matters=scale_matters)
        (va,) = bank.check([a])
        bank.remember(a, va, trial=7)
        (vb,) = bank.check([b])
        assert (vb.filter == "equivalent" and vb.reused_from == 7) == equivalent


def test_batched_filters_judge_as_each_candidate_alone(monkeypatch):
    """The filters' shortcuts (one canonical memo for the key, the constant check and the
    probes; the probes of a whole batch in one sweep; finiteness and the unit probe
    decided for the batch at once) give every candidate the verdict, reason and
    fingerprint of the straightforward path: one candidate at a time, its key from
    Candidate.key, every check through the per-candidate methods."""
    rng = random.Random(3)
    grammar = Grammar.of(spaces.load("box-regression").slots["reg"])
    cands = [Candidate({"reg": grammar.tree(rng, max_depth=6)}) for _ in range(300)]
    cands += cands[:5]  # duplicates within the batch
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batched = FilterBank({"reg": "box"}).check(cands)
        assert torch.get_num_threads() == 2  # the filters run on one thread, then restore
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(FilterBank, "_cleared",
                        lambda self, rand, edge, scaled, slot: [False] * len(rand))
    alone, first = FilterBank({"reg": "box"}), {}
    for i, (cand, got) in enumerate(zip(cands, batched)):
        key = cand.key
        if key in first:
            assert got.filter == "duplicate" and got.reused_from == -1, (i, got)
            continue
        first[key] = i
        (want,) = alone.check([cand])
        assert (got.status, got.filter, got.reason, got.fingerprint) == \
            (want.status, want.filter, want.reason, want.fingerprint), (i, cand.formula())
    statuses = Counter(v.filter or v.status for v in batched)
    # the sample reaches every filter a random tree can fail, and some pass
    assert {"accepted", "duplicate", "units", "finite", "convergence"} <= set(statuses)


@pytest.mark.slow
def test_ten_thousand_random_candidates_through_the_filters():
    rng = random.Random(0)
    g = Grammar(["add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "abs", "sigmoid",
                 "tanh", "min", "max", "pow", "where", "lt"], BOX.names, max_depth=6)
    bank = FilterBank({"reg": "box"})
    cands = [Candidate({"reg": g.tree(rng)}) for _ in range(10_000)]
    verdicts = []
    for i in range(0, len(cands), 500):
        verdicts += bank.check(cands[i:i + 500])
    assert len(verdicts) == 10_000
    assert all(v.ok or v.reason for v in verdicts)
    assert Counter(v.status for v in verdicts)["accepted"] > 0


# -------------------------------------------------------------------------------- engine
def run_search(tiny, tmp_path, **options):
    search = Search.create(str(tiny), runs_dir=tmp_path / "runs", **options)
    return search, search.run()


@pytest.mark.parametrize("strategy", NAMES)
def test_every_strategy_runs_and_records_trials(tiny, tmp_path, strategy):
    search, summary = run_search(tiny, tmp_path, name=strategy, strategy=strategy, trials=10,
                                 validate=False)
    study = optuna.load_study(study_name="search", storage=storage(search.folder))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 10
    for t in finished:
        cand = t.user_attrs["candidate"]
        assert cand["expr.reg"] and len(cand["hash.reg"]) == 16
        assert t.user_attrs["verdict"]["status"] in ("accepted", "rejected", "reused", "failed")
        assert ("latex" in t.user_attrs["result"]) == (t.state == optuna.trial.TrialState.COMPLETE)
        if t.user_attrs["verdict"]["status"] == "rejected":
            assert t.user_attrs["verdict"]["reason"]
    assert summary["strategy"] == strategy and summary["trials"] >= 10
    assert sum(summary["verdicts"].values()) >= 10
    if strategy == "nsga2":
        assert len(study.directions) == 2
    if strategy == "evolution":
        origins = [t.user_attrs["candidate"]["origin"] for t in study.trials[:4]]
        assert origins == ["seed:iou", "seed:giou", "seed:diou", "seed:ciou"]


@pytest.mark.parametrize("strategy", NAMES)
def test_strategies_run_on_a_handle_without_optuna(tiny, strategy):
    """A backend without a sampler (Ray Tune's trials) drives every strategy through a
    plain handle; the same trial number and history give the same candidate."""
    import dataclasses

    from autoloss.search import strategies
    from autoloss.search.handle import SampledTrial

    space = spaces.load(tiny)
    if strategy == "nsga2":
        space = dataclasses.replace(space, complexity=True)
    rng, history = random.Random(0), []
    for number in range(12):
        cand = strategies.make(strategy, space, 3).propose(SampledTrial(number, 3), history)
        again = strategies.make(strategy, space, 3).propose(SampledTrial(number, 3), history)
        assert cand.key == again.key and cand.slots["reg"] is not None
        values = (rng.random(),) + ((float(cand.complexity),) if space.complexity else ())
        history.append(strategies.Entry(number, cand, values))
    if strategy == "evolution":
        assert [e.candidate.origin for e in history[:4]] == ["seed:iou", "seed:giou",
                                                             "seed:diou", "seed:ciou"]
        assert any(e.candidate.parents for e in history[4:])  # evolved from the history


def test_only_the_optuna_backend_reaches_into_optuna():
    from pathlib import Path

    import autoloss

    root = Path(autoloss.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.name != "optuna_backend.py":
            assert "._storage" not in text and "._trial_id" not in text, path
    strategies_src = (root / "search" / "strategies.py").read_text()
    assert "optuna" not in strategies_src


def test_search_validates_and_reports(tiny, tmp_path):
    from autoloss.search.report import write_report

    search, summary = run_search(tiny, tmp_path, name="full")
    data = json.loads((search.folder / "summary.json").read_text())
    assert data["validation"]["rows"] and data["validation"]["held_out"]
    assert data["validation"]["rows"][-1]["label"].startswith("zoo seed:")
    assert data["best"] and data["engine_overhead"]["ratio"] is not None
    study = optuna.load_study(study_name="search", storage=storage(search.folder))
    assert data["states"] == {s.name.lower(): sum(t.state == s for t in study.trials)
                              for s in optuna.trial.TrialState}
    assert sum(data["states"].values()) == data["trials"] == len(study.trials)
    v = data["verdicts"]
    assert data["states"]["complete"] == v["accepted"] + v["reused"] > 0
    assert data["states"]["pruned"] == v["pruned"] and data["states"]["running"] == 0
    assert data["states"]["fail"] == v["rejected"] + v["failed"] + v["interrupted"]
    assert sum(data["rejected_by"].values()) == v["rejected"] + v["failed"]
    assert data["rejected_by"].get("units", 0) == sum(data["rejections"].get("units", {}).values())
    report = write_report(search.folder)
    text = report.read_text()
    for piece in ("## Validation", "## Rejections", "best_so_far.png", "loss_curves.png",
                  "best_loss.py"):
        assert piece in text
    for png in ("best_so_far.png", "rejections.png", "pareto.png", "loss_curves.png"):
        assert (search.folder / png).stat().st_size > 1000
    from autoloss import export

    module = export.load(search.folder / "best_loss.py")
    pred, target = BOX.sample(5, torch.Generator().manual_seed(0))
    assert module.SearchedLoss()(pred, target).shape == (5,)


def test_resume_continues_and_keeps_finished_trials(tiny, tmp_path):
    search, first = run_search(tiny, tmp_path, name="r", trials=6, validate=False)
    before = optuna.load_study(study_name="search", storage=storage(search.folder)).trials
    keys = [(t.number, t.state, t.user_attrs["candidate"]["key"]) for t in before]
    assert len(keys) == first["trials"] >= 6
    again = Search.create(str(tiny), runs_dir=tmp_path / "runs", name="r", resume=True,
                          trials=10, validate=False)
    summary = again.run()
    study = optuna.load_study(study_name="search", storage=storage(search.folder))
    assert summary["trials"] >= 10 and len(study.trials) >= 10
    # the first session's trials are kept as they were, and the resumed one added to them
    assert [(t.number, t.state, t.user_attrs["candidate"]["key"])
            for t in study.trials[:len(keys)]] == keys
    assert sum(summary["verdicts"].values()) == sum(first["verdicts"].values()) + \
        summary["engine_overhead"]["trials"]
    with pytest.raises(Exception, match="exists: pass --resume"):
        Search.create(str(tiny), runs_dir=tmp_path / "runs", name="r")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_search_loses_nothing_and_resumes(tiny, tmp_path, sig):
    cmd = [sys.executable, "-m", "autoloss.cli", "search", str(tiny), "--runs-dir",
           str(tmp_path / "runs"), "--name", "k", "--trials", "40", "--no-validate",
           "--no-report", "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = tmp_path / "runs" / "k" / "study.db"
    deadline = time.time() + 600  # generous: a loaded machine starts Python slowly
    while time.time() < deadline:
        time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail("the search ended before it could be interrupted:\n"
                        + proc.stdout.read().decode(errors="replace")[-3000:])
        if db.exists():
            # read-only SQL: the test counts without opening the run through Optuna
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    finished = con.execute("SELECT COUNT(*) FROM trials WHERE state IN "
                                           "('COMPLETE', 'PRUNED', 'FAIL')").fetchone()[0]
                if finished >= 4:
                    break
            except sqlite3.Error:  # the search is still creating the study
                continue
    proc.send_signal(sig)
    proc.wait(timeout=60)
    before = optuna.load_study(study_name="search", storage=storage(db.parent)).trials
    finished = {t.number: t.user_attrs["candidate"]["key"] for t in before
                if t.state.is_finished() and not t.user_attrs.get("interrupted")}
    assert len(finished) >= 4
    resume = subprocess.run(cmd[:4] + ["--resume"] + cmd[4:], capture_output=True, text=True,
                            timeout=300)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    after = optuna.load_study(study_name="search", storage=storage(db.parent)).trials
    for number, key in finished.items():  # nothing finished was lost or changed
        assert after[number].user_attrs["candidate"]["key"] == key
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in after)
    done = [t for t in after if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(done) == 40
    # an interrupted trial that had its candidate already is enqueued again and rerun
    interrupted = [t for t in after if t.user_attrs.get("interrupted") and "candidate" in t.user_attrs]
    retried = sorted(t.user_attrs["retry_of"] for t in after if "retry_of" in t.user_attrs)
    assert retried == sorted(t.number for t in interrupted)


def test_search_cli_and_export_run(tiny, tmp_path):
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "autoloss.cli", "search", str(tiny), "--runs-dir",
                          str(runs), "--name", "cli", "--trials", "8", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validation:" in out.stdout and "report:" in out.stdout
    exp = subprocess.run([sys.executable, "-m", "autoloss.cli", "export", "cli", "--runs-dir",
                          str(runs), "--trial", "1", "-o", str(tmp_path / "t1.py"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert exp.returncode == 0, exp.stdout + exp.stderr
    assert (tmp_path / "t1.py").exists()


def test_a_reader_never_makes_a_run_s_storage_nor_races_its_writer(tmp_path):
    import threading

    from autoloss.search.optuna_backend import StorageError, load_study

    with pytest.raises(StorageError, match="has not made its storage yet"):
        load_study(tmp_path)
    assert not list(tmp_path.iterdir())  # no empty study.db left behind
    # readers poll while the writer makes the schema: each sees no file or a whole one
    # (Optuna stamps the schema version check-then-insert: racing on a half-made file, one
    # side died of "UNIQUE constraint failed: alembic_version")
    errors: list[Exception] = []
    for i in range(12):
        folder = tmp_path / str(i)
        folder.mkdir()
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                try:
                    storage(folder, create=False).engine.dispose()
                except StorageError:  # not there yet
                    pass
                except Exception as err:  # noqa: BLE001 - what the test is for
                    errors.append(err)

        readers = [threading.Thread(target=poll) for _ in range(2)]
        for r in readers:
            r.start()
        try:
            storage(folder).engine.dispose()
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        stop.set()
        for r in readers:
            r.join()
        assert sorted(p.name for p in folder.iterdir()) == ["study.db"]
    assert not errors, errors[:3]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_pruning_from_memory_decides_as_optuna_does(tmp_path):
    from autoloss.search.optuna_backend import _PruningView

    store = storage(tmp_path)
    study = optuna.create_study(storage=store, direction="minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    rng = random.Random(0)
    for _ in range(6):
        t = study.ask()
        for step in range(1, 6):
            t.report(rng.random(), step)
        study.tell(t, rng.random())
    decisions = Counter()
    for _ in range(8):
        trial = study.ask()
        view = _PruningView(study, store, trial)
        for step in range(1, 6):
            value = rng.random()
            trial.report(value, step)
            ours, optunas = view.should_prune(step, value), trial.should_prune()
            assert ours == optunas
            decisions[ours] += 1
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert decisions[True] and decisions[False]  # both outcomes were compared


def test_filter_probes_run_jointly_where_shapes_allow_and_agree_with_separate_runs():
    from autoloss.population import PopulationEvaluator
    from autoloss.search.filters import _Probes

    g = torch.Generator().manual_seed(0)
    rand, edge = BOX.sample(16, g, dtype=torch.float64), BOX.degenerate(torch.float64)
    scaled = units.scale_probe(BOX.rescale(*BOX.sample(8, g, dtype=torch.float64), 10.0, 0.0),
                               BOX.rescale)
    probes = _Probes(BOX, rand, edge, scaled)
    assert probes.joint is not None
    exprs = [c.expression for c in catalog.of_signature("box") if c.compiles]
    _, r_joint, e_joint, s_joint = probes.evaluate(exprs)
    for inputs, joint in ((rand, r_joint), (edge, e_joint), (scaled[0], s_joint)):
        alone = PopulationEvaluator(BOX, inputs, mode="search").evaluate(exprs, grad=True)
        for a, b in zip(joint, alone):
            torch.testing.assert_close(a.value, b.value, rtol=1e-12, atol=0)
            for col in b.grads:
                torch.testing.assert_close(a.grads[col], b.grads[col], rtol=1e-12, atol=0)
    sig = FilterBank({"cls": "sigmoid"}).probes["cls"]
    assert sig.joint is None  # probe and degenerate logits differ in classes: two sweeps


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_export_of_a_missing_or_unfinished_trial_says_which(tiny, tmp_path):
    from autoloss.errors import AutolossError
    from autoloss.search import Run

    search, summary = run_search(tiny, tmp_path, trials=6, validate=False)
    with pytest.raises(AutolossError, match=r"no trial 99; the run has trials 0 to \d+"):
        Run(search.folder).export(trial=99)
    study = optuna.load_study(study_name="search", storage=storage(search.folder))
    unfinished = study.ask()  # a trial left failed, as a crash would leave it
    study.tell(unfinished, state=optuna.trial.TrialState.FAIL)
    failed = unfinished.number
    with pytest.raises(AutolossError, match=f"trial {failed} did not complete"):
        Run(search.folder).export(trial=failed)


# ------------------------------------------------------------- Ray token authentication
class _Config:
    """Stands in for ``ray._raylet.Config``: records the refresh instead of doing it."""
    refreshed = 0

    @classmethod
    def initialize(cls, config: str) -> None:
        cls.refreshed += 1


@pytest.fixture
def ray_env(tmp_path, monkeypatch):
    """A HOME of its own and no Ray authentication settings; restored after."""
    import ray._raylet

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so that the undo removes what the code sets
        monkeypatch.delenv(name)
    _Config.refreshed = 0
    monkeypatch.setattr(ray._raylet, "Config", _Config)
    return tmp_path


def _token_file(home: Path) -> None:
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("0123456789abcdef0123456789abcdef")


def test_a_local_head_gets_this_machine_s_ray_token(ray_env):
    from autoloss.search.ray_backend import use_token_auth_for

    assert not use_token_auth_for("127.0.0.1:6379")  # no token anywhere: nothing to send
    assert "RAY_AUTH_MODE" not in os.environ
    _token_file(ray_env)
    assert use_token_auth_for("localhost:6379")
    assert os.environ["RAY_AUTH_MODE"] == "token" and _Config.refreshed == 1


@pytest.mark.parametrize("where", ["token_env", "token_path"])
def test_a_token_in_ray_s_variables_counts(ray_env, monkeypatch, where):
    from autoloss.search.ray_backend import use_token_auth_for

    if where == "token_env":
        monkeypatch.setenv("RAY_AUTH_TOKEN", "0123456789abcdef0123456789abcdef")
    else:
        (ray_env / "tok").write_text("0123456789abcdef0123456789abcdef")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_env / "tok"))
    assert use_token_auth_for("ray://127.0.0.1:10001")


def test_a_token_is_not_sent_unasked_to_another_machine_or_against_the_user(ray_env,
                                                                            monkeypatch):
    from autoloss.search.ray_backend import use_token_auth_for

    _token_file(ray_env)
    assert not use_token_auth_for("192.0.2.77:6379")  # TEST-NET-1: never this machine
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert not use_token_auth_for("127.0.0.1:6379")
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and _Config.refreshed == 0
