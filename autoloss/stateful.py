"""Stateful losses: weights from running statistics kept on the module.

Three losses whose weights depend on what training has seen so far:

* :class:`SeesawLoss` (zoo ``seesaw``, survey 2.3): softmax cross-entropy whose negative
  logits are shifted by log S_ij, S = mitigation (cumulative class counts) x compensation
  (this batch's scores); mmdetection ``SeesawLoss``.
* :class:`EQLv2Loss` (zoo ``eqlv2``, survey 2.4): sigmoid BCE re-weighted per class by the
  ratio of accumulated positive to negative gradient magnitudes; mmdetection
  ``EQLV2Loss``.
* :class:`WIoUv3Loss` (zoo ``wiou_v3``, survey 3.3): Wise-IoU v1 scaled by a non-monotonic
  focusing coefficient of the outlier degree, the IoU loss over its running mean;
  Instinct323/wiou ``IouLoss``.

The contract they share (:class:`StatefulLoss`):

* the state is torch buffers: ``state_dict`` saves it, ``load_state_dict`` restores it
  (whatever the number of classes), ``.to(device)`` moves it;
* a call updates it in training mode only (``train()``, a module's default), as the
  official code does during training; in ``eval()`` a call reads it and changes nothing
  (a gradient check, a validation pass);
* the weights of a call come from the state before that call's update, except where the
  official code updates first (Seesaw counts the batch's labels, WIoU v3 moves its mean,
  before computing the loss);
* ``reset()`` restores the state of a new module, so a search that reuses a module for
  another candidate or seed starts from the same point;
* per-class state is sized at the first training call, from the logits (a reset module
  has none); a later call with another number of classes is an error.

No gradient flows through the state or the weights; the value is differentiable by
autograd in the inputs.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import SignatureError

__all__ = ["EQLv2Loss", "SeesawLoss", "StatefulLoss", "WIoUv3Loss"]

#: mmdetection SeesawLoss(p=0.8, q=2.0, eps=1e-2)
SEESAW_P, SEESAW_Q, SEESAW_EPS = 0.8, 2.0, 1e-2
#: mmdetection EQLV2Loss(gamma=12, mu=0.8, alpha=4.0); the gradient ratio a new module
#: starts from (weights 1 until the first update)
EQLV2_GAMMA, EQLV2_MU, EQLV2_ALPHA, EQLV2_START = 12.0, 0.8, 4.0, 100.0
#: Instinct323/wiou IouLoss: alpha 1.9, delta 3; momentum 1 - 0.05 ** (1 / (n t)) with
#: n = 890 batches per epoch and t = 34 epochs (its IouCalculator's defaults)
WIOU_ALPHA, WIOU_DELTA, WIOU_STEPS = 1.9, 3.0, 890.0 * 34.0


class StatefulLoss(torch.nn.Module):
    """Base of the stateful losses: buffers as state, ``reset()``, and a ``load_state_dict``
    that takes per-class buffers of any size (a fresh module has them empty)."""

    def reset(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = buf.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _classes(self, name: str, have: int, need: int) -> None:
        if have and have != need:
            raise SignatureError(f"{name}: the state holds {have} classes, the logits give "
                                 f"{need}; call reset() to start over with {need}")


# ---------------------------------------------------------------------------- Seesaw
class SeesawLoss(StatefulLoss):
    """Seesaw loss (Wang et al., CVPR 2021), mmdetection's ``SeesawLoss`` layout.

    ``logits`` (N, K + 2): K class logits, then two objectness logits (foreground,
    background); ``labels`` (N,) in [0, K], K the background. Per sample, (N,):

        seesaw CE of the K class logits (positives only, 0 for background samples)
        + CE of the 2 objectness logits (target 0 for a positive, 1 for background)

    Seesaw CE: -log softmax(z + (1 - onehot_y) log S_y)_y with S_yj = M_yj C_yj,
    M_yj = (N_j / N_y)^p where N_j < N_y else 1 (N: cumulative label counts, clamped at 1),
    C_yj = (s_j / s_y)^q where s_j > s_y else 1 (s: this batch's softmax of the class
    logits, no gradient; s_y clamped at eps).

    State: ``counts`` (K + 1,), int64, the labels seen (background last, as mmdetection's
    ``cum_samples``), incremented by each training call *before* its loss. mmdetection's
    bbox head passes avg_factor = the number of samples, which makes both of its terms
    means: ``reduction="mean"`` here gives their sum.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("counts", torch.zeros(0, dtype=torch.long))

    def reset(self) -> None:
        self.counts = torch.zeros(0, dtype=torch.long, device=self.counts.device)

    def forward(self, logits: Tensor, labels: Tensor, quality: Optional[Tensor] = None, *,
                p: float = SEESAW_P, q: float = SEESAW_Q, eps: float = SEESAW_EPS) -> Tensor:
        from .signatures import SOFTMAX

        SOFTMAX.prepare("seesaw", logits, labels, quality)  # shapes, dtypes, label range
        k = logits.shape[1] - 2
        if k < 1:
            raise SignatureError(f"seesaw: logits must have K + 2 columns (K >= 1 classes, "
                                 f"then 2 objectness logits), got {logits.shape[1]}")
        labels = labels.long()
        if labels.numel() and int(labels.max()) > k:
            raise SignatureError(f"seesaw: labels must lie in [0, {k}] ({k} classes, {k} the "
                                 f"background), got max {int(labels.max())}")
        self._classes("seesaw", self.counts.numel() - 1 if self.counts.numel() else 0, k)
        if self.training:
            if not self.counts.numel():
                self.counts = torch.zeros(k + 1, dtype=torch.long, device=logits.device)
            self.counts += torch.bincount(labels, minlength=k + 1).to(self.counts.device)
        seen = (self.counts[:k] if self.counts.numel()
                else torch.zeros(k, dtype=torch.long, device=logits.device))
        classes, objectness = logits[:, :k], logits[:, k:]
        positive = labels < k
        label = torch.where(positive, labels, torch.zeros_like(labels))  # rows masked below
        onehot = F.one_hot(label, k).to(logits.dtype)
        with torch.no_grad():
            n = seen.to(logits.dtype).clamp(min=1)
            ratio = n[None, :] / n[label][:, None]
            mitigation = torch.where(ratio < 1, ratio.pow(p), torch.ones_like(ratio))
            scores = torch.softmax(classes.detach(), 1)
            own = scores.gather(1, label[:, None]).clamp(min=eps)
            relative = scores / own
            compensation = torch.where(relative > 1, relative.pow(q), torch.ones_like(relative))
            shift = torch.log(mitigation * compensation) * (1 - onehot)
        class_loss = F.cross_entropy(classes + shift, label, reduction="none")
        object_loss = F.cross_entropy(objectness, (~positive).long(), reduction="none")
        return torch.where(positive, class_loss, torch.zeros_like(class_loss)) + object_loss


