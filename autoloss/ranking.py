"""Ranking losses for dense detectors: AP-Loss, aLRP Loss, Rank & Sort Loss, DR Loss.

Every loss takes the classification logits of a whole batch flattened to one vector and
returns a scalar, as the official implementations do:

    logits  (N,)  one logit per (anchor, class) pair, flattened over the batch
    labels  (N,)  1 positive, 0 negative, -1 ignored   (AP, aLRP, DR)
    targets (N,)  in (0, 1] positive (its IoU), 0 negative, -1 ignored   (RS)

AP, aLRP and RS are ``torch.autograd.Function``s whose backward returns the
*error-driven update* their papers define, not the autograd of the forward value (the
value is piecewise constant or not differentiable where it matters). DR Loss is a plain
differentiable loss; autograd is its gradient.

Notation. H is the smoothed step on logit differences, H(x) = clamp(x / (2 delta) + 1/2,
0, 1) (the unit step [x >= 0] when delta = 0, RS only). For a positive i with logit s_i:

    rank_pos(i) = sum_{k in P} H(s_k - s_i)          (i's own term is H(0) = 1/2)
    FP(i)       = sum_{j in N} H(s_j - s_i)          (soft count of negatives above i)

Negatives with s_j <= min_P s - delta have H(s_j - s_i) = 0 for every positive i; like the
official code, they are dropped before anything else and get a zero gradient.

Cost. The official code loops over positives in Python: O(P (P + M)) work for M relevant
negatives. Here nothing is a (P, M) matrix. The positives are sorted once (O(P log P));
each negative is located among them by two binary searches (where H against it starts
and stops being linear, O(M log P)); then every sum over negatives, for all positives at
once, and every sum over positives, for all negatives at once, is a prefix sum or a
cumsum of counts (H is linear between its two knees). The sums that need a second key
(RS's target order, y_k >= y_i) are dense (B, P) blocks of positives with B * P <= 2**24
elements: RS is O(P^2) in that part. Sums are taken in float64 whatever the input dtype
(float32 on MPS, which has no float64), so float32 inputs lose nothing to cancellation;
counts are integers, so a positive with no negative near or above it has FP = 0
exactly, as in the official code, and its update is exactly what the official branch
gives. Gradients come back in the logits' dtype.

Edge cases, as the official code behaves: without positives AP, aLRP and RS return 0 with
a zero gradient (cccorn/AP-loss returns 0; the kemaloksuz heads return ``0 * scores``);
DR Loss replaces the positive side by 1 and still pushes negatives down. Without
negatives AP and aLRP are 0 with zero gradient; RS keeps its sorting error.

References (formulas and defaults checked against these files):
    AP    cccorn/AP-loss ``lib/model/aploss.py`` (``AP_loss``); kemaloksuz/RankSortLoss
          ``mmdet/models/losses/ranking_losses.py`` (``APLoss``, same update)
    aLRP  kemaloksuz/aLRPLoss ``mmdet/models/losses/alrp_loss.py`` (``aLRPLoss``),
          ``mmdet/models/dense_heads/alrp_loss_retina_head.py`` (regression part, self-balance)
    RS    kemaloksuz/RankSortLoss ``mmdet/models/losses/ranking_losses.py`` (``RankSort``),
          ``mmdet/models/dense_heads/rank_based_atss_head.py``
    DR    idstcv/DR_loss ``sigmoid_dr_loss.py`` (``SigmoidDRLoss``)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import SignatureError
from .signatures.base import need, shape_text

__all__ = [
    "ap_loss", "alrp_loss", "alrp_loss_parts", "rs_loss", "rs_loss_parts", "dr_loss",
    "APLoss", "ALRPLoss", "RankSortLoss", "DRLoss", "ALRPParts", "RSParts",
]

# Defaults of the official code (see the module docstring for the files).
AP_DELTA = 1.0             # AP_loss: delta=1.0 (cccorn); APLoss(delta=1.) (kemaloksuz)
ALRP_DELTA = 1.0           # aLRPLoss.forward(delta=1.), the heads do not override it
ALRP_EPS = 1e-5            # a positive with FP(i) <= eps gets no update
ALRP_SB_WEIGHT = 50.0      # initial self-balance weight of the regression part
ALRP_PERIOD = 3665         # iterations per SB update (one COCO epoch at batch 32, RetinaNet head)
RS_DELTA = 0.5             # RankSort.forward(delta_RS=0.50); RankBasedATSSHead(delta=0.5)
RS_EPS = 1e-10
DR_MARGIN = 0.5            # SigmoidDRLoss: margin 0.5, pos_lambda 1, neg_lambda 0.1/ln 3.5,
DR_POS_LAMBDA = 1.0        # L 6, tau 4
DR_NEG_LAMBDA = 0.1 / math.log(3.5)
DR_L = 6.0
DR_TAU = 4.0

_BLOCK_ELEMENTS = 1 << 24  # bound on a dense (B, P) block of positives (RS sorting terms)


# ---------------------------------------------------------------------------------------
# input checks

def _check(loss: str, logits, labels, label_name: str = "labels",
           soft: bool = False) -> tuple[Tensor, Tensor]:
    """Validate the inputs; returns the masks of the positives and of the negatives."""
    for name, t in (("logits", logits), (label_name, labels)):
        if not isinstance(t, Tensor):
            raise SignatureError(f"{loss}: argument {name!r} must be a torch.Tensor of shape "
                                 f"(N,), got {type(t).__name__}")
    need(logits.dim() == 1, loss, "logits", "a 1-D tensor of shape (N,)", logits,
         "flatten anchors and classes over the batch with logits.reshape(-1)")
    need(logits.is_floating_point(), loss, "logits", "a floating-point tensor", logits,
         "convert with .float()")
    if labels.shape != logits.shape:
        raise SignatureError(
            f"{loss}: {label_name!r} must have the shape of 'logits' {shape_text(logits)}, got "
            f"{shape_text(labels)}; flatten both the same way (.reshape(-1)), nothing is broadcast")
    if labels.device != logits.device:
        raise SignatureError(f"{loss}: 'logits' and {label_name!r} are on different devices "
                             f"({logits.device} and {labels.device})")
    need(not labels.is_complex(), loss, label_name, "a real tensor", labels)
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).nonzero()[0, 0])
        raise SignatureError(f"{loss}: 'logits' must be finite, got {logits[bad].item()} at "
                             f"index {bad}; clamp saturated logits (e.g. to +-1e4) upstream")
    if labels.dtype == torch.bool:
        return labels, ~labels
    neg = labels == 0
    if soft:
        pos = labels > 0
        ok = (pos & (labels <= 1)) | neg | (labels == -1)
        expected = "in [0, 1] (IoU of a positive, 0 for a negative) or -1 (ignored)"
    else:
        pos = labels == 1
        ok = pos | neg | (labels == -1)
        expected = "1 (positive), 0 (negative) or -1 (ignored)"
    if labels.numel() and not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        hint = "; continuous IoU targets belong to rs_loss" if not soft else ""
        raise SignatureError(f"{loss}: {label_name!r} must be {expected}, got "
                             f"{labels[bad].item()} at index {bad}{hint}")
    return pos, neg


def _check_delta(loss: str, delta: float, allow_zero: bool = False) -> float:
    delta = float(delta)
    if not (delta > 0 or (allow_zero and delta == 0)) or math.isinf(delta):
        raise SignatureError(f"{loss}: delta must be a finite number "
                             f"{'>= 0' if allow_zero else '> 0'}, got {delta}")
    return delta


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------
# sums of the smoothed step, without a (P, N) matrix
#
# H(k - q) as a function of q is 1 up to k - delta, linear down to 0 at k + delta, then 0
# (the unit step [k >= q] at delta = 0). Sums of it over one set, for every member of
# another, therefore need only where each point falls among the other set's sorted values
# (two binary searches) and prefix sums: no (P, N) matrix, O((P + N) log P) in all.

class _Sorted(NamedTuple):
    values: Tensor  # ascending
    perm: Tensor    # values = x[perm], a stable argsort of x


def _gather(t: Tensor, index: Tensor) -> Tensor:
    return torch.index_select(t, 0, index)  # several times faster than t[index] on CPU


def _histogram(index: Tensor, size: int, weights: Tensor | None = None) -> Tensor:
    """``bincount`` by ``index_add_``, which stays usable (deterministic) on CUDA under
    ``torch.use_deterministic_algorithms``; as fast on CPU."""
    if weights is None:
        return index.new_zeros(size).index_add_(0, index, torch.ones_like(index))
    return weights.new_zeros(size).index_add_(0, index, weights)


def _sort(x: Tensor) -> _Sorted:
    values, perm = torch.sort(x, stable=True)
    return _Sorted(values, perm)


class _Knees(NamedTuple):
    """Where points x fall among sorted values v: ``lo = #{v <= x - delta}``, ``hi = #{v <
    x + delta}`` (both ``#{v <= x}`` at delta = 0). Against the v of index t < lo, H(x - v)
    is 1 and H(v - x) is 0; on lo <= t < hi both are linear; from hi on, the reverse."""
    lo: Tensor
    hi: Tensor


def _locate(x: Tensor, v: _Sorted, delta: float) -> _Knees:
    if delta == 0:
        at = torch.searchsorted(v.values, x, right=True)
        return _Knees(at, at)
    return _Knees(torch.searchsorted(v.values, x - delta, right=True),
                  torch.searchsorted(v.values, x + delta, right=False))


def _sums_over(queries: Tensor, keys: _Sorted, delta: float, weights: Tensor | None = None,
               above: bool = True, knees: _Knees | None = None) -> Tensor:
    """``sum_k w_k H(key_k - q)`` (above) or ``sum_k w_k H(q - key_k)`` (below) for each
    query q, from prefix sums of w and w * key over the sorted keys: O(K + Q log K).
    ``knees`` are the queries located among the keys, if the caller has them already."""
    ks = keys.values
    if ks.numel() == 0:
        return queries.new_zeros(queries.shape)
    w = torch.ones_like(ks) if weights is None else weights[keys.perm]
    zero = w.new_zeros(1)
    w0 = torch.cat([zero, w.cumsum(0)])
    if delta == 0:  # keys >= q (above) or keys <= q (below)
        if above:
            return w0[-1] - _gather(w0, torch.searchsorted(ks, queries, right=False))
        at = knees.lo if knees is not None else torch.searchsorted(ks, queries, right=True)
        return _gather(w0, at)
    lo, hi = knees if knees is not None else _locate(queries, keys, delta)
    w1 = torch.cat([zero, (w * ks).cumsum(0)])
    w0_lo, w0_hi = _gather(w0, lo), _gather(w0, hi)            # prefix sums at the knees
    inside = w0_hi - w0_lo                                     # sum of w between the knees
    linear = (_gather(w1, hi) - _gather(w1, lo)) - queries * inside  # sum of w (key - q) there
    if above:
        return (w0[-1] - w0_hi) + linear / (2 * delta) + 0.5 * inside
    return w0_lo - linear / (2 * delta) + 0.5 * inside


def _sums_at(queries: _Sorted, keys: Tensor, delta: float, knees: _Knees) -> Tensor:
    """``sum_k H(key_k - q)`` for each query q (in the queries' original order), with only
    the queries sorted: O(Q + K) given the keys located among them (``knees``), the cheap
    way when the keys (negatives) far outnumber the queries (positives).

    Along the sorted queries a key's term is 1 before its ``lo``, linear up to its ``hi``,
    0 after. The keys at 1 and between the knees are counted exactly (integer cumsums);
    the constant parts of the linear terms are summed the same way in float, and the sum
    is exactly 0 where no key is between the knees.
    """
    qs = queries.values
    n = qs.numel()
    out = qs.new_zeros(n)
    if keys.numel() == 0 or n == 0:
        return out
    a, b = knees
    left = _histogram(a, n + 1).cumsum(0)[:n]                  # keys no longer at 1
    ones = (keys.numel() - left).to(qs.dtype)
    if delta == 0:
        out[queries.perm] = ones
        return out
    gone = _histogram(b, n + 1).cumsum(0)[:n]                  # keys already at 0
    between = left - gone                                      # keys between the knees
    const = keys / (2 * delta) + 0.5                           # their k / (2 delta) + 1/2
    run = (_histogram(a, n + 1, const) - _histogram(b, n + 1, const)).cumsum(0)[:n]
    linear = run - between.to(qs.dtype) * qs / (2 * delta)
    out[queries.perm] = ones + torch.where(between > 0, linear, torch.zeros_like(linear))
    return out


class _Split(NamedTuple):
    """Positives and the relevant negatives of one call, in the accumulation dtype."""
    pos: Tensor        # (P,) indices of the positives in logits
    rel: Tensor        # (M,) indices of the negatives that can rank above some positive
    fg: Tensor         # (P,) positive logits
    bg: Tensor         # (M,) relevant negative logits
    fg_sorted: _Sorted
    bg_knees: _Knees   # the negatives located among the sorted positives


def _split(logits: Tensor, pos: Tensor, neg: Tensor, delta: float) -> _Split | None:
    x = logits.detach()
    pos_idx = pos.nonzero().squeeze(1)
    if pos_idx.numel() == 0:
        return None
    fg = _gather(x, pos_idx).to(_acc_dtype(logits))
    # negatives at or below min(fg) - delta have H = 0 against every positive: drop them.
    # The comparison runs in the logits' dtype, with the threshold lowered by a few ulps so
    # that rounding never drops one the exact threshold keeps (extra ones add exact zeros).
    xc = x if x.dtype in (torch.float32, torch.float64) else x.float()
    threshold = float(fg.min()) - delta
    threshold -= 4 * torch.finfo(xc.dtype).eps * (abs(threshold) + 1)
    rel_idx = (neg & (xc >= threshold)).nonzero().squeeze(1)
    bg = _gather(x, rel_idx).to(fg.dtype)
    fg_sorted = _sort(fg)
    return _Split(pos_idx, rel_idx, fg, bg, fg_sorted, _locate(bg, fg_sorted, delta))


def _scatter_grad(logits: Tensor, split: _Split, fg_grad: Tensor, bg_grad: Tensor) -> Tensor:
    grad = torch.zeros_like(logits)
    grad[split.pos] = fg_grad.to(grad.dtype)  # index_put: deterministic on CUDA too
    grad[split.rel] = bg_grad.to(grad.dtype)
    return grad


def _value_dtype(logits: Tensor) -> torch.dtype:
    """Half-precision logits give a float32 value (mmdet's force_fp32 does the same)."""
    return logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32


# ---------------------------------------------------------------------------------------
# AP-Loss

def _ap_forward(logits: Tensor, pos: Tensor, neg: Tensor, delta: float):
    split = _split(logits, pos, neg, delta)
    if split is None:
        return logits.new_zeros((), dtype=_value_dtype(logits)), torch.zeros_like(logits)
    fg, bg, fg_sorted = split.fg, split.bg, split.fg_sorted
    n_pos = fg.numel()
    rank_pos = _sums_over(fg, fg_sorted, delta) + 0.5   # = 1 + sum_{k != i} H(s_k - s_i)
    fp = _sums_at(fg_sorted, bg, delta, split.bg_knees)
    rank = rank_pos + fp
    prec = rank_pos / rank
    # interpolated precision: running max over the positives in ascending logit order
    order = fg_sorted.perm
    interp = torch.empty_like(prec)
    interp[order] = torch.cummax(prec[order], 0).values
    # a negative j collects sum_i H(s_j - s_i) / rank(i), scaled by (1 - max) / (1 - cur)
    # for the positives whose precision was interpolated
    scale = torch.where(interp > prec, (1 - interp) / (1 - prec), torch.ones_like(prec))
    bg_grad = _sums_over(bg, fg_sorted, delta, scale / rank, above=False,
                         knees=split.bg_knees)
    fg_grad = -(1 - interp)
    grad = _scatter_grad(logits, split, fg_grad / n_pos, bg_grad / n_pos)
    value = 1 - interp.mean()
    return value.to(_value_dtype(logits)), grad


class _APLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, pos, neg, delta):
        value, grad = _ap_forward(logits, pos, neg, delta)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad, = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None


def ap_loss(logits: Tensor, labels: Tensor, delta: float = AP_DELTA) -> Tensor:
    """AP-Loss: one minus the interpolated average precision of the positives.

    Chen, Li, Ji, Lu et al., "Towards Accurate One-Stage Object Detection with AP-Loss",
    CVPR 2019 (TPAMI 2020: "AP-Loss for Accurate One-Stage Object Detection").

        rank_pos(i) = 1 + sum_{k != i} H(s_k - s_i)
        prec(i)   = rank_pos(i) / (rank_pos(i) + FP(i))
        iprec(i)  = max { prec(k) : k in P, k at or below i in ascending logit order }
        L         = 1 - mean_{i in P} iprec(i)

    Backward (error-driven update, the official ``AP_loss``/``APLoss``), divided by P:
    a positive gets -(1 - iprec(i)); a negative j gets sum_i H(s_j - s_i) / rank(i), with
    the term of i scaled by (1 - iprec(i)) / (1 - prec(i)) where prec(i) was interpolated.

    Args:
        logits: (N,) floating logits, flattened over the batch (all anchors and classes).
        labels: (N,) 1 positive, 0 negative, -1 ignored (bool and integer dtypes work).
        delta: half-width of the smoothed step H on logits (official default 1.0).
    Returns:
        A scalar; 0 with a zero gradient when there is no positive.
    """
    pos, neg = _check("ap_loss", logits, labels)
    return _APLossFn.apply(logits, pos, neg, _check_delta("ap_loss", delta))


class APLoss(torch.nn.Module):
    """:func:`ap_loss` as a module."""

    def __init__(self, delta: float = AP_DELTA):
        super().__init__()
        self.delta = _check_delta("APLoss", delta)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return ap_loss(logits, labels, self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta:g}"


# ---------------------------------------------------------------------------------------
# aLRP Loss

def _alrp_forward(logits, pos, neg, reg, delta, eps):
    split = _split(logits, pos, neg, delta)
    if split is None:
        empty = torch.zeros(0, dtype=_value_dtype(logits), device=logits.device)
        return (logits.new_zeros((), dtype=_value_dtype(logits)), torch.zeros_like(logits),
                empty, torch.zeros(0, dtype=torch.long, device=logits.device))
    fg, bg, fg_sorted = split.fg, split.bg, split.fg_sorted
    n_pos = fg.numel()
    e_loc = reg.detach().to(fg.dtype)
    rank_pos = _sums_over(fg, fg_sorted, delta) + 0.5   # = 1 + sum_{k != i} H(s_k - s_i)
    fp = _sums_at(fg_sorted, bg, delta, split.bg_knees)
    rank = rank_pos + fp
    prec = rank_pos / rank
    # sum_{k != i} H(s_k - s_i) E_loc(k): the localisation errors of the positives above i
    loc_above = _sums_over(fg, fg_sorted, delta, e_loc) - 0.5 * e_loc
    has_fp = fp > eps
    fg_grad = torch.where(has_fp, -(loc_above + fp) / rank, torch.zeros_like(fp))
    # each positive's error goes to the negatives above it, in proportion to H / FP(i)
    share = torch.where(has_fp, -fg_grad / fp.clamp(min=eps), torch.zeros_like(fp))
    bg_grad = _sums_over(bg, fg_sorted, delta, share, above=False, knees=split.bg_knees)
    grad = _scatter_grad(logits, split, fg_grad / n_pos, bg_grad / n_pos)
    vdt = _value_dtype(logits)
    return (1 - prec.mean()).to(vdt), grad, rank.to(vdt), fg_sorted.perm


class _ALRPLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, pos, neg, reg, delta, eps):
        value, grad, rank, order = _alrp_forward(logits, pos, neg, reg, delta, eps)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(rank, order)
        return value, rank, order

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _rank, _order):
        grad, = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None, None, None


