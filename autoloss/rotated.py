"""Exact, vectorized, differentiable geometry of rotated rectangles (the ``rbox`` core).

A box is ``(cx, cy, w, h, theta)``, theta in radians, corners ``c + R(theta) (+-w/2, +-h/2)``
with ``R(theta) = [[cos, -sin], [sin, cos]]`` (mmrotate's convention). Sizes are
non-negative; a box with a zero (or negative) side has no area.

**Method.** The intersection area of two boxes A (pred) and B (target) comes from Green's
theorem: the area of a polygon is half the sum, over its counter-clockwise boundary, of
``cross(p, q)`` per straight piece ``p -> q``, and the boundary of A n B is made of the parts
of A's edges inside B and the parts of B's sides inside A. In B's frame (origin at B's
centre, axes along B's sides, so B = [-hx, hx] x [-hy, hy], hx = w_B / 2), with A's edge k
written ``M_k + t D_k``, t in [-1/2, 1/2] (M_k its midpoint):

    area(A n B) = 1/2 sum_k |{t : M_k + t D_k in B}| cross(M_k, D_k)
                + 1/2 hx |B's vertical sides inside A| + 1/2 hy |B's horizontal sides inside A|

No polygon is built, sorted or looped over: every pair costs the same few dozen
elementwise operations on (N, 4) tensors, branch-free (no ``where`` on the data).

**Exactness.** Each crossing of A's edge k with a line of B is computed once, as the edge
parameter ``r = (line - M_k) / D_k`` along that axis, and serves both the clipping of A's
edge and the clipping of B's side by A's half-plane k (the crossing point is ``M_k + r D_k``
for both). The two pieces of boundary therefore meet at the same point even where the
crossing is badly conditioned (nearly parallel edges), and any split of a shared
collinear piece between them adds up to the same area: identical boxes count their common
boundary once, touching boxes give 0, and the result is exact up to rounding. An edge
within ``tol`` of parallel to a line (relative 1e-12 in float64, 1e-6 in float32, plus a
floor relative to the scene) is tilted to that angle, so no denominator vanishes and no
value or gradient is NaN or infinite. The result is clamped to [0, min(area A, area B)]:
a zero-size box gives exactly 0.

**Gradient.** The geometry (:func:`intersection_terms`) runs without autograd, in place,
and also gives the area's partial derivatives with respect to A's pose in B's frame
(centre and angle) and the four sizes: its shape derivative, the normal speed of the moving
boundary integrated over the parts of it that bound the intersection (read off the same
clipped pieces). :func:`intersection_from_terms` joins the autograd graph through a linear
term with those coefficients, zero in value, so autograd (TorchScript too) gets the exact
first derivative for a few operations on (N,) tensors -- several times cheaper than
autograd through the clipping's min/max selections, and finite everywhere; where the area
has a kink (identical or touching boxes) it is a combination of one-sided derivatives.
Second derivatives through the coefficients are not taken.

The functions named in :data:`EXPORTED_NAMES` are TorchScript-compatible and depend on
torch only; :func:`source` gives their text, which an exported ``rbox`` loss embeds, so the
search and the shipped module run the same geometry.
"""
from __future__ import annotations

import inspect
import re
from typing import List

import torch
from torch import Tensor


