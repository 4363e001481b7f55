"""The loss zoo: every catalog entry as a ready torch module.

>>> from autoloss import zoo
>>> loss = zoo.build("giou", reduction="mean")
>>> loss(pred_boxes, target_boxes)               # doctest: +SKIP

``names()`` lists the ids, ``get(id)`` returns the :class:`~autoloss.catalog.LossSpec`
(title, paper, survey section, signature, expression, defaults), ``build(id, ...)`` a
``torch.nn.Module`` whose ``forward`` takes the signature's inputs in order (plus
optional per-element ``weight`` and ``avg_factor`` as mmdetection's losses take them).

A set-level (kind S) entry, e.g. ``ap_loss``, is a hand-written function over the whole
batch: ``loss(id)`` gives it as a :class:`SetLevelLoss` (called like a compiled loss, one
value per batch), ``build`` as a module; ``compiled`` refuses it.

An entry of the ``rank`` signature (``ap_step``, ``sigmoid_step``) is a smoothed step
over pair differences: ``build`` gives the step (elementwise, like any expression),
``loss(id)`` the set-level loss built on it (:class:`autoloss.ranksurrogate.RankLoss`),
which is what a proxy's classification slot calls.

A hand-written batch-level entry (kind B naming a module class: ``seesaw``, ``eqlv2``,
``wiou_v3`` keep running state, ``ohem`` and ``ssd_hnm`` mine hard examples) is a
:class:`ModuleLoss`: every ``loss(id)`` and every ``build(id)`` holds its own instance, so
no two share state; the state lives in torch buffers (``state_dict`` saves it), is updated
by calls in training mode only, and ``reset()`` forgets it.

>>> seesaw = zoo.build("seesaw", reduction="mean")
>>> seesaw(logits, labels)                        # doctest: +SKIP
>>> seesaw.reset()                                # back to the initial class counts
"""
from __future__ import annotations

import importlib
import inspect

import torch

from . import catalog, runtime
from .catalog import LossSpec
from .compiler import CompiledLoss, compile_loss
from .errors import SignatureError, UnknownNameError, did_you_mean, require_expression
from .signatures import get as get_signature

_REDUCTIONS = ("none", "mean", "sum")


def names() -> list[str]:
    """All zoo ids, sorted."""
    return catalog.ids()


def get(loss_id: str) -> LossSpec:
    """The catalog entry of ``loss_id``."""
    return catalog.get(loss_id)


def compiled(loss_id: str) -> CompiledLoss:
    """The compiled loss behind ``build(loss_id)`` (source, gradient functions, hash)."""
    spec = get(loss_id)
    require_expression(spec, f"the zoo ({loss_id!r} is kind {spec.kind}, hand-written)")
    loss = compile_loss(spec.expression, spec.signature, name=loss_id, doc=spec.title,
                        kind=spec.kind)
    loss.normaliser = spec.normaliser  # the compile cache keys on the id: this entry's own
    return loss


class SetLevelLoss:
    """A set-level zoo loss (kind S): its hand-written function, called as a compiled loss
    is, on the signature's inputs (``logits`` (N, C), ``target`` (N, C) for ``sigmoid``).

    The inputs are flattened to one element per (anchor, class) pair, as the ranking losses'
    official implementations take them; a function whose second argument is ``labels``
    gets ``target > 0`` (a quality target counts as positive), one taking ``targets`` gets
    the targets themselves (Rank & Sort sorts positives by them). The value is one number
    for the batch, already normalised as its paper normalises it (by the positives), so
    ``reduction`` is ``"mean"`` or ``"sum"`` alike and nothing is divided again
    (``normalised``); per-element values, weights and ``avg_factor`` do not exist for it.
    """

    kind = "S"
    normalised = True

    def __init__(self, spec: LossSpec):
        module, _, function = spec.implementation.partition(":")
        self.fn = getattr(importlib.import_module(module), function)
        self.spec = spec
        self.name = spec.id
        self.signature = get_signature(spec.signature)
        self.params = dict(spec.params)
        self.defaults = spec.defaults
        self.binary = list(inspect.signature(self.fn).parameters)[1] == "labels"

    def values(self, params) -> dict[str, float]:
        return _values(self.name, self.defaults, params)

    def __call__(self, *inputs, reduction: str = "mean", weight=None, avg_factor=None,
                 **params) -> torch.Tensor:
        if reduction not in ("mean", "sum"):
            raise SignatureError(f"{self.name}: a set-level loss is one value for the whole "
                                 f"batch; reduction must be 'mean' or 'sum', got {reduction!r}")
        if weight is not None or avg_factor is not None:
            raise SignatureError(f"{self.name}: a set-level loss takes no per-element weight "
                                 "or avg_factor (it normalises itself over the batch)")
        logits, target = self.signature.check(inputs, self.name)[:2]
        if logits.shape != target.shape:
            raise SignatureError(f"{self.name}: 'logits' and 'target' must have the same shape, "
                                 f"got {list(logits.shape)} and {list(target.shape)}")
        target = target.reshape(-1)
        if self.binary:
            target = (target > 0).to(logits.dtype)
        return self.fn(logits.reshape(-1), target, **self.values(params))

    def __repr__(self) -> str:
        return f"SetLevelLoss({self.name!r}, {self.spec.implementation})"