class ALRPParts(NamedTuple):
    """What :func:`alrp_loss_parts` returns (the official ``aLRPLoss`` outputs and the
    head's regression component)."""
    cls: Tensor    # scalar classification component, with the error-driven backward
    loc: Tensor    # scalar localisation component, autograd w.r.t. regression_losses
    rank: Tensor   # (P,) rank(i) = rank_pos(i) + FP(i), positives in input order
    order: Tensor  # (P,) argsort of the positive logits, ascending (stable)


def _check_reg(loss, regression_losses, logits, pos):
    n_pos = int(pos.sum())
    if regression_losses is None:
        return torch.zeros(n_pos, dtype=_value_dtype(logits), device=logits.device)
    if not isinstance(regression_losses, Tensor):
        raise SignatureError(f"{loss}: argument 'regression_losses' must be a torch.Tensor of "
                             f"shape (P,), got {type(regression_losses).__name__}")
    need(regression_losses.shape == (n_pos,) and regression_losses.is_floating_point(), loss,
         "regression_losses", f"a floating-point tensor of shape ({n_pos},): one localisation "
         f"error per positive, in the order the positives appear in logits", regression_losses)
    if regression_losses.device != logits.device:
        raise SignatureError(f"{loss}: 'logits' and 'regression_losses' are on different "
                             f"devices ({logits.device} and {regression_losses.device})")
    return regression_losses


