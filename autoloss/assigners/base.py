"""The assigner contract: what every label assigner takes, returns and promises.

An assigner decides, for every image of a batch and every prior (an anchor point or an
anchor box of the detector's feature maps), which ground-truth object the prior learns,
with what classification target and what weight, or that it is background. It is not a
loss: it runs without gradient on detached inputs, once per training step (the
prediction-aware ones) or once per dataset (the static ones).

Call order::

    assigner = autoloss.assigners.build("atss", topk=9)
    inputs = AssignerInputs(priors=points, strides=strides, gt_boxes=boxes, gt_labels=labels,
                            gt_mask=mask, scores=logits.detach(), pred_boxes=boxes_pred.detach())
    result = assigner(inputs)          # an Assignment, (B, P) per field

Inputs (:class:`AssignerInputs`): priors shared by the batch (``P`` of them), ground truth
padded to ``G`` boxes per image with a validity mask (``B`` images; :meth:`AssignerInputs.
from_lists` pads ragged lists), and optionally the detector's detached predictions:
classification **logits** (sigmoid convention, one column per class, no background column)
and decoded boxes (xyxy, absolute pixels). Output (:class:`Assignment`): per image and
prior the matched gt index (``-1`` for none), the label (``num_classes`` for background),
a soft quality target in [0, 1], a loss weight and an ignore flag.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..errors import AutolossError, UnknownNameError, did_you_mean

__all__ = ["AssignerError", "AssignerInputs", "Assignment", "Param", "AssignerSpec",
           "Assigner", "INPUTS"]


class AssignerError(AutolossError, ValueError):
    """Inputs an assigner cannot take (wrong shape, dtype, device, a missing prediction) or
    a parameter out of its domain."""


#: the optional inputs an assigner may need, by name (what ``AssignerSpec.needs`` lists)
INPUTS = ("scores", "pred_boxes", "image_size")


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _tensor(name: str, value: Any, hint: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise AssignerError(f"{name} must be a torch.Tensor {hint}, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------- inputs
@dataclass(frozen=True, eq=False)
class AssignerInputs:
    """Everything an assigner may read, for a batch of ``B`` images sharing ``P`` priors.

    Args:
        priors: ``(P, 2)`` points (x, y) or ``(P, 4)`` anchor boxes (x1, y1, x2, y2), in
            pixels, the same for every image. Box-only assigners that need anchor boxes
            (``maxiou``, ``atss``) put a square of side ``anchor_scale * stride`` on each
            point.
        strides: ``(P,)`` the stride of each prior's feature level, or one number for a
            single level.
        gt_boxes: ``(B, G, 4)`` ground-truth boxes, xyxy pixels, padded to the largest
            ``G`` of the batch (padding rows are never read).
        gt_labels: ``(B, G)`` integer classes in ``[0, num_classes)``.
        gt_mask: ``(B, G)`` bool, True for a real box, False for padding; ``None`` means
            every row is real.
        scores: ``(B, P, C)`` detached classification **logits** (sigmoid per class, no
            background column). YOLOX-style objectness: pass ``logit(p_cls * p_obj)``.
        pred_boxes: ``(B, P, 4)`` detached decoded predicted boxes, xyxy pixels.
        levels: ``(P,)`` integer level of each prior; ``None`` numbers the distinct strides
            from the finest (0) up.
        num_classes: ``C``; taken from ``scores`` when given, required otherwise (the
            background label is ``num_classes``).
        image_size: ``(H, W)`` of the (padded) input images, or a ``(B, 2)`` tensor of
            per-image ``(H, W)``; only ``hungarian`` reads it (it normalises boxes).

    Every tensor is detached on construction; floating tensors must share one dtype and
    all tensors one device.
    """

    priors: Tensor
    strides: Union[Tensor, float]
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_mask: Optional[Tensor] = None
    scores: Optional[Tensor] = None
    pred_boxes: Optional[Tensor] = None
    levels: Optional[Tensor] = None
    num_classes: Optional[int] = None
    image_size: Optional[Union[Tensor, Sequence[float]]] = None

    def __post_init__(self):
        set_ = object.__setattr__
        priors = _tensor("priors", self.priors, "of shape (P, 2) points or (P, 4) anchors")
        if priors.dim() != 2 or priors.shape[1] not in (2, 4):
            raise AssignerError(f"priors must be (P, 2) points or (P, 4) xyxy anchors, got "
                                f"{_shape(priors)}; for one feature map of shape (H, W, 2) "
                                "pass priors.reshape(-1, 2)")
        if not priors.is_floating_point():
            raise AssignerError(f"priors must be floating point, got {priors.dtype}; pass "
                                "priors.float()")
        dtype, device = priors.dtype, priors.device
        n_priors = priors.shape[0]
        set_(self, "priors", priors.detach())

        strides = self.strides
        if not isinstance(strides, Tensor):
            if not isinstance(strides, (int, float)):
                raise AssignerError(f"strides must be a (P,) tensor or a number, got "
                                    f"{type(strides).__name__}")
            strides = torch.full((n_priors,), float(strides), dtype=dtype, device=device)
        elif strides.dim() == 0:
            strides = strides.to(dtype).expand(n_priors)
        if strides.dim() != 1 or strides.shape[0] != n_priors:
            raise AssignerError(f"strides must be (P,) = ({n_priors},), one per prior, got "
                                f"{_shape(strides)}; build it with torch.cat([torch.full((n_l,"
                                "), s_l) for each level])")
        if bool((strides <= 0).any()):
            raise AssignerError("strides must be positive")
        set_(self, "strides", strides.detach().to(dtype=dtype))

        boxes = _tensor("gt_boxes", self.gt_boxes, "of shape (B, G, 4)")
        if boxes.dim() != 3 or boxes.shape[2] != 4:
            fix = ("for one image pass gt_boxes[None]; for ragged lists use "
                   "AssignerInputs.from_lists")
            raise AssignerError(f"gt_boxes must be (B, G, 4) xyxy, padded over the batch, got "
                                f"{_shape(boxes)}; {fix}")
        batch, n_gt = boxes.shape[:2]
        labels = _tensor("gt_labels", self.gt_labels, f"of shape (B, G) = ({batch}, {n_gt})")
        if labels.shape != (batch, n_gt):
            raise AssignerError(f"gt_labels must be (B, G) = ({batch}, {n_gt}) like gt_boxes, "
                                f"got {_shape(labels)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise AssignerError(f"gt_labels must be integer class indices, got {labels.dtype}; "
                                "pass gt_labels.long()")
        mask = self.gt_mask
        if mask is None:
            mask = torch.ones(batch, n_gt, dtype=torch.bool, device=device)
        mask = _tensor("gt_mask", mask, f"of shape (B, G) = ({batch}, {n_gt})")
        if mask.shape != (batch, n_gt):
            raise AssignerError(f"gt_mask must be (B, G) = ({batch}, {n_gt}) like gt_boxes, got "
                                f"{_shape(mask)}")
        if mask.dtype != torch.bool:
            raise AssignerError(f"gt_mask must be bool (True = a real box), got {mask.dtype}; "
                                "pass gt_mask.bool()")
        set_(self, "gt_boxes", boxes.detach())
        set_(self, "gt_labels", labels.detach().long())
        set_(self, "gt_mask", mask.detach())

        scores = self.scores
        if scores is not None:
            scores = _tensor("scores", scores, f"of shape (B, P, C) = ({batch}, {n_priors}, C)")
            if scores.dim() != 3 or scores.shape[:2] != (batch, n_priors):
                raise AssignerError(f"scores must be (B, P, C) = ({batch}, {n_priors}, C) "
                                    f"logits, got {_shape(scores)}; flatten the levels with "
                                    "torch.cat([s.flatten(2).transpose(1, 2) for s in maps], 1)")
            set_(self, "scores", scores.detach())
        pred = self.pred_boxes
        if pred is not None:
            pred = _tensor("pred_boxes", pred, f"of shape (B, P, 4) = ({batch}, {n_priors}, 4)")
            if pred.shape != (batch, n_priors, 4):
                raise AssignerError(f"pred_boxes must be (B, P, 4) = ({batch}, {n_priors}, 4) "
                                    f"decoded xyxy boxes, got {_shape(pred)}")
            set_(self, "pred_boxes", pred.detach())

        for name in ("gt_boxes", "scores", "pred_boxes"):
            t = getattr(self, name)
            if t is None:
                continue
            if t.dtype != dtype:
                raise AssignerError(f"{name} is {t.dtype} but priors are {dtype}; pass "
                                    f"{name}.to(priors.dtype)")
        for name in ("strides", "gt_boxes", "gt_labels", "gt_mask", "scores", "pred_boxes"):
            t = getattr(self, name)
            if t is not None and t.device != device:
                raise AssignerError(f"{name} is on {t.device} but priors are on {device}; pass "
                                    f"{name}.to(priors.device)")

        levels = self.levels
        if levels is not None:
            levels = _tensor("levels", levels, f"of shape (P,) = ({n_priors},)")
            if levels.shape != (n_priors,) or levels.is_floating_point():
                raise AssignerError(f"levels must be (P,) = ({n_priors},) integers, got "
                                    f"{_shape(levels)} {levels.dtype}")
            set_(self, "levels", levels.detach().long().to(device))

        num_classes = self.num_classes
        if scores is not None:
            if num_classes is not None and num_classes != scores.shape[2]:
                raise AssignerError(f"num_classes={num_classes} but scores have "
                                    f"{scores.shape[2]} columns; drop num_classes or fix scores")
            num_classes = scores.shape[2]
        if num_classes is None:
            raise AssignerError("num_classes is needed (the background label) when no scores "
                                "are given: pass num_classes=C")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise AssignerError(f"num_classes must be a positive int, got {num_classes!r}")
        set_(self, "num_classes", num_classes)
        if bool(mask.any()):
            real = labels[mask]
            lo, hi = int(real.min()), int(real.max())
            if lo < 0 or hi >= num_classes:
                raise AssignerError(f"gt_labels of real boxes must lie in [0, {num_classes}), "
                                    f"got values in [{lo}, {hi}]; labels are 0-based and the "
                                    "background is num_classes")

        size = self.image_size
        if size is not None:
            if not isinstance(size, Tensor):
                if len(size) != 2:
                    raise AssignerError(f"image_size must be (H, W), got {size!r}")
                size = torch.tensor([float(size[0]), float(size[1])], dtype=dtype, device=device)
            if size.dim() == 1:
                size = size.expand(batch, 2) if size.shape == (2,) else size
            if size.shape != (batch, 2):
                raise AssignerError(f"image_size must be (H, W) or a (B, 2) tensor of per-image "
                                    f"(H, W), got {_shape(size)}")
            set_(self, "image_size", size.detach().to(dtype=dtype, device=device))

    # -- construction from ragged lists --------------------------------------------------
    @classmethod
    def from_lists(cls, priors: Tensor, strides, gt_boxes: Sequence[Tensor],
                   gt_labels: Sequence[Tensor], **kwargs) -> "AssignerInputs":
        """Pad per-image ``(G_i, 4)`` boxes and ``(G_i,)`` labels into the batched form."""
        if len(gt_boxes) != len(gt_labels):
            raise AssignerError(f"gt_boxes has {len(gt_boxes)} images but gt_labels "
                                f"{len(gt_labels)}; give one (G_i,) labels tensor per image")
        for i, (b, c) in enumerate(zip(gt_boxes, gt_labels)):
            if b.dim() != 2 or b.shape[1] != 4 or c.shape != (b.shape[0],):
                raise AssignerError(f"image {i}: gt_boxes[{i}] must be (G_i, 4) and "
                                    f"gt_labels[{i}] (G_i,), got {_shape(b)} and {_shape(c)}")
        batch = len(gt_boxes)
        n_gt = max((b.shape[0] for b in gt_boxes), default=0)
        boxes = priors.new_zeros(batch, n_gt, 4)
        labels = torch.zeros(batch, n_gt, dtype=torch.long, device=priors.device)
        mask = torch.zeros(batch, n_gt, dtype=torch.bool, device=priors.device)
        for i, (b, c) in enumerate(zip(gt_boxes, gt_labels)):
            k = b.shape[0]
            boxes[i, :k] = b
            labels[i, :k] = c
            mask[i, :k] = True
        return cls(priors=priors, strides=strides, gt_boxes=boxes, gt_labels=labels,
                   gt_mask=mask, **kwargs)

    def image(self, i: int) -> "AssignerInputs":
        """Image ``i`` alone, its padding dropped (``B = 1``, ``G = G_i``)."""
        keep = self.gt_mask[i]
        size = None if self.image_size is None else self.image_size[i:i + 1]
        return AssignerInputs(
            priors=self.priors, strides=self.strides, gt_boxes=self.gt_boxes[i][keep][None],
            gt_labels=self.gt_labels[i][keep][None], gt_mask=None,
            scores=None if self.scores is None else self.scores[i:i + 1],
            pred_boxes=None if self.pred_boxes is None else self.pred_boxes[i:i + 1],
            levels=self.levels, num_classes=self.num_classes, image_size=size)

    def replace(self, **changes) -> "AssignerInputs":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return AssignerInputs(**values)

    # -- derived views ---------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.gt_boxes.shape[0]

    @property
    def num_priors(self) -> int:
        return self.priors.shape[0]

    @property
    def num_gts(self) -> int:
        return self.gt_boxes.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.priors.dtype

    @property
    def device(self) -> torch.device:
        return self.priors.device

    @cached_property
    def centers(self) -> Tensor:
        """``(P, 2)`` prior centres: the points, or the anchors' centres."""
        p = self.priors
        return p if p.shape[1] == 2 else (p[:, :2] + p[:, 2:]) / 2

    def prior_boxes(self, anchor_scale: float) -> Tensor:
        """``(P, 4)`` prior boxes: the anchors, or a square of side ``anchor_scale * stride``
        centred on each point."""
        if self.priors.shape[1] == 4:
            return self.priors
        half = (anchor_scale * self.strides / 2)[:, None]
        return torch.cat([self.priors - half, self.priors + half], 1)

    @cached_property
    def level_index(self) -> Tensor:
        """``(P,)`` level of each prior (given, or the rank of its stride)."""
        if self.levels is not None:
            return self.levels
        distinct = torch.unique(self.strides)
        return torch.searchsorted(distinct, self.strides.contiguous())

    @cached_property
    def level_slices(self) -> list[Tensor]:
        """Per level (ascending), the indices of its priors."""
        lv = self.level_index
        return [torch.nonzero(lv == v, as_tuple=True)[0] for v in torch.unique(lv).tolist()]

    def require(self, needs: Sequence[str], by: str) -> None:
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            shapes = {"scores": "scores=(B, P, C) detached logits",
                      "pred_boxes": "pred_boxes=(B, P, 4) detached decoded xyxy boxes",
                      "image_size": "image_size=(H, W)"}
            raise AssignerError(f"assigner {by!r} reads the predictions: pass "
                                + ", ".join(shapes[n] for n in missing)
                                + " to AssignerInputs")