def corners(boxes: Tensor) -> Tensor:
    """(N, 5) boxes ``(cx, cy, w, h, theta)`` -> (N, 4, 2) corners, counter-clockwise:
    ``c + R(theta) (-w/2, -h/2)``, ``(w/2, -h/2)``, ``(w/2, h/2)``, ``(-w/2, h/2)``."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = torch.stack([-w, w, w, -w], -1) / 2  # along the box's width axis
    b = torch.stack([-h, -h, h, h], -1) / 2  # along its height axis
    x = cx.unsqueeze(-1) + cos.unsqueeze(-1) * a - sin.unsqueeze(-1) * b
    y = cy.unsqueeze(-1) + sin.unsqueeze(-1) * a + cos.unsqueeze(-1) * b
    return torch.stack([x, y], -1)


def _side(r: Tensor, m_other: Tensor, d_other: Tensor, half_other: Tensor) -> Tensor:
    """The length inside A of B's side on one line, measured along the other coordinate u
    in [-half_other, half_other]. The line crosses A's edge k at u_k = m_other + d_other r
    (the crossing ``r`` that clipped A's edge too); A is the intersection of two strips,
    between its parallel edges 0 and 2 and between 1 and 3, and a strip meets the line
    between its two crossings."""
    u = (d_other * r).add_(m_other)
    u0 = torch.maximum(torch.minimum(u[:, 0], u[:, 2]), torch.minimum(u[:, 1], u[:, 3]))
    u1 = torch.minimum(torch.maximum(u[:, 0], u[:, 2]), torch.maximum(u[:, 1], u[:, 3]))
    return u1.clamp_(max=half_other).sub_(u0.clamp_(min=-half_other)).relu_()


def _clip_axis(m: Tensor, d: Tensor, m_other: Tensor, d_other: Tensor, half: Tensor,
               half_other: Tensor, tol: Tensor) -> List[Tensor]:
    """A's edges ``m + t d`` (coordinates along one axis of B's frame) against B's two
    lines ``+-half`` on that axis.

    Returns the edges' parameter range on this axis (lo, hi; the edge is t in [-1/2, 1/2])
    and the lengths inside A of B's sides on the lines ``+half`` and ``-half``
    (:func:`_side`).
    """
    # |d| at least tol, same sign: an edge parallel to the lines is tilted by at most tol
    # (its opposite edge the same way: D_k+2 = -D_k); it meets a line it lies on at its
    # midpoint, and lies far inside or outside otherwise
    ds = torch.maximum(d.abs(), tol).copysign_(d)
    h = half.unsqueeze(-1)
    r_p = (h - m).div_(ds)  # the edge parameter where it meets the +half line
    r_m = (m + h).div_(ds).neg_()  # ... and the -half line
    plus = _side(r_p, m_other, d_other, half_other)
    minus = _side(r_m, m_other, d_other, half_other)
    return [torch.minimum(r_p, r_m), r_p.clamp_(min=r_m), plus, minus]


def _frame(pred: Tensor, target: Tensor) -> List[Tensor]:
    """A's centre (cx, cy) and angle (dt) in B's frame, with what gives them: cos and sin
    of B's angle, and the world offset of the centres."""
    tb = target[:, 4]
    cb, sb = torch.cos(tb), torch.sin(tb)
    dx, dy = pred[:, 0] - target[:, 0], pred[:, 1] - target[:, 1]
    return [cb * dx + sb * dy, cb * dy - sb * dx, pred[:, 4] - tb]


def intersection_terms(pred: Tensor, target: Tensor) -> List[Tensor]:
    """The geometry, without autograd: the uncapped intersection area (the Green sum), then
    its partial derivatives with respect to A's centre (cx, cy) and angle in B's frame
    (:func:`_frame`) and the four sizes (wa, ha, wb, hb). Pass detached inputs: it works
    in place, without autograd (:func:`intersection_from_terms` carries the gradient)."""
    wa, ha, wb, hb = pred[:, 2], pred[:, 3], target[:, 2], target[:, 3]
    fr = _frame(pred, target)
    cx, cy = fr[0], fr[1]
    co, si = torch.cos(fr[2]), torch.sin(fr[2])
    # A's half-axes: ex along its width, ey along its height
    exx, exy = wa / 2 * co, wa / 2 * si
    eyx, eyy = -(ha / 2) * si, ha / 2 * co
    # A's edges, counter-clockwise: midpoints M_k and directions D_k
    mx = torch.stack([cx - eyx, cx + exx, cx + eyx, cx - exx], -1)
    my = torch.stack([cy - eyy, cy + exy, cy + eyy, cy - exy], -1)
    ddx = torch.stack([2 * exx, 2 * eyx, -2 * exx, -2 * eyx], -1)
    ddy = torch.stack([2 * exy, 2 * eyy, -2 * exy, -2 * eyy], -1)
    # parallel within tol: relative to the edge, with a floor relative to the scene
    rel = 1e-12 if pred.dtype == torch.float64 else 1e-6
    floor = rel * rel * (cx.abs() + cy.abs() + wa.abs() + ha.abs() + wb.abs() + hb.abs()) + 1e-30
    tw, th = rel * wa.abs() + floor, rel * ha.abs() + floor
    tol = torch.stack([tw, th, tw, th], -1)
    ax = _clip_axis(mx, ddx, my, ddy, wb / 2, hb / 2, tol)
    ay = _clip_axis(my, ddy, mx, ddx, hb / 2, wb / 2, tol)
    # A's edges inside B: t in [t0, t1], a fraction frac of each edge (in place: the
    # geometry runs without autograd, and fresh memory costs more than the arithmetic)
    t0 = ax[0].clamp_(min=ay[0]).clamp_(min=-0.5)
    t1 = ax[1].clamp_(max=ay[1]).clamp_(max=0.5)
    frac = (t1 - t0).relu_()
    # Green: cross(M_k, D_k) = cross(c, D_k) + 2 cross(ex, ey), cross(ex, ey) = wa ha / 4;
    # B's sides inside A, each weighted by its distance from the origin
    cross = (ddy * cx.unsqueeze(-1)).sub_(ddx * cy.unsqueeze(-1))
    vertical, horizontal = ax[2] + ax[3], ay[2] + ay[3]
    raw = (0.5 * cross.mul_(frac).sum(-1) + 0.25 * wa * ha * frac.sum(-1)
           + wb / 4 * vertical + hb / 4 * horizontal)
    # its derivatives (Reynolds: the normal speed of the moving boundary, integrated over
    # the parts of it that bound the intersection; the outward normal of A's edge k times
    # its length is (D_ky, -D_kx), a point at t moves at t |D_k|^2 when A turns)
    d_cx = ddy.mul_(frac).sum(-1)
    d_cy = -ddx.mul_(frac).sum(-1)
    turn = t0.add_(t1).mul_(frac)
    d_angle = -0.5 * (wa * wa * (turn[:, 0] + turn[:, 2]) + ha * ha * (turn[:, 1] + turn[:, 3]))
    d_wa = 0.5 * ha * (frac[:, 1] + frac[:, 3])
    d_ha = 0.5 * wa * (frac[:, 0] + frac[:, 2])
    return [raw, d_cx, d_cy, d_angle, d_wa, d_ha, 0.5 * vertical, 0.5 * horizontal]


