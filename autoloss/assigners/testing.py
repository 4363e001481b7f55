"""The assigner contract as a test suite, shipped so any assigner (yours too) can run it.

Subclass :class:`AssignerContract` in a pytest module and name the assigner (a registry
id, with parameters if you like)::

    class TestATSS(AssignerContract):
        name = "atss"
        params = {"topk": 9}

or override :meth:`AssignerContract.assigner` to return your own callable (an
:class:`~autoloss.assigners.base.Assigner` subclass). It checks what every assigner
promises: the registry entry describes it; the output has the documented shapes, dtypes
and invariants; the same inputs give the same output; no gradient flows; an image without
ground truth is all background; ground truth that no prior lies in is handled; padding
rows are never read; a batch gives what its images give one by one; float32 and float64
both work; the device is kept; and bad input is a clear error.

:func:`sample_inputs` builds the random scenes the suite runs on (a two-level point grid,
overlapping and tiny boxes, predictions scattered around the boxes); tests elsewhere use
it too.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pytest
import torch

from ..errors import UnknownNameError
from . import build, get
from .base import INPUTS, Assigner, AssignerError, AssignerInputs, Assignment


def grid(canvas: int, strides: Sequence[int], dtype=torch.float64, device="cpu"):
    """Point priors at the centres of the cells of each level (finest first) and their
    strides: ``(P, 2)``, ``(P,)``."""
    points, per_point = [], []
    for s in strides:
        c = (torch.arange(canvas // s, dtype=dtype, device=device) + 0.5) * s
        ys, xs = torch.meshgrid(c, c, indexing="ij")
        p = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
        points.append(p)
        per_point.append(torch.full((len(p),), float(s), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(per_point)


def sample_inputs(seed: int = 0, gts: Sequence[int] = (5, 2, 0), num_classes: int = 4,
                  canvas: int = 96, strides: Sequence[int] = (8, 16), dtype=torch.float64,
                  device="cpu", anchors: bool = False, kind: str = "random",
                  pad: Optional[float] = 0.0) -> AssignerInputs:
    """A random batch of scenes: ``gts[i]`` boxes in image ``i`` (padded to ``max(gts)``).

    ``kind``: ``"random"`` (boxes of 6 to 60 px anywhere), ``"crowded"`` (boxes clustered
    in one quarter, overlapping, one exact duplicate when there are 3 or more), ``"tiny"``
    (1 to 6 px boxes). Predictions: every prior predicts a box and logits; half the priors
    lie near a box of their image and predict a jittered copy of it with a raised logit at
    its class, the others a random box around themselves. ``pad`` fills padding rows
    (``float('nan')`` checks they are never read). With ``anchors``, the priors are
    squares of side 4 strides instead of points.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    points, strides_t = grid(canvas, strides)
    batch, n_gt = len(gts), max(gts) if len(gts) else 0
    boxes = torch.full((batch, n_gt, 4), float(pad) if pad is not None else 0.0,
                       dtype=torch.float64)
    labels = torch.full((batch, n_gt), -7 if pad is not None and pad != 0 else 0,
                        dtype=torch.long)
    mask = torch.zeros(batch, n_gt, dtype=torch.bool)
    for i, k in enumerate(gts):
        if k == 0:
            continue
        if kind == "tiny":
            wh = rand(k, 2) * 5 + 1
            xy = rand(k, 2) * (canvas - 8) + 1
        elif kind == "crowded":
            wh = rand(k, 2) * 30 + 8
            xy = rand(k, 2) * (canvas / 4) + canvas / 8
        else:
            wh = rand(k, 2) * 54 + 6
            xy = rand(k, 2) * (canvas - wh)
        b = torch.cat([xy, (xy + wh).clamp(max=canvas - 0.5)], 1)
        if kind == "crowded" and k >= 3:
            b[2] = b[0]
        boxes[i, :k] = b
        labels[i, :k] = torch.randint(0, num_classes, (k,), generator=g)
        mask[i, :k] = True
    n_priors = len(points)
    logits = torch.randn(batch, n_priors, num_classes, generator=g, dtype=torch.float64) - 2.0
    half = rand(batch, n_priors, 2) * 20 + 2
    pred = torch.cat([points - half, points + half], -1)
    for i, k in enumerate(gts):
        if k == 0:
            continue
        b = boxes[i, :k]
        inside = ((points[:, None] > b[None, :, :2] - 8) & (points[:, None] < b[None, :, 2:] + 8)
                  ).all(-1)                                                     # (P, k)
        near = inside.any(1) & (rand(n_priors) < 0.5)
        which = torch.multinomial(inside.double() + 1e-9, 1, generator=g)[:, 0]
        size = (b[which, 2:] - b[which, :2]).repeat(1, 2)
        jitter = (rand(n_priors, 4) - 0.5) * 0.6 * size
        pred[i] = torch.where(near[:, None], b[which] + jitter, pred[i])
        boost = torch.zeros(n_priors, num_classes, dtype=torch.float64)
        boost[torch.arange(n_priors), labels[i, :k][which]] = rand(n_priors) * 5
        logits[i] = logits[i] + boost * near[:, None]
    pred = torch.cat([torch.minimum(pred[..., :2], pred[..., 2:] - 0.5), pred[..., 2:]], -1)
    priors = points
    if anchors:
        half_side = (2 * strides_t)[:, None]
        priors = torch.cat([points - half_side, points + half_side], 1)
    return AssignerInputs(
        priors=priors.to(dtype=dtype, device=device),
        strides=strides_t.to(dtype=dtype, device=device),
        gt_boxes=boxes.to(dtype=dtype, device=device),
        gt_labels=labels.to(device), gt_mask=mask.to(device),
        scores=logits.to(dtype=dtype, device=device),
        pred_boxes=pred.to(dtype=dtype, device=device),
        num_classes=num_classes, image_size=(canvas, canvas))


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class AssignerContract:
    #: registry id of the assigner under test
    name: str = ""
    #: parameters passed to ``build``
    params: dict = {}
    #: whether a gt that no prior lies in may still get priors (one-to-one matching, OTA's
    #: transport plan); the others must leave such a gt alone
    matches_outside: bool = False

    def assigner(self) -> Assigner:
        return build(self.name, **self.params)

    def inputs(self, seed: int = 0, **kwargs) -> AssignerInputs:
        return sample_inputs(seed, **kwargs)

    # -- checks shared by the tests ----------------------------------------------------------
    def check(self, result: Assignment, x: AssignerInputs) -> None:
        """The invariants every assignment satisfies."""
        b, p = x.batch, x.num_priors
        assert isinstance(result, Assignment)
        for f in ("gt_index", "labels", "quality", "weight", "ignore"):
            t = getattr(result, f)
            assert t.shape == (b, p), (f, t.shape)
            assert t.device == x.device, (f, t.device)
            assert not t.requires_grad, f
        assert result.gt_index.dtype == torch.long and result.labels.dtype == torch.long
        assert result.quality.dtype == x.dtype and result.weight.dtype == x.dtype
        assert result.ignore.dtype == torch.bool
        assert result.num_classes == x.num_classes
        pos = result.gt_index >= 0
        assert bool((result.gt_index >= -1).all()) and bool((result.gt_index < max(x.num_gts, 1)
                                                               ).all())
        if x.num_gts:
            idx = result.gt_index.clamp(min=0)
            assert bool(torch.gather(x.gt_mask, 1, idx)[pos].all()), "matched a padding row"
            want = torch.gather(x.gt_labels, 1, idx)
            assert torch.equal(result.labels[pos], want[pos])
        assert bool((result.labels[~pos] == x.num_classes).all())
        q, w = result.quality, result.weight
        assert bool(torch.isfinite(q).all()) and bool(torch.isfinite(w).all())
        assert bool((q >= 0).all()) and bool((q <= 1 + 1e-6).all())
        assert bool((w >= 0).all())
        assert bool((q[~pos] == 0).all()) and bool((w[~pos] == 0).all())
        assert not bool((result.ignore & pos).any())

    def same(self, a: Assignment, b: Assignment) -> None:
        assert torch.equal(a.gt_index, b.gt_index)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.ignore, b.ignore)
        torch.testing.assert_close(a.quality, b.quality, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a.weight, b.weight, rtol=1e-6, atol=1e-9)

    # -- the registry entry --------------------------------------------------------------------
    def test_registry_entry(self):
        spec = get(self.name)
        assert spec.id == self.name and spec.title and spec.paper and spec.reference
        assert set(spec.needs) <= set(INPUTS)
        for p in spec.params:
            assert p.check(p.default, spec.id) == p.default
            if p.low is not None:
                assert p.low <= p.default <= p.high, p
            if p.kind == "choice":
                assert p.default in p.choices
        assert spec.search_space, "nothing to search"
        a = build(self.name)
        assert a.params == spec.defaults
        with pytest.raises(UnknownNameError, match="no parameter 'nope'"):
            build(self.name, nope=1)

    def test_search_ranges_build(self):
        """Every corner of the search space is a valid assigner that runs."""
        spec = get(self.name)
        x = self.inputs(seed=11)
        for corner in ("low", "high"):
            params = dict(self.params)
            for p in spec.search_space.values():
                if p.kind == "bool":
                    params[p.name] = corner == "high"
                elif p.kind == "choice":
                    params[p.name] = p.choices[-1 if corner == "high" else 0]
                else:
                    v = getattr(p, corner)
                    params[p.name] = int(v) if p.kind == "int" else v
            if self.name == "maxiou":
                params["neg_iou_thr"] = min(params["neg_iou_thr"], params["pos_iou_thr"])
            self.check(build(self.name, **params)(x), x)

    # -- the output ---------------------------------------------------------------------------
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_shapes_dtypes_and_invariants(self, dtype):
        for kind in ("random", "crowded", "tiny"):
            x = self.inputs(seed=1, dtype=dtype, kind=kind)
            self.check(self.assigner()(x), x)

    def test_anchor_priors(self):
        x = self.inputs(seed=2, anchors=True)
        self.check(self.assigner()(x), x)

    def test_deterministic(self):
        x = self.inputs(seed=3, kind="crowded")
        self.same(self.assigner()(x), self.assigner()(x))

    def test_no_gradient_flows(self):
        x = self.inputs(seed=4)
        leaves = {}
        for f in ("priors", "gt_boxes", "scores", "pred_boxes"):
            leaves[f] = getattr(x, f).clone().requires_grad_(True)
        y = AssignerInputs(priors=leaves["priors"], strides=x.strides,
                           gt_boxes=leaves["gt_boxes"], gt_labels=x.gt_labels,
                           gt_mask=x.gt_mask, scores=leaves["scores"],
                           pred_boxes=leaves["pred_boxes"], image_size=x.image_size)
        assert all(not getattr(y, f).requires_grad for f in leaves), "inputs not detached"
        result = self.assigner()(y)
        assert torch.is_grad_enabled()
        for f in ("quality", "weight"):
            t = getattr(result, f)
            assert t.grad_fn is None and not t.requires_grad
        self.same(result, self.assigner()(x))

    # -- edge cases -----------------------------------------------------------------------------
    def test_image_without_ground_truth_is_background(self):
        mixed = self.inputs(seed=5, gts=(4, 0, 3))
        masked = self.inputs(seed=5, gts=(3, 2))
        masked = masked.replace(gt_mask=torch.zeros_like(masked.gt_mask))
        for x, empty in ((mixed, [1]), (self.inputs(seed=5, gts=(0, 0)), [0, 1]),
                         (masked, [0, 1])):
            result = self.assigner()(x)
            self.check(result, x)
            for i in empty:
                assert not bool(result.positive[i].any()) and not bool(result.ignore[i].any())

    def test_ground_truth_outside_every_prior(self):
        """Boxes no prior lies in (beyond the grid, or smaller than the grid spacing
        between four points) leave a valid assignment."""
        x = self.inputs(seed=6, gts=(3, 2))
        boxes = x.gt_boxes.clone()
        boxes[0, 0] = torch.tensor([500.0, 500.0, 540.0, 530.0], dtype=boxes.dtype)
        boxes[0, 1] = torch.tensor([9.0, 9.0, 11.0, 11.0], dtype=boxes.dtype)  # between points
        boxes[1, :2] = torch.tensor([[300.0, 10.0, 320.0, 40.0], [-80.0, -80.0, -50.0, -60.0]],
                                    dtype=boxes.dtype)
        y = x.replace(gt_boxes=boxes)
        result = self.assigner()(y)
        self.check(result, y)
        if not self.matches_outside:
            assert not bool(result.positive[1].any()), "a prior matched a box it is far from"
            far = result.gt_index[0] == 0
            assert not bool(far.any())

    def test_padding_is_never_read(self):
        clean = self.inputs(seed=7, gts=(4, 1, 3))
        dirty = self.inputs(seed=7, gts=(4, 1, 3), pad=float("nan"))
        self.same(self.assigner()(clean), self.assigner()(dirty))

    def test_batch_equals_images_one_by_one(self):
        for kind in ("random", "crowded"):
            x = self.inputs(seed=8, gts=(6, 2, 0, 4), kind=kind)
            whole = self.assigner()(x)
            for i in range(x.batch):
                self.same(whole.image(i), self.assigner()(x.image(i)))

    def test_float32_agrees_with_float64(self):
        x64 = self.inputs(seed=9, dtype=torch.float64)
        x32 = self.inputs(seed=9, dtype=torch.float32)
        a, b = self.assigner()(x64), self.assigner()(x32)
        agree = (a.gt_index == b.gt_index).double().mean()
        assert float(agree) >= 0.97, float(agree)

    @pytest.mark.parametrize("device", _devices())
    def test_device_is_kept(self, device):
        x = self.inputs(seed=10, device=device)
        result = self.assigner()(x)
        self.check(result, x)
        if device != "cpu":
            self.same(result.image(0), self.assigner()(self.inputs(seed=10)).image(0))

    # -- bad input ------------------------------------------------------------------------------
    def test_bad_input_is_a_clear_error(self):
        x = self.inputs(seed=0)
        a = self.assigner()
        with pytest.raises(AssignerError, match="gt_boxes"):
            a(x.replace(gt_boxes=x.gt_boxes[0]))
        with pytest.raises(AssignerError, match="priors"):
            a(x.replace(priors=x.priors[:, :1]))
        with pytest.raises(AssignerError, match="scores"):
            a(x.replace(scores=x.scores[:, :-1]))
        with pytest.raises(AssignerError, match="gt_labels"):
            a(x.replace(gt_labels=x.gt_labels.double()))
        with pytest.raises(AssignerError, match="strides"):
            a(x.replace(strides=x.strides[:-1]))
        for need in get(self.name).needs:
            with pytest.raises(AssignerError, match=need):
                a(x.replace(**{need: None}, num_classes=x.num_classes))
