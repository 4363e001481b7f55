"""Label assigners: which prior learns which ground truth, with what target and weight.

Assigners are components, not losses: a search space chooses one (and its parameters)
beside the losses. Every assigner takes an :class:`AssignerInputs` and returns an
:class:`Assignment` (see :mod:`autoloss.assigners.base` for the contract) and passes
:class:`autoloss.assigners.testing.AssignerContract`.

    >>> from autoloss import assigners
    >>> assigners.names()
    ['atss', 'dsl', 'fcos', 'hungarian', 'maxiou', 'ota', 'simota', 'tal']
    >>> assigners.get("atss").defaults
    {'topk': 9, 'anchor_scale': 8.0}
    >>> atss = assigners.build("atss", topk=12)

Built in (survey section 1): one-to-many ``maxiou``, ``fcos``, ``atss`` (ground truth
only), ``simota``, ``dsl``, ``tal``, ``ota`` (read the detached predictions) and the
one-to-one ``hungarian``.
"""
from __future__ import annotations

from typing import Any

from ..errors import UnknownNameError, did_you_mean
from ._dynamic import (DynamicSoftLabelAssigner, OTAAssigner, SimOTAAssigner,
                       TaskAlignedAssigner)
from ._hungarian import HungarianAssigner
from ._static import ATSSAssigner, FCOSAssigner, MaxIoUAssigner
from .base import (INPUTS, Assigner, AssignerError, AssignerInputs, AssignerSpec, Assignment,
                   Param)

__all__ = ["names", "get", "build", "Assigner", "AssignerInputs", "Assignment",
           "AssignerSpec", "AssignerError", "Param", "INPUTS", "MaxIoUAssigner",
           "FCOSAssigner", "ATSSAssigner", "SimOTAAssigner", "DynamicSoftLabelAssigner",
           "TaskAlignedAssigner", "OTAAssigner", "HungarianAssigner"]

#: FCOS's default object sizes per level (mmdetection ``FCOSHead.regress_ranges``)
FCOS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0),
               (512.0, float("inf")))

