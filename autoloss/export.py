"""Export a loss as a standalone PyTorch module (torch only, no autoloss import).

>>> from autoloss import export, zoo
>>> source = export.to_source(zoo.compiled("giou"), name="MyGIoU")      # doctest: +SKIP
>>> export.to_file(zoo.compiled("giou"), "my_giou.py", name="MyGIoU")   # doctest: +SKIP

The written module holds, from the same code generator the search compiled:

* the value function and the fused value-and-gradient function (what was scored is what
  is shipped);
* a functional form ``my_giou(pred, target, reduction="none", eps=..., weight=None,
  avg_factor=None, **params)`` and an ``nn.Module`` ``MyGIoU``, with torchvision's call
  conventions and mmdetection's ``weight`` / ``avg_factor``;
* the formula in the docstring (plain text and LaTeX), parameters and their values,
  provenance, input shapes;
* optionally the parameters as ``nn.Parameter`` (``trainable_constants=True``).

It scripts with ``torch.jit.script`` (autograd through the value function there); in eager
mode it runs the fused closed-form gradient in cache-sized chunks, as the compiled loss.

Safety: only validated identifiers and numbers printed by ``repr`` reach the code; every
piece of text (titles, papers, run names) goes into docstrings through :func:`_text`,
which escapes it, so a hostile name in a run's storage cannot inject code.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from . import __version__, codegen, runtime, units
from . import expr as E
from .compiler import CompiledLoss
from .errors import AutolossError, ExpressionError, require_expression

_CLASS = re.compile(r"^[A-Z][A-Za-z0-9]*$")


@dataclass
class Provenance:
    """Where a loss came from, for the docstring (all text is escaped)."""

    source: str = "expression"
    run: str = ""
    trial: Optional[int] = None
    proxy: str = ""
    metric: str = ""
    value: Optional[float] = None
    paper: str = ""
    title: str = ""
    formula: str = ""
    latex: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _text(value, width: int = 96) -> str:
    """Any text, made safe for a triple-quoted docstring (no code can escape it)."""
    text = str(value)
    text = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in text)
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text += " "
    return text


def function_name(name: str) -> str:
    """Function name of a class name: MyBoxLoss -> my_box_loss, GIoU -> giou_loss."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.replace("IoU", "Iou")).lower()
    return s if s.endswith("loss") else s + "_loss"


_FUSED = '''

class _Fused(torch.autograd.Function):
    """Value and closed-form gradient in one pass (eager mode only)."""

    @staticmethod
    def forward(ctx, params, *cols):
        if _whole(cols[0]):
            out = _value_and_grad(*[_dense(c) for c in cols], *params)
            value, grads = out[0], list(out[1:])
        else:
            value = torch.empty(cols[0].shape, dtype=cols[0].dtype, device=cols[0].device)
            grads = [None if g is None else torch.empty_like(cols[k]) for k, g in enumerate(_NEEDS)]
            _run_chunks(_value_and_grad, list(cols), params, value, grads)
        ctx.grads = grads + [None] * (len(cols) - len(grads))  # batch columns: no gradient
        return value

    @staticmethod
    def backward(ctx, gout):
        return (None,) + tuple(None if g is None else g * gout for g in ctx.grads)
'''


def _needs(compiled: CompiledLoss) -> list[bool]:
    """The exported fused gradient covers the prediction-side columns: those computed
    from input 0 (alone, or with others, as rbox's intersection area)."""
    return [0 in sources for sources in compiled.signature.column_sources]


