"""Independent reference implementations of the oriented-box (``rbox``) zoo losses.

Written from the published formulas and the conventions of mmrotate
(``mmrotate/models/losses/gaussian_dist_loss.py``, ``gaussian_dist_loss_v1.py``,
``kf_iou_loss.py``, ``rotated_iou_loss.py``) and ultralytics (``utils/metrics.py``
``probiou``; ``utils/loss.py`` ``RotatedBboxLoss``), in plain eager torch with autograd and
2x2 matrices (``torch.linalg``), without going through autoloss. The geometry of the IoU
family is clipped polygon by polygon (Sutherland-Hodgman) from the boxes' corners, and
:func:`shapely_intersection` is the oracle that clipping is checked against.

Boxes are ``(cx, cy, w, h, theta)``, theta in radians, corners ``c + R(theta) (+-w/2, +-h/2)``
with ``R = [[cos, -sin], [sin, cos]]``. Each function takes ``(pred, target)`` of shape
``(N, 5)`` and returns the unreduced loss ``(N,)``; tests compare values and gradients in
float64.
"""
from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-7  # the rbox signature's eps (ultralytics' probiou eps too)


# ---------------------------------------------------------------------------- geometry
def corners(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 5) -> (N, 4, 2), counter-clockwise for positive sizes."""
    cx, cy, w, h, t = boxes.unbind(-1)
    cos, sin = torch.cos(t), torch.sin(t)
    local = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]],
                         dtype=boxes.dtype)
    a = local[:, 0] * w[:, None]  # along the box's width axis
    b = local[:, 1] * h[:, None]  # along its height axis
    x = cx[:, None] + cos[:, None] * a - sin[:, None] * b
    y = cy[:, None] + sin[:, None] * a + cos[:, None] * b
    return torch.stack([x, y], -1)


def _cross(o, a, b):
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _clip(subject: list, edge_from, edge_to) -> list:
    """Sutherland-Hodgman: the part of a convex polygon left of the directed edge."""
    out = []
    n = len(subject)
    for i in range(n):
        cur, nxt = subject[i], subject[(i + 1) % n]
        s_cur, s_nxt = _cross(edge_from, edge_to, cur), _cross(edge_from, edge_to, nxt)
        cur_in, nxt_in = bool(s_cur >= 0), bool(s_nxt >= 0)
        if cur_in:
            out.append(cur)
        if cur_in != nxt_in:
            f = s_cur / (s_cur - s_nxt)
            out.append(cur + f * (nxt - cur))
    return out


def _area(poly: list) -> torch.Tensor:
    """Shoelace formula (a polygon of fewer than 3 vertices has area 0)."""
    origin = torch.zeros_like(poly[0])
    total = torch.zeros_like(poly[0][0])
    if len(poly) >= 3:
        for i in range(len(poly)):
            total = total + _cross(origin, poly[i], poly[(i + 1) % len(poly)])
    return 0.5 * total


def intersection(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exact intersection area of each pair of rotated rectangles (differentiable)."""
    cp, ct = corners(pred), corners(target)
    out = []
    for k in range(pred.shape[0]):
        poly = [cp[k, i] for i in range(4)]
        for i in range(4):
            if not poly:
                break
            poly = _clip(poly, ct[k, i], ct[k, (i + 1) % 4])
        out.append(_area(poly) if poly else pred.new_zeros(()))
    return torch.stack(out) if out else pred.new_zeros((0,))


