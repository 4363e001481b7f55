"""Searchable ranking surrogates: the rank signature's steps under AP-Loss's combination.

The core (:mod:`autoloss.ranksurrogate`) against :func:`autoloss.ranking.ap_loss` and
``alrp_loss`` (with the ramp step it must be them), gradcheck of its autograd update, its
blocking, its errors; the step filter; a tiny search of the ``ranking`` space.
"""
from __future__ import annotations

import tomllib

import optuna
import pytest
import torch

from autoloss import ranking, ranksurrogate, zoo
from autoloss.errors import SignatureError
from autoloss.proxies import slot_signatures
from autoloss.proxies.clssim import ClsSim
from autoloss.ranksurrogate import RankLoss, StepError, rank_loss
from autoloss.search import Search
from autoloss.search.candidate import Candidate
from autoloss.search.filters import FilterBank
from autoloss.search.runs import storage
from autoloss.parse import parse
from autoloss.signatures import RANK
from autoloss.signatures.testing import SignatureContract
from autoloss.search import space as spaces

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")


class TestRankSignature(SignatureContract):
    signature = RANK


def batch(seed: int, n: int = 3000, rate: float = 0.01, dtype=torch.float64, ties=False):
    """Logits with positives shifted up, some ignored (-1) elements; optionally tied."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=g) < rate).to(dtype)
    labels[torch.rand(n, generator=g) < 0.02] = -1
    logits = torch.randn(n, generator=g, dtype=dtype) * 2 + 2.5 * (labels == 1)
    if ties:
        logits = (logits * 2).round() / 2
    return logits, labels


def value_and_grad(fn, logits, *args, **kwargs):
    x = logits.clone().requires_grad_(True)
    value = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


# ------------------------------------------------------------- the ramp step is ap_loss
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ramp_step_is_ap_loss_value_and_update(seed, ties):
    logits, labels = batch(seed, ties=ties)
    want = value_and_grad(ranking.ap_loss, logits, labels)
    got = value_and_grad(zoo.loss("ap_step"), logits, labels)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("delta", [0.25, 0.5, 2.0])
def test_ramp_step_follows_delta(delta):
    logits, labels = batch(3)
    want = value_and_grad(ranking.ap_loss, logits, labels, delta=delta)
    got = value_and_grad(zoo.loss("ap_step"), logits, labels, delta=delta)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)


def test_ramp_step_without_interpolation_is_alrp_classification():
    logits, labels = batch(4)
    step = zoo.compiled("ap_step")
    want = value_and_grad(ranking.alrp_loss, logits, labels)
    got = value_and_grad(rank_loss, logits, labels, step, interpolate=False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    # aLRP gives no update to a positive with FP(i) <= 1e-5; the core gives it
    # -(1 - prec(i)) / P, which is then below 1e-5 / P
    torch.testing.assert_close(got[1], want[1], rtol=1e-8, atol=1e-5 / int((labels == 1).sum()))


def test_sigmoid_step_under_the_error_update_uses_only_step_values():
    """The error-driven update of a negative is sum_i H(s_j - s_i) / rank(i) / P (no
    interpolation where precision falls monotonically): checked by hand."""
    logits = torch.tensor([3.0, 1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    h = lambda x: torch.sigmoid(x / 0.5)  # noqa: E731
    fg, bg = logits[:2], logits[2:]
    rank_pos = 1 + h(fg.flip(0) - fg)
    fp = h(bg[None, :] - fg[:, None]).sum(1)
    prec = rank_pos / (rank_pos + fp)
    value, grad = value_and_grad(zoo.loss("sigmoid_step"), logits, labels)
    order = torch.argsort(fg)
    iprec = prec.clone()
    iprec[order] = torch.cummax(prec[order], 0).values
    torch.testing.assert_close(value, 1 - iprec.mean())
    scale = torch.where(iprec > prec, (1 - iprec) / (1 - prec), torch.ones_like(prec))
    want_bg = ((scale / (rank_pos + fp))[:, None] * h(bg[None, :] - fg[:, None])).sum(0) / 2
    torch.testing.assert_close(grad[2:], want_bg)
    torch.testing.assert_close(grad[:2], -(1 - iprec) / 2)


# ----------------------------------------------------------------- autograd, blocks, edges
@pytest.mark.parametrize("interpolate", [False, True])
def test_gradcheck_float64_autograd_update(interpolate):
    logits, labels = batch(5, n=60, rate=0.1)
    step = zoo.compiled("sigmoid_step")
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: rank_loss(z, labels, step, update="autograd", interpolate=interpolate), (x,))


def test_blocks_give_the_same_loss(monkeypatch):
    logits, labels = batch(6, rate=0.05)
    step = zoo.compiled("sigmoid_step")
    whole = [value_and_grad(rank_loss, logits, labels, step, update=u) for u in ("error",
                                                                                  "autograd")]
    monkeypatch.setattr(ranksurrogate, "_BLOCK_ELEMENTS", 7000)  # 2 positives a block
    blocked = [value_and_grad(rank_loss, logits, labels, step, update=u) for u in ("error",
                                                                                    "autograd")]
    for (v, g), (vb, gb) in zip(whole, blocked):
        torch.testing.assert_close(vb, v)
        torch.testing.assert_close(gb, g)


def test_edges_no_positive_and_no_negative():
    loss = zoo.loss("sigmoid_step")
    logits = torch.randn(20, dtype=torch.float64)
    value, grad = value_and_grad(loss, logits, torch.zeros(20, dtype=torch.float64))
    assert value.item() == 0.0 and not grad.any()
    value, grad = value_and_grad(loss, logits, torch.ones(20, dtype=torch.float64))
    assert value.item() == 0.0 and not grad.any()


def test_float32_is_close_to_float64():
    logits, labels = batch(7)
    loss = zoo.loss("sigmoid_step")
    v64, g64 = value_and_grad(loss, logits, labels)
    v32, g32 = value_and_grad(loss, logits.float(), labels.float())
    assert v32.dtype == torch.float32 and g32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-6)


def test_takes_classification_slot_inputs():
    """(N, C) logits and soft targets, as clssim and digits pass them; a quality target
    counts as positive."""
    logits, labels = batch(8, n=400)
    soft = torch.where(labels == 1, torch.full_like(labels, 0.7), labels.clamp(min=0))
    loss = zoo.loss("ap_step")
    torch.testing.assert_close(loss(logits.reshape(100, 4), soft.reshape(100, 4)),
                               ranking.ap_loss(logits, (soft > 0).double()))
    assert "rank" in slot_signatures(ClsSim(), "cls")


def test_bad_input_and_bad_steps_raise_clear_errors():
    logits, labels = batch(9, n=200)
    with pytest.raises(SignatureError, match="update must be one of"):
        rank_loss(logits, labels, "sigmoid(x)", update="ste")
    with pytest.raises(SignatureError, match="'rank' signature"):
        RankLoss(zoo.compiled("focal"))
    with pytest.raises(SignatureError, match="same shape"):
        zoo.loss("ap_step")(logits, labels[:-1])
    with pytest.raises(SignatureError, match="reduction must be 'mean' or 'sum'"):
        zoo.loss("ap_step")(logits, labels, reduction="none")
    with pytest.raises(StepError, match="finite and >= 0"):
        rank_loss(logits, labels, "x")  # negative below 0: not a count


def test_zoo_build_is_the_step():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(zoo.build("ap_step")(x),
                               torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0], dtype=torch.float64))


# ------------------------------------------------------------------------------ filters
def test_the_step_filter_explains_what_is_no_step():
    bank = FilterBank({"cls": "rank"}, scale_matters=False)

    def verdict(text):
        return bank.check([Candidate({"cls": parse(text, RANK.names, {})})])[0]

    assert verdict("clamp(x / 2 + 0.5, 0, 1)").ok
    assert verdict("sigmoid(x / 0.5)").ok
    v = verdict("x")
    assert not v.ok and v.filter == "step" and "negative" in v.reason
    v = verdict("sigmoid(x / 0.5) + 0.25")
    assert not v.ok and v.filter == "step" and "vanish" in v.reason
    v = verdict("sigmoid(0 - x)")
    assert not v.ok and v.filter in ("step", "convergence")


# ------------------------------------------------------------------------------- search
def test_ranking_space_loads_with_its_seeds():
    space = spaces.load("search_spaces/ranking.toml")
    assert space.slots["cls"].signature == "rank"
    assert set(space.slots["cls"].seeds) == {"ap_step", "sigmoid_step"}


def test_tiny_ranking_search_finishes_trials(tmp_path):
    data = tomllib.loads(open("search_spaces/ranking.toml", encoding="utf-8").read())
    data["proxy"]["budget"] = 30
    data["proxy"]["scale"] = 0.05
    space = spaces.parse_space(data, "ranking", "ranking.toml")
    search = Search.create(space, runs_dir=tmp_path / "runs", name="tiny", trials=5,
                           validate=False, threads=1)
    summary = search.run()
    study = optuna.load_study(study_name="search", storage=storage(search.folder))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 5
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(0 < t.values[0] <= 1 for t in complete)
    origins = [t.user_attrs["candidate"]["origin"] for t in study.trials[:2]]
    assert origins == ["seed:ap_step", "seed:sigmoid_step"]
    assert summary["trials"] >= 5


# ------------------------------------------------------------------------------- export
def test_export_ships_the_step_and_the_core(tmp_path):
    from autoloss import export

    path = export.to_file(RankLoss(zoo.compiled("ap_step")), tmp_path / "rank.py", "MyRank",
                          params={"delta": 0.5})
    module = export.load(path)
    text = path.read_text()
    assert "import autoloss" not in text and "from autoloss" not in text
    logits, labels = batch(10)
    want = value_and_grad(ranking.ap_loss, logits, labels, delta=0.5)
    got = value_and_grad(module.MyRank(), logits, labels)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    step = zoo.compiled("sigmoid_step")
    want = value_and_grad(rank_loss, logits, labels, step, update="autograd")
    module = export.load(export.to_file(RankLoss(step), tmp_path / "s.py", "SmoothRank"))
    got = value_and_grad(module.smooth_rank_loss, logits, labels, update="autograd")
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_joint_export_refuses_a_ranking_surrogate_clearly():
    from autoloss import export
    from autoloss.errors import AutolossError

    with pytest.raises(AutolossError, match="ranking surrogate.*Export that slot alone"):
        export.to_source_joint({"cls": zoo.loss("ap_step"), "reg": zoo.compiled("giou")},
                               {"cls": "A", "reg": "B"}, {}, {}, {}, export.Provenance())


def test_a_space_sets_the_update_and_the_precision():
    data = tomllib.loads(open("search_spaces/ranking.toml", encoding="utf-8").read())
    data["slots"]["cls"]["set_level"] = {"update": "autograd", "interpolate": False}
    space = spaces.parse_space(data, "ranking", "ranking.toml")
    cand = Candidate({"cls": zoo.get("sigmoid_step").expression})
    loss = cand.compiled("cls", "rank", set_level=space.slots["cls"].set_level)
    assert (loss.update, loss.interpolate) == ("autograd", False)
    for bad, message in (({"update": "ste"}, "update must be one of"),
                         ({"interpolation": False}, "did you mean 'interpolate'"),
                         ("autograd", "must be a table")):
        data["slots"]["cls"]["set_level"] = bad
        with pytest.raises(spaces.SpaceError, match=message):
            spaces.parse_space(data, "ranking", "ranking.toml")


def test_a_multiple_of_a_step_is_another_ranking_loss_not_an_equivalent():
    """Adam-trained clssim does not reward k * L for an elementwise loss, but 2 H is another
    ranking loss than H (rank_pos = 1 + 2 sum H): the filters must not reuse H's result."""
    bank = FilterBank({"cls": "rank"}, scale_matters=False)
    first = Candidate({"cls": parse("sigmoid(x / 0.5)", RANK.names, {})})
    verdict = bank.check([first])[0]
    assert verdict.ok
    bank.remember(first, verdict, 0)
    twice = bank.check([Candidate({"cls": parse("2 * sigmoid(x / 0.5)", RANK.names, {})})])[0]
    assert twice.ok, twice.reason