def to_source(compiled: CompiledLoss, name: Optional[str] = None,
              params: Optional[Mapping[str, float]] = None, *,
              trainable_constants: bool = False, provenance: Optional[Provenance] = None,
              _prefix: str = "", _module: bool = True) -> str:
    """The source of a standalone module computing ``compiled`` (see the module docstring).

    Args:
        compiled: the compiled loss (``zoo.compiled(id)``, a search candidate, ...).
        name: the class name (CamelCase, e.g. ``"MyLoss"``); the function is its snake case.
        params: parameter values to ship as defaults (e.g. searched values).
        trainable_constants: make the loss's own parameters ``nn.Parameter`` s.
        provenance: where the loss came from (docstring).
    """
    sig = compiled.signature
    name = name or "".join(w.title() for w in compiled.name.split("_")) + "Loss"
    if not _CLASS.match(name):
        raise ExpressionError(f"class name {name!r} must be CamelCase letters and digits, "
                              "e.g. MyLoss")
    func = function_name(name)
    codegen.check_identifier(func, "function name")
    values = dict(compiled.defaults)
    for k, v in (params or {}).items():
        if k not in values:
            raise AutolossError(f"{compiled.name}: unknown parameter {k!r}")
        values[k] = float(v)
    for k in values:
        codegen.check_identifier(k, "parameter")
    needs = _needs(compiled)
    grads = compiled.gradients(needs)
    prov = provenance or Provenance()
    own = [k for k in values if k not in sig.params]  # the loss's own (searchable) parameters

    # the generated code, renamed to private helpers, defaults set to the shipped values
    value_src = _retarget(compiled, [False] * len(needs), "_value", values)
    vjp_src = _retarget(compiled, needs, "_value_and_grad", values)
    tensor_src = ""
    if trainable_constants and own:
        tensor_src = codegen.function(
            "_value_tensor_params", compiled.columns, values, [("loss", compiled.graph)],
            compiled.names, tensor_params=set(own))
    args, body = sig.export_columns
    helpers = sig.export_helpers() + "\n\n" if sig.export_helpers is not None else ""
    call_inputs, out_shape = sig.call_inputs, sig.output
    inputs_doc = "\n".join(f"        {i.name}: {i.shape} {_text(i.doc)}" for i in sig.inputs)
    param_doc = "\n".join(
        f"        {k} = {v!r}" + (f" (search range [{compiled.params[k].low:g}, "
                                  f"{compiled.params[k].high:g}])"
                                  if k in compiled.params and compiled.params[k].low is not None
                                  else "") for k, v in values.items())
    formula = prov.formula or E.to_infix(compiled.expression)
    header = _docstring(name, compiled, prov, formula, inputs_doc, param_doc, out_shape,
                        trainable_constants)
    typed = [f"{k}: float = {values[k]!r}" for k in values]
    sig_params = "".join(f", {t}" for t in typed)
    param_names = "".join(f", {k}" for k in values)
    param_tuple = "(" + "".join(f"{k}, " for k in values) + ")"
    col_list = ", ".join(f"cols[{i}]" for i in range(len(compiled.columns)))
    batch_src, batch_call = _batch_prepass(compiled, values, param_names, "    ")
    _, batch_attr = _batch_prepass(compiled, values, "".join(f", float(self.{k})" for k in values),
                                   "            ")
    needs_list = "[" + ", ".join("True" if (n and g is not None) else "None"
                                 for n, g in zip(needs, grads)) + "]"
    mask = "(" + ", ".join(repr(bool(n)) for n in needs) + ",)"
    module_init = "\n".join(
        (f"        self.{k} = torch.nn.Parameter(torch.tensor({values[k]!r}))"
         if trainable_constants and k in own else f"        self.{k} = {k}") for k in values)
    attr_args = "".join(f", self.{k}" for k in values)
    tensor_branch = ""
    if tensor_src:
        tensor_branch = f'''
        if {" or ".join(f"isinstance(self.{k}, torch.nn.Parameter)" for k in own)}:
            cols = _columns({call_inputs}){batch_attr}
            loss = _value_tensor_params({col_list}{attr_args})
            return _reduce(loss, self.reduction, weight, avg_factor)'''
    typed_forward = ", ".join(f"{i.name}: Optional[Tensor] = None" if i.optional
                              else f"{i.name}: Tensor" for i in sig.inputs)
    trainable_note = "torch.nn.Parameter when trainable_constants, else float"
    body = f'''# --------------------------------------------------------------- generated loss code
{value_src}

{vjp_src}
{tensor_src}{batch_src}
# ------------------------------------------------------------------------ inputs
{helpers}def _columns({args}) -> List[Tensor]:
{body}

_NEEDS = {needs_list}
_MASK = {mask}

{runtime.source()}{_FUSED}

def _fusable(cols: List[Tensor]) -> bool:
    # the exported fused gradient covers the prediction-side columns; anything else
    # (a target that requires grad, double backward) goes through autograd
    if not torch.is_grad_enabled():
        return False
    for c, m in zip(cols, _MASK):
        if c.requires_grad and not m:
            return False
    return any(c.requires_grad for c in cols)


def {func}({args}, reduction: str = "none"{sig_params}, weight: Optional[Tensor] = None, avg_factor: Optional[float] = None) -> Tensor:
    """{_text(prov.title or compiled.name)}: the functional form of :class:`{name}`."""
    cols = _columns({call_inputs}){batch_call}
    if torch.jit.is_scripting():
        loss = _value({col_list}{param_names})
    elif _fusable(cols):
        loss = _Fused.apply({param_tuple}, *cols)
    else:
        loss = _value({col_list}{param_names})
    return _reduce(loss, reduction, weight, avg_factor)


class {name}(torch.nn.Module):
    """{_text(prov.title or compiled.name)} as a module; parameters are attributes
    ({trainable_note})."""

    def __init__(self, reduction: str = "none"{sig_params}):
        super().__init__()
        self.reduction = reduction
{module_init}

    def forward(self, {typed_forward}, weight: Optional[Tensor] = None, avg_factor: Optional[float] = None) -> Tensor:{tensor_branch}
        return {func}({call_inputs}, self.reduction{attr_args}, weight, avg_factor)
'''
    if _prefix:
        body = _private(body, _prefix)
    if not _module:
        return body
    return f'''"""{header}"""
{_imports()}
__all__ = ["{func}", "{name}"]


{body}'''


