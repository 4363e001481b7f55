"""Transfer validation: does a search's winner hold up in another proxy, and what is exported.

The transfer proxy here is ``controlled`` below (this module, named ``test_transfer:controlled``
in the spaces): its score is the mean of the classification loss it is given on a fixed batch,
plus a small term from the box loss. With ``bce`` in the candidates' pair and ``focal`` in the
baseline every candidate beats the baseline (focal <= BCE); swapped, none holds up. So both
verdicts happen deterministically, in well under a second per run.
"""
from __future__ import annotations

import json
import math
import shutil
import textwrap

import pytest
import torch

from autoloss import export, zoo
from autoloss.proxies import CandidateFailure, proxy
from autoloss.search import Run, Search, space as spaces
from autoloss.search.report import write_report
from autoloss.search.space import SpaceError
from autoloss.signatures import BOX

PROXY = "test_transfer:controlled"


@proxy(slots={"cls": "sigmoid", "reg": "box"}, metric="score", direction="maximize", budget=5)
def controlled(losses, budget, seed, report, fail_bce_seed=None):
    """Score = mean classification loss on a fixed batch + 1e-3 tanh(-mean box loss) + a
    1e-4-per-seed offset (so two seeds have a spread)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3, generator=g, dtype=torch.float64)
    target = torch.nn.functional.one_hot(torch.randint(0, 3, (64,), generator=g), 3).double()
    cls = losses["cls"](logits, target, reduction="none")
    if fail_bce_seed == seed and torch.allclose(cls, zoo.build("bce")(logits, target)):
        raise CandidateFailure("exploded at step 3 (test)")
    pred, boxes = BOX.sample(32, torch.Generator().manual_seed(1))
    reg = float(losses["reg"](pred.double(), boxes.double(), reduction="mean"))
    score = float(cls.mean()) + 1e-3 * math.tanh(-reg) + 1e-4 * seed
    report(budget, score)
    return {"score": score}


SPACE = textwrap.dedent("""
    [search]
    strategy = "evolution"
    trials = 8
    population = 5
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
    top_k = 3
    seeds = 2
    scale = 0.003
    held_out = [{ name = "bigger", scale = 0.004, seeds = 1 },
                { name = "shorter", budget = 10, seeds = 1 }]

    [validation.transfer]
    proxy = "test_transfer:controlled"
    slot = "reg"
    pair = { cls = "bce" }
    baseline = { cls = "focal", reg = "eiou" }
    top_k = 2
    seeds = 2
    budget = 5
