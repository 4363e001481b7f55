"""The signature contract as a test suite, shipped so any signature (yours too) can run it.

Subclass :class:`SignatureContract` in a pytest module and give it the signature (an
object, or the name of a registered one)::

    class TestRotatedBox(SignatureContract):
        signature = RBOX          # or name = "rbox" once it is in SIGNATURES

It checks that everything a :class:`~autoloss.signatures.base.Signature` holds agrees with
itself: inputs, columns and gradient buffers; the core backward against autograd through
``prepare``; the exported TorchScript glue against ``prepare``; the dimensions of every
terminal; and the shapes of every input set its users take (samples, degenerate inputs,
the convergence ladder, the report's curve, the perfect prediction, the detector's).
"""
from __future__ import annotations

import linecache
from typing import List, Optional

import pytest
import torch

from .. import units
from ..errors import SignatureError
from . import get
from .base import Signature


def _columns_function(sig):
    """The exported ``_columns`` glue of ``sig`` (after the helpers it calls), as a
    function TorchScript can read."""
    args, body = sig.export_columns
    helpers = sig.export_helpers() + "\n\n" if sig.export_helpers is not None else ""
    source = f"{helpers}def _columns({args}) -> List[Tensor]:\n{body}\n"
    filename = f"<autoloss {sig.name} export glue>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "Tensor": torch.Tensor, "List": List, "Optional": Optional,
                 "__name__": f"autoloss_glue_{sig.name}"}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the signature's glue
    return namespace["_columns"]


def _per_class(sig) -> list[int]:
    """Indices of the per-class inputs (``Input.per_class``)."""
    return [k for k, i in enumerate(sig.inputs) if i.per_class]