def _imports() -> str:
    """The generated module's header comment and imports (dated the day it is written)."""
    return f"""# Generated by autoloss {__version__} on {datetime.date.today()}; depends on torch only.
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor
"""


_PRIVATE = ("_value_and_grad", "_value_tensor_params", "_value", "_batch_terms", "_columns",
            "_NEEDS", "_MASK", "_Fused", "_fusable",
            *("_" + n for n in runtime.EXPORTED_NAMES))


def _private(body: str, prefix: str) -> str:
    """Rename the module-level private helpers (several losses in one module)."""
    for name in _PRIVATE:
        body = re.sub(rf"\b{name}\b", f"_{prefix}{name}", body)
    return body


def to_source_joint(losses: Mapping[str, CompiledLoss], names: Mapping[str, str],
                    params: Mapping[str, Mapping[str, float]], weights: Mapping[str, float],
                    choices: Mapping[str, object], provenance: Provenance) -> str:
    """One module for a joint search: one class per slot, plus the searched weights."""
    from .ranksurrogate import RankLoss

    parts, exported = [], []
    for slot, compiled in losses.items():
        if isinstance(compiled, RankLoss):
            raise AutolossError(
                f"slot {slot!r} holds a ranking surrogate (a set-level loss on the step "
                f"{E.to_infix(compiled.expression)}); a joint export writes elementwise losses "
                "only. Export that slot alone: export.to_file(RankLoss(step), ...)")
        codegen.check_identifier(slot, "slot name")
        parts.append(to_source(compiled, names[slot], params.get(slot), provenance=provenance,
                               _prefix=slot, _module=False))
        exported += [function_name(names[slot]), names[slot]]
    lines = [f"{_text(provenance.title or 'Jointly searched losses')}.", "",
             "    Slots: " + ", ".join(f"{s} -> {names[s]}" for s in losses), "",
             "    Provenance:", f"        source: {_text(provenance.source)}"]
    for key in ("run", "trial", "proxy", "metric", "value"):
        v = getattr(provenance, key)
        if v not in ("", None):
            lines.append(f"        {key}: {_text(v)}")
    for slot, c in losses.items():
        lines += ["", f"    {slot}: {_text(E.to_infix(c.expression))}"]
    weight_items = ", ".join(f"{k!r}: {float(v)!r}" for k, v in weights.items()
                             if codegen.check_identifier(k, "weight name"))
    choice_items = ", ".join(f"{_literal_key(k)}: {_literal(v)}" for k, v in choices.items())
    return (f'"""{chr(10).join(lines)}\n"""\n{_imports()}\n__all__ = {exported!r}\n\n'
            f"#: loss weights found by the search (total = sum of weight * loss per slot)\n"
            f"WEIGHTS = {{{weight_items}}}\n#: the other categorical choices of the search\n"
            f"CHOICES = {{{choice_items}}}\n\n\n" + "\n\n".join(parts))