def alrp_loss_parts(logits: Tensor, labels: Tensor, regression_losses: Tensor | None = None,
                    delta: float = ALRP_DELTA, eps: float = ALRP_EPS) -> ALRPParts:
    """aLRP Loss, both components: see :func:`alrp_loss` for the classification part.

    Localisation component (the official head, ``alrp_loss_retina_head.py``): with the
    positives sorted by descending logit (the reverse of ``order``),

        L_loc = mean_t ( sum_{u <= t} E_loc(u) / rank(t) ),   rank detached,

    differentiable w.r.t. ``regression_losses`` by autograd. The official heads pass GIoU
    losses as E_loc: (1 - GIoU) / 2 / (1 - tau) with tau = 0.5 is 1 - GIoU. The
    classification component gets no gradient w.r.t. ``regression_losses``.
    """
    pos, neg = _check("alrp_loss", logits, labels)
    delta = _check_delta("alrp_loss", delta)
    reg = _check_reg("alrp_loss", regression_losses, logits, pos)
    cls, rank, order = _ALRPLossFn.apply(logits, pos, neg, reg, delta, float(eps))
    if rank.numel() == 0:
        return ALRPParts(cls, reg.sum() * 0, rank, order)
    desc = order.flip(0)
    loc = (reg[desc].cumsum(0) / rank[desc].to(reg.dtype)).mean()
    return ALRPParts(cls, loc, rank, order)


