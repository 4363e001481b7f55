"""The catalog: ``primitives/*.toml``, one file per survey section, one table per loss.

A file looks like::

    [section]
    id = "3"
    title = "Regression losses"
    subsections = [{ id = "3.2", title = "Optimisation issue" }, ...]

    [losses.ciou]
    title = "Complete-IoU loss"
    paper = "Zheng et al., Distance-IoU Loss, AAAI 2020"
    section = "3.2"
    signature = "box"
    let.v = "4 / pi ** 2 * (atan(tw / th) - atan(pw / ph)) ** 2"
    let.alpha = "stop_grad(v / (1 - iou + v + eps))"
    expression = "1 - iou + rho2 / (diag2 + eps) + alpha * v"
    properties = ["nonnegative", "zero_at_perfect", "symmetric", "scale_invariant"]
    reference = "torchvision.ops.complete_box_iou_loss"

``let`` holds named helpers (``v``) and function macros (``"sl1(l)" = "..."``), expanded
at parse time. ``params`` holds tunable parameters: ``gamma = { default = 2.0, range =
[0.0, 5.0] }``, with ``unit = "length"`` where one has a dimension. A loss of a signature
with units (``box``) must be dimensionless (:mod:`autoloss.units`), or say why it is not
by design: ``not_invariant = "normalised by a fixed image size"``. Every problem is
reported with the file, the entry and the field.

A set-level loss (``kind = "S"``: AP-Loss, aLRP, Rank & Sort, ...) is no expression: its
value couples every element of the batch and its gradient is the paper's error-driven
update. Its entry names the hand-written function instead, ``implementation =
"autoloss.ranking:ap_loss"``, which takes the slot's inputs flattened (logits (N,) and
labels (N,), or targets (N,) where its second argument is called ``targets``) and the
entry's ``params`` as keywords, and returns one value for the batch (see
:class:`autoloss.zoo.SetLevelLoss`).

A batch-level loss whose batch terms are not an expression of the batch ops (running
state: Seesaw's class counts, EQLv2's gradient statistics, WIoU v3's mean IoU loss; a
hard-example mask: OHEM, SSD's hard negative mining) names a ``torch.nn.Module`` class
instead, ``implementation = "autoloss.stateful:SeesawLoss"`` with ``kind = "B"``. The zoo
builds one instance per zoo module, so its state (torch buffers, saved by ``state_dict``,
forgotten by ``reset()``) is never shared; its ``forward`` takes the signature's inputs
and the entry's ``params`` as keywords and returns the unreduced loss, which the zoo
reduces (see :class:`autoloss.zoo.ModuleLoss`).

``normaliser`` says what the paper divides the summed loss by in a detector (a proxy does
the same): ``"positives"`` (the default: RetinaNet's number of positive samples),
``"elements"`` (every element the loss sees, GHM's total) or ``"samples"`` (the rows, as
EQL, EQLv2 and Seesaw's heads average over the sampled boxes). A set-level loss normalises
itself and takes no ``normaliser``.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from . import codegen, ops
from . import expr as E
from .errors import CatalogError, ExpressionError, UnknownNameError, did_you_mean
from .expr import Expr, Param
from .parse import Macro, parse
from .signatures import SIGNATURES
from .units import NAMED as UNIT_NAMES
from .units import Dim

PROPERTIES = {
    "nonnegative": "L >= 0 for every valid input",
    "zero_at_perfect": "L = 0 (up to eps) when the prediction equals the target "
                       "(saturated logits for classification)",
    "symmetric": "L(a, b) = L(b, a): prediction and target are interchangeable",
    "scale_invariant": "L(s a, s b) = L(a, b) for s > 0",
}
KINDS = {"E": "elementwise", "B": "batch-level terms, computed once over the batch",
         "S": "set-level, hand-written backward"}
_ENTRY_FIELDS = {
    "title": True, "paper": True, "section": True, "signature": True, "expression": True,
    "params": False, "let": False, "properties": False, "reference": False, "notes": False,
    "kind": False, "not_invariant": False, "implementation": False, "normaliser": False,
}
#: what a detector divides a loss's sum by (``normaliser``), and how to say it
NORMALISERS = {"positives": "the number of positive samples",
               "elements": "the number of elements (the mean)",
               "samples": "the number of samples (rows)"}
#: what a set-level entry may not have (it names a function instead of an expression)
_EXPRESSION_FIELDS = ("expression", "let")
_IMPLEMENTATION = re.compile(r"^autoloss(\.[a-z_][a-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_MACRO = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?\s*$")


@dataclass(frozen=True)
class Subsection:
    id: str
    title: str


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    subsections: tuple[Subsection, ...]
    file: str


@dataclass(frozen=True)
class LossSpec:
    """One surveyed loss: its metadata and its expression (``let`` helpers expanded)."""

    id: str
    title: str
    paper: str
    section: str
    signature: str
    #: None for a set-level loss (``implementation`` names its function)
    expression: Optional[Expr]
    text: str
    let: tuple[tuple[str, str], ...] = ()
    #: the ``let`` helpers and the expression with helper names kept (for display)
    display: tuple[tuple[str, Expr], ...] = ()
    params: dict[str, Param] = field(default_factory=dict)
    properties: tuple[str, ...] = ()
    reference: str = ""
    notes: str = ""
    kind: str = "E"
    file: str = ""
    #: why a loss of a signature with units is not scale and translation invariant by
    #: design (empty: it is, and the unit check holds)
    not_invariant: str = ""
    #: parameters with a physical dimension (``img_w``: a length)
    param_units: dict[str, Dim] = field(default_factory=dict)
    #: a set-level loss's function or a hand-written batch-level module's class,
    #: ``"module:name"`` (empty for an expression)
    implementation: str = ""
    #: what a detector divides the summed loss by (:data:`NORMALISERS`)
    normaliser: str = "positives"

    @property
    def compiles(self) -> bool:
        """An expression the compiler turns into code (kinds E and B), not a function (S)
        or a hand-written module (B with an ``implementation``)."""
        return self.expression is not None

    @property
    def module(self) -> bool:
        """A hand-written batch-level module (its class named by ``implementation``)."""
        return self.kind == "B" and not self.compiles

    @property
    def invariant(self) -> Optional[bool]:
        """Scale and translation invariant (None: the signature's inputs have no units)."""
        if not SIGNATURES[self.signature].has_units:
            return None
        return not self.not_invariant

    @property
    def defaults(self) -> dict[str, float]:
        return {k: p.default for k, p in self.params.items()}

    def latex(self) -> str:
        """LaTeX of the helpers and the loss, one equation per line (empty for a set-level
        loss, which is a function)."""
        from .symbolic import latex

        if not self.compiles:
            return ""
        return "\n".join(f"{latex(E.Var(name)) if name != 'loss' else 'L'} = {latex(e)}"
                          for name, e in self.display)

    def formula(self) -> str:
        """The loss as written: helpers first, then the expression."""
        if self.module:
            return (f"loss = {self.implementation}(...)  # hand-written module: batch terms "
                    "from its state or a mask, no gradient through them")
        if not self.compiles:
            return f"loss = {self.implementation}(...)  # set-level, hand-written backward"
        lines = [f"{name} = {body}" for name, body in self.let]
        lines.append(f"loss = {self.text}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Catalog:
    sections: tuple[Section, ...]
    losses: dict[str, LossSpec]

    def section_of(self, loss: LossSpec) -> tuple[Section, Subsection]:
        for sec in self.sections:
            for sub in sec.subsections:
                if sub.id == loss.section:
                    return sec, sub
        raise KeyError(loss.section)


# ------------------------------------------------------------------------------- loading
def default_dir() -> Path:
    """Where the catalog lives: ``primitives/`` (shipped as the ``autoloss.primitives`` package).

    In a source checkout the ``primitives/`` next to the imported ``autoloss`` wins: an
    editable install maps ``autoloss.primitives`` to the checkout it was made from, which
    is not the one imported from another worktree.
    """
    checkout = Path(__file__).resolve().parent.parent / "primitives"
    if (checkout / "__init__.py").is_file() and any(checkout.glob("*.toml")):
        return checkout
    from . import primitives  # the data package (primitives/ in the repository)

    return Path(primitives.__file__).parent


def load(directory: Optional[Path | str] = None) -> Catalog:
    directory = Path(directory) if directory is not None else default_dir()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise CatalogError(f"{directory}: no *.toml files: the catalog is empty")
    sections: list[Section] = []
    losses: dict[str, LossSpec] = {}
    for path in files:
        section, entries = _load_file(path)
        for sec in sections:
            if sec.id == section.id:
                raise CatalogError(f"{path.name}: section id {section.id!r} is also used by "
                                   f"{sec.file}; give each survey section one file")
        sections.append(section)
        for spec in entries:
            if spec.id in losses:
                raise CatalogError(f"{path.name}: [losses.{spec.id}] is also defined in "
                                   f"{losses[spec.id].file}; loss ids must be unique")
            losses[spec.id] = spec
    sections.sort(key=lambda s: [int(x) if x.isdigit() else x for x in s.id.split(".")])
    return Catalog(tuple(sections), losses)


@lru_cache(maxsize=1)
def default() -> Catalog:
    return load()


def _load_file(path: Path) -> tuple[Section, list[LossSpec]]:
    name = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise CatalogError(f"{name}: not valid TOML: {err}") from None
    unknown = set(data) - {"section", "losses"}
    if unknown:
        raise CatalogError(f"{name}: unknown top-level table(s) {sorted(unknown)}; a catalog "
                           "file holds [section] and [losses.<id>] tables")
    section = _section(name, data.get("section"))
    subsections = {s.id for s in section.subsections}
    losses_table = data.get("losses", {})
    if not isinstance(losses_table, dict):
        raise CatalogError(f"{name}: 'losses' must be a table of [losses.<id>] entries")
    entries = [_entry(name, loss_id, body, subsections)
               for loss_id, body in losses_table.items()]
    return section, entries


def _section(name: str, table) -> Section:
    if not isinstance(table, dict):
        raise CatalogError(f"{name}: missing [section] table with id, title and subsections")
    for key in ("id", "title"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise CatalogError(f"{name}: [section] field {key!r} must be a non-empty string")
    subs = table.get("subsections", [])
    if not isinstance(subs, list):
        raise CatalogError(f"{name}: [section] field 'subsections' must be a list of "
                           "{{ id = ..., title = ... }} tables")
    out = []
    for i, sub in enumerate(subs):
        if not (isinstance(sub, dict) and isinstance(sub.get("id"), str)
                and isinstance(sub.get("title"), str)):
            raise CatalogError(f"{name}: [section] subsections[{i}] must be "
                               "{ id = \"...\", title = \"...\" }")
        out.append(Subsection(sub["id"], sub["title"]))
    if not out:
        out.append(Subsection(table["id"], table["title"]))
    return Section(table["id"], table["title"], tuple(out), name)


def _entry(name: str, loss_id: str, body, subsections: set[str]) -> LossSpec:
    where = f"{name} [losses.{loss_id}]"

    def fail(fld: str, problem: str):
        raise CatalogError(f"{where} field {fld!r}: {problem}")

    if not _ID.match(loss_id):
        raise CatalogError(f"{where}: loss id {loss_id!r} must be snake_case "
                           "(lowercase letters, digits, underscores)")
    if not isinstance(body, dict):
        raise CatalogError(f"{where}: must be a table")
    unknown = set(body) - set(_ENTRY_FIELDS)
    if unknown:
        fld = sorted(unknown)[0]
        fail(fld, f"unknown field; {did_you_mean(fld, _ENTRY_FIELDS)}")
    hand_written = body.get("kind") == "S" or "implementation" in body
    for fld, required in _ENTRY_FIELDS.items():
        if required and fld not in body and not (hand_written and fld == "expression"):
            fail(fld, "is required")
    for fld in ("title", "paper", "section", "signature", "expression", "reference", "notes",
                "kind", "not_invariant", "implementation", "normaliser"):
        if fld in body and not isinstance(body[fld], str):
            fail(fld, f"must be a string, got {type(body[fld]).__name__}")
    normaliser = body.get("normaliser", "positives")
    if normaliser not in NORMALISERS:
        fail("normaliser", f"{normaliser!r} is not one of {', '.join(NORMALISERS)}; "
                           f"{did_you_mean(normaliser, NORMALISERS)}")
    if body.get("kind") == "S" and "normaliser" in body:
        fail("normaliser", "a set-level loss (kind \"S\") normalises itself: drop the field")
    if body["section"] not in subsections:
        fail("section", f"{body['section']!r} is not a subsection of this file's [section]; "
                        f"use one of {sorted(subsections)}")
    signature = SIGNATURES.get(body["signature"])
    if signature is None:
        fail("signature", f"unknown signature {body['signature']!r}; "
                          f"{did_you_mean(body['signature'], SIGNATURES)}")
    kind = body.get("kind", "E")
    if kind not in KINDS:
        fail("kind", f"must be one of {sorted(KINDS)}")
    props = body.get("properties", [])
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        fail("properties", "must be a list of strings")
    for p in props:
        if p not in PROPERTIES:
            fail("properties", f"unknown property {p!r}; {did_you_mean(p, PROPERTIES)}")

    params = dict(signature.params)
    own: dict[str, Param] = {}
    raw = body.get("params", {})
    if not isinstance(raw, dict):
        fail("params", "must be a table of name = { default = ..., range = [lo, hi] }")
    param_units: dict[str, Dim] = {}
    for pname, spec in raw.items():
        own[pname] = _param(where, pname, spec, signature, expression=not hand_written)
        if isinstance(spec, dict) and "unit" in spec:
            if spec["unit"] not in UNIT_NAMES:
                fail(f"params.{pname}", f"unknown unit {spec['unit']!r}; use one of "
                                        f"{', '.join(UNIT_NAMES)}")
            param_units[pname] = UNIT_NAMES[spec["unit"]]
    params.update(own)
    if kind == "S" or "implementation" in body:
        return _implemented(where, loss_id, body, name, signature, kind, own, props, fail,
                            normaliser)

    macros: dict[str, Macro] = {}
    lets = body.get("let", {})
    if not isinstance(lets, dict):
        fail("let", "must be a table of name = \"expression\"")
    terminals = set(signature.names)
    let_items = []
    display: list[tuple[str, Expr]] = []
    shown: set[str] = set()  # zero-argument helpers, kept as names for display
    for key, text in lets.items():
        m = _MACRO.match(key)
        if not m:
            fail("let", f"{key!r} must be a name or a call form like 'sl1(x)'")
        mname = m.group(1)
        args = tuple(a.strip() for a in m.group(2).split(",")) if m.group(2) else ()
        if mname in terminals or mname in params or mname in macros:
            fail("let", f"{mname!r} is already a terminal, parameter or helper; rename it")
        if not isinstance(text, str):
            fail("let", f"{key!r} must be an expression string")
        try:
            for a in args:
                codegen.check_identifier(a, "macro argument")
            mbody = parse(text, terminals | set(args), params, macros=macros,
                          where=f"{where} let.{key}")
        except ExpressionError as err:
            raise CatalogError(str(err)) from None
        macros[mname] = Macro(mname, args, mbody)
        let_items.append((key, text))
        if not args:
            display.append((mname, _for_display(text, terminals | shown, params, macros, shown)))
            shown.add(mname)
    try:
        expression = parse(body["expression"], terminals, params, macros=macros,
                           where=f"{where} field 'expression'")
    except ExpressionError as err:
        raise CatalogError(str(err)) from None
    display.append(("loss", _for_display(body["expression"], terminals | shown, params, macros,
                                         shown)))
    used = E.params(expression)
    for pname in own:
        if pname not in used:
            fail("params", f"parameter {pname!r} is declared but the expression does not use it")
    batch = sorted({n.op for n in E.postorder(expression)
                    if type(n) is E.Call and ops.get(n.op).batch})
    if kind == "E" and batch:
        fail("kind", f"the expression uses batch-level op(s) {batch}: declare kind = \"B\"")
    if kind == "B" and not batch:
        fail("kind", "kind \"B\" needs a batch-level op in the expression (one of "
                     f"{ops.batch_ops()}); an elementwise loss is kind \"E\"")
    not_invariant = body.get("not_invariant", "")
    if signature.has_units and not not_invariant:
        problem = signature.unit_error(expression, param_units)
        if problem:
            fail("expression", f"{problem}. A {signature.name!r} loss must be dimensionless "
                               "(unchanged when the image is scaled or shifted); fix the "
                               "expression, or say why it is not with not_invariant = \"...\"")
    if not_invariant and not signature.has_units:
        fail("not_invariant", f"the {signature.name!r} signature has no units: drop the field")
    return LossSpec(
        id=loss_id, title=body["title"], paper=body["paper"], section=body["section"],
        signature=signature.name, expression=expression, text=body["expression"],
        let=tuple(let_items), params={k: v for k, v in params.items() if k in used},
        properties=tuple(props), reference=body.get("reference", ""),
        notes=body.get("notes", ""), kind=kind, file=name, display=tuple(display),
        not_invariant=not_invariant, param_units=param_units, normaliser=normaliser,
    )


def _implemented(where, loss_id, body, name, signature, kind, own, props, fail,
                 normaliser: str) -> LossSpec:
    """A hand-written entry: a set-level function (kind S) or a batch-level module class
    (kind B), checked to exist, to be of the right sort and to take the params."""
    import importlib
    import inspect

    if kind not in ("S", "B"):
        fail("implementation", "only a set-level loss (kind = \"S\", a function) or a "
                               "hand-written batch-level module (kind = \"B\", a class) names "
                               "an implementation; an elementwise loss is an expression")
    for fld in _EXPRESSION_FIELDS:
        if fld in body:
            fail(fld, "a set-level loss (kind \"S\") is a function, not an expression: drop "
                      "the field and name the function with implementation = \"module:function\""
                 if kind == "S" else
                 "a hand-written batch-level loss is a module, not an expression: drop the "
                 "field, or drop implementation and write the expression with batch ops")
    text = body.get("implementation")
    if text is None:
        fail("implementation", "is required for a set-level loss (kind \"S\"), e.g. "
                               "\"autoloss.ranking:ap_loss\"")
    if not _IMPLEMENTATION.match(text):
        fail("implementation", f"{text!r} must be 'autoloss.<module>:<function>' (a function "
                               "shipped with autoloss), or 'autoloss.<module>:<Class>' for a "
                               "batch-level module")
    module, _, attr = text.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        fail("implementation", f"cannot load {text!r}: {err}")
    is_module = inspect.isclass(obj) and issubclass(obj, torch.nn.Module)
    if kind == "S" and not (callable(obj) and not inspect.isclass(obj)):
        fail("implementation", f"{text} is not a function; a set-level loss (kind \"S\") "
                               "names the function that computes it")
    if kind == "B" and not is_module:
        fail("implementation", f"{text} is not a torch.nn.Module class; a hand-written "
                               "batch-level loss (kind \"B\") names its module, which keeps "
                               "its own state")
    if is_module:
        # forward(self, <the signature's inputs>, *, <params>)
        accepted = list(inspect.signature(obj.forward).parameters)[1 + len(signature.inputs):]
    else:
        accepted = list(inspect.signature(obj).parameters)[2:]
    for pname in own:
        if pname not in accepted:
            fail(f"params.{pname}", f"{text} takes no keyword {pname!r}; it takes "
                                    f"{', '.join(accepted) or 'none'}")
    if body.get("not_invariant"):
        fail("not_invariant", "a hand-written loss declares no unit exemption: drop the field")
    return LossSpec(
        id=loss_id, title=body["title"], paper=body["paper"], section=body["section"],
        signature=signature.name, expression=None, text=text, params=own,
        properties=tuple(props), reference=body.get("reference", ""),
        notes=body.get("notes", ""), kind=kind, file=name, implementation=text,
        normaliser=normaliser,
    )


def _for_display(text, names, params, macros, shown) -> Expr:
    keep = {k: m for k, m in macros.items() if k not in shown}
    return parse(text, names, params, macros=keep)


def _param(where: str, name: str, spec, signature, expression: bool = True) -> Param:
    """A parameter table checked; ``expression``: its name must not hide a terminal (a
    hand-written loss's keywords may reuse one, Seesaw's ``p`` and ``q``)."""
    fld = f"params.{name}"
    try:
        codegen.check_identifier(name, "parameter")
    except ExpressionError as err:
        raise CatalogError(f"{where} field {fld!r}: {err}") from None
    if expression and name in signature.names:
        raise CatalogError(f"{where} field {fld!r}: {name!r} is a terminal of the "
                           f"{signature.name!r} signature; choose another name")
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"default": spec}
    if not isinstance(spec, dict):
        raise CatalogError(f"{where} field {fld!r}: must be a number or a table "
                           "{ default = ..., range = [lo, hi], log = false }")
    extra = set(spec) - {"default", "range", "log", "doc", "unit"}
    if extra:
        raise CatalogError(f"{where} field {fld!r}: unknown key(s) {sorted(extra)}; "
                           "allowed: default, range, log, doc, unit")
    default = spec.get("default")
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise CatalogError(f"{where} field {fld!r}: 'default' must be a number")
    low = high = None
    if "range" in spec:
        rng = spec["range"]
        if (not isinstance(rng, list) or len(rng) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rng)
                or not rng[0] < rng[1]):
            raise CatalogError(f"{where} field {fld!r}: 'range' must be [low, high] with "
                               "low < high")
        low, high = float(rng[0]), float(rng[1])
        if not low <= default <= high:
            raise CatalogError(f"{where} field {fld!r}: default {default} lies outside "
                               f"range [{low}, {high}]")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise CatalogError(f"{where} field {fld!r}: 'log' must be true or false")
    if log and (low is None or low <= 0):
        raise CatalogError(f"{where} field {fld!r}: a log-scaled range needs low > 0")
    return Param(name, default, low, high, log)


def get(loss_id: str, catalog: Optional[Catalog] = None) -> LossSpec:
    catalog = catalog or default()
    try:
        return catalog.losses[loss_id]
    except KeyError:
        raise UnknownNameError(
            f"unknown zoo id {loss_id!r}; {did_you_mean(loss_id, catalog.losses)}"
        ) from None


def of_signature(signature: str, catalog: Optional[Catalog] = None) -> list[LossSpec]:
    catalog = catalog or default()
    return [s for s in catalog.losses.values() if s.signature == signature]


def ids(catalog: Optional[Catalog] = None) -> list[str]:
    return sorted((catalog or default()).losses)