def shapely_intersection(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """The oracle: the same areas from shapely's polygon overlay."""
    from shapely.geometry import Polygon

    cp = corners(pred.detach()).double().numpy()
    ct = corners(target.detach()).double().numpy()
    return np.array([Polygon(a).intersection(Polygon(b)).area for a, b in zip(cp, ct)])


def _areas(pred, target):
    inter = intersection(pred, target)
    union = pred[:, 2] * pred[:, 3] + target[:, 2] * target[:, 3] - inter
    return inter, union


def enclosing_in_target_frame(pred: torch.Tensor, target: torch.Tensor):
    """Width and height of the smallest rectangle aligned with the target box that holds
    both boxes: all eight corners projected on the target's axes."""
    pts = torch.cat([corners(pred), corners(target)], 1)  # (N, 8, 2)
    cos, sin = torch.cos(target[:, 4])[:, None], torch.sin(target[:, 4])[:, None]
    rx = pts[..., 0] - target[:, 0:1]
    ry = pts[..., 1] - target[:, 1:2]
    u = cos * rx + sin * ry    # along the target's width axis
    v = -sin * rx + cos * ry   # along its height axis
    return u.amax(1) - u.amin(1), v.amax(1) - v.amin(1)


# ------------------------------------------------------------------------ 4.2 IoU family
def rotated_iou(pred, target):
    """1 - IoU of the rotated rectangles (mmrotate RotatedIoULoss(mode='linear') without
    its clamp of IoU at 1e-6)."""
    inter, union = _areas(pred, target)
    return 1 - inter / (union + EPS)


def rotated_giou(pred, target):
    inter, union = _areas(pred, target)
    cw, ch = enclosing_in_target_frame(pred, target)
    enclose = cw * ch
    return 1 - inter / (union + EPS) + (enclose - union) / (enclose + EPS)


def rotated_diou(pred, target):
    inter, union = _areas(pred, target)
    cw, ch = enclosing_in_target_frame(pred, target)
    rho2 = (pred[:, 0] - target[:, 0]) ** 2 + (pred[:, 1] - target[:, 1]) ** 2
    return 1 - inter / (union + EPS) + rho2 / (cw ** 2 + ch ** 2 + EPS)


# ----------------------------------------------------------------- 4.1 Gaussian family
def gaussian_mmrotate(boxes: torch.Tensor):
    """mmrotate xy_wh_r_2_xy_sigma: mean and R diag((w/2)^2, (h/2)^2) R^T, with w and h
    clamped to [1e-7, 1e7]."""
    wh = boxes[:, 2:4].clamp(1e-7, 1e7)
    cos, sin = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    half = torch.diag_embed(wh / 2)
    return boxes[:, :2], rot @ half @ half @ rot.transpose(-1, -2)


def _trace(m):
    return m.diagonal(dim1=-2, dim2=-1).sum(-1)


def gwd(pred, target, alpha=1.0, tau=0.0):
    """mmrotate GDLoss(loss_type='gwd') at its defaults: fun='log1p', tau=0, alpha=1,
    normalize=True."""
    mu_p, sp = gaussian_mmrotate(pred)
    mu_t, st = gaussian_mmrotate(target)
    centre = ((mu_p - mu_t) ** 2).sum(-1)
    root_dets = (torch.linalg.det(sp) * torch.linalg.det(st)).clamp(min=0).sqrt()
    # tr((Sp^1/2 St Sp^1/2)^1/2) = sqrt(tr(Sp St) + 2 sqrt(det Sp det St)) for 2 x 2
    coupling = (_trace(sp @ st) + 2 * root_dets).clamp(min=0).sqrt()
    shape = _trace(sp) + _trace(st) - 2 * coupling
    distance = (centre + alpha ** 2 * shape).clamp(min=0).sqrt()
    distance = distance / (2 * root_dets.sqrt().sqrt().clamp(min=1e-7))
    distance = torch.log1p(distance)
    return 1 - 1 / (tau + distance) if tau >= 1.0 else distance


def kld(pred, target, tau=1.0):
    """mmrotate GDLoss_v1(loss_type='kld', fun='log1p', tau=1): 2 KL(N_pred || N_target),
    clamped at 1e-6, then 1 - 1 / (tau + ln(1 + D))."""
    mu_p, sp = gaussian_mmrotate(pred)
    mu_t, st = gaussian_mmrotate(target)
    st_inv = torch.linalg.inv(st)
    delta = (mu_p - mu_t)[..., None]
    maha = (delta.transpose(-1, -2) @ st_inv @ delta)[..., 0, 0]
    divergence = (maha + _trace(st_inv @ sp)
                  + torch.log(torch.linalg.det(st) / torch.linalg.det(sp)) - 2)
    return 1 - 1 / (tau + torch.log1p(divergence.clamp(min=1e-6)))


def _smooth_l1(x, beta):
    ax = x.abs()
    return torch.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def kfiou(pred, target, beta=1.0 / 9.0, eps=1e-6):
    """mmrotate KFLoss(fun='none'): smooth L1 (beta 1/9) on the encoded centre offset plus
    1 - KFIoU. The centre is encoded as mmrotate's DeltaXYWHAOBBoxCoder(proj_xy=True,
    stds 1) does against an anchor, with the target as the anchor: the offset in the
    target's frame over its width and height."""
    cos, sin = torch.cos(target[:, 4]), torch.sin(target[:, 4])
    ox, oy = pred[:, 0] - target[:, 0], pred[:, 1] - target[:, 1]
    dx = (cos * ox + sin * oy) / target[:, 2]
    dy = (-sin * ox + cos * oy) / target[:, 3]
    centre = _smooth_l1(dx, beta) + _smooth_l1(dy, beta)
    _, sp = gaussian_mmrotate(pred)
    _, st = gaussian_mmrotate(target)
    vol_p = 4 * torch.linalg.det(sp).sqrt()
    vol_t = 4 * torch.linalg.det(st).sqrt()
    gain = sp @ torch.linalg.inv(sp + st)
    fused = sp - gain @ sp
    vol = 4 * torch.linalg.det(fused).sqrt()
    vol = torch.where(torch.isnan(vol), torch.zeros_like(vol), vol)
    kf = vol / (vol_p + vol_t - vol + eps)
    return (centre + 1 - kf).clamp(min=0)


def covariance_ultralytics(boxes: torch.Tensor, floor: float = 0.0):
    """ultralytics _get_covariance_matrix: (a, b, c) of R diag(w^2/12 + floor,
    h^2/12 + floor) R^T."""
    a0 = boxes[:, 2] ** 2 / 12 + floor
    b0 = boxes[:, 3] ** 2 / 12 + floor
    cos, sin = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    return a0 * cos ** 2 + b0 * sin ** 2, a0 * sin ** 2 + b0 * cos ** 2, (a0 - b0) * cos * sin


def probiou(pred, target, eps=EPS, floor=0.01):
    """1 - ProbIoU as ultralytics' RotatedBboxLoss computes it (probiou(pred, target,
    floor=0.01), eps 1e-7): the Hellinger distance of the two Gaussians."""
    x1, y1 = pred[:, 0], pred[:, 1]
    x2, y2 = target[:, 0], target[:, 1]
    a1, b1, c1 = covariance_ultralytics(pred, floor)
    a2, b2, c2 = covariance_ultralytics(target, floor)
    big_a, big_b, big_c = a1 + a2, b1 + b2, c1 + c2
    det_sum = big_a * big_b - big_c ** 2
    t1 = 0.25 * (big_a * (y1 - y2) ** 2 + big_b * (x1 - x2) ** 2) / (det_sum + eps)
    t2 = 0.5 * (big_c * (x2 - x1) * (y1 - y2)) / (det_sum + eps)
    dets = (a1 * b1 - c1 ** 2).clamp(min=0) * (a2 * b2 - c2 ** 2).clamp(min=0)
    t3 = 0.5 * torch.log(det_sum / (4 * dets.sqrt() + eps) + eps)
    bhattacharyya = (t1 + t2 + t3).clamp(eps, 100.0)
    hellinger = torch.sqrt(1.0 - torch.exp(-bhattacharyya) + eps)
    return 1 - (1 - hellinger)


# --------------------------------------------------------------- 4.1 baseline on (x..θ)
def wrap_angle(d: torch.Tensor, period: float = math.pi) -> torch.Tensor:
    """d modulo period, in [-period/2, period/2)."""
    return torch.remainder(d + period / 2, period) - period / 2


def smooth_l1_rbox(pred, target, beta=1.0):
    """Smooth L1 summed over the decoded (cx, cy, w, h) differences and the angle
    difference taken modulo pi into [-pi/2, pi/2)."""
    diff = pred[:, :4] - target[:, :4]
    angle = wrap_angle(pred[:, 4] - target[:, 4])
    return _smooth_l1(diff, beta).sum(1) + _smooth_l1(angle, beta)


ROTATED_REFERENCES = {
    "gwd": gwd, "kld": kld, "kfiou": kfiou, "probiou": probiou, "rotated_iou": rotated_iou,
    "rotated_giou": rotated_giou, "rotated_diou": rotated_diou,
    "smooth_l1_rbox": smooth_l1_rbox,
}