def alrp_loss(logits: Tensor, labels: Tensor, regression_losses: Tensor | None = None,
              delta: float = ALRP_DELTA, eps: float = ALRP_EPS) -> Tensor:
    """aLRP Loss, classification component (its error-driven update carries the
    localisation errors of the positives).

    Oksuz, Cam, Akbas, Kalkan, "A Ranking-based, Balanced Loss Function Unifying
    Classification and Localisation in Object Detection", NeurIPS 2020.

        rank_pos(i) = 1 + sum_{k != i} H(s_k - s_i),   rank(i) = rank_pos(i) + FP(i)
        L_cls       = 1 - mean_{i in P} rank_pos(i) / rank(i)

    Backward (official ``aLRPLoss``), divided by P, for the positives with FP(i) > eps
    (the others get no update):

        g_i = -( sum_{k != i} H(s_k - s_i) E_loc(k) + FP(i) ) / rank(i)
        g_j = sum_i H(s_j - s_i) (-g_i) / FP(i)        for a negative j

    Args:
        logits: (N,) floating logits, flattened over the batch.
        labels: (N,) 1 positive, 0 negative, -1 ignored.
        regression_losses: (P,) localisation error E_loc of each positive, in the order the
            positives appear in ``logits`` (detached here); ``None`` means zeros.
        delta: half-width of H (official 1.0). eps: FP threshold of the update (1e-5).
    Returns:
        A scalar; 0 with a zero gradient when there is no positive. The localisation
        component and self-balancing: :func:`alrp_loss_parts`, :class:`ALRPLoss`.
    """
    return alrp_loss_parts(logits, labels, regression_losses, delta, eps).cls