def _values(name: str, defaults: dict[str, float], params) -> dict[str, float]:
    """The defaults with ``params`` (names checked) laid over them, as floats."""
    out = dict(defaults)
    for k, v in params.items():
        if k not in out:
            raise UnknownNameError(f"{name}: unknown parameter {k!r}; "
                                   f"{did_you_mean(k, out) if out else 'it takes none'}")
        out[k] = float(v)
    return out


class ModuleLoss(torch.nn.Module):
    """A hand-written batch-level zoo loss (kind B naming a module class), called as a
    compiled loss is: ``loss(*inputs, reduction="none", weight=None, avg_factor=None,
    **params)``.

    The class named by the entry's ``implementation`` is instantiated here, once per
    ``ModuleLoss`` (``zoo.loss(id)`` and ``zoo.build(id)`` each make one), and held as the
    submodule ``impl``: its state is this object's alone. Its ``forward`` takes the
    signature's inputs and the parameters as keywords (keyword-only arguments that are not
    parameters, such as a sampler's ``image`` index, pass through from the call) and returns
    the unreduced loss, the signature's output shape; the reduction, ``weight`` and
    ``avg_factor`` are :func:`autoloss.runtime.reduce`'s. State is updated by calls in
    training mode (``train()``, the default), read but left alone in ``eval()``;
    :meth:`reset` forgets it.
    """

    kind = "B"
    normalised = False

    def __init__(self, spec: LossSpec):
        super().__init__()
        module, _, name = spec.implementation.partition(":")
        cls = getattr(importlib.import_module(module), name)
        self.impl = cls()
        self.spec = spec
        self.name = spec.id
        self.normaliser = spec.normaliser
        self.signature = get_signature(spec.signature)
        self.params = dict(spec.params)
        self.defaults = spec.defaults
        self.passed = tuple(k for k, p in inspect.signature(cls.forward).parameters.items()
                            if p.kind is p.KEYWORD_ONLY and k not in self.defaults)

    def values(self, params) -> dict[str, float]:
        return _values(self.name, self.defaults, params)

    def forward(self, *inputs, reduction: str = "none", weight=None, avg_factor=None,
                **params) -> torch.Tensor:
        if reduction not in _REDUCTIONS:
            raise SignatureError(f"{self.name}: reduction must be one of {_REDUCTIONS}, "
                                 f"got {reduction!r}")
        passed = {k: params.pop(k) for k in self.passed if k in params}
        inputs = self.signature.check(inputs, self.name)
        value = self.impl(*inputs, **self.values(params), **passed)
        return runtime.reduce(value, reduction, weight, avg_factor)

    def reset(self) -> None:
        """Forget the running state: the next call behaves as the first after ``build``."""
        reset = getattr(self.impl, "reset", None)
        if reset is not None:
            reset()

    def extra_repr(self) -> str:
        return f"{self.name!r}, {self.spec.implementation}"


def loss(loss_id: str) -> CompiledLoss | SetLevelLoss | ModuleLoss:
    """What a proxy calls for zoo id ``loss_id``: the compiled loss, a set-level loss's
    function (:class:`SetLevelLoss`), or a new hand-written module (:class:`ModuleLoss`,
    with its own state)."""
    spec = get(loss_id)
    if spec.kind == "S":
        return SetLevelLoss(spec)
    if spec.module:
        return ModuleLoss(spec)
    return slot_loss(compiled(loss_id))


def slot_loss(loss: CompiledLoss, **options):
    """What a proxy calls for a compiled expression: the expression itself, or, for a
    signature whose expression is a piece of a set-level loss (rank: the smoothed step;
    ``Signature.set_level`` names the class), that loss built on it with ``options`` (a
    search space slot's ``set_level`` table: rank's ``update``, ``interpolate``)."""
    target = loss.signature.set_level
    if not target:
        if options:
            raise SignatureError(f"{loss.name}: the {loss.signature.name!r} signature's "
                                 "expressions are losses themselves; they take no set-level "
                                 f"options, got {sorted(options)}")
        return loss
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    accepted = list(inspect.signature(cls).parameters)[1:]
    for key in options:
        if key not in accepted:
            raise SignatureError(f"unknown option {key!r} of the {loss.signature.name!r} "
                                 f"signature's set-level loss ({target}); "
                                 f"{did_you_mean(key, accepted)}")
    return cls(loss, **options)