# --------------------------------------------------------------------------------- output
@dataclass(frozen=True, eq=False)
class Assignment:
    """What an assigner decided, per image and prior (every field ``(B, P)``).

    Attributes:
        gt_index: int64, index into the image's ``G`` ground-truth rows of the matched box,
            ``-1`` for background and ignored priors.
        labels: int64, the matched box's class, ``num_classes`` (the background index) for
            background and ignored priors.
        quality: float in [0, 1], the soft classification target at ``labels`` (1 for hard
            assigners; an IoU or the normalised task alignment for soft ones); 0 where
            unmatched.
        weight: float >= 0, the weight of the prior's box-regression loss as its detector
            recipe sets it (1, or FCOS centerness, TAL alignment, OTA IoU); 0 where
            unmatched.
        ignore: bool, True for priors no loss should see (max-IoU's band between the
            thresholds).
        num_classes: ``C``.
    """

    gt_index: Tensor
    labels: Tensor
    quality: Tensor
    weight: Tensor
    ignore: Tensor
    num_classes: int

    @property
    def positive(self) -> Tensor:
        return self.gt_index >= 0

    @property
    def negative(self) -> Tensor:
        return (self.gt_index < 0) & ~self.ignore

    @property
    def num_positive(self) -> int:
        return int(self.positive.sum())

    def matched_boxes(self, gt_boxes: Tensor) -> Tensor:
        """``(B, P, 4)`` the matched gt box of each prior (zeros where unmatched)."""
        index = self.gt_index.clamp(min=0)[..., None].expand(-1, -1, 4)
        if gt_boxes.shape[1] == 0:
            return gt_boxes.new_zeros(*self.gt_index.shape, 4)
        out = torch.gather(gt_boxes, 1, index)
        return out * self.positive[..., None]

    def soft_targets(self) -> Tensor:
        """``(B, P, C)`` classification targets for sigmoid losses (QFL/VFL style):
        ``quality`` at the matched class, 0 elsewhere and for background."""
        b, p = self.gt_index.shape
        out = self.quality.new_zeros(b, p, self.num_classes + 1)
        out.scatter_(2, self.labels[..., None], self.quality[..., None])
        return out[..., :self.num_classes]

    def image(self, i: int) -> "Assignment":
        return Assignment(*(getattr(self, f.name)[i:i + 1] for f in fields(self)[:5]),
                          num_classes=self.num_classes)

    @staticmethod
    def background(inputs: AssignerInputs) -> "Assignment":
        """Every prior background (what an image without ground truth gets)."""
        b, p = inputs.batch, inputs.num_priors
        dev, dt = inputs.device, inputs.dtype
        return Assignment(
            gt_index=torch.full((b, p), -1, dtype=torch.long, device=dev),
            labels=torch.full((b, p), inputs.num_classes, dtype=torch.long, device=dev),
            quality=torch.zeros(b, p, dtype=dt, device=dev),
            weight=torch.zeros(b, p, dtype=dt, device=dev),
            ignore=torch.zeros(b, p, dtype=torch.bool, device=dev),
            num_classes=inputs.num_classes)

    @staticmethod
    def build(inputs: AssignerInputs, gt_index: Tensor, quality: Optional[Tensor] = None,
              weight: Optional[Tensor] = None, ignore: Optional[Tensor] = None) -> "Assignment":
        """Fill labels from ``gt_index`` and zero everything at unmatched priors."""
        pos = gt_index >= 0
        dt = inputs.dtype
        gathered = torch.gather(inputs.gt_labels, 1, gt_index.clamp(min=0)) \
            if inputs.num_gts else torch.zeros_like(gt_index)
        labels = torch.where(pos, gathered, torch.full_like(gt_index, inputs.num_classes))
        one = pos.to(dt)
        quality = one if quality is None else torch.where(pos, quality.to(dt), 0.0)
        weight = one if weight is None else torch.where(pos, weight.to(dt), 0.0)
        ignore = torch.zeros_like(pos) if ignore is None else ignore & ~pos
        return Assignment(gt_index=gt_index, labels=labels, quality=quality, weight=weight,
                          ignore=ignore, num_classes=inputs.num_classes)


