"""autoloss.ranking against straight ports of the official loops (tests/reference_ranking.py).

Values and the error-driven gradients (what each Function's backward returns) agree with
the ports to rtol 1e-4 in float64 on random inputs with few and many positives, tied
logits and tied IoU targets, ignored anchors and saturated logits; then the edge cases the
official code defines (no positive, no negative, empty input), dtypes, the modules, aLRP's
self-balancing and the input errors.
"""
from __future__ import annotations

import pytest
import torch

import reference_ranking as ref
from autoloss import ranking
from autoloss.errors import SignatureError

RTOL = 1e-4
ATOL = 1e-12  # gradients of far-away negatives are exactly 0 in both; others are >> 1e-12


def make_inputs(n, n_pos, seed, ties=False, soft=False, n_ignored=5, dtype=torch.float64):
    """Logits (N,) and labels (N,): n_pos positives, n_ignored anchors labelled -1. With
    ties, logits sit on a 0.25 grid (many equal logits, positive and negative alike) and
    IoU targets on a 0.1 grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * 2 - 1
    perm = torch.randperm(n, generator=g)
    labels = torch.zeros(n, dtype=torch.float64)
    labels[perm[:n_pos]] = 1
    labels[perm[n_pos:n_pos + n_ignored]] = -1
    x[perm[:n_pos]] += 1.5  # positives score higher on average, with overlap
    if ties:
        x = (x * 4).round() / 4
    if soft:
        iou = torch.rand(n_pos, generator=g, dtype=torch.float64) * 0.9 + 0.1
        labels[perm[:n_pos]] = (iou * 10).round() / 10 if ties else iou
    return x.to(dtype), labels


def ours(fn, x, labels, *args, **kwargs):
    """Value and the gradient the Function's backward returns."""
    x = x.detach().clone().requires_grad_(True)
    value = fn(x, labels, *args, **kwargs)
    value.backward()
    return value.detach(), x.grad