""")


def write(tmp_path, text, name="t.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -------------------------------------------------------------------------------- parsing
def test_transfer_table_is_parsed_and_held_out_variants_are_named(tmp_path):
    space = spaces.load(write(tmp_path, SPACE))
    t = space.validation["transfer"]
    assert t == {"proxy": PROXY, "slot": "reg", "searched_slot": "reg", "pair": {"cls": "bce"},
                 "baseline": {"cls": "focal", "reg": "eiou"}, "top_k": 2, "seeds": 2,
                 "budget": 5, "scale": None, "options": {}}
    assert [h["name"] for h in space.validation["held_out"]] == ["bigger", "shorter"]
    assert space.validation["held_out"][1]["budget"] == 10
    # one table is one variant, as before; an expression is a loss as good as a zoo id
    one = SPACE.replace('held_out = [{ name = "bigger", scale = 0.004, seeds = 1 },\n'
                        '            { name = "shorter", budget = 10, seeds = 1 }]',
                        'held_out = { scale = 0.004 }').replace(
        'pair = { cls = "bce" }',
        'pair = { cls = "-(t * logsigmoid(x) + (1 - t) * logsigmoid(-x))" }')
    space = spaces.load(write(tmp_path, one, "one.toml"))
    assert space.validation["held_out"] == [{"name": "held-out", "seeds": 1, "budget": None,
                                             "scale": 0.004, "options": {}}]
    assert "logsigmoid" in space.validation["transfer"]["pair"]["cls"]


def test_shipped_spaces_transfer_to_digits():
    box = spaces.load("box-regression").validation
    assert box["transfer"]["proxy"] == "digits" and box["transfer"]["slot"] == "reg"
    assert box["transfer"]["pair"] == {"cls": "focal"}
    assert box["transfer"]["baseline"] == {"cls": "focal", "reg": "iou_square"}
    assert (box["transfer"]["top_k"], box["transfer"]["seeds"], box["transfer"]["budget"]) == \
        (1, 2, 3000)
    assert [h["name"] for h in box["held_out"]] == ["full", "pixels"]
    assert box["held_out"][1]["options"] == {"unit": 64}
    dense = spaces.load("dense-classification").validation["transfer"]
    assert (dense["slot"], dense["pair"], dense["baseline"]) == \
        ("cls", {"reg": "giou"}, {"cls": "focal", "reg": "giou"})


@pytest.mark.parametrize("edit, message", [
    (("budget = 5\n", "budget = 5\ncolour = 1\n"),
     "[validation.transfer] field 'colour': unknown field"),
    (('slot = "reg"', 'slot = "box"'),
     "[validation.transfer] field 'slot': proxy 'test_transfer:controlled' has no slot 'box'; "
     "its slots are cls (sigmoid), reg (box)"),
    (('reg = "eiou" }', 'reg = "eiuo" }'),
     "[validation.transfer] field 'baseline': slot 'reg': unknown zoo id 'eiuo'; did you mean "
     "'eiou'"),
    (('reg = "eiou" }', 'reg = "l1" }'),
     "field 'baseline': slot 'reg': zoo loss 'l1' has signature 'coord'; it stands for the "
     "searched slot 'reg', which takes box"),
    (('baseline = { cls = "focal", reg = "eiou" }', 'baseline = { reg = "eiou" }'),
     "field 'baseline': missing slot 'cls'"),
    (('pair = { cls = "bce" }', 'pair = { cls = "bce", reg = "giou" }'),
     "field 'pair': 'reg' is not one of the losses for"),
    (('pair = { cls = "bce" }', 'pair = { cls = "giou" }'),
     "field 'pair': slot 'cls': zoo loss 'giou' has signature 'box'; slot 'cls' of"),
    (('pair = { cls = "bce" }', 'pair = { cls = "x +* 2" }'),
     "field 'pair': slot 'cls': 'x +* 2' is neither a zoo id nor an expression of sigmoid"),
    (('proxy = "test_transfer:controlled"', 'proxy = "digit"'),
     "[validation.transfer] field 'proxy': unknown proxy 'digit'; did you mean 'digits'"),
    (('proxy = "test_transfer:controlled"', 'proxy = "digits"\noptions = { canvass = 96 }'),
     "[validation.transfer] field 'options': proxy 'digits' does not take these options"),
    (("top_k = 2\n", "top_k = 0\n"), "[validation.transfer] field 'top_k': must be at least 1"),
    (('{ name = "shorter", budget = 10, seeds = 1 }', '{ name = "bigger" }'),
     "[validation.held_out[1]] field 'name': two held-out variants are named 'bigger'"),
    (('{ name = "shorter", budget = 10, seeds = 1 }', '{ nme = "shorter" }'),
     "[validation.held_out[1]] field 'nme': unknown field; did you mean 'name'"),
    (('{ name = "shorter", budget = 10, seeds = 1 }', '{ options = { colour = 1 } }'),
     "[validation.held_out[1]] field 'options': proxy 'boxsim' does not take"),
])
def test_malformed_transfer_tables_name_file_table_and_field(tmp_path, edit, message):
    assert edit[0] in SPACE
    with pytest.raises(SpaceError) as err:
        spaces.load(write(tmp_path, SPACE.replace(*edit), "bad.toml"))
    assert message in str(err.value) and "bad.toml" in str(err.value)


def test_held_out_must_be_tables_and_a_joint_space_cannot_transfer(tmp_path):
    bad = SPACE.replace('held_out = [{ name = "bigger", scale = 0.004, seeds = 1 },\n'
                        '            { name = "shorter", budget = 10, seeds = 1 }]',
                        "held_out = 3")
    with pytest.raises(SpaceError, match=r"\[validation\] field 'held_out': must be a table"):
        spaces.load(write(tmp_path, bad, "bad.toml"))
    detector = spaces.load("detector").raw
    data = json.loads(json.dumps(detector))
    data["validation"]["transfer"] = {"proxy": "digits", "slot": "reg",
                                      "baseline": {"cls": "focal", "reg": "giou"}}
    with pytest.raises(SpaceError, match="this space searches 2 slots"):
        spaces.parse_space(data, "detector", "detector.toml")


# ---------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One small search whose candidates all hold up (bce in their pair, focal in the
    baseline's), its report written."""
    root = tmp_path_factory.mktemp("transfer")
    path = write(root, SPACE)
    search = Search.create(str(path), runs_dir=root / "runs", name="holds")
    summary = search.run()
    write_report(search.folder)
    return root, path, search, summary