class SignatureContract:
    signature: Optional[Signature] = None
    name: str = ""
    rows: int = 12

    @property
    def sig(self) -> Signature:
        return self.signature if self.signature is not None else get(self.name)

    def inputs(self, seed: int = 0, dtype=torch.float64):
        """A sample, with the per-class inputs where the signature takes some."""
        extra = {"per_class": True} if _per_class(self.sig) else {}
        return self.sig.sample(self.rows, torch.Generator().manual_seed(seed), dtype=dtype,
                               **extra)

    # -- the object -------------------------------------------------------------------------
    def test_describes_its_columns_and_gradients(self):
        sig = self.sig
        assert len(sig.column_input) == len(sig.grad_slots) == len(sig.columns)
        assert all(i is None or isinstance(i, (int, tuple)) for i in sig.column_input)
        assert all(0 <= i < len(sig.inputs) for sources in sig.column_sources for i in sources)
        assert set(sig.columns) <= set(sig.terminals) and set(sig.names) == set(sig.terminals)
        assert sig.export_columns[0] and sig.export_columns[1], "no export glue"
        assert sig.call_inputs == ", ".join(i.name for i in sig.inputs)

    def test_every_terminal_has_a_dimension(self):
        dims = self.sig.dims
        assert set(dims) == set(self.sig.terminals)
        assert all(isinstance(d, units.Dim) for d in dims.values())

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_sample_prepares_into_row_aligned_columns(self, dtype):
        sig = self.sig
        inputs = self.inputs(dtype=dtype)
        assert all(torch.equal(a, b) for a, b in zip(inputs, self.inputs(dtype=dtype))), \
            "sample is not reproducible from its generator"
        prep = sig.prepare("contract", *inputs)
        assert len(prep.columns) == len(sig.columns)
        for c in prep.columns:
            assert c.shape == prep.out_shape, (c.shape, prep.out_shape)
            assert c.dtype == dtype
        assert prep.out_shape[0] == self.rows
        assert len(prep.grad_shapes) == len(sig.buffer_columns)

    def test_per_class_inputs(self):
        """Per-class inputs are optional, one value per class, and their columns (listed in
        ``class_columns``) are broadcast over the rows, without gradient; omitted, the
        columns take their defaults, in ``prepare`` and in the exported glue alike."""
        sig = self.sig
        where = _per_class(sig)
        if not where:
            assert not sig.class_columns
            pytest.skip("no per-class inputs")
        assert all(sig.inputs[k].optional for k in where)
        assert set(sig.class_columns) <= set(sig.columns)
        for c in sig.class_columns:
            assert sig.column_input[sig.columns.index(c)] is None
        full = self.inputs()
        rows = full[:where[0]]
        prep = sig.prepare("contract", *rows)
        glue = _columns_function(sig)
        for mine, theirs in zip(glue(*rows), prep.columns):
            torch.testing.assert_close(mine, theirs)
        for c in prep.columns:
            assert c.shape == prep.out_shape
        with pytest.raises(SignatureError, match=sig.inputs[where[0]].name):
            sig.prepare("contract", *rows, full[where[0]][:-1])

    def test_check_refuses_a_wrong_call(self):
        required = sum(not i.optional for i in self.sig.inputs)
        with pytest.raises(SignatureError, match=f"{self.sig.name} signature"):
            self.sig.check(self.inputs()[:required - 1], "contract")
        with pytest.raises(SignatureError, match="torch.Tensor"):
            self.sig.check(("not a tensor",) + tuple(self.inputs()[1:]), "contract")

    def test_degenerate_inputs_prepare(self):
        inputs = self.sig.degenerate(torch.float64)
        assert inputs, "no degenerate inputs"
        prep = self.sig.prepare("contract", *inputs)
        assert all(torch.isfinite(c).all() for c in prep.columns)

    # -- gradients: the core backward is autograd through prepare ------------------------
    def test_backward_matches_autograd_through_prepare(self):
        sig = self.sig
        inputs = list(self.inputs(seed=1))
        wanted = sorted({i for sources in sig.column_sources for i in sources})
        for i in wanted:
            inputs[i] = inputs[i].clone().requires_grad_(True)
        prep = sig.prepare("contract", *inputs)
        g = torch.Generator().manual_seed(2)
        seeds = [torch.randn(prep.out_shape, generator=g, dtype=torch.float64)
                 for _ in sig.columns]
        total = sum((s * c).sum() for s, c, i in zip(seeds, prep.columns, sig.column_sources)
                    if i)
        expected = torch.autograd.grad(total, [inputs[i] for i in wanted], allow_unused=True)
        buffers = []
        for b, members in enumerate(sig.buffer_columns):
            parts = [seeds[k] if sig.column_sources[k] else torch.zeros_like(seeds[k])
                     for k in members]
            buffers.append(parts[0] if sig.grad_slots[members[0]][1] is None
                           else torch.stack(parts, -1))
        with torch.no_grad():
            got = sig.backward(prep, buffers)
        for i, want in zip(wanted, expected):
            want = torch.zeros_like(inputs[i]) if want is None else want
            torch.testing.assert_close(got[i], want)

    # -- the exported glue is prepare -------------------------------------------------------
    def test_export_glue_matches_prepare_and_scripts(self):
        sig = self.sig
        inputs = self.inputs(seed=3)
        glue = _columns_function(sig)
        prep = sig.prepare("contract", *inputs)
        for mine, theirs in zip(glue(*inputs), prep.columns):
            torch.testing.assert_close(mine, theirs)
        scripted = torch.jit.script(glue)
        for mine, theirs in zip(scripted(*inputs), prep.columns):
            torch.testing.assert_close(mine, theirs)

    # -- the inputs its users take ----------------------------------------------------------
    def test_convergence_ladder(self):
        sig = self.sig
        if sig.convergence is None:
            pytest.skip("no convergence ladder")
        steps = (0.0, 0.5, 1.0)
        inputs = sig.convergence(steps, 5, torch.Generator().manual_seed(0))
        prep = sig.prepare("contract", *inputs)
        assert prep.out_shape[0] == len(steps) * 5

    def test_curve(self):
        sig = self.sig
        if sig.curve is None:
            pytest.skip("no loss curve")
        curve = sig.curve(7)
        assert curve.xlabel and curve.sweep
        assert sig.prepare("contract", *curve.inputs).out_shape[0] == 7
        assert curve.x.shape == (7,) and curve.direction.shape == curve.inputs[0].shape

    def test_perfect_prediction_keeps_the_targets(self):
        sig = self.sig
        if sig.perfect is None:
            pytest.skip("no perfect prediction")
        inputs = self.inputs()
        perfect = sig.perfect(inputs)
        assert len(perfect) == len(inputs)
        sig.prepare("contract", *perfect)
        if len(inputs) > 1:  # a signature with a target (rank's one input is a difference)
            assert torch.equal(perfect[1] > 0, inputs[1] > 0)

    def test_set_level_fills_a_slot_signature(self):
        """A signature that is a piece of a set-level loss (rank) names the slot signature
        its loss fills, and builds that loss from a compiled expression."""
        sig = self.sig
        if not sig.set_level:
            assert not sig.fills
            pytest.skip("the compiled expression is the loss")
        from ..compiler import compile_loss
        from ..parse import parse
        from ..zoo import slot_loss
        from . import SIGNATURES

        assert sig.fills in SIGNATURES and sig.fills != sig.name
        column = sig.columns[0]
        loss = slot_loss(compile_loss(parse(f"sigmoid({column})", sig.names, {}), sig))
        assert getattr(loss, "normalised", False), "a set-level loss normalises itself"

    def test_near_samples_and_rescale(self):
        sig = self.sig
        g = torch.Generator().manual_seed(4)
        if sig.sample_near is not None:
            sig.prepare("contract", *sig.sample_near(self.rows, g, dtype=torch.float64))
        if sig.rescale is not None:
            inputs = self.inputs()
            scaled = sig.rescale(*inputs, 10.0, 3.0)
            assert all(a.shape == b.shape for a, b in zip(inputs, scaled))
            assert any(sig.units.get(c, units.DIMENSIONLESS) != units.DIMENSIONLESS
                       for c in sig.columns), "rescale without a dimension"

    def test_from_detector(self):
        sig = self.sig
        if sig.from_detector is None:
            pytest.skip("not a box-regression signature")
        g = torch.Generator().manual_seed(5)
        points = torch.rand(self.rows, 2, generator=g, dtype=torch.float64) * 64
        gt = torch.cat([points - 3.0, points + 5.0], 1)
        ltrb = torch.rand(self.rows, 4, generator=g, dtype=torch.float64) * 8 + 0.5
        prep = sig.prepare("contract", *sig.from_detector(ltrb, points, gt, 8.0))
        assert prep.out_shape[0] == self.rows