# ---------------------------------------------------------------------------- EQLv2
class EQLv2Loss(StatefulLoss):
    """Equalization Loss v2 (Tan et al., CVPR 2021), on the ``sigmoid`` signature.

    ``logits`` (N, C), ``target`` (N, C) (one-hot; background rows all zero). Per element,
    (N, C): w_ij BCE(x_ij, t_ij) with w_ij = r_j t_ij + q_j (1 - t_ij),

        q_j = sigmoid(gamma (g_j - mu)),  r_j = 1 + alpha (1 - q_j),  g_j = G+_j / (G-_j + 1e-10)

    G+_j, G-_j: the positive and negative gradient magnitudes of class j accumulated over
    the training calls, sum_i abs(p_ij - t_ij) w_ij t_ij and ... (1 - t_ij), collected
    *after* each call's loss with that call's weights. A new module starts from g_j = 100
    (weights exactly 1), as mmdetection.

    State: ``pos_grad``, ``neg_grad``, ``ratio`` (C,), float32 (mmdetection's ``pos_grad``,
    ``neg_grad``, ``pos_neg``). mmdetection's head has one more sigmoid channel, the
    objectness, last, with weight 1 and no statistics: its value is this loss of the C class
    columns plus plain BCE of that channel. mmdetection divides the sum by N (the samples):
    ``reduction="sum"`` over N, or ``avg_factor=N``.
    """

    def __init__(self):
        super().__init__()
        for name in ("pos_grad", "neg_grad", "ratio"):
            self.register_buffer(name, torch.zeros(0))

    def reset(self) -> None:
        for name in ("pos_grad", "neg_grad", "ratio"):
            setattr(self, name, torch.zeros(0, device=self.ratio.device))

    def forward(self, logits: Tensor, target: Tensor, counts: Optional[Tensor] = None,
                freq: Optional[Tensor] = None, *, gamma: float = EQLV2_GAMMA,
                mu: float = EQLV2_MU, alpha: float = EQLV2_ALPHA) -> Tensor:
        from .signatures import SIGMOID

        SIGMOID.prepare("eqlv2", logits, target, counts, freq)  # shapes, dtypes, range
        c = logits.shape[1]
        self._classes("eqlv2", self.ratio.numel(), c)
        ratio = (self.ratio if self.ratio.numel()
                 else torch.full((c,), EQLV2_START, device=logits.device))
        with torch.no_grad():
            neg_w = torch.sigmoid(gamma * (ratio - mu)).to(logits.dtype)
            pos_w = 1 + alpha * (1 - neg_w)
            t = target.detach()
            weight = pos_w * t + neg_w * (1 - t)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
        if self.training:
            self._collect(logits.detach(), t, weight, c)
        return loss

    @torch.no_grad()
    def _collect(self, logits: Tensor, t: Tensor, weight: Tensor, c: int) -> None:
        if not self.ratio.numel():
            dev = logits.device
            self.pos_grad, self.neg_grad = torch.zeros(c, device=dev), torch.zeros(c, device=dev)
        grad = (torch.sigmoid(logits) - t).abs() * weight
        self.pos_grad += (grad * t).sum(0).to(self.pos_grad.dtype)
        self.neg_grad += (grad * (1 - t)).sum(0).to(self.neg_grad.dtype)
        self.ratio = self.pos_grad / (self.neg_grad + 1e-10)