# ------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Param:
    """A parameter of an assigner: default, and the range a search draws it from.

    ``kind`` is ``"float"``, ``"int"``, ``"bool"``, ``"choice"`` (``choices`` lists the
    values) or ``"fixed"`` (any value, checked by the assigner, never searched).
    ``low``/``high`` are the search range (``None`` for a fixed parameter: settable by
    hand, not searched).
    """

    name: str
    default: Any
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    kind: str = "float"
    choices: tuple = ()
    doc: str = ""

    @property
    def searchable(self) -> bool:
        return self.kind in ("bool", "choice") or self.low is not None

    def check(self, value: Any, by: str) -> Any:
        where = f"assigner {by!r} parameter {self.name!r}"
        if self.kind == "fixed":
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise AssignerError(f"{where} must be True or False, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise AssignerError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    return int(value)
                raise AssignerError(f"{where} must be an int, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise AssignerError(f"{where} must be a finite number, got {value!r}")
        return float(value)


@dataclass(frozen=True)
class AssignerSpec:
    """Registry entry of an assigner: metadata, parameters and its class."""

    id: str
    title: str
    paper: str
    reference: str
    #: which optional inputs it reads, a subset of ``INPUTS``
    needs: tuple[str, ...]
    params: tuple[Param, ...]
    factory: Callable[..., "Assigner"] = field(repr=False)
    one_to_one: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    @property
    def search_space(self) -> dict[str, Param]:
        return {p.name: p for p in self.params if p.searchable}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise UnknownNameError(f"assigner {self.id!r} has no parameter {name!r}; "
                               f"{did_you_mean(name, [p.name for p in self.params])}")


class Assigner:
    """Base class: ``__call__(inputs) -> Assignment`` under ``torch.no_grad``.

    A subclass implements :meth:`assign` and carries its registry entry as the class
    attribute ``spec`` (the registry sets it for the built-in ones; a user's own assigner
    sets it to an :class:`AssignerSpec` it writes). The constructor takes the entry's
    parameters as keyword arguments (checked against :class:`Param`), stores them as
    attributes and calls :meth:`validate`.
    """

    spec: Optional[AssignerSpec] = None

    def __init__(self, **params):
        spec = type(self).spec
        if spec is None:
            raise AssignerError(f"{type(self).__name__} has no registry entry: set the class "
                                "attribute spec = AssignerSpec(...)")
        unknown = sorted(set(params) - {p.name for p in spec.params})
        if unknown:
            raise UnknownNameError(
                f"assigner {spec.id!r} has no parameter {unknown[0]!r}; "
                f"{did_you_mean(unknown[0], [p.name for p in spec.params])}")
        self.params = {}
        for p in spec.params:
            value = p.check(params.get(p.name, p.default), spec.id)
            self.params[p.name] = value
            setattr(self, p.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks (raise :class:`AssignerError`)."""

    def __call__(self, inputs: Optional[AssignerInputs] = None, /, **fields_) -> Assignment:
        if inputs is None:
            inputs = AssignerInputs(**fields_)
        elif fields_:
            inputs = inputs.replace(**fields_)
        if not isinstance(inputs, AssignerInputs):
            raise AssignerError(f"an assigner takes an AssignerInputs, got "
                                f"{type(inputs).__name__}")
        inputs.require(self.spec.needs, self.spec.id)
        with torch.no_grad():
            if inputs.num_gts == 0 or not bool(inputs.gt_mask.any()):
                return Assignment.background(inputs)
            return self.assign(inputs)

    def assign(self, inputs: AssignerInputs) -> Assignment:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _range(self, name: str, lo: float = -math.inf, hi: float = math.inf,
               lo_open: bool = False) -> None:
        v = self.params[name]
        bad = v < lo or v > hi or (lo_open and v == lo)
        if bad:
            sign = "(" if lo_open else "["
            raise AssignerError(f"assigner {self.spec.id!r} parameter {name!r} must lie in "
                                f"{sign}{lo}, {hi}], got {v!r}")