def _literal_key(k) -> str:
    if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z0-9_.]+", k):
        raise AutolossError(f"choice name {k!r} is not a plain name")
    return repr(k)


def _literal(v) -> str:
    """Only numbers, booleans and plain-word strings are written as values."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else repr(int(v))
    if isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]*", v):
        return repr(v)
    raise AutolossError(f"choice value {v!r} is not a number or a plain word")


def _batch_prepass(compiled: CompiledLoss, values, param_names: str,
                   indent: str) -> tuple[str, str]:
    """The batch pre-pass of a kind-B loss: its source (``_batch_terms``, the batch-level
    terms over the whole batch) and the lines appending them to ``cols`` (detached: no
    gradient flows through them). Empty for an elementwise loss."""
    if not compiled.batch_terms:
        return "", ""
    src = codegen.function("_batch_terms", compiled.signature.columns, values,
                           list(compiled.batch_terms), compiled.names,
                           doc="The batch-level terms, once over the whole batch (no gradient).")
    n = len(compiled.signature.columns)
    args = ", ".join(f"cols[{i}].detach()" for i in range(n))
    if len(compiled.batch_terms) == 1:
        call = f"\n{indent}cols = cols + [_batch_terms({args}{param_names})]"
    else:
        items = ", ".join(f"terms[{i}]" for i in range(len(compiled.batch_terms)))
        call = (f"\n{indent}terms = _batch_terms({args}{param_names})"
                f"\n{indent}cols = cols + [{items}]")
    return "\n" + src, call


def _retarget(compiled: CompiledLoss, needs, new_name: str, values) -> str:
    """Generated source of one function, under ``new_name`` with shipped defaults."""
    src = codegen.function(new_name, compiled.columns, values,
                           compiled.outputs(needs), compiled.names)
    return src


def _docstring(name, compiled, prov, formula, inputs_doc, param_doc, out_shape, trainable):
    from .symbolic import latex

    try:
        tex = prov.latex or latex(compiled.expression)
    except Exception:  # noqa: BLE001 - LaTeX is documentation only
        tex = "(LaTeX unavailable)"
    lines = [f"{name}: {_text(prov.title or compiled.name)}.", ""]
    if prov.paper:
        lines += [f"    {_text(prov.paper)}", ""]
    lines += ["    Formula (plain text):", *("        " + _text(x) for x in formula.splitlines()),
              "", "    LaTeX:", *("        " + _text(x) for x in tex.splitlines()), "",
              f"    Signature {compiled.signature.name!r}: output {out_shape}.", "    Inputs:",
              inputs_doc, "", "    Parameters (shipped values):", param_doc or "        none"]
    if trainable:
        lines += ["", "    The loss's own parameters are torch.nn.Parameter: they train with the model."]
    lines += ["", "    Provenance:", f"        source: {_text(prov.source)}",
              f"        canonical hash: {compiled.hash}"]
    for key in ("run", "trial", "proxy", "metric", "value"):
        v = getattr(prov, key)
        if v not in ("", None):
            lines.append(f"        {key}: {_text(v)}")
    for key, v in prov.extra.items():
        lines.append(f"        {_text(key)}: {_text(v)}")
    if prov.notes:
        lines += ["", f"    Notes: {_text(prov.notes)}"]
    lines += ["", "    Call conventions: torchvision's (inputs, reduction='none', eps=...), plus",
              "    mmdetection's optional per-element weight and avg_factor.", ""]
    return "\n".join(lines)


def zoo_provenance(loss_id: str) -> Provenance:
    """Provenance of a zoo entry: its title, paper, formula with helpers, LaTeX, notes."""
    from . import zoo

    spec = zoo.get(loss_id)
    require_expression(spec, f"export ({loss_id!r} is kind {spec.kind}, hand-written)")
    return Provenance(source=f"autoloss zoo id {loss_id!r} ({spec.file})", paper=spec.paper,
                      title=spec.title, formula=spec.formula(), latex=spec.latex(),
                      notes=spec.notes, extra={"reference": spec.reference} if spec.reference
                      else {})


def to_source_rank(loss, name: Optional[str] = None,
                   params: Optional[Mapping[str, float]] = None, *,
                   provenance: Optional[Provenance] = None,
                   trainable_constants: bool = False) -> str:
    """The source of a standalone module computing a ranking surrogate
    (:class:`autoloss.ranksurrogate.RankLoss`): its step, written as any compiled loss is
    (``<Name>Step``), and the set-level core, whose source is read from
    :mod:`autoloss.ranksurrogate` itself (``SHIPPED``), so what was searched is what is
    shipped. The module's ``<Name>`` takes logits and targets of one shape ((N, C) or
    (N,); target > 0 positive, 0 negative, < 0 ignored) and returns one value for the
    batch, with the error-driven update (or ``update="autograd"``). The core's autograd
    Function is eager torch: the set-level loss is not TorchScript-able (its step is)."""
    import inspect

    from . import ranking, ranksurrogate

    if trainable_constants:
        raise AutolossError(f"{loss.name}: a ranking surrogate is exported with its step's "
                            "parameters as plain attributes; trainable constants are not "
                            "supported for it (drop --trainable)")
    name = name or "".join(w.title() for w in loss.name.split("_")) + "Loss"
    if not _CLASS.match(name):
        raise ExpressionError(f"class name {name!r} must be CamelCase letters and digits, "
                              "e.g. MyLoss")
    func = function_name(name)
    step_name = name + "Step"
    step_func = function_name(step_name)
    values = dict(loss.defaults)
    for k, v in (params or {}).items():
        if k not in values:
            raise AutolossError(f"{loss.name}: unknown parameter {k!r}")
        values[k] = float(v)
    prov = provenance or Provenance()
    step_src = to_source(loss.step, step_name, values, provenance=prov, _module=False)
    core = "\n\n\n".join(inspect.getsource(f).rstrip() for f in
                         (ranking._acc_dtype, ranking._value_dtype, *ranksurrogate.SHIPPED))
    typed = "".join(f", {k}: float = {v!r}" for k, v in values.items())
    as_dict = "{" + ", ".join(f"{k!r}: {k}" for k in values) + "}"
    attrs = "".join(f", self.{k}" for k in values)
    init = "".join(f"\n        self.{k} = {k}" for k in values)
    formula = _text(prov.formula or E.to_infix(loss.expression))
    lines = [f"{_text(prov.title or loss.name)}: a ranking surrogate (one value per batch).", "",
             "Smoothed step over pair differences x = s_j - s_i (the other element's logit",
             "minus a positive's):", "", f"    H(x) = {formula}", "",
             "For a positive i: rank_pos(i) = 1 + sum_{k in P, k != i} H(s_k - s_i),",
             "FP(i) = sum_{j in N} H(s_j - s_i), prec(i) = rank_pos(i) / (rank_pos(i) + FP(i)),",
             "iprec(i) = max{prec(k): s_k <= s_i} (interpolate=True, AP-Loss), and",
             "L = 1 - mean_i iprec(i). update='error' (AP-Loss's error-driven update): positive i",
             "gets -(1 - iprec(i)) / P, negative j gets sum_i H(s_j - s_i) / rank(i) / P (scaled",
             "by (1 - iprec(i)) / (1 - prec(i)) where interpolated): not the gradient of L.",
             "update='autograd': the gradient of L through H.", ""]
    if prov.source:
        lines.append(f"Source: {_text(prov.source)}" + (f", run {_text(prov.run)} trial {prov.trial}"
                                                        if prov.run else ""))
    if prov.proxy and prov.value is not None:
        lines.append(f"Found on {_text(prov.proxy)}: {_text(prov.metric)} = {prov.value:.4g}")
    lines.append(f"Defaults: update={loss.update!r}, interpolate={loss.interpolate}"
                 + "".join(f", {k}={v!r}" for k, v in values.items()))
    header = "\n".join(lines)
    return f'''"""{header}
