"""Independent reference implementations of the zoo losses.

Written from the papers and from the conventions of the libraries CATALOG.md names
(torchvision, mmdetection, mmpose, the CSE-Autoloss repo, Instinct323/wiou,
Jacobi93/Alpha-IoU, richardaecn/class-balanced-loss, tztztztztz/eql.detectron2), in plain
eager torch with autograd, without going through autoloss. Each function takes the zoo's
call convention and returns the unreduced loss; tests compare values and gradients in
float64. Private helpers (``_alpha_iou_official``) port a repository's function as it is,
its own eps included, for the tests that check the zoo against that code itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-7


def _unbind(b):
    return b.unbind(dim=-1)


def _inter_union(b1, b2):
    # torchvision _loss_inter_union: intersection only where both extents are positive
    x1, y1, x2, y2 = _unbind(b1)
    x1g, y1g, x2g, y2g = _unbind(b2)
    xkis1, ykis1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xkis2, ykis2 = torch.min(x2, x2g), torch.min(y2, y2g)
    intsct = torch.zeros_like(x1)
    mask = (ykis2 > ykis1) & (xkis2 > xkis1)
    intsct[mask] = (xkis2[mask] - xkis1[mask]) * (ykis2[mask] - ykis1[mask])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intsct
    return intsct, union


def _enclosing(b1, b2):
    x1, y1, x2, y2 = _unbind(b1)
    x1g, y1g, x2g, y2g = _unbind(b2)
    return (torch.max(x2, x2g) - torch.min(x1, x1g)), (torch.max(y2, y2g) - torch.min(y1, y1g))


def _centers(b):
    x1, y1, x2, y2 = _unbind(b)
    return (x1 + x2) / 2, (y1 + y2) / 2


def iou(pred, target):
    inter, union = _inter_union(pred, target)
    return 1 - inter / (union + EPS)


def log_iou(pred, target):
    inter, union = _inter_union(pred, target)
    return -(inter / (union + EPS)).clamp(min=1e-6).log()


def iou_square(pred, target):
    inter, union = _inter_union(pred, target)
    return 1 - (inter / (union + EPS)) ** 2


def bounded_iou(pred, target, beta=0.2, eps=1e-3):
    pcx, pcy = _centers(pred)
    pw, ph = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    with torch.no_grad():
        tcx, tcy = _centers(target)
        tw, th = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    dx, dy = tcx - pcx, tcy - pcy
    zero = torch.zeros_like(dx)
    lx = 1 - torch.max((tw - 2 * dx.abs()) / (tw + 2 * dx.abs() + eps), zero)
    ly = 1 - torch.max((th - 2 * dy.abs()) / (th + 2 * dy.abs() + eps), zero)
    lw = 1 - torch.min(tw / (pw + eps), pw / (tw + eps))
    lh = 1 - torch.min(th / (ph + eps), ph / (th + eps))
    comb = torch.stack([lx, ly, lw, lh], dim=-1)
    loss = torch.where(comb < beta, 0.5 * comb * comb / beta, comb - 0.5 * beta)
    return loss.sum(-1)


def giou(pred, target):
    inter, union = _inter_union(pred, target)
    cw, ch = _enclosing(pred, target)
    area_c = cw * ch
    return 1 - (inter / (union + EPS) - (area_c - union) / (area_c + EPS))


def _diou_parts(pred, target):
    inter, union = _inter_union(pred, target)
    iou_ = inter / (union + EPS)
    cw, ch = _enclosing(pred, target)
    diag = cw ** 2 + ch ** 2 + EPS
    xp, yp = _centers(pred)
    xg, yg = _centers(target)
    dist = (xp - xg) ** 2 + (yp - yg) ** 2
    return iou_, dist / diag, cw, ch


def diou(pred, target):
    iou_, pen, _, _ = _diou_parts(pred, target)
    return 1 - iou_ + pen


def ciou(pred, target):
    # torchvision complete_box_iou_loss, heights + eps inside atan as mmdetection/ultralytics
    iou_, pen, _, _ = _diou_parts(pred, target)
    w_p, h_p = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + EPS
    w_g, h_g = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + EPS
    v = (4 / (math.pi ** 2)) * torch.pow(torch.atan(w_g / h_g) - torch.atan(w_p / h_p), 2)
    with torch.no_grad():
        alpha = v / (1 - iou_ + v + EPS)
    return 1 - iou_ + pen + alpha * v


def _eiou(pred, target):
    iou_, pen, cw, ch = _diou_parts(pred, target)
    w_p, h_p = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    w_g, h_g = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    return 1 - iou_ + pen + (w_p - w_g) ** 2 / (cw ** 2 + EPS) + (h_p - h_g) ** 2 / (ch ** 2 + EPS), iou_


def eiou(pred, target):
    return _eiou(pred, target)[0]


def focal_eiou(pred, target, gamma=0.5):
    # IoU^gamma as a detached re-weighting of EIoU
    loss, iou_ = _eiou(pred, target)
    return iou_.clamp(min=EPS).detach() ** gamma * loss


def eiou_ext(pred, target, smooth_point=0.1, eps=EPS):
    # mmdetection eiou_loss
    px1, py1, px2, py2 = _unbind(pred)
    tx1, ty1, tx2, ty2 = _unbind(target)
    ex1, ey1 = torch.min(px1, tx1), torch.min(py1, ty1)
    ix1, iy1 = torch.max(px1, tx1), torch.max(py1, ty1)
    ix2, iy2 = torch.min(px2, tx2), torch.min(py2, ty2)
    xmin, ymin = torch.min(ix1, ix2), torch.min(iy1, iy2)
    xmax, ymax = torch.max(ix1, ix2), torch.max(iy1, iy2)
    inter = ((ix2 - ex1) * (iy2 - ey1) + (xmin - ex1) * (ymin - ey1)
             - (ix1 - ex1) * (ymax - ey1) - (xmax - ex1) * (iy1 - ey1))
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter + eps
    ious = 1 - inter / union
    sign = (ious < smooth_point).detach().float()
    return 0.5 * sign * ious ** 2 / smooth_point + (1 - sign) * (ious - 0.5 * smooth_point)


def _mmdet_parts(pred, target, clamp):
    # mmdetection's overlap, areas and clamped enclosing extent, as in its iou losses
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    enc = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=clamp)
    return overlap, ap, ag, enc


def siou(pred, target, theta=4.0, eps=EPS):
    # mmdetection siou_loss(neg_gamma=True): the paper's sign
    overlap, ap, ag, enc = _mmdet_parts(pred, target, eps)
    ious = overlap / (ap + ag - overlap + eps)
    cw, ch = enc[:, 0], enc[:, 1]
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    s_cw = (target[:, 0] + target[:, 2] - pred[:, 0] - pred[:, 2]) * 0.5 + eps
    s_ch = (target[:, 1] + target[:, 3] - pred[:, 1] - pred[:, 3]) * 0.5 + eps
    sigma = torch.pow(s_cw ** 2 + s_ch ** 2, 0.5)
    sin1, sin2 = torch.abs(s_cw) / sigma, torch.abs(s_ch) / sigma
    sin_alpha = torch.where(sin1 > pow(2, 0.5) / 2, sin2, sin1)
    angle = torch.cos(torch.asin(sin_alpha) * 2 - math.pi / 2)
    gamma = angle - 2
    dist = 2 - torch.exp(gamma * (s_cw / cw) ** 2) - torch.exp(gamma * (s_ch / ch) ** 2)
    ow = torch.abs(w1 - w2) / torch.max(w1, w2)
    oh = torch.abs(h1 - h2) / torch.max(h1, h2)
    shape = torch.pow(1 - torch.exp(-ow), theta) + torch.pow(1 - torch.exp(-oh), theta)
    return 1 - (ious - 0.5 * (dist + shape)).clamp(min=-1.0, max=1.0)


def alpha_iou(pred, target, alpha=3.0):
    inter, union = _inter_union(pred, target)
    return 1 - (inter / (union + EPS)) ** alpha


def _alpha_distance_penalty(pred, target, alpha):
    # Jacobi93/Alpha-IoU bbox_alpha_iou: each axis to 2 alpha, (|dx|^2a + |dy|^2a) /
    # (cw^2a + ch^2a) (not the paper's (rho^2 / c^2)^alpha), lengths divided by the
    # enclosing diagonal first as the zoo writes it (eps = 1e-7 there, not the repo's 1e-9)
    cw, ch = _enclosing(pred, target)
    xp, yp = _centers(pred)
    xg, yg = _centers(target)
    c = (cw ** 2 + ch ** 2 + EPS).sqrt()
    b = 2 * alpha
    return (((xg - xp).abs() / c) ** b + ((yg - yp).abs() / c) ** b) / (
        (cw / c) ** b + (ch / c) ** b + EPS)


def alpha_giou(pred, target, alpha=3.0):
    # bbox_alpha_iou(GIoU=True): 1 - IoU^a + ((C - U) / C)^a with C kept >= U; eps as the
    # zoo's IoU losses (in the denominators)
    inter, union = _inter_union(pred, target)
    cw, ch = _enclosing(pred, target)
    area_c = cw * ch
    return (1 - (inter / (union + EPS)) ** alpha
            + ((area_c - union).clamp(min=0) / (area_c + EPS)) ** alpha)


def alpha_diou(pred, target, alpha=3.0):
    inter, union = _inter_union(pred, target)
    return 1 - (inter / (union + EPS)) ** alpha + _alpha_distance_penalty(pred, target, alpha)


def alpha_ciou(pred, target, alpha=3.0):
    # bbox_alpha_iou(CIoU=True): + (beta v)^alpha, beta = v / (1 - IoU + v) without gradient
    inter, union = _inter_union(pred, target)
    iou_ = inter / (union + EPS)
    w_p, h_p = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + EPS
    w_g, h_g = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + EPS
    v = (4 / math.pi ** 2) * torch.pow(torch.atan(w_g / h_g) - torch.atan(w_p / h_p), 2)
    with torch.no_grad():
        beta = v / (1 - iou_ + v + EPS)
    return (1 - iou_ ** alpha + _alpha_distance_penalty(pred, target, alpha)
            + (beta * v) ** alpha)


def _alpha_iou_official(pred, target, mode, alpha=3.0, eps=1e-9):
    # Jacobi93/Alpha-IoU utils/general.py bbox_alpha_iou as written (xyxy, its own eps
    # placements), pred as box1 and target as box2 as the repo's ComputeLoss calls it;
    # the loss is 1 minus its value
    b1_x1, b1_y1, b1_x2, b1_y2 = pred.unbind(1)
    b2_x1, b2_y1, b2_x2, b2_y2 = target.unbind(1)
    inter = ((torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0)
             * (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0))
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou_ = torch.pow(inter / union + eps, alpha)
    b = 2 * alpha
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    if mode == "giou":
        c_area = torch.max(cw * ch + eps, union)
        return 1 - (iou_ - torch.pow((c_area - union) / c_area + eps, alpha))
    c2 = cw ** b + ch ** b + eps
    rho_x = torch.abs(b2_x1 + b2_x2 - b1_x1 - b1_x2)
    rho_y = torch.abs(b2_y1 + b2_y2 - b1_y1 - b1_y2)
    rho2 = (rho_x ** b + rho_y ** b) / (2 ** b)
    if mode == "diou":
        return 1 - (iou_ - rho2 / c2)
    v = (4 / math.pi ** 2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha_ciou = v / ((1 + eps) - inter / union + v)
    return 1 - (iou_ - (rho2 / c2 + torch.pow(v * alpha_ciou + eps, alpha)))


def wiou(pred, target):
    # Instinct323/wiou _WIoU, v1 (eps added to the detached enclosing diagonal)
    inter, union = _inter_union(pred, target)
    cw, ch = _enclosing(pred, target)
    xp, yp = _centers(pred)
    xg, yg = _centers(target)
    l2_center = (xp - xg) ** 2 + (yp - yg) ** 2
    return torch.exp(l2_center / (cw ** 2 + ch ** 2 + EPS).detach()) * (1 - inter / (union + EPS))


def mpdiou(pred, target, img_w=640.0, img_h=640.0):
    inter, union = _inter_union(pred, target)
    d1 = (pred[:, 0] - target[:, 0]) ** 2 + (pred[:, 1] - target[:, 1]) ** 2
    d2 = (pred[:, 2] - target[:, 2]) ** 2 + (pred[:, 3] - target[:, 3]) ** 2
    norm = img_w ** 2 + img_h ** 2
    return 1 - (inter / (union + EPS) - d1 / norm - d2 / norm)


def inner_iou(pred, target, ratio=0.7):
    xp, yp = _centers(pred)
    xg, yg = _centers(target)
    wp, hp = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    wg, hg = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    b1 = torch.stack([xp - wp * ratio / 2, yp - hp * ratio / 2, xp + wp * ratio / 2, yp + hp * ratio / 2], 1)
    b2 = torch.stack([xg - wg * ratio / 2, yg - hg * ratio / 2, xg + wg * ratio / 2, yg + hg * ratio / 2], 1)
    inter, _ = _inter_union(b1, b2)
    union = wp * hp * ratio ** 2 + wg * hg * ratio ** 2 - inter + EPS
    return 1 - inter / union


def _cse_uie(pred, target, eps=EPS):
    # CSE-Autoloss tools/get_loss.py reg_loss
    overlap, ap, ag, enc = _mmdet_parts(pred, target, 0)
    enclose = enc[:, 0] * enc[:, 1] + eps
    union = ap + ag - overlap + eps
    return union, overlap, enclose


# the repo's protected primitives
def _div(a, b):
    return a / (b + 1e-20)


def cse_autoloss_a_reg(pred, target):
    U, I, E = _cse_uie(pred, target)
    # Add(1,Neg(Add(Div(I,U),Neg(Div(Add(E,Neg(Add(I,2))),E)))))
    return 1 + -(_div(I, U) + -_div(E + -(I + 2), E))


def cse_autoloss_b_reg(pred, target):
    U, I, E = _cse_uie(pred, target)
    # Neg(Div(Add(Div(Neg(Add(Neg(E),Add(1,I))),Neg(Add(3,Add(2,U)))),
    #             Add(Div(E,E),Div(Neg(E),Neg(1)))),
    #         Neg(Add(Div(Neg(Add(U,Div(I,1))),Neg(3)),Neg(E)))))
    num = _div(-(-E + (1 + I)), -(3 + (2 + U))) + (_div(E, E) + _div(-E, torch.full_like(E, -1.0)))
    den = -(_div(-(U + _div(I, torch.ones_like(I))), torch.full_like(U, -3.0)) + -E)
    return -_div(num, den)


def l1(pred, target):
    return (pred - target).abs()


def mse(pred, target):
    return (pred - target) ** 2


def smooth_l1(pred, target, beta=1.0):
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="none")


def balanced_l1(pred, target, alpha=0.5, gamma=1.5, beta=1.0):
    diff = torch.abs(pred - target)
    b = math.e ** (gamma / alpha) - 1
    return torch.where(
        diff < beta,
        alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff,
        gamma * diff + gamma / b - alpha * beta)


def wing(pred, target, omega=10.0, epsilon=2.0):
    # mmpose WingLoss.criterion, per entry (mmpose then sums the coordinates)
    delta = (target - pred).abs()
    c = omega * (1.0 - math.log(1.0 + omega / epsilon))
    return torch.where(delta < omega, omega * torch.log(1.0 + delta / epsilon), delta - c)


def _awing_mmpose(pred, target, y, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5):
    # mmpose AdaptiveWingLoss.criterion, per entry, the exponent's heatmap value y given
    delta = (target - pred).abs()
    a = omega * (1 / (1 + torch.pow(theta / epsilon, alpha - y))) * (alpha - y) * (
        torch.pow(theta / epsilon, alpha - y - 1)) * (1 / epsilon)
    c = theta * a - omega * torch.log(1 + torch.pow(theta / epsilon, alpha - y))
    return torch.where(delta < theta,
                       omega * torch.log(1 + torch.pow(delta / epsilon, alpha - y)),
                       a * delta - c)


def awing(pred, target, alpha=2.1, omega=14.0, epsilon=1.0, theta=0.5):
    # the exponent's y: the target held fixed and clamped into the heatmap range [0, 1]
    # (mmpose's loss itself for targets in [0, 1]: see test_awing_is_mmposes_on_heatmaps)
    y = target.detach().clamp(0, 1)
    return _awing_mmpose(pred, target, y, alpha, omega, epsilon, theta)


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def focal(logits, target, alpha=0.25, gamma=2.0):
    # torchvision sigmoid_focal_loss
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss


def ghm_c(logits, target, bins=10.0):
    # mmdet GHMC.forward, momentum 0, every element valid; per element (its sum / total is
    # mmdet's value, our reduction="mean")
    bins = int(bins)
    edges = [float(x) / bins for x in range(bins + 1)]
    edges[-1] += 1e-6
    weights = torch.zeros_like(logits)
    g = torch.abs(logits.sigmoid().detach() - target)
    tot = max(float(logits.numel()), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num_in_bin = inds.sum().item()
        if num_in_bin > 0:
            weights[inds] = tot / num_in_bin
            n += 1
    if n > 0:
        weights = weights / n
    return F.binary_cross_entropy_with_logits(logits, target, weights, reduction="none")


def ghm_r(pred, target, mu=0.02, bins=10.0):
    # mmdet GHMR.forward, momentum 0, every element valid (label_weight 1); per element (its
    # sum / total is mmdet's value, our reduction="mean")
    bins = int(bins)
    edges = [float(x) / bins for x in range(bins + 1)]
    edges[-1] = 1e3
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = torch.abs(diff / torch.sqrt(mu * mu + diff * diff)).detach()
    weights = torch.zeros_like(g)
    tot = max(float(pred.numel()), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num_in_bin = inds.sum().item()
        if num_in_bin > 0:
            n += 1
            weights[inds] = tot / num_in_bin
    if n > 0:
        weights = weights / n
    return loss * weights


def qfl(logits, target, beta=2.0):
    # mmdetection quality_focal_loss_tensor_target
    p = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * p.pow(beta)
    pos = target != 0
    scale = target[pos] - p[pos]
    loss[pos] = F.binary_cross_entropy_with_logits(logits[pos], target[pos], reduction="none") * scale.abs().pow(beta)
    return loss


def vfl(logits, target, alpha=0.75, gamma=2.0):
    # mmdetection varifocal_loss, iou_weighted
    p = logits.sigmoid()
    weight = target * (target > 0.0).float() + alpha * (p - target).abs().pow(gamma) * (target <= 0.0).float()
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight


def _serf(x):
    return (torch.erf(math.sqrt(math.pi) / 2 * x / 2) + 1) / 2


def _sgdf(x):
    x = x * math.pi / 4
    x = 2 * torch.atan(torch.tanh(x / 2))
    return (x * 2 / math.pi + 1) / 2


def cse_autoloss_b_cls(logits, target, alpha=0.25):
    # binary_cls_loss: func(X, Q, PY, NY), then alpha_t; logs computed stably
    q = target
    y = (target > 0).to(logits.dtype)
    ny = 1 - y
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    loss = -(q * ((1 + _serf(torch.sigmoid(ny))) * log_p)
             + (_sgdf(logits) + -q) * ((1 + -q) + -(1 + -p)) * log_1mp)
    return (alpha * y + (1 - alpha) * (1 - y)) * loss


def poly1_focal(logits, target, alpha=0.25, gamma=2.0, epsilon=1.0):
    # PolyLoss paper's poly1_focal_loss: the (alpha-balanced) focal loss plus
    # epsilon (1 - p_t)^(gamma + 1), the epsilon term without alpha_t
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    fl = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (1 - p_t) ** gamma
    if alpha >= 0:
        fl = (alpha * target + (1 - alpha) * (1 - target)) * fl
    return fl + epsilon * (1 - p_t) ** (gamma + 1)


def gaussian_focal(logits, target, alpha=2.0, gamma=4.0):
    # mmdetection gaussian_focal_loss on the sigmoid of the logits (its eps 1e-12 in the logs)
    pred, eps = torch.sigmoid(logits), 1e-12
    pos_weights = target.eq(1)
    neg_weights = (1 - target).pow(gamma)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos_weights
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_weights
    return pos_loss + neg_loss


def class_balanced(logits, target, counts=None, freq=None, beta=0.999, gamma=2.0):
    # richardaecn/class-balanced-loss src/cifar_main.py: weights (1 - beta) / (1 - beta^n)
    # normalised to sum to the number of classes; a sample's C terms take its label's weight
    # (the sum of weights over its one-hot row); the official focal_loss modulator, no alpha.
    # Beyond the official code (which has neither): a row with several positives takes their
    # mean weight, a background row (no positive) weight 1.
    classes = logits.shape[1]
    n = torch.ones(classes, dtype=logits.dtype) if counts is None else counts.detach().to(logits.dtype)
    effective_num = 1.0 - torch.pow(beta, n)
    weights = (1.0 - beta) / effective_num
    weights = weights / weights.sum() * classes
    labels = (target > 0).to(logits.dtype)
    positives = labels.sum(1)
    per_sample = (weights[None, :] * labels).sum(1) / positives.clamp(min=1)
    per_sample = torch.where(positives > 0, per_sample, torch.ones_like(per_sample))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    modulator = torch.exp(-gamma * target * logits - gamma * torch.log1p(torch.exp(-logits)))
    return per_sample[:, None] * modulator * bce


def eql(logits, target, counts=None, freq=None, lambda_=0.00177):
    # tztztztztz/eql.detectron2 EQLFastRCNNOutputs.eql_loss: weight
    # 1 - exclude_func * threshold_func * (1 - target) on the sigmoid BCE; a background
    # sample is a row without a positive class (the official gt class C)
    n_i, n_c = logits.shape
    f = torch.ones(n_c, dtype=logits.dtype) if freq is None else freq.detach().to(logits.dtype)
    labels = (target > 0).to(logits.dtype)
    exclude = (labels.sum(1) > 0).to(logits.dtype).view(n_i, 1).expand(n_i, n_c)
    threshold = logits.new_zeros(n_c)
    threshold[f < lambda_] = 1
    threshold = threshold.view(1, n_c).expand(n_i, n_c)
    eql_w = 1 - exclude * threshold * (1 - labels)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * eql_w


def iou_branch(logits, target):
    # IoU-aware RetinaNet weighted_iou_regression_loss: BCE with logits of the IoU head
    # against the IoU, which is a label (no gradient)
    return F.binary_cross_entropy_with_logits(logits, target.detach(), reduction="none")


def softmax_ce(logits, labels, quality=None):
    return F.cross_entropy(logits, labels, reduction="none")


def poly1(logits, labels, quality=None, epsilon=1.0):
    ce = F.cross_entropy(logits, labels, reduction="none")
    pt = torch.softmax(logits, 1).gather(1, labels[:, None])[:, 0]
    return ce + epsilon * (1 - pt)


def cse_autoloss_a_cls(logits, labels, quality=None):
    # Neg(Dot(Mul(Y,Add(1,Sin(Z))),Log(Softmax(X)))), Z = quality (1 where not given)
    z = torch.ones_like(logits[:, 0]) if quality is None else quality
    y = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return -((y * (1 + torch.sin(z))[:, None]) * torch.log_softmax(logits, 1)).sum(1)


def dfl(logits, target):
    # mmdetection distribution_focal_loss
    left = target.long()
    right = left + 1
    wl = right.to(target.dtype) - target
    wr = target - left.to(target.dtype)
    return (F.cross_entropy(logits, left, reduction="none") * wl
            + F.cross_entropy(logits, right, reduction="none") * wr)


def ap_step(diff, delta=1.0):
    # cccorn/AP-loss aploss.py: torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)
    return torch.clamp(diff / (2 * delta) + 0.5, min=0, max=1)


def sigmoid_step(diff, tau=0.5):
    # Smooth-AP Smooth_AP_loss.py sigmoid(tensor, temp): exp(-x / temp) clamped, 1 / (1 + e)
    exponent = (-diff / tau).clamp(min=-50, max=50)
    return 1.0 / (1.0 + torch.exp(exponent))


REFERENCES = {
    name: fn for name, fn in globals().items()
    if callable(fn) and not name.startswith("_") and name not in {"math", "torch", "F"}
}