class ZooLoss(torch.nn.Module):
    """A zoo loss as a module; see :func:`build`."""

    spec: LossSpec

    def __init__(self, reduction: str = "none", **params):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{self.spec.id}: reduction must be one of {_REDUCTIONS}, "
                             f"got {reduction!r}")
        # a step of the rank signature is a module of its own signature (over pair
        # differences); loss(id) is the set-level loss built on it
        self.loss = (compiled(self.spec.id) if get_signature(self.spec.signature).set_level
                     else loss(self.spec.id))
        self.loss.values(params)  # validates names and values now, not at the first call
        if self.spec.kind == "S" and reduction == "none":
            reduction = "mean"  # one value for the batch either way
        self.reduction = reduction
        self.params = {k: float(v) for k, v in params.items()}

    def forward(self, *inputs, weight=None, avg_factor=None, **passed) -> torch.Tensor:
        """The loss of the signature's inputs; ``passed`` holds a hand-written module's
        per-call keywords (a sampler's ``image`` index)."""
        return self.loss(*inputs, reduction=self.reduction, weight=weight,
                         avg_factor=avg_factor, **self.params, **passed)

    def reset(self) -> None:
        """Forget the loss's running state (Seesaw's class counts, EQLv2's gradient
        statistics, WIoU v3's mean IoU loss): the next call behaves as the first after
        ``build``. State lives on this module (``self.loss``, a :class:`ModuleLoss`), never
        on the shared compiled loss; for a stateless loss this does nothing."""
        reset = getattr(self.loss, "reset", None)
        if reset is not None:
            reset()

    def extra_repr(self) -> str:
        values = dict(self.loss.defaults)
        values.update(self.params)
        shown = ", ".join(f"{k}={v:g}" for k, v in values.items())
        return f"reduction={self.reduction!r}" + (f", {shown}" if shown else "")


_CLASSES: dict[str, type] = {}


def _docstring(spec: LossSpec) -> str:
    sig = get_signature(spec.signature)
    inputs = "\n".join(f"        {i.name}: {i.shape} {i.doc}" for i in sig.inputs)
    params = "\n".join(
        f"        {p.name} = {p.default:g}" + (f"  (search range [{p.low:g}, {p.high:g}])"
                                              if p.low is not None else "")
        for p in spec.params.values())
    formula = "\n".join("        " + line for line in spec.formula().splitlines())
    return (f"{spec.title}.\n\n    {spec.paper}\n    Survey section {spec.section}; "
            f"signature {spec.signature!r}, output {sig.output}.\n\n    Formula:\n{formula}\n\n"
            f"    Inputs:\n{inputs}\n" + (f"\n    Parameters:\n{params}\n" if params else "")
            + (f"\n    Notes: {spec.notes}\n" if spec.notes else "")
            + (f"\n    Reference: {spec.reference}\n" if spec.reference else ""))


def module_class(loss_id: str) -> type:
    """The ``nn.Module`` subclass of a zoo id (its docstring carries the formula)."""
    cls = _CLASSES.get(loss_id)
    if cls is None:
        spec = get(loss_id)
        stem = loss_id[:-len("_loss")] if loss_id.endswith("_loss") else loss_id
        cls = type(f"{''.join(w.title() for w in stem.split('_'))}Loss", (ZooLoss,),
                   {"spec": spec, "__doc__": _docstring(spec), "__module__": __name__})
        _CLASSES[loss_id] = cls
    return cls


def build(loss_id: str, reduction: str = "none", **params) -> ZooLoss:
    """A ``torch.nn.Module`` computing zoo loss ``loss_id``.

    Args:
        loss_id: a zoo id (see :func:`names`).
        reduction: ``"none"`` (per element, the signature's output shape), ``"mean"`` or
            ``"sum"``. The mean of an empty batch is 0 with a gradient. A set-level loss
            (kind S) is one value for the batch whatever the reduction.
        **params: parameter values overriding the catalog defaults (e.g. ``gamma=1.5``),
            including the signature's ``eps``.
    """
    if loss_id not in catalog.default().losses:
        raise UnknownNameError(f"unknown zoo id {loss_id!r}; {did_you_mean(loss_id, names())}")
    return module_class(loss_id)(reduction=reduction, **params)