"""
{_imports()}from torch.autograd.function import once_differentiable

__all__ = ["{func}", "{name}", "{step_func}", "{step_name}"]


{step_src}

# ------------------------------------------------------------------ the set-level core
# (autoloss.ranksurrogate and autoloss.ranking, as the search ran them)
_BLOCK_ELEMENTS = {ranksurrogate._BLOCK_ELEMENTS}


class StepError(ValueError):
    """The step gave a value that is no smoothed step (negative or non-finite)."""


class _StepFunction:
    name = "{step_func}"

    def __call__(self, x: Tensor, **params: float) -> Tensor:
        return {step_func}(x, "none", **params)


{core}


def {func}(logits: Tensor, target: Tensor, update: str = {loss.update!r}, interpolate: bool = {loss.interpolate!r}{typed}) -> Tensor:
    """The ranking surrogate of logits and targets of one shape ((N, C) or (N,)); target
    > 0 is a positive, 0 a negative, < 0 ignored. One value for the batch (normalised over
    the positives); 0 with a zero gradient without positives."""
    if logits.shape != target.shape:
        raise ValueError(f"logits and target must have the same shape, got {{list(logits.shape)}} and {{list(target.shape)}}")
    if not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor; convert with .float()")
    x, t = logits.reshape(-1), target.reshape(-1)
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("logits must be finite")
    params = {as_dict}
    if update == "error":
        return _ErrorDriven.apply(x, t > 0, t == 0, _StepFunction(), params, bool(interpolate))
    if update == "autograd":
        return _autograd(x, t > 0, t == 0, _StepFunction(), params, bool(interpolate))
    raise ValueError(f"update must be 'error' or 'autograd', got {{update!r}}")


class {name}(torch.nn.Module):
    """:func:`{func}` as a module; the step's parameters are attributes."""

    def __init__(self, update: str = {loss.update!r}, interpolate: bool = {loss.interpolate!r}{typed}):
        super().__init__()
        self.update = update
        self.interpolate = interpolate{init}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return {func}(logits, target, self.update, self.interpolate{attrs})