def ref_dr(x, labels, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    value = ref.dr_loss(x, labels, **kwargs)
    value.backward()
    return value.detach(), x.grad


def ref_alrp(x, labels, e_loc):
    return ref.alrp_loss(x, labels, e_loc)[:2]


def ref_rs(x, targets, delta=0.5):
    ranking_error, sorting_error, grad = ref.rs_loss(x, targets, delta)
    return ranking_error + sorting_error, grad


def e_loc_for(labels, seed=1):
    n_pos = int((labels == 1).sum())
    return torch.rand(n_pos, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# (name, soft targets?, ours(x, labels) -> (value, grad), reference(x, labels) -> (value, grad))
LOSSES = {
    "ap": (False, lambda x, y: ours(ranking.ap_loss, x, y), ref.ap_loss),
    "alrp": (False, lambda x, y: ours(ranking.alrp_loss, x, y, e_loc_for(y)),
             lambda x, y: ref_alrp(x, y, e_loc_for(y))),
    "rs": (True, lambda x, y: ours(ranking.rs_loss, x, y), ref_rs),
    "dr": (False, lambda x, y: ours(ranking.dr_loss, x, y), ref_dr),
}

CASES = [  # (N, positives, ties, seed)
    (60, 1, False, 0), (400, 3, False, 1), (400, 3, True, 2), (1500, 40, False, 3),
    (1500, 40, True, 4), (600, 300, False, 5), (600, 300, True, 6), (300, 290, True, 7),
]


def check(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got[1], want[1], rtol=RTOL, atol=ATOL)
    # exact zeros stay exact (e.g. a positive above every negative: no AP update at all)
    assert torch.equal(got[1][want[1] == 0], torch.zeros_like(got[1][want[1] == 0]))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-P{c[1]}{'-ties' if c[2] else ''}")
@pytest.mark.parametrize("name", list(LOSSES))
def test_matches_official_loop(name, case):
    soft, mine, theirs = LOSSES[name]
    n, n_pos, ties, seed = case
    x, labels = make_inputs(n, n_pos, seed, ties=ties, soft=soft)
    check(mine(x, labels), theirs(x, labels))


@pytest.mark.parametrize("name", list(LOSSES))
def test_saturated_logits(name):
    soft, mine, theirs = LOSSES[name]
    x, labels = make_inputs(500, 30, seed=8, ties=True, soft=soft)
    x[::7] = 1e4
    x[3::7] = -1e4
    got = mine(x, labels)
    check(got, theirs(x, labels))
    assert torch.isfinite(got[1]).all()


@pytest.mark.parametrize("delta", [0.0, 0.25, 2.0])
def test_rs_other_deltas(delta):
    x, targets = make_inputs(500, 40, seed=9, ties=True, soft=True)
    check(ours(ranking.rs_loss, x, targets, delta), ref_rs(x, targets, delta))


@pytest.mark.parametrize("delta", [0.5, 3.0])
def test_ap_alrp_other_deltas(delta):
    x, labels = make_inputs(500, 40, seed=10, ties=True)
    check(ours(ranking.ap_loss, x, labels, delta), ref.ap_loss(x, labels, delta))
    e = e_loc_for(labels)
    check(ours(ranking.alrp_loss, x, labels, e, delta), ref.alrp_loss(x, labels, e, delta)[:2])


def test_rs_in_many_blocks(monkeypatch):
    """The dense (B, P) blocks of positives: a tiny budget gives one row per block."""
    x, targets = make_inputs(300, 37, seed=11, ties=True, soft=True)
    want = ref_rs(x, targets)
    for budget in (1, 100, 37 * 5):
        monkeypatch.setattr(ranking, "_BLOCK_ELEMENTS", budget)
        check(ours(ranking.rs_loss, x, targets), want)


def test_alrp_parts_match_the_official_head():
    x, labels = make_inputs(800, 50, seed=12, ties=True)
    e = e_loc_for(labels).requires_grad_(True)
    cls_ref, _, rank_ref, order_ref = ref.alrp_loss(x, labels, e.detach())
    loc_ref = ref.alrp_loc(e, rank_ref, order_ref)
    (grad_e_ref,) = torch.autograd.grad(loc_ref, e)
    parts = ranking.alrp_loss_parts(x, labels, e)
    torch.testing.assert_close(parts.cls, cls_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(parts.rank, rank_ref, rtol=RTOL, atol=ATOL)
    assert torch.equal(parts.order, order_ref)
    torch.testing.assert_close(parts.loc, loc_ref, rtol=RTOL, atol=ATOL)
    (grad_e,) = torch.autograd.grad(parts.loc, e)
    torch.testing.assert_close(grad_e, grad_e_ref, rtol=RTOL, atol=ATOL)


def test_alrp_cls_has_no_gradient_wrt_regression_losses():
    x, labels = make_inputs(200, 10, seed=13)
    e = e_loc_for(labels).requires_grad_(True)
    cls = ranking.alrp_loss(x.requires_grad_(True), labels, e)
    assert torch.autograd.grad(cls, e, allow_unused=True)[0] is None


def test_alrp_regression_errors_drive_the_update():
    """With all localisation errors at 0, aLRP's update is the ranking part alone; larger
    errors of the positives above i push i harder (its gradient is more negative)."""
    x, labels = make_inputs(400, 20, seed=14)
    zero = ours(ranking.alrp_loss, x, labels)[1]
    ones = ours(ranking.alrp_loss, x, labels, torch.ones(20, dtype=torch.float64))[1]
    pos = labels == 1
    assert (ones[pos] <= zero[pos]).all() and (ones[pos] < zero[pos]).any()


# --- edge cases ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ap", "alrp", "rs"])
def test_no_positive_is_zero_with_zero_gradient(name):
    soft, mine, theirs = LOSSES[name]
    x, labels = make_inputs(100, 0, seed=15, soft=soft)
    value, grad = mine(x, labels)
    assert value.item() == 0 and value.dtype == x.dtype
    assert torch.equal(grad, torch.zeros_like(x))
    check((value, grad), theirs(x, labels))


def test_dr_no_positive_takes_the_positive_side_as_one():
    x, labels = make_inputs(100, 0, seed=16)
    value, grad = ours(ranking.dr_loss, x, labels)
    check((value, grad), ref_dr(x, labels))
    hardest = torch.where(labels == 0, x, -torch.inf).argmax()
    assert value > 0 and grad[hardest] > 0  # the hardest negative is still pushed down


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_positive(name):
    soft, mine, theirs = LOSSES[name]
    x, labels = make_inputs(80, 80, seed=17, ties=True, soft=soft, n_ignored=0)
    got = mine(x, labels)
    check(got, theirs(x, labels))
    if name in ("ap", "alrp"):  # no negative: perfect precision, nothing to update
        assert got[0].item() == 0 and torch.equal(got[1], torch.zeros_like(x))


@pytest.mark.parametrize("fn", [ranking.ap_loss, ranking.alrp_loss, ranking.rs_loss])
def test_empty_input(fn):
    value, grad = ours(fn, torch.zeros(0, dtype=torch.float64), torch.zeros(0))
    assert value.item() == 0 and grad.shape == (0,)


def test_all_equal_logits():
    x = torch.zeros(50, dtype=torch.float64)
    labels = torch.zeros(50)
    labels[:5] = 1
    check(ours(ranking.ap_loss, x, labels), ref.ap_loss(x, labels))
    targets = labels.clone()
    targets[:5] = torch.tensor([0.9, 0.5, 0.5, 0.7, 0.2])
    check(ours(ranking.rs_loss, x, targets), ref_rs(x, targets))


@pytest.mark.parametrize("name", ["ap", "alrp", "rs"])
def test_ignored_and_far_negatives_get_no_gradient(name):
    soft, mine, _ = LOSSES[name]
    x, labels = make_inputs(300, 10, seed=18, soft=soft, n_ignored=20)
    x[labels == 0] -= torch.arange(int((labels == 0).sum()), dtype=x.dtype) % 2 * 50
    grad = mine(x, labels)[1]
    assert (grad[labels == -1] == 0).all()
    far = (labels == 0) & (x < x[labels > 0].min() - 3)
    assert far.any() and (grad[far] == 0).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_close_to_float64(name):
    soft, mine, _ = LOSSES[name]
    x, labels = make_inputs(1000, 30, seed=19, soft=soft)
    v64, g64 = mine(x, labels)
    v32, g32 = mine(x.float(), labels.float())
    assert v32.dtype == g32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["ap", "alrp", "rs"])
def test_bfloat16_logits(name):
    soft, mine, _ = LOSSES[name]
    x, labels = make_inputs(200, 10, seed=20, soft=soft)
    value, grad = mine(x.bfloat16(), labels)
    assert value.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("fn", [ranking.ap_loss, ranking.alrp_loss, ranking.dr_loss])
def test_label_dtypes_agree(fn):
    x, labels = make_inputs(300, 12, seed=21, n_ignored=0)
    want = ours(fn, x, labels)
    for cast in (labels.long(), labels.bool(), labels.float(), labels.to(torch.int8)):
        check(ours(fn, x, cast), want)


@pytest.mark.parametrize("fn", [ranking.ap_loss, ranking.alrp_loss, ranking.rs_loss])
def test_backward_scales_with_the_incoming_gradient(fn):
    x, labels = make_inputs(300, 12, seed=22, n_ignored=0)
    _, grad = ours(fn, x, labels)
    xx = x.clone().requires_grad_(True)
    (-2.5 * fn(xx, labels)).backward()
    torch.testing.assert_close(xx.grad, -2.5 * grad)


def test_rs_parts_carry_the_update_on_the_ranking_output():
    x, targets = make_inputs(300, 12, seed=23, soft=True)
    _, want = ref_rs(x, targets)
    xx = x.clone().requires_grad_(True)
    ranking.rs_loss_parts(xx, targets).ranking.backward()
    torch.testing.assert_close(xx.grad, want, rtol=RTOL, atol=ATOL)


def test_dr_gradcheck():
    x, labels = make_inputs(40, 6, seed=24)
    assert torch.autograd.gradcheck(lambda t: ranking.dr_loss(t, labels),
                                    (x.clone().requires_grad_(True),))
    x0, labels0 = make_inputs(20, 0, seed=25)
    assert torch.autograd.gradcheck(lambda t: ranking.dr_loss(t, labels0),
                                    (x0.clone().requires_grad_(True),))


# --- modules ---------------------------------------------------------------------------

def test_modules_match_functions():
    x, labels = make_inputs(300, 12, seed=26)
    _, targets = make_inputs(300, 12, seed=26, soft=True)
    for module, fn, y in ((ranking.APLoss(0.7), lambda a, b: ranking.ap_loss(a, b, 0.7), labels),
                          (ranking.RankSortLoss(0.3), lambda a, b: ranking.rs_loss(a, b, 0.3),
                           targets),
                          (ranking.DRLoss(margin=0.3), lambda a, b: ranking.dr_loss(a, b, 0.3),
                           labels)):
        check(ours(module, x, y), ours(fn, x, y))
        assert "=" in repr(module)


def test_alrp_self_balancing_follows_the_official_head():
    crit = ranking.ALRPLoss(period=3)
    assert crit.sb_weight == 50
    cls_hist, loc_hist = [], []
    for seed in range(7):
        x, labels = make_inputs(200, 8, seed=30 + seed)
        e = e_loc_for(labels, seed)
        parts = ranking.alrp_loss_parts(x, labels, e)
        weight_before = crit.sb_weight
        total = crit(x, labels, e)
        cls_hist.append(parts.cls.item())
        loc_hist.append(parts.loc.item())
        if len(cls_hist) == 3:
            assert crit.sb_weight == pytest.approx(ref.alrp_self_balance(cls_hist, loc_hist))
            cls_hist, loc_hist = [], []
        else:
            assert crit.sb_weight == weight_before
        torch.testing.assert_close(total, parts.cls + crit.sb_weight * parts.loc)
    state = crit.state_dict()
    fresh = ranking.ALRPLoss(period=3)
    fresh.load_state_dict(state)
    assert fresh.sb_weight == crit.sb_weight and fresh._cls_hist == crit._cls_hist
    crit.reset()
    assert crit.sb_weight == 50 and not crit._cls_hist


def test_alrp_self_balancing_records_nothing_in_eval_or_without_positives():
    crit = ranking.ALRPLoss(period=1)
    x, labels = make_inputs(100, 0, seed=40)
    crit(x, labels, torch.zeros(0, dtype=torch.float64))
    crit.eval()
    x, labels = make_inputs(100, 5, seed=41)
    crit(x, labels, e_loc_for(labels))
    assert crit.sb_weight == 50


# --- errors ----------------------------------------------------------------------------

X = torch.randn(10, dtype=torch.float64)
Y = (torch.arange(10) < 3).double()


@pytest.mark.parametrize("call, match", [
    (lambda: ranking.ap_loss(X.reshape(2, 5), Y.reshape(2, 5)), r"'logits'.*1-D.*reshape\(-1\)"),
    (lambda: ranking.ap_loss(X.long(), Y), r"'logits'.*floating-point.*\.float\(\)"),
    (lambda: ranking.ap_loss(X, Y[:9]), r"'labels' must have the shape of 'logits' \(10\)"),
    (lambda: ranking.ap_loss(X.tolist(), Y), r"'logits' must be a torch.Tensor"),
    (lambda: ranking.ap_loss(X, Y * 0.5), r"'labels' must be 1 \(positive\).*rs_loss"),
    (lambda: ranking.dr_loss(X, Y + 1), r"'labels' must be 1 \(positive\)"),
    (lambda: ranking.rs_loss(X, Y * 1.5), r"'targets' must be in \[0, 1\]"),
    (lambda: ranking.ap_loss(torch.where(Y > 0, float("nan"), X), Y), r"'logits' must be finite"),
    (lambda: ranking.ap_loss(X, Y, delta=0), r"delta must be a finite number > 0"),
    (lambda: ranking.rs_loss(X, Y, delta=-1), r"delta must be a finite number >= 0"),
    (lambda: ranking.alrp_loss(X, Y, torch.zeros(4, dtype=torch.float64)),
     r"'regression_losses' must be a floating-point tensor of shape \(3,\)"),
    (lambda: ranking.ALRPLoss(period=0), r"period must be an int >= 1"),
])
def test_errors_name_the_argument_and_the_fix(call, match):
    with pytest.raises(SignatureError, match=match):
        call()