# ---------------------------------------------------------------------------- WIoU v3
@lru_cache(maxsize=None)
def _compiled(loss_id: str):
    from . import zoo

    return zoo.compiled(loss_id)


class WIoUv3Loss(StatefulLoss):
    """Wise-IoU v3 (Tong et al., arXiv 2301.10051, 2023), on the ``box`` signature.

    Per box, (N,): r L_v1 with L_v1 = exp(rho^2 / sg(c^2)) L_IoU (the zoo's ``wiou``),
    L_IoU = 1 - IoU, and the non-monotonic focusing coefficient

        beta = sg(L_IoU) / mean,   r = beta / (delta alpha^(beta - delta))

    where ``mean`` is the running mean of L_IoU: each training call first sets
    mean <- (1 - m) mean + m batch_mean(L_IoU), m = 1 - 0.05^(1 / steps), then computes
    the loss with it (as the official code). ``steps`` = n t, the batches per epoch times
    the epoch where mAP growth slows: after ``steps`` calls the initial mean weighs 5%.

    State: ``mean``, a float32 scalar starting at 1 (the official ``iou_mean``).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.ones(()))

    def reset(self) -> None:
        self.mean = torch.ones((), device=self.mean.device)

    def forward(self, pred: Tensor, target: Tensor, *, alpha: float = WIOU_ALPHA,
                delta: float = WIOU_DELTA, steps: float = WIOU_STEPS) -> Tensor:
        if not steps >= 1:
            raise SignatureError(f"wiou_v3: steps must be >= 1 (batches per epoch x epochs), "
                                 f"got {steps}")
        v1 = _compiled("wiou")(pred, target)
        if self.mean.device != pred.device:  # follow the inputs, as the other states do
            self.mean = self.mean.to(pred.device)
        with torch.no_grad():
            iou_loss = _compiled("iou")(pred.detach(), target.detach())
            if self.training and iou_loss.numel():
                m = 1.0 - math.pow(0.05, 1.0 / steps)
                self.mean.mul_(1.0 - m).add_(m * iou_loss.mean())
            beta = iou_loss / self.mean.to(iou_loss.dtype)
            r = beta / (delta * torch.pow(torch.as_tensor(alpha, dtype=beta.dtype), beta - delta))
        return r * v1