'''


def to_file(compiled: CompiledLoss, path: str | os.PathLike, name: Optional[str] = None,
            **kwargs) -> Path:
    """Write :func:`to_source` to ``path`` and return it (:func:`to_source_rank` for a
    ranking surrogate: a set-level loss built on a compiled step)."""
    from .ranksurrogate import RankLoss

    path = Path(path)
    if isinstance(compiled, RankLoss):
        path.write_text(to_source_rank(compiled, name, **kwargs))
    else:
        path.write_text(to_source(compiled, name, **kwargs))
    return path


def load(path: str | os.PathLike):
    """Import a written module from its file (as a user would)."""
    import importlib.util

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"autoloss_export_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- check
_CHECK_SCRIPT = r"""
import importlib.util, sys, torch
results = []
for k, (path, func, cases) in enumerate(torch.load(sys.argv[1])):
    spec = importlib.util.spec_from_file_location(f"exported_{k}", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    if "autoloss" in sys.modules:
        raise SystemExit(f"{path}: the exported module imported autoloss")
    fn = getattr(mod, func)
    out = []
    for inputs, idx in cases:
        inputs = [x.clone().requires_grad_(True) if i in idx else x for i, x in enumerate(inputs)]
        value = fn(*inputs)
        grads = torch.autograd.grad(value.sum(), [inputs[i] for i in idx], allow_unused=True)
        out.append((value.detach(), list(grads)))
    results.append(out)
torch.save(results, sys.argv[2])
"""


def check(path: str | os.PathLike, compiled: CompiledLoss,
          params: Optional[Mapping[str, float]] = None, *, rtol: float = 1e-6,
          atol: float = 1e-9) -> dict:
    """Import the written file in a fresh process and compare values and gradients with the
    compiled loss on random and degenerate inputs (float64). Raises on a mismatch."""
    return check_many([(path, compiled, params)], rtol=rtol, atol=atol)[0]


def _step_item(item: tuple) -> tuple:
    """A ranking surrogate's check item -> its step's: the shipped step function (third in
    the module's ``__all__``) against the compiled step. The shipped core is the module's
    own source (``ranksurrogate.SHIPPED``), tested in tests/test_ranksurrogate.py."""
    path, loss, params, *_ = item
    names = re.search(r"^__all__ = \[(.*)\]$", Path(path).read_text(), re.M)
    step_func = [n.strip().strip('"') for n in names.group(1).split(",")][2]
    return (path, loss.step, params, step_func)


def check_many(items: Sequence[tuple], *, rtol: float = 1e-6, atol: float = 1e-9) -> list[dict]:
    """:func:`check` for several ``(path, compiled, params[, function])`` in one fresh
    process; ``function`` names the loss function in a file holding several (a joint
    search's module), else the file's one class decides."""
    from .ranksurrogate import RankLoss

    jobs = []
    items = [_step_item(item) if isinstance(item[1], RankLoss) else item for item in items]
    for path, compiled, params, *function in items:
        sig = compiled.signature
        g = torch.Generator().manual_seed(0)
        cases = [sig.sample(64, g, dtype=torch.float64), sig.sample(3, g, dtype=torch.float64),
                 sig.degenerate(torch.float64)]
        if sig.has_units:  # last: the unit probe, pixel-sized boxes scaled 1e-2 ... 1e3
            cases.append(units.probe_inputs(sig, 32, g)[0])
        jobs.append((str(path), function[0] if function else function_name(_class_name_in(Path(path))),
                     [(list(c), [0]) for c in cases]))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(jobs, f"{tmp}/in.pt")
        proc = subprocess.run([sys.executable, "-c", _CHECK_SCRIPT, f"{tmp}/in.pt",
                               f"{tmp}/out.pt"], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise AutolossError("importing or running the exported module(s) in a fresh process "
                                f"failed:\n{proc.stderr[-3000:]}")
        results = torch.load(f"{tmp}/out.pt")
    reports = []
    for (path, compiled, params, *_), (_, _, cases), theirs in zip(items, jobs, results):
        worst = {"value": 0.0, "grad": 0.0, "cases": len(cases)}
        for (inputs, idx), (value, grads) in zip(cases, theirs):
            mine = [x.clone().requires_grad_(True) if i in idx else x
                    for i, x in enumerate(inputs)]
            v = compiled(*mine, **(params or {}))
            gs = torch.autograd.grad(v.sum(), [mine[i] for i in idx], allow_unused=True)
            _close(value, v.detach(), rtol, atol, f"{path}: values differ", worst, "value")
            for a, b in zip(grads, gs):
                a = torch.zeros_like(mine[idx[0]]) if a is None else a
                b = torch.zeros_like(mine[idx[0]]) if b is None else b
                _close(a, b, rtol, atol, f"{path}: gradients differ", worst, "grad")
        if compiled.signature.has_units:
            value, grads = theirs[-1]
            powers = [float(d.power) for d in compiled.signature.input_units(0)]
            worst["units"] = units.compare_scales(value, {"pred": grads[0]}, units.SCALES,
                                                  powers={"pred": powers}) or "invariant"
        reports.append(worst)
    return reports


def describe(report: dict) -> str:
    """One line for a :func:`check` report (what ``autoloss export --check`` prints)."""
    line = (f"check: values and gradients agree with the compiled loss in a fresh process "
            f"(max relative difference {max(report['value'], report['grad']):.2g}, "
            f"{report['cases']} input sets incl. degenerate ones)")
    if "units" in report:
        line += ("; scale and shift invariant (boxes scaled by 1e-2 ... 1e3: values equal to "
                 "1e-4, gradients 1/s)" if report["units"] == "invariant"
                 else f"; {report['units']}")
    return line


def _close(a, b, rtol, atol, message, worst, key):
    finite = torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), finite):
        raise AutolossError(f"{message}: non-finite entries differ")
    diff = (a[finite] - b[finite]).abs()
    bound = atol + rtol * b[finite].abs()
    if diff.numel():
        worst[key] = max(worst[key], float((diff / (atol + b[finite].abs())).max()))
        if bool((diff > bound).any()):
            raise AutolossError(f"{message} by up to {float(diff.max()):.3g}")


def _class_name_in(path: Path) -> str:
    match = re.search(r'^__all__ = \["[a-z0-9_]+", "([A-Za-z0-9]+)"\]', path.read_text(), re.M)
    if not match:
        raise AutolossError(f"{path}: not a module written by autoloss export")
    return match.group(1)
