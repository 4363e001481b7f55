"""``rank``: the smoothed step of a ranking loss, over pairwise logit differences.

The ranking losses (AP-Loss, aLRP, Rank & Sort; Smooth-AP) are set-level: one value for
the whole batch. What they share, and what differs between them, is the smoothed step H
that counts how far one score sits above another. This signature makes H an expression a
search can evolve: its one input is a batch of pair differences and its one column is

    x = s_j - s_i      (the logit of the other element minus the logit of a positive i;
                        dimensionless, a difference of logits)

so ``clamp(x / (2 * delta) + 0.5, 0, 1)`` is AP-Loss's linear ramp and ``sigmoid(x /
tau)`` the sigmoid step of Smooth-AP. A compiled expression of this signature is the step
alone, elementwise over pairs (output (M,)). The set-level loss it defines (DESIGN's
``rank`` row: logits (N,), labels (N,) -> a scalar) is
:class:`autoloss.ranksurrogate.RankLoss`, which evaluates the step on the (positive,
other) pair grid of a batch, blocked to bound memory, and combines it as AP-Loss does;
``set_level`` names it, and a classification slot that takes a ``sigmoid`` loss takes it
(``fills``).

The filters see the step on its own: finite on random and saturated differences, not
constant, increasing along the convergence ladder (a pair moving from wrongly ordered,
x = +4, to well ordered, x = -4, must not cost more), and ``screen``: never negative and
vanishing far below (a negative 20 logits under a positive is not counted as above it).
"""
from __future__ import annotations

import torch

from .base import Curve, Input, Prepared, Signature, identity_backward, need, terminals

Tensor = torch.Tensor

COLUMNS = {"x": "pair difference s_j - s_i: the other element's logit minus the positive's "
                "(dimensionless)"}


def prepare(loss: str, diff: Tensor) -> Prepared:
    need(diff.dim() == 1, loss, "diff", "a 1-D tensor of shape (M,) of pair differences",
         diff, "flatten the pair grid with .reshape(-1)")
    need(diff.is_floating_point(), loss, "diff", "a floating-point tensor", diff,
         "convert with .float()")
    shape = tuple(diff.shape)
    return Prepared([diff], (diff,), shape, [shape])


EXPORT_COLUMNS = ("diff: Tensor", '''\
    if diff.dim() != 1:
        raise ValueError(f"diff must have shape (M,), got {list(diff.shape)}")
    return [diff]''')


def sample(n: int, generator=None, dtype=torch.float64, device="cpu"):
    """Differences spread over the range where steps differ: N(0, 3^2)."""
    return ((torch.randn(n, generator=generator, dtype=dtype) * 3.0).to(device),)


def degenerate(dtype=torch.float64):
    """Saturated, tied and just-apart scores."""
    return (torch.tensor([-1e3, -50.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 50.0, 1e3], dtype=dtype),)


def convergence(steps, m: int, generator):
    """A pair moved from wrongly ordered (x = +4, step 1) to well ordered (x = -4, step
    0), each row with its own offset in [-1, 1]."""
    dt = torch.float64
    offset = (torch.rand(m, generator=generator, dtype=dt) * 2 - 1).repeat(len(steps))
    s = torch.tensor(steps, dtype=dt).repeat_interleave(m)
    return (-4.0 + 8.0 * s + offset,)


def curve(n: int) -> Curve:
    """The step from x = -6 (the other element well below the positive) to 6."""
    x = torch.linspace(-6, 6, n, dtype=torch.float64)
    return Curve((x,), x, "x = s_other - s_positive", "x", torch.ones_like(x))


def perfect(inputs):
    """Every other element far below the positive."""
    return (torch.full_like(inputs[0], -40.0),)


#: where ``screen`` looks: far below, and the whole probe
FAR_BELOW = -20.0


def screen(inputs, value: Tensor):
    """Why ``value`` (the step on the probe differences) is not a smoothed step, or None.

    A step counts how much the other element ranks above the positive: it must not be
    negative (a negative count makes rank(i) = rank_pos + FP meaningless, down to a
    division by zero), and it must vanish far below (x <= -20; else every one of the
    thousands of easy negatives is counted, and a perfect ranking still has a loss)."""
    x = inputs[0]
    low = float(value.min())
    if low < -1e-9:
        at = float(x[int(value.argmin())])
        return f"the step is negative ({low:.3g} at x = {at:.3g}): a smoothed step counts, >= 0"
    top = float(value.max())
    below = x <= FAR_BELOW
    if below.any():
        tail = float(value[below].max())
        if tail > 1e-3 * max(top, 1e-12):
            return (f"the step does not vanish far below (H = {tail:.3g} at x <= {FAR_BELOW:g}, "
                    f"max {top:.3g}): every easy negative would count as ranked above")
    return None




SIGNATURE = Signature(
    name="rank",
    doc="The smoothed step H(x) of a ranking loss over pair differences x = s_j - s_i; "
        "the set-level loss built from it (RankLoss) takes logits (N,), labels (N,).",
    inputs=(Input("diff", "(M,)", "pair differences s_j - s_i (other minus positive)"),),
    output="(M,)",
    columns=tuple(COLUMNS),
    terminals=terminals(COLUMNS, [], {}),
    params={},
    prepare=prepare,
    backward=identity_backward,
    column_input=(0,),
    grad_slots=((0, None),),
    sample=sample,
    degenerate=degenerate,
    export_columns=EXPORT_COLUMNS,
    convergence=convergence,
    curve=curve,
    perfect=perfect,
    screen=screen,
    set_level="autoloss.ranksurrogate:RankLoss",
    fills="sigmoid",
)