class ALRPLoss(torch.nn.Module):
    """aLRP Loss with its localisation component and self-balancing, as the official head.

    ``forward(logits, labels, regression_losses)`` returns ``L_cls + sb_weight * L_loc``
    (:func:`alrp_loss_parts`). Self-balance: in training mode each call with positives
    records L_cls and L_loc; every ``period`` such calls the weight becomes
    (mean L_loc + mean L_cls) / mean L_loc over them, and the record is cleared. The weight
    starts at 50 (``ALRP_SB_WEIGHT``); ``period`` is the number of iterations per epoch
    (3665 in the official RetinaNet head, 7330 in the RankSortLoss repo's ATSS head).
    ``reset()`` restores the initial state; the state is saved in ``state_dict``.
    """

    def __init__(self, delta: float = ALRP_DELTA, eps: float = ALRP_EPS,
                 sb_weight: float = ALRP_SB_WEIGHT, period: int = ALRP_PERIOD):
        super().__init__()
        self.delta = _check_delta("ALRPLoss", delta)
        self.eps = float(eps)
        if not (isinstance(period, int) and period >= 1):
            raise SignatureError(f"ALRPLoss: period must be an int >= 1 (iterations per "
                                 f"epoch), got {period!r}")
        self.initial_sb_weight = float(sb_weight)
        self.period = period
        self.reset()

    def reset(self) -> None:
        """Back to the initial self-balance weight, with an empty record."""
        self.sb_weight = self.initial_sb_weight
        self._cls_hist: list[float] = []
        self._loc_hist: list[float] = []

    def forward(self, logits: Tensor, labels: Tensor,
                regression_losses: Tensor | None = None) -> Tensor:
        parts = alrp_loss_parts(logits, labels, regression_losses, self.delta, self.eps)
        if self.training and parts.rank.numel() > 0:
            self._cls_hist.append(float(parts.cls.detach()))
            self._loc_hist.append(float(parts.loc.detach()))
            if len(self._cls_hist) == self.period:
                mean_loc = sum(self._loc_hist) / self.period
                mean_cls = sum(self._cls_hist) / self.period
                self.sb_weight = (mean_loc + mean_cls) / mean_loc
                self._cls_hist.clear()
                self._loc_hist.clear()
        return parts.cls + self.sb_weight * parts.loc

    def get_extra_state(self):
        return {"sb_weight": self.sb_weight, "cls_hist": list(self._cls_hist),
                "loc_hist": list(self._loc_hist)}

    def set_extra_state(self, state) -> None:
        self.sb_weight = float(state["sb_weight"])
        self._cls_hist = list(state["cls_hist"])
        self._loc_hist = list(state["loc_hist"])

    def extra_repr(self) -> str:
        return (f"delta={self.delta:g}, eps={self.eps:g}, sb_weight={self.sb_weight:g}, "
                f"period={self.period}")