def variant(searched, name, transfer: dict):
    """A copy of the searched run whose transfer table is changed, validated again (the
    resumed search has nothing left to run but its validation and transfer stages)."""
    root, path, search, _ = searched
    folder = root / "runs" / name
    shutil.copytree(search.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["space"]["validation"]["transfer"].update(transfer)
    (folder / "config.json").write_text(json.dumps(config))
    again = Search.create(str(path), runs_dir=root / "runs", name=name, resume=True)
    summary = again.run()
    write_report(folder)
    return folder, summary


def trial_loss(folder, number):
    run = Run(folder)
    return run.candidate_of(run.trial(number)).compiled("reg", "box")


def boxes():
    pred, target = BOX.sample(64, torch.Generator().manual_seed(7))
    return pred.double(), target.double()


def test_a_candidate_that_holds_up_is_the_winner_and_is_exported(searched):
    _, _, search, summary = searched
    data = json.loads((search.folder / "summary.json").read_text())
    assert data == json.loads(json.dumps(summary))  # what run() returned is what it wrote
    t = data["transfer"]
    assert t["settings"]["baseline"] == {"cls": "focal", "reg": "eiou"}
    assert t["seeds"] == [0, 1] and t["proxy"] == PROXY and t["metric"] == "score"
    assert t["baseline"]["label"] == "focal + eiou" and len(t["baseline"]["values"]) == 2
    # the top 2 validated candidates, best first by the validation rows, over the same seeds
    validated = sorted((r for r in data["validation"]["rows"]
                        if r["trial"] is not None and "mean" in r), key=lambda r: r["mean"])
    assert [r["trial"] for r in t["rows"]] == [r["trial"] for r in validated[:2]]
    for r in t["rows"]:
        assert r["holds"] is True and r["delta"] == pytest.approx(r["mean"] - t["baseline"]["mean"])
        assert len(r["values"]) == 2 and r["std"] > 0 and r["losses"]["cls"] == "bce"
        assert r["values"][1] - r["values"][0] == pytest.approx(
            t["baseline"]["values"][1] - t["baseline"]["values"][0])  # the same seeds
    best = max(t["rows"], key=lambda r: r["mean"])
    assert t["winner"]["trial"] == best["trial"]
    assert t["export"] == {"kind": "trial", "trial": best["trial"]}
    assert t["verdict"].startswith(f"trial {best['trial']} transfers: {PROXY} score ")
    assert "vs focal + eiou" in t["verdict"]
    # held-out variants, each by name
    assert {r["variant"] for r in data["validation"]["held_out"]} == {"bigger", "shorter"}
    assert [v["name"] for v in data["validation"]["held_out_settings"]] == ["bigger", "shorter"]
    # report and export
    report = (search.folder / "report.md").read_text()
    assert f"## Transfer to {PROXY}" in report and "| holds up |" in report
    assert f"**Verdict:** {t['verdict']}" in report
    assert "Held-out variant `bigger`" in report and "Held-out variant `shorter`" in report
    module = export.load(search.folder / "best_loss.py")
    source = (search.folder / "best_loss.py").read_text()
    assert f"trial: {best['trial']}" in source and f"holds up in {PROXY}" in source
    pred, target = boxes()
    # boxsim's calibrated step cannot tell a loss from its multiples: the candidate transfers
    # (and is exported) weighted to the baseline's pull near the target
    from autoloss.evaluate import gradient_scale

    searched_loss = trial_loss(search.folder, best["trial"])
    weight = gradient_scale(zoo.compiled("eiou")) / gradient_scale(searched_loss)
    assert best["weight"] == pytest.approx(weight, rel=1e-3) and best["weight"] != 1.0
    expected = best["weight"] * searched_loss(pred, target)
    assert torch.allclose(module.SearchedLoss()(pred, target), expected, rtol=1e-5, atol=1e-6)
    assert "scaled by" in source and "to the pull of eiou" in source


def test_when_nothing_holds_up_the_baseline_loss_is_exported(searched):
    folder, summary = variant(searched, "fails", {"pair": {"cls": "focal"},
                                                  "baseline": {"cls": "bce", "reg": "eiou"}})
    t = summary["transfer"]
    assert t["rows"] and not any(r["holds"] for r in t["rows"]) and t["winner"] is None
    assert t["export"] == {"kind": "baseline", "slot": "reg", "loss": "eiou"}
    best = max(t["rows"], key=lambda r: r["mean"])
    assert t["verdict"].startswith(f"no candidate transfers: best trial {best['trial']} {PROXY} "
                                   "score ")
    assert t["verdict"].endswith("best_loss.py holds the baseline's eiou")
    assert json.loads((folder / "summary.json").read_text())["transfer"]["winner"] is None
    report = (folder / "report.md").read_text()
    assert "| no |" in report and "holds the baseline's `eiou` instead" in report
    source = (folder / "best_loss.py").read_text()
    assert "none held up in test_transfer:controlled" in source and "zoo id eiou" in source
    module = export.load(folder / "best_loss.py")
    pred, target = boxes()
    assert torch.allclose(module.SearchedLoss()(pred, target), zoo.build("eiou")(pred, target),
                          rtol=1e-6, atol=1e-7)


def test_a_failing_candidate_is_a_row_with_its_reason_and_the_stage_goes_on(searched):
    folder, summary = variant(searched, "explodes", {"options": {"fail_bce_seed": 1}})
    t = summary["transfer"]
    assert len(t["rows"]) == 2  # the stage went on past the first failure
    for r in t["rows"]:
        assert r["failed"] == "seed 1: exploded at step 3 (test)" and r["holds"] is False
        assert len(r["values"]) == 1  # seed 0 ran
    assert "mean" in t["baseline"] and t["winner"] is None
    assert t["verdict"].startswith(f"no candidate transfers: every candidate failed in {PROXY}")
    assert "failed: seed 1: exploded" in (folder / "report.md").read_text()
    module = export.load(folder / "best_loss.py")
    pred, target = boxes()
    assert torch.allclose(module.SearchedLoss()(pred, target), zoo.build("eiou")(pred, target),
                          rtol=1e-6, atol=1e-7)


def test_cli_export_best_follows_the_transfer_verdict(searched, tmp_path, capsys):
    from autoloss.cli import main

    root, _, search, summary = searched
    winner = summary["transfer"]["winner"]["trial"]
    out = tmp_path / "best.py"
    assert main(["export", "holds", "--runs-dir", str(root / "runs"), "--best", "-o",
                 str(out)]) == 0
    assert f"trial {winner}, the best candidate that holds up in {PROXY}" in capsys.readouterr().out
    assert f"trial: {winner}" in out.read_text()
    other = next(r["trial"] for r in summary["transfer"]["rows"] if r["trial"] != winner)
    assert main(["export", "holds", "--runs-dir", str(root / "runs"), "--trial", str(other),
                 "-o", str(out)]) == 0
    assert f"trial: {other}" in out.read_text()  # --trial N still exports trial N
    assert main(["export", "holds", "--runs-dir", str(root / "runs"), "--trial", "1",
                 "--best"]) == 2
    assert "--trial N and --best exclude each other" in capsys.readouterr().err


def test_search_command_ends_with_the_verdict(tmp_path, capsys):
    from autoloss.cli import main

    space = SPACE.replace('pair = { cls = "bce" }', 'pair = { cls = "focal" }').replace(
        'baseline = { cls = "focal", reg = "eiou" }', 'baseline = { cls = "bce", reg = "eiou" }')
    path = write(tmp_path, space.replace("trials = 8", "trials = 5"))
    assert main(["search", str(path), "--runs-dir", str(tmp_path / "runs"), "--name", "cli",
                 "--quiet", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("  transfer [6/6] ") for line in lines)  # a line per run
    assert lines[-2].endswith("best_loss.py holds the baseline's zoo loss eiou: no candidate "
                              f"held up in {PROXY}")
    assert lines[-1].startswith(f"transfer to {PROXY}: no: no candidate transfers: best trial ")


def test_transfer_to_digits_with_a_tiny_budget(searched):
    """The shipped configuration's path: a box loss beside focal in the digits detector."""
    folder, summary = variant(searched, "digits", {
        "proxy": "digits", "pair": {"cls": "focal"}, "baseline": {"cls": "focal", "reg": "giou"},
        "top_k": 1, "seeds": 1, "budget": 30, "scale": 0.02})
    t = summary["transfer"]
    assert t["proxy"] == "digits" and t["metric"] == "map" and t["seeds"] == [0]
    assert len(t["rows"]) == 1 and t["rows"][0]["losses"]["cls"] == "focal"
    for r in [t["baseline"]] + t["rows"]:
        assert "failed" in r or 0 <= r["mean"] <= 1
    assert "## Transfer to digits" in (folder / "report.md").read_text()
    assert (folder / "best_loss.py").exists()