_SPECS = (
    AssignerSpec(
        id="maxiou",
        title="Max-IoU anchor assignment (RetinaNet thresholds)",
        paper="Ren et al. (Faster R-CNN), NeurIPS 2015; Lin et al. (RetinaNet), ICCV 2017",
        reference="mmdetection mmdet/models/task_modules/assigners/max_iou_assigner.py "
                  "MaxIoUAssigner (RetinaNet config)",
        needs=(),
        params=(
            Param("pos_iou_thr", 0.5, 0.3, 0.7, doc="best IoU >= this: positive"),
            Param("neg_iou_thr", 0.4, 0.2, 0.6, doc="best IoU < this: background; between: "
                                                    "ignored (must be <= pos_iou_thr)"),
            Param("min_pos_iou", 0.0, 0.0, 0.5, doc="low-quality match floor"),
            Param("match_low_quality", True, kind="bool",
                  doc="each gt also takes its best prior(s)"),
            Param("gt_max_assign_all", True, kind="bool",
                  doc="low-quality match takes every prior tied at the best IoU"),
            Param("anchor_scale", 4.0, 2.0, 10.0,
                  doc="side of the square anchor put on a point prior, in strides "
                      "(RetinaNet's octave_base_scale 4); unused with anchor priors"),
        ),
        factory=MaxIoUAssigner,
    ),
    AssignerSpec(
        id="fcos",
        title="FCOS point assignment with centre sampling and scale ranges",
        paper="Tian, Shen, Chen, He (FCOS), ICCV 2019; centre sampling from FCOS TPAMI 2020",
        reference="mmdetection mmdet/models/dense_heads/fcos_head.py FCOSHead.get_targets / "
                  "_get_targets_single / centerness_target",
        needs=(),
        params=(
            Param("center_sampling", True, kind="bool",
                  doc="restrict positives to the centre square"),
            Param("radius", 1.5, 0.5, 3.0, doc="centre square half-side, in strides"),
            Param("range_scale", 1.0, 0.25, 4.0, log=True,
                  doc="multiplies every level's regress range"),
            Param("regress_ranges", FCOS_RANGES, kind="fixed",
                  doc="(low, high) of max(l, t, r, b) per level, finest first"),
        ),
        factory=FCOSAssigner,
    ),
    AssignerSpec(
        id="atss",
        title="Adaptive Training Sample Selection",
        paper="Zhang, Chi, Yao, Lei, Li (ATSS), CVPR 2020",
        reference="mmdetection mmdet/models/task_modules/assigners/atss_assigner.py "
                  "ATSSAssigner",
        needs=(),
        params=(
            Param("topk", 9, 3, 20, kind="int", doc="candidates per level and gt"),
            Param("anchor_scale", 8.0, 2.0, 10.0,
                  doc="side of the square anchor put on a point prior, in strides (ATSS's "
                      "octave_base_scale 8); unused with anchor priors"),
        ),
        factory=ATSSAssigner,
    ),
    AssignerSpec(
        id="simota",
        title="SimOTA dynamic-k assignment (YOLOX)",
        paper="Ge, Liu, Wang, Li, Sun (YOLOX), arXiv 2107.08430, 2021",
        reference="mmdetection mmdet/models/task_modules/assigners/sim_ota_assigner.py "
                  "SimOTAAssigner (sqrt of the scores as YOLOX's yolo_head.get_assignments)",
        needs=("scores", "pred_boxes"),
        params=(
            Param("center_radius", 2.5, 0.5, 5.0, doc="centre square half-side, in strides"),
            Param("candidate_topk", 10, 3, 20, kind="int",
                  doc="IoUs summed for the dynamic k"),
            Param("iou_weight", 3.0, 0.5, 6.0, doc="weight of -log IoU in the cost"),
            Param("cls_weight", 1.0, 0.25, 4.0, log=True, doc="weight of the BCE cost"),
        ),
        factory=SimOTAAssigner,
    ),
    AssignerSpec(
        id="dsl",
        title="Dynamic soft label assignment (RTMDet)",
        paper="Lyu et al. (RTMDet), arXiv 2212.07784, 2022",
        reference="mmdetection mmdet/models/task_modules/assigners/"
                  "dynamic_soft_label_assigner.py DynamicSoftLabelAssigner",
        needs=("scores", "pred_boxes"),
        params=(
            Param("soft_center_radius", 3.0, 1.0, 5.0,
                  doc="centre prior 10^(d / stride - radius)"),
            Param("topk", 13, 3, 20, kind="int", doc="IoUs summed for the dynamic k"),
            Param("iou_weight", 3.0, 0.5, 6.0, doc="weight of -log IoU in the cost"),
        ),
        factory=DynamicSoftLabelAssigner,
    ),
    AssignerSpec(
        id="tal",
        title="Task-aligned assignment (TOOD)",
        paper="Feng, Zhong, Gao, Scott, Huang (TOOD), ICCV 2021",
        reference="ultralytics ultralytics/utils/tal.py TaskAlignedAssigner",
        needs=("scores", "pred_boxes"),
        params=(
            Param("topk", 13, 3, 20, kind="int", doc="priors per gt"),
            Param("alpha", 1.0, 0.25, 2.0, doc="exponent of the class score"),
            Param("beta", 6.0, 1.0, 8.0, doc="exponent of the IoU"),
            Param("iou", "iou", kind="choice", choices=("iou", "ciou"),
                  doc="overlap in the metric: IoU (TOOD) or CIoU >= 0 (YOLOv8)"),
        ),
        factory=TaskAlignedAssigner,
    ),
    AssignerSpec(
        id="ota",
        title="Optimal transport assignment (Sinkhorn)",
        paper="Ge, Liu, Li, Yoshie, Sun (OTA), CVPR 2021",
        reference="Megvii-BaseDetection/OTA playground/detection/coco/"
                  "ota.res50.fpn.coco.800size.1x (fcos.py FCOS.get_ground_truth, "
                  "SinkhornDistance; config.py)",
        needs=("scores", "pred_boxes"),
        params=(
            Param("center_radius", 2.5, 1.0, 5.0, doc="centre square half-side, in strides"),
            Param("reg_weight", 1.5, 0.5, 4.0, doc="weight of -log IoU in the cost"),
            Param("topk", 20, 5, 30, kind="int", doc="IoUs summed for each gt's supply"),
            Param("sinkhorn_eps", 0.1, 0.02, 0.5, log=True, doc="entropic regularisation"),
            Param("sinkhorn_iters", 50, 10, 100, kind="int", doc="Sinkhorn iterations"),
            Param("focal_alpha", 0.25, doc="focal alpha of the classification cost"),
            Param("focal_gamma", 2.0, doc="focal gamma of the classification cost"),
        ),
        factory=OTAAssigner,
    ),
    AssignerSpec(
        id="hungarian",
        title="Hungarian one-to-one matching (DETR)",
        paper="Carion et al. (DETR), ECCV 2020; focal class cost: Zhu et al. "
              "(Deformable DETR), ICLR 2021",
        reference="mmdetection mmdet/models/task_modules/assigners/hungarian_assigner.py "
                  "HungarianAssigner, match_cost.py (FocalLossCost, ClassificationCost, "
                  "BBoxL1Cost xywh, IoUCost giou); scipy linear_sum_assignment",
        needs=("scores", "pred_boxes", "image_size"),
        params=(
            Param("cost_class", 1.0, 0.0, 4.0, doc="weight of the class cost"),
            Param("cost_bbox", 5.0, 0.0, 10.0, doc="weight of the normalised cxcywh L1"),
            Param("cost_giou", 2.0, 0.0, 5.0, doc="weight of -GIoU"),
            Param("class_cost", "focal", kind="choice", choices=("focal", "softmax"),
                  doc="focal (Deformable DETR, sigmoid scores) or -softmax prob (DETR)"),
            Param("focal_alpha", 0.25, doc="focal class cost alpha"),
            Param("focal_gamma", 2.0, doc="focal class cost gamma"),
        ),
        factory=HungarianAssigner,
        one_to_one=True,
    ),
)

_REGISTRY = {s.id: s for s in _SPECS}
for _spec in _SPECS:
    _spec.factory.spec = _spec


def names() -> list[str]:
    """The registered assigner ids, sorted."""
    return sorted(_REGISTRY)


def get(assigner_id: str) -> AssignerSpec:
    """The registry entry of ``assigner_id``: title, paper, reference, the optional inputs
    it needs, its parameters with defaults and search ranges."""
    try:
        return _REGISTRY[assigner_id]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown assigner {assigner_id!r}; "
                               f"{did_you_mean(str(assigner_id), names())}") from None


def build(assigner_id: str, **params: Any) -> Assigner:
    """An assigner with its registry defaults, overridden by ``params``; call it on an
    :class:`AssignerInputs` (or on its fields as keywords)."""
    return get(assigner_id).factory(**params)