# ---------------------------------------------------------------------------------------
# Rank & Sort Loss

def _rs_forward(logits, targets, pos, neg, delta, eps):
    split = _split(logits, pos, neg, delta)
    if split is None:
        zero = logits.new_zeros((), dtype=_value_dtype(logits))
        return zero, zero, torch.zeros_like(logits)
    fg, bg, fg_sorted = split.fg, split.bg, split.fg_sorted
    y = targets[split.pos].to(fg.dtype)
    n_pos = fg.numel()
    fp = _sums_at(fg_sorted, bg, delta, split.bg_knees)
    # columns [1, 1 - y]: one product gives sum_k h_ik and sum_k h_ik (1 - y_k)
    sum_cols = torch.stack([torch.ones_like(y), 1 - y], 1)
    shifted = fg / (2 * delta) + 0.5 if delta > 0 else fg
    scaled = fg / (2 * delta) if delta > 0 else fg
    ranking_error = torch.empty_like(fg)
    sorting_error = torch.empty_like(fg)
    fg_grad = torch.zeros_like(fg)
    block = max(1, _BLOCK_ELEMENTS // n_pos)
    for start in range(0, n_pos, block):  # blocks of positives, not one per positive
        rows = slice(start, start + block)
        if delta > 0:  # (b, P): H(s_k - s_i) = clamp((s_k - s_i) / (2 delta) + 1/2, 0, 1)
            h = (shifted[None, :] - scaled[rows, None]).clamp_(0, 1)
        else:
            h = (fg[None, :] >= fg[rows, None]).to(fg.dtype)
        rank_pos, current = (h @ sum_cols).unbind(1)          # rank_pos includes H(0) of i
        ranking_error[rows] = fp[rows] / (rank_pos + fp[rows])
        # mis-sorted: smaller target, larger logit; they receive i's sorting error. The
        # target order keeps the rest (y_k >= y_i) above i.
        h_miss = h.masked_fill_(y[None, :] >= y[rows, None], 0)
        denom, miss = (h_miss @ sum_cols).unbind(1)
        error = current / rank_pos - (current - miss) / (rank_pos - denom)
        sorting_error[rows] = error
        has_miss = denom > eps
        share = torch.where(has_miss, error / denom.clamp(min=eps), torch.zeros_like(denom))
        fg_grad += share @ h_miss
        fg_grad[rows] -= torch.where(has_miss, error, torch.zeros_like(denom))
    has_fp = fp > eps
    fg_grad -= torch.where(has_fp, ranking_error, torch.zeros_like(fp))
    share = torch.where(has_fp, ranking_error / fp.clamp(min=eps), torch.zeros_like(fp))
    bg_grad = _sums_over(bg, fg_sorted, delta, share, above=False, knees=split.bg_knees)
    grad = _scatter_grad(logits, split, fg_grad / n_pos, bg_grad / n_pos)
    vdt = _value_dtype(logits)
    return ranking_error.mean().to(vdt), sorting_error.mean().to(vdt), grad


class _RSLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, pos, neg, delta, eps):
        ranking, sorting, grad = _rs_forward(logits, targets, pos, neg, delta, eps)
        ctx.save_for_backward(grad)
        return ranking, sorting

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ranking, _grad_sorting):
        # as the official RankSort: the whole update rides on the ranking output's gradient
        grad, = ctx.saved_tensors
        return grad * grad_ranking.to(grad.dtype), None, None, None, None, None


