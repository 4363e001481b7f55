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

Cost. The official code loops over positives in Python, O(P (P + N)) work. Here every sum
over negatives, sum_j w_j H(s_j - q), is a prefix-sum lookup in the sorted negatives (H is
linear between its two knees, so the sum splits into a count above q + delta and a linear
part on the window (q - delta, q + delta)): O((N + P) log N) for all positives together.
The sums that need a second key (RS's target order, y_k >= y_i) are dense (B, P) blocks of
positives with B * P <= 2**24 elements. Prefix sums are taken in float64 whatever the input
dtype (float32 on MPS, which has no float64), so float32 inputs lose nothing to
cancellation; gradients come back in the logits' dtype.

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

def _check(loss: str, logits, labels, label_name: str = "labels", soft: bool = False):
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
    if labels.dtype == torch.bool or labels.numel() == 0:
        return
    if soft:
        ok = (labels == -1) | ((labels >= 0) & (labels <= 1))
        expected = "in [0, 1] (IoU of a positive, 0 for a negative) or -1 (ignored)"
    else:
        ok = (labels == -1) | (labels == 0) | (labels == 1)
        expected = "1 (positive), 0 (negative) or -1 (ignored)"
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        hint = "; continuous IoU targets belong to rs_loss" if not soft else ""
        raise SignatureError(f"{loss}: {label_name!r} must be {expected}, got "
                             f"{labels[bad].item()} at index {bad}{hint}")


def _check_delta(loss: str, delta: float, allow_zero: bool = False) -> float:
    delta = float(delta)
    if not (delta > 0 or (allow_zero and delta == 0)) or math.isinf(delta):
        raise SignatureError(f"{loss}: delta must be a finite number "
                             f"{'>= 0' if allow_zero else '> 0'}, got {delta}")
    return delta


def _acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------
# sums of the smoothed step over a sorted set

def _step(x: Tensor, delta: float) -> Tensor:
    """H(x): the ranking losses' smoothed step (unit step [x >= 0] at delta = 0)."""
    if delta == 0:
        return (x >= 0).to(x.dtype)
    return (x / (2 * delta) + 0.5).clamp(0, 1)


class _StepTable:
    """A set of keys sorted once, to sum a step function over it for many queries.

    ``above(q, w)[i] = sum_k w_k H(key_k - q_i)`` and ``below(q, w)[i] = sum_k w_k
    H(q_i - key_k)``, each in O(log n) per query: H is 0 below one knee, 1 above the other
    and linear in between, so a sum is a prefix sum of w (the keys past a knee) plus prefix
    sums of w and w * key on the window between the knees.
    """

    def __init__(self, keys: Tensor, delta: float):
        self.keys, self.perm = torch.sort(keys)
        self.delta = delta

    def _prefix(self, weights: Tensor | None):
        w = (torch.ones_like(self.keys) if weights is None else weights[self.perm])
        zero = w.new_zeros(1)
        w0 = torch.cat([zero, w.cumsum(0)])
        w1 = torch.cat([zero, (w * self.keys).cumsum(0)]) if self.delta > 0 else None
        return w0, w1

    def above(self, queries: Tensor, weights: Tensor | None = None) -> Tensor:
        if self.keys.numel() == 0:
            return queries.new_zeros(queries.shape)
        w0, w1 = self._prefix(weights)
        if self.delta == 0:  # keys >= q
            return w0[-1] - w0[torch.searchsorted(self.keys, queries, right=False)]
        d = self.delta
        lo = torch.searchsorted(self.keys, queries - d, right=True)   # keys <= q - d: H = 0
        hi = torch.searchsorted(self.keys, queries + d, right=False)  # keys >= q + d: H = 1
        inside = w0[hi] - w0[lo]
        linear = (w1[hi] - w1[lo]) - queries * inside  # sum of w (key - q) on the window
        return (w0[-1] - w0[hi]) + linear / (2 * d) + 0.5 * inside

    def below(self, queries: Tensor, weights: Tensor | None = None) -> Tensor:
        if self.keys.numel() == 0:
            return queries.new_zeros(queries.shape)
        w0, w1 = self._prefix(weights)
        if self.delta == 0:  # keys <= q
            return w0[torch.searchsorted(self.keys, queries, right=True)]
        d = self.delta
        lo = torch.searchsorted(self.keys, queries - d, right=True)   # keys <= q - d: H = 1
        hi = torch.searchsorted(self.keys, queries + d, right=False)  # keys >= q + d: H = 0
        inside = w0[hi] - w0[lo]
        linear = queries * inside - (w1[hi] - w1[lo])  # sum of w (q - key) on the window
        return w0[lo] + linear / (2 * d) + 0.5 * inside


class _Split(NamedTuple):
    """Positives and the relevant negatives of one call, in the accumulation dtype."""
    pos: Tensor        # (N,) bool
    rel_neg: Tensor    # (N,) bool: negatives that can rank above some positive
    fg: Tensor         # (P,) positive logits
    bg: Tensor         # (M,) relevant negative logits
    y: Tensor          # (P,) positive targets (RS) or ones


def _split(logits: Tensor, labels: Tensor, delta: float, soft: bool) -> _Split | None:
    acc = _acc_dtype(logits)
    pos = labels > 0 if soft else labels == 1
    if labels.dtype == torch.bool:
        pos, neg = labels, ~labels
    else:
        neg = labels == 0
    x = logits.detach().to(acc)
    fg = x[pos]
    if fg.numel() == 0:
        return None
    rel_neg = neg & (x >= fg.min() - delta)
    y = labels[pos].to(acc) if soft else torch.ones_like(fg)
    return _Split(pos, rel_neg, fg, x[rel_neg], y)


def _scatter_grad(logits: Tensor, split: _Split, fg_grad: Tensor, bg_grad: Tensor) -> Tensor:
    grad = torch.zeros_like(logits, dtype=fg_grad.dtype)
    grad[split.pos] = fg_grad
    grad[split.rel_neg] = bg_grad
    return grad.to(logits.dtype)


def _value_dtype(logits: Tensor) -> torch.dtype:
    """Half-precision logits give a float32 value (mmdet's force_fp32 does the same)."""
    return logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32


# ---------------------------------------------------------------------------------------
# AP-Loss

def _ap_forward(logits: Tensor, labels: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    split = _split(logits, labels, delta, soft=False)
    if split is None:
        return logits.new_zeros((), dtype=_value_dtype(logits)), torch.zeros_like(logits)
    fg, bg = split.fg, split.bg
    n_pos = fg.numel()
    fg_table = _StepTable(fg, delta)
    rank_pos = fg_table.above(fg) + 0.5            # = 1 + sum_{k != i} H(s_k - s_i)
    fp = _StepTable(bg, delta).above(fg)
    rank = rank_pos + fp
    prec = rank_pos / rank
    # interpolated precision: running max over the positives in ascending logit order
    order = torch.argsort(fg, stable=True)
    interp = torch.empty_like(prec)
    interp[order] = torch.cummax(prec[order], 0).values
    # a negative j collects sum_i H(s_j - s_i) / rank(i), scaled by (1 - max) / (1 - cur)
    # for the positives whose precision was interpolated
    scale = torch.where(interp > prec, (1 - interp) / (1 - prec), torch.ones_like(prec))
    bg_grad = fg_table.below(bg, scale / rank)
    fg_grad = -(1 - interp)
    grad = _scatter_grad(logits, split, fg_grad / n_pos, bg_grad / n_pos)
    value = 1 - interp.mean()
    return value.to(_value_dtype(logits)), grad


class _APLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, delta):
        value, grad = _ap_forward(logits, labels, delta)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad, = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None


def ap_loss(logits: Tensor, labels: Tensor, delta: float = AP_DELTA) -> Tensor:
    """AP-Loss: one minus the interpolated average precision of the positives.

    Chen, Li, Ji, Lu et al., "Towards Accurate One-Stage Object Detection with AP-Loss",
    CVPR 2019 (TPAMI 2020: "AP-Loss for Accurate One-Stage Object Detection").

        prec(i)   = rank_pos(i) / (rank_pos(i) + FP(i)),  rank_pos(i) = 1 + sum_{k != i} H(s_k - s_i)
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
    _check("ap_loss", logits, labels)
    return _APLossFn.apply(logits, labels, _check_delta("ap_loss", delta))


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

def _alrp_forward(logits, labels, reg, delta, eps):
    split = _split(logits, labels, delta, soft=False)
    if split is None:
        empty = torch.zeros(0, dtype=_value_dtype(logits), device=logits.device)
        return (logits.new_zeros((), dtype=_value_dtype(logits)), torch.zeros_like(logits),
                empty, torch.zeros(0, dtype=torch.long, device=logits.device))
    fg, bg = split.fg, split.bg
    n_pos = fg.numel()
    e_loc = reg.detach().to(fg.dtype)
    fg_table = _StepTable(fg, delta)
    rank_pos = fg_table.above(fg) + 0.5            # = 1 + sum_{k != i} H(s_k - s_i)
    fp = _StepTable(bg, delta).above(fg)
    rank = rank_pos + fp
    prec = rank_pos / rank
    # sum_{k != i} H(s_k - s_i) E_loc(k): the localisation errors of the positives above i
    loc_above = fg_table.above(fg, e_loc) - 0.5 * e_loc
    has_fp = fp > eps
    fg_grad = torch.where(has_fp, -(loc_above + fp) / rank, torch.zeros_like(fp))
    # each positive's error goes to the negatives above it, in proportion to H / FP(i)
    share = torch.where(has_fp, -fg_grad / fp.clamp(min=eps), torch.zeros_like(fp))
    bg_grad = fg_table.below(bg, share)
    grad = _scatter_grad(logits, split, fg_grad / n_pos, bg_grad / n_pos)
    order = torch.argsort(fg, stable=True)
    vdt = _value_dtype(logits)
    return (1 - prec.mean()).to(vdt), grad, rank.to(vdt), order


class _ALRPLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, reg, delta, eps):
        value, grad, rank, order = _alrp_forward(logits, labels, reg, delta, eps)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(rank, order)
        return value, rank, order

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _rank, _order):
        grad, = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None, None


class ALRPParts(NamedTuple):
    """What :func:`alrp_loss_parts` returns (the official ``aLRPLoss`` outputs and the
    head's regression component)."""
    cls: Tensor    # scalar classification component, with the error-driven backward
    loc: Tensor    # scalar localisation component, autograd w.r.t. regression_losses
    rank: Tensor   # (P,) rank(i) = rank_pos(i) + FP(i), positives in input order
    order: Tensor  # (P,) argsort of the positive logits, ascending (stable)


def _check_reg(loss, regression_losses, logits, labels):
    n_pos = int((labels if labels.dtype == torch.bool else labels == 1).sum())
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
    _check("alrp_loss", logits, labels)
    delta = _check_delta("alrp_loss", delta)
    reg = _check_reg("alrp_loss", regression_losses, logits, labels)
    cls, rank, order = _ALRPLossFn.apply(logits, labels, reg, delta, float(eps))
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

def _rs_forward(logits, targets, delta, eps):
    split = _split(logits, targets, delta, soft=True)
    if split is None:
        zero = logits.new_zeros((), dtype=_value_dtype(logits))
        return zero, zero, torch.zeros_like(logits)
    fg, bg, y = split.fg, split.bg, split.y
    n_pos = fg.numel()
    fp = _StepTable(bg, delta).above(fg)
    miss_y = 1 - y
    ranking_error = torch.empty_like(fg)
    sorting_error = torch.empty_like(fg)
    fg_grad = torch.zeros_like(fg)
    block = max(1, _BLOCK_ELEMENTS // n_pos)
    for start in range(0, n_pos, block):  # blocks of positives, not one per positive
        rows = slice(start, start + block)
        h = _step(fg[None, :] - fg[rows, None], delta)           # (b, P): H(s_k - s_i)
        rank_pos = h.sum(1)                                      # includes H(0) of i itself
        rank = rank_pos + fp[rows]
        ranking_error[rows] = fp[rows] / rank
        current = (h @ miss_y) / rank_pos
        # the target order: positives with y_k >= y_i may stay above i
        h_target = torch.where(y[None, :] >= y[rows, None], h, torch.zeros_like(h))
        target = (h_target @ miss_y) / h_target.sum(1)
        sorting_error[rows] = current - target
        # mis-sorted: smaller target, larger logit; they receive i's sorting error
        h_miss = h - h_target
        denom = h_miss.sum(1)
        has_miss = denom > eps
        share = torch.where(has_miss, sorting_error[rows] / denom.clamp(min=eps),
                            torch.zeros_like(denom))
        fg_grad += share @ h_miss
        fg_grad[rows] -= torch.where(has_miss, sorting_error[rows], torch.zeros_like(denom))
    has_fp = fp > eps
    fg_grad -= torch.where(has_fp, ranking_error, torch.zeros_like(fp))
    share = torch.where(has_fp, ranking_error / fp.clamp(min=eps), torch.zeros_like(fp))
    bg_grad = _StepTable(fg, delta).below(bg, share)
    grad = _scatter_grad(logits, split, fg_grad / n_pos, bg_grad / n_pos)
    vdt = _value_dtype(logits)
    return ranking_error.mean().to(vdt), sorting_error.mean().to(vdt), grad


class _RSLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, delta, eps):
        ranking, sorting, grad = _rs_forward(logits, targets, delta, eps)
        ctx.save_for_backward(grad)
        return ranking, sorting

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ranking, _grad_sorting):
        # as the official RankSort: the whole update rides on the ranking output's gradient
        grad, = ctx.saved_tensors
        return grad * grad_ranking.to(grad.dtype), None, None, None


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
    _check("rs_loss", logits, targets, "targets", soft=True)
    delta = _check_delta("rs_loss", delta, allow_zero=True)
    return RSParts(*_RSLossFn.apply(logits, targets, delta, float(eps)))


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
    _check("dr_loss", logits, labels)
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if labels.dtype == torch.bool:
        pos, neg = labels, ~labels
    else:
        pos, neg = labels == 1, labels == 0
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