def intersection_from_terms(terms: List[Tensor], pred: Tensor, target: Tensor) -> Tensor:
    """The intersection area from :func:`intersection_terms` of these inputs (detached),
    capped to [0, min(area A, area B)]. Where an input requires a gradient, the area joins
    the graph through a linear term in A's pose in B's frame and the four sizes whose
    coefficients are the partial derivatives (zero in value): the exact first derivative
    for a few elementwise operations on (N,) tensors. (Second derivatives through the
    coefficients are not taken.)"""
    raw = terms[0]
    wa, ha, wb, hb = pred[:, 2], pred[:, 3], target[:, 2], target[:, 3]
    if (pred.requires_grad or target.requires_grad) and torch.is_grad_enabled():
        fr = _frame(pred, target)
        linear = (terms[1] * fr[0] + terms[2] * fr[1] + terms[3] * fr[2] + terms[4] * wa
                  + terms[5] * ha + terms[6] * wb + terms[7] * hb)
        raw = raw + (linear - linear.detach())
    return torch.clamp(torch.minimum(torch.minimum(raw, wa * ha), wb * hb), min=0.0)


def intersection_area(pred: Tensor, target: Tensor) -> Tensor:
    """Exact area of the intersection of rotated rectangles, pair by pair: (N, 5), (N, 5) ->
    (N,). Differentiable with respect to both, with a finite gradient everywhere."""
    return intersection_from_terms(intersection_terms(pred.detach(), target.detach()),
                                   pred, target)


def iou(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """Rotated IoU, pair by pair: ``I / (area_pred + area_target - I + eps)``."""
    inter = intersection_area(pred, target)
    union = pred[:, 2] * pred[:, 3] + target[:, 2] * target[:, 3] - inter
    return inter / (union + eps)


#: the functions an exported module embeds (in this order)
EXPORTED_NAMES = ("corners", "_side", "_clip_axis", "_frame", "intersection_terms",
                  "intersection_from_terms", "intersection_area", "iou")


def source(prefix: str = "_rotated_") -> str:
    """The text of :data:`EXPORTED_NAMES`, read from this module, each name given
    ``prefix`` (``intersection_area`` -> ``_rotated_intersection_area``)."""
    text = "\n\n".join(inspect.getsource(globals()[name]) for name in EXPORTED_NAMES)
    for name in EXPORTED_NAMES:
        text = re.sub(rf"(?<![\w.]){name}(?=\()", prefix + name.lstrip("_"), text)
    return text