class RSParts(NamedTuple):
    """The two outputs of the official ``RankSort`` (``loss_rank``, ``loss_sort``)."""
    ranking: Tensor
    sorting: Tensor


def rs_loss_parts(logits: Tensor, targets: Tensor, delta: float = RS_DELTA,
                  eps: float = RS_EPS) -> RSParts:
    """Rank & Sort Loss as its two official outputs, for logging them apart.

    As in the official code the backward carries the whole update (ranking and sorting)
    through the gradient of ``ranking`` and ignores the one of ``sorting``: train on
    ``ranking + sorting`` (or use :func:`rs_loss`), not on a reweighted sum.
    """
    pos, neg = _check("rs_loss", logits, targets, "targets", soft=True)
    delta = _check_delta("rs_loss", delta, allow_zero=True)
    return RSParts(*_RSLossFn.apply(logits, targets, pos, neg, delta, float(eps)))


def rs_loss(logits: Tensor, targets: Tensor, delta: float = RS_DELTA,
            eps: float = RS_EPS) -> Tensor:
    """Rank & Sort Loss: rank positives above negatives, sort positives by their IoU.

    Oksuz, Cam, Akbas, Kalkan, "Rank & Sort Loss for Object Detection and Instance
    Segmentation", ICCV 2021 (errors: Eqs. 7 and 8 of the paper, as the code comments say).
    For a positive i with target y_i (its IoU), rank_pos(i) = sum_{k in P} H(s_k - s_i)
    (i's own H(0) included), rank(i) = rank_pos(i) + FP(i):

        l_R(i) = FP(i) / rank(i)
        l_S(i) = sum_k H(s_k - s_i)(1 - y_k) / rank_pos(i)
                 - sum_{k: y_k >= y_i} H(s_k - s_i)(1 - y_k) / sum_{k: y_k >= y_i} H(s_k - s_i)
        L      = mean_i l_R(i) + mean_i l_S(i)

    Backward (identity update, official ``RankSort``), divided by P: i gets -l_R(i) (when
    FP(i) > eps) and -l_S(i) (when it has mis-sorted positives); a negative j gets
    sum_i l_R(i) H(s_j - s_i) / FP(i); a positive k with y_k < y_i ranked above i gets
    l_S(i) H(s_k - s_i) / sum_{k': y_k' < y_i} H(s_k' - s_i).

    Args:
        logits: (N,) floating logits, flattened over the batch.
        targets: (N,) in (0, 1] for a positive (the IoU of its prediction, detached), 0 for
            a negative, -1 ignored.
        delta: half-width of H (official 0.5; 0 gives the unit step). eps: 1e-10.
    Returns:
        A scalar; 0 with a zero gradient when there is no positive. The two parts:
        :func:`rs_loss_parts`.
    """
    ranking, sorting = rs_loss_parts(logits, targets, delta, eps)
    return ranking + sorting


