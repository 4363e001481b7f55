"""Ranking surrogates with a searchable step: AP-Loss's combination over any smoothed step.

The ranking losses of :mod:`autoloss.ranking` fix their smoothed step H to a linear ramp.
Here H is an expression of the ``rank`` signature (:mod:`autoloss.signatures.rank`),
compiled like any loss, of the pair difference x = s_j - s_i; this module is the
set-level core that turns it into a loss over a batch. For a positive i (logit s_i):

    rank_pos(i) = 1 + sum_{k in P, k != i} H(s_k - s_i)
    FP(i)       =     sum_{j in N}         H(s_j - s_i)
    prec(i)     = rank_pos(i) / (rank_pos(i) + FP(i))
    iprec(i)    = max { prec(k) : k in P, s_k <= s_i }     (interpolated; AP-Loss)
    L           = 1 - mean_{i in P} iprec(i)              (prec(i) with interpolate=False)

With the ramp H(x) = clamp(x / 2 + 1/2, 0, 1) (the ``ap_step`` entry, delta = 1) this is
:func:`autoloss.ranking.ap_loss` exactly, value and update (its H(0) = 1/2 makes its
``sum_{k in P} H + 1/2`` the ``1 + sum_{k != i}`` above); with interpolate=False and no
localisation errors it is aLRP's classification part.

Two updates (``update``):

* ``"error"`` (default; AP-Loss's and aLRP's error-driven update): the error of positive
  i, 1 - iprec(i), is its update, and it is spread over the negatives in proportion to
  H(s_j - s_i) (each negative j gets sum_i H(s_j - s_i) / rank(i), the term of i scaled by
  (1 - iprec(i)) / (1 - prec(i)) where its precision was interpolated); all divided by P.
  Only the *values* of H enter: its slope is never used. This is not the gradient of L.
* ``"autograd"`` (Smooth-AP's way): the gradient of L through the step, whose derivative
  the compiler writes in closed form; where H is flat (the ramp outside its knees) no
  gradient flows.

Cost. Positives are few (clssim: about 8 in a batch of 32,768 elements), so the pairs are
evaluated densely: blocks of B positives against all N elements with B * N <= 2**22, the
step run on each block as a flat (B * N,) batch. O(P * N) work (``ranking.ap_loss``, for
the ramp only, is O((P + N) log P)); the error-driven update keeps no graph (a second pass
recomputes the blocks when there is more than one); the autograd update keeps the graph
of every block, O(P * N) memory. The pair grid and the step run in the logits' dtype
(float32 for half precision); sums over it are taken in float64 (float32 on MPS).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import SignatureError
from .proxies.base import CandidateFailure
from .ranking import _acc_dtype, _check, _value_dtype

__all__ = ["RankLoss", "StepError", "rank_loss", "UPDATES"]

Update = Literal["error", "autograd"]
UPDATES = ("error", "autograd")
_BLOCK_ELEMENTS = 1 << 22


class StepError(CandidateFailure):
    """The step expression gave a value that is no smoothed step (negative, non-finite)."""


def _as_step(step):
    """A compiled ``rank`` expression (or its text) -> the compiled step."""
    from .compiler import CompiledLoss, compile_loss
    from .parse import parse
    from .signatures import RANK

    if isinstance(step, str):
        step = compile_loss(parse(step, RANK.names, {}, where="rank step"), RANK, name="step")
    if not isinstance(step, CompiledLoss) or step.signature.name != "rank":
        what = (f"a {step.signature.name!r} loss" if isinstance(step, CompiledLoss)
                else type(step).__name__)
        raise SignatureError(f"a ranking surrogate needs a step: a compiled expression of the "
                             f"'rank' signature (over x = s_j - s_i) or its text, got {what}")
    return step


def _h(step, params: dict, x: Tensor) -> Tensor:
    """H on a block of differences (any shape), checked: finite and >= 0."""
    h = step(x.reshape(-1), **params).reshape(x.shape)
    if h.numel() == 0:
        return h
    low, high = torch.aminmax(h)  # one pass; NaN propagates and fails the comparison
    if not (bool(low >= 0) and bool(high < float("inf"))):
        k = int((~torch.isfinite(h) | (h < 0)).reshape(-1).nonzero()[0, 0])
        raise StepError(f"step {step.name!r}: H = {h.reshape(-1)[k].item():.4g} at x = "
                        f"{x.reshape(-1)[k].item():.4g}; a smoothed step must be finite and >= 0")
    return h


class _Sums:
    """rank_pos and FP of every positive, from blocks of the pair grid."""

    def __init__(self, step, params, fg: Tensor, bg: Tensor, keep: bool):
        acc = _acc_dtype(fg)
        n_pos = fg.numel()
        self.block = max(1, _BLOCK_ELEMENTS // max(1, bg.numel() + n_pos))
        self.blocks = []  # the negatives' blocks of H, when one block holds them all
        rank_pos, fp = [], []
        for start in range(0, n_pos, self.block):
            rows = fg[start:start + self.block]
            h_neg = _h(step, params, bg[None, :] - rows[:, None])
            h_pos = _h(step, params, fg[None, :] - rows[:, None])
            own = torch.arange(len(rows), device=fg.device)
            mask = torch.zeros_like(h_pos, dtype=torch.bool)
            mask[own, start + own] = True
            h_pos = torch.where(mask, torch.zeros_like(h_pos), h_pos)  # k != i
            rank_pos.append(1 + h_pos.sum(1, dtype=acc))
            fp.append(h_neg.sum(1, dtype=acc))
            if keep and n_pos <= self.block:
                self.blocks.append(h_neg)
        self.rank_pos = torch.cat(rank_pos)
        self.fp = torch.cat(fp)


def _precision(sums: _Sums, fg: Tensor, interpolate: bool):
    rank = sums.rank_pos + sums.fp
    prec = sums.rank_pos / rank
    if not interpolate:
        return rank, prec, prec
    order = torch.sort(fg.detach(), stable=True).indices  # ascending logits, as ap_loss
    _, where = torch.cummax(prec.detach()[order], 0)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return rank, prec, prec[order][where][inverse]


def _error_forward(logits, pos, neg, step, params, interpolate):
    pos_idx, neg_idx = pos.nonzero().squeeze(1), neg.nonzero().squeeze(1)
    vdt = _value_dtype(logits)
    if pos_idx.numel() == 0:
        return logits.new_zeros((), dtype=vdt), torch.zeros_like(logits)
    x = logits.detach()
    fg, bg = x[pos_idx].to(vdt), x[neg_idx].to(vdt)  # the pair grid in the logits' dtype
    n_pos = fg.numel()
    sums = _Sums(step, params, fg, bg, keep=True)
    rank, prec, iprec = _precision(sums, fg, interpolate)
    scale = torch.where(iprec > prec, (1 - iprec) / (1 - prec), torch.ones_like(prec))
    weight = scale / rank
    bg_grad = torch.zeros_like(bg, dtype=weight.dtype)
    for k, start in enumerate(range(0, n_pos, sums.block)):
        rows = slice(start, start + sums.block)
        h_neg = sums.blocks[k] if sums.blocks else _h(step, params,
                                                      bg[None, :] - fg[rows, None])
        bg_grad += weight[rows].to(h_neg.dtype) @ h_neg  # a sum over a block of positives
    grad = torch.zeros_like(logits)
    grad[pos_idx] = (-(1 - iprec) / n_pos).to(grad.dtype)
    grad[neg_idx] = (bg_grad / n_pos).to(grad.dtype)
    return (1 - iprec.mean()).to(vdt), grad


class _ErrorDriven(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, pos, neg, step, params, interpolate):
        with torch.no_grad():
            value, grad = _error_forward(logits, pos, neg, step, params, interpolate)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad, = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None, None, None


def _autograd(logits, pos, neg, step, params, interpolate):
    pos_idx, neg_idx = pos.nonzero().squeeze(1), neg.nonzero().squeeze(1)
    vdt = _value_dtype(logits)
    if pos_idx.numel() == 0:
        return (logits.sum() * 0).to(vdt)
    fg, bg = logits[pos_idx].to(vdt), logits[neg_idx].to(vdt)
    sums = _Sums(step, params, fg, bg, keep=False)
    _, _, iprec = _precision(sums, fg, interpolate)
    return (1 - iprec.mean()).to(vdt)


#: the core as an export ships it, read from this module (so the shipped code is the code
#: the search ran): it needs torch, ``_BLOCK_ELEMENTS``, ``StepError``, ranking's two dtype
#: helpers, and a step object with ``name`` and ``__call__(x, **params)``
SHIPPED = (_h, _Sums, _precision, _error_forward, _ErrorDriven, _autograd)


def rank_loss(logits: Tensor, labels: Tensor, step, *, update: Update = "error",
              interpolate: bool = True, **params) -> Tensor:
    """AP-Loss's combination over a searchable smoothed step (see the module docstring).

    Args:
        logits: (N,) floating logits, flattened over the batch (anchors and classes).
        labels: (N,) 1 positive, 0 negative, -1 ignored (bool and integer dtypes work).
        step: a compiled expression of the ``rank`` signature (``zoo.compiled("ap_step")``,
            a search candidate) or its text (``"sigmoid(x / 0.5)"``).
        update: ``"error"`` (AP-Loss's error-driven update) or ``"autograd"`` (the
            gradient of the value through the step).
        interpolate: interpolated precision (AP-Loss) or plain precision (aLRP).
        **params: the step's parameters (``delta=0.5``).
    Returns:
        A scalar; 0 with a zero gradient when there is no positive.
    """
    step = _as_step(step)
    if update not in UPDATES:
        raise SignatureError(f"rank_loss: update must be one of {UPDATES}, got {update!r}")
    values = dict(zip(step.defaults, step.values(params)))
    pos, neg = _check(f"rank_loss ({step.name})", logits, labels)
    if update == "error":
        return _ErrorDriven.apply(logits, pos, neg, step, values, bool(interpolate))
    return _autograd(logits, pos, neg, step, values, bool(interpolate))


class RankLoss:
    """A step expression as the set-level loss a proxy's classification slot calls.

    Called as a ``sigmoid`` loss is, ``loss(logits, target, reduction="mean", **params)``
    with logits and targets of one shape ((N, C), or (N,) as the ranking losses take them),
    flattened to one element per (anchor, class) pair; a target > 0 (a quality target too)
    is a positive, 0 a negative, < 0 ignored. One value for the batch, already normalised
    over the positives (``normalised``), so ``"mean"`` and ``"sum"`` agree and nothing is
    divided again; no per-element weight or avg_factor.

    ``step`` holds the compiled step (its source, gradient code and hash); ``update`` and
    ``interpolate`` are :func:`rank_loss`'s.
    """

    kind = "S"
    normalised = True

    def __init__(self, step, update: Update = "error", interpolate: bool = True):
        self.step = _as_step(step)
        if update not in UPDATES:
            raise SignatureError(f"RankLoss: update must be one of {UPDATES}, got {update!r}")
        self.update = update
        self.interpolate = bool(interpolate)
        self.name = self.step.name
        self.signature = self.step.signature
        self.params = dict(self.step.params)
        self.defaults = dict(self.step.defaults)
        self.expression = self.step.expression

    def values(self, params) -> dict[str, float]:
        return dict(zip(self.defaults, self.step.values(params)))

    def __call__(self, logits: Tensor, target: Tensor, reduction: str = "mean", weight=None,
                 avg_factor=None, **params) -> Tensor:
        if reduction not in ("mean", "sum"):
            raise SignatureError(f"{self.name}: a ranking loss is one value for the whole "
                                 f"batch; reduction must be 'mean' or 'sum', got {reduction!r}")
        if weight is not None or avg_factor is not None:
            raise SignatureError(f"{self.name}: a ranking loss takes no per-element weight or "
                                 "avg_factor (it normalises itself over the positives)")
        for name, t in (("logits", logits), ("target", target)):
            if not isinstance(t, Tensor):
                raise SignatureError(f"{self.name}: argument {name!r} must be a torch.Tensor, "
                                     f"got {type(t).__name__}")
        if logits.shape != target.shape:
            raise SignatureError(f"{self.name}: 'logits' and 'target' must have the same shape, "
                                 f"got {list(logits.shape)} and {list(target.shape)}")
        t = target.reshape(-1)
        labels = (t > 0).to(torch.int8) - (t < 0).to(torch.int8)
        return rank_loss(logits.reshape(-1), labels, self.step, update=self.update,
                         interpolate=self.interpolate, **params)

    def __repr__(self) -> str:
        return (f"RankLoss({self.name!r}, update={self.update!r}, "
                f"interpolate={self.interpolate}, step={self.step!r})")
