"""One-to-one assignment (DETR): a bipartite matching of predictions to ground truths."""
from __future__ import annotations

import torch
from torch import Tensor

from ._geometry import gather_gt, pairwise_iou
from .base import Assigner, AssignerError, AssignerInputs, Assignment


def _cxcywh(b: Tensor) -> Tensor:
    return torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2,
                        b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]], -1)


class HungarianAssigner(Assigner):
    """Hungarian matching (DETR), as mmdetection's ``HungarianAssigner`` with
    ``FocalLossCost`` or ``ClassificationCost``, ``BBoxL1Cost(box_format='xywh')`` and
    ``IoUCost(iou_mode='giou')``.

    Cost of prediction i for gt j: ``cost_class * c_ij + cost_bbox * ||b_i - g_j||_1 +
    cost_giou * -GIoU(b_i, g_j)``, the L1 on (cx, cy, w, h) divided by the image size.
    ``class_cost="focal"`` (default; the scores are sigmoid logits): ``c = alpha (1 - p)^
    gamma (-log(p + 1e-12)) - (1 - alpha) p^gamma (-log(1 - p + 1e-12))`` at gt j's class,
    as Deformable-DETR/DINO; ``"softmax"``: ``c = -softmax(scores)[gt class]`` as the
    original DETR, the softmax over the ``C`` class columns (DETR's own softmax also spans
    its no-object column, which these scores do not have). Each image's matrix is solved exactly by
    ``scipy.optimize.linear_sum_assignment`` on the CPU: one call per image, the only
    per-image loop of the package (the cost matrices are built for the whole batch).
    Every gt is matched once when there are at least as many predictions as gts.
    """

    def validate(self):
        for name in ("cost_class", "cost_bbox", "cost_giou", "focal_gamma"):
            self._range(name, 0.0)
        self._range("focal_alpha", 0.0, 1.0)

    def cost(self, x: AssignerInputs) -> Tensor:
        """The ``(B, G, P)`` matching cost (padding rows included)."""
        if self.class_cost == "focal":
            p = x.scores.sigmoid()
            eps = 1e-12
            neg = -(1 - p + eps).log() * (1 - self.focal_alpha) * p.pow(self.focal_gamma)
            pos = -(p + eps).log() * self.focal_alpha * (1 - p).pow(self.focal_gamma)
            cls = gather_gt(pos, x.gt_labels) - gather_gt(neg, x.gt_labels)        # (B, G, P)
        else:
            cls = -gather_gt(x.scores.softmax(-1), x.gt_labels)
        h, w = x.image_size[:, 0], x.image_size[:, 1]
        factor = torch.stack([w, h, w, h], -1)[:, None]                           # (B, 1, 4)
        pred = _cxcywh(x.pred_boxes) / factor
        gt = _cxcywh(x.gt_boxes) / factor
        l1 = torch.cdist(gt, pred, p=1)                                          # (B, G, P)
        giou = pairwise_iou(x.gt_boxes, x.pred_boxes, mode="giou")
        return cls * self.cost_class + l1 * self.cost_bbox - giou * self.cost_giou

    def assign(self, x: AssignerInputs) -> Assignment:
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as err:  # pragma: no cover - scipy ships with scikit-learn
            raise AssignerError("assigner 'hungarian' needs scipy: pip install scipy") from err
        cost = self.cost(x).cpu()
        mask = x.gt_mask.cpu()
        gt_index = torch.full((x.batch, x.num_priors), -1, dtype=torch.long)
        for b in range(x.batch):              # scipy solves one matrix at a time
            real = torch.nonzero(mask[b], as_tuple=True)[0]
            if real.numel() == 0:
                continue
            # (G_b, P): scipy puts the shorter side first whichever way it is given, so
            # this is the matrix mmdetection's (P, G_b) problem is solved on
            gts, preds = linear_sum_assignment(cost[b][real].numpy())
            gt_index[b, torch.from_numpy(preds)] = real[torch.from_numpy(gts)]
        return Assignment.build(x, gt_index.to(x.device))