class RankSortLoss(torch.nn.Module):
    """:func:`rs_loss` as a module. (The official ATSS head also rescales its GIoU loss by
    sg((L_R + L_S) / L_box) every iteration; that belongs to the regression slot.)"""

    def __init__(self, delta: float = RS_DELTA, eps: float = RS_EPS):
        super().__init__()
        self.delta = _check_delta("RankSortLoss", delta, allow_zero=True)
        self.eps = float(eps)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return rs_loss(logits, targets, self.delta, self.eps)

    def extra_repr(self) -> str:
        return f"delta={self.delta:g}, eps={self.eps:g}"


# ---------------------------------------------------------------------------------------
# DR Loss

def dr_loss(logits: Tensor, labels: Tensor, margin: float = DR_MARGIN,
            pos_lambda: float = DR_POS_LAMBDA, neg_lambda: float = DR_NEG_LAMBDA,
            L: float = DR_L, tau: float = DR_TAU) -> Tensor:  # noqa: N803 (the paper's L)
    """DR Loss: rank the distribution of positives above the distribution of negatives.

    Qian, Chen, Li, Jin, "DR Loss: Improving Object Detection by Distributional Ranking",
    CVPR 2020. With p = sigmoid(logits):

        P_neg = sum_j q_j p_j,  q = softmax(p_neg / neg_lambda)   (hardest negatives weigh most)
        P_pos = sum_i q_i p_i,  q = softmax(-p_pos / pos_lambda)  (hardest positives weigh most)
        L     = (tau / L) log(1 + exp(L (P_neg - P_pos + margin)))

    P_pos is 1 without positives and P_neg is 0 without negatives, as in the official
    ``SigmoidDRLoss`` (run here on one flattened class column). A plain differentiable
    loss: autograd is its gradient.

    Args:
        logits: (N,) floating logits, flattened over the batch.
        labels: (N,) 1 positive, 0 negative, -1 ignored.
        margin, pos_lambda, neg_lambda, L, tau: official defaults 0.5, 1, 0.1 / ln 3.5, 6, 4.
    """
    pos, neg = _check("dr_loss", logits, labels)
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    neg_p = x[neg].sigmoid()
    neg_dist = (F.softmax(neg_p / neg_lambda, dim=0) * neg_p).sum()
    if bool(pos.any()):
        pos_p = x[pos].sigmoid()
        pos_dist = (F.softmax(-pos_p / pos_lambda, dim=0) * pos_p).sum()
    else:
        pos_dist = 1.0
    return tau / L * F.softplus(L * (neg_dist - pos_dist + margin))


class DRLoss(torch.nn.Module):
    """:func:`dr_loss` as a module."""

    def __init__(self, margin: float = DR_MARGIN, pos_lambda: float = DR_POS_LAMBDA,
                 neg_lambda: float = DR_NEG_LAMBDA, L: float = DR_L,  # noqa: N803
                 tau: float = DR_TAU):
        super().__init__()
        self.margin, self.pos_lambda, self.neg_lambda = float(margin), float(pos_lambda), \
            float(neg_lambda)
        self.L, self.tau = float(L), float(tau)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return dr_loss(logits, labels, self.margin, self.pos_lambda, self.neg_lambda,
                       self.L, self.tau)

    def extra_repr(self) -> str:
        return (f"margin={self.margin:g}, pos_lambda={self.pos_lambda:g}, "
                f"neg_lambda={self.neg_lambda:g}, L={self.L:g}, tau={self.tau:g}")
