"""Search spaces: which slots to search, with what, on which proxy, towards which objective.

A search space is a TOML file in ``search_spaces/`` (or any path)::

    [search]
    description = "..."
    strategy = "evolution"        # random | tpe | evolution | nsga2
    trials = 60

    [proxy]
    name = "boxsim"               # or digits, clssim, module:function
    budget = 200
    scale = 0.02                  # optional
    options = {}                  # proxy options

    [objective]
    metric = "error_auc"
    direction = "minimize"
    complexity = false            # true: second objective, the candidate's size (nsga2)

    [slots.reg]
    signature = "box"
    mode = "tree"                 # tree: search expressions; params: tune a zoo loss's parameters
    seeds = ["giou", "diou", ...] # zoo ids ("zoo": the well-dimensioned zoo losses)
    primitives = ["add", "sub", ...]
    terminals = ["iou", ...]      # or "all" (per-class constants only when listed)
    constants = [0.5, 1, 2, 3]
    max_depth = 7
    max_nodes = 48
    params.gamma = { default = 2.0, range = [0.0, 5.0] }   # extra tunable parameters
    set_level = { update = "error" }  # a rank slot: the set-level loss each step trains in

    [choices]                     # categorical choices handed to the proxy as options
    "weights.cls" = [0.5, 1.0, 2.0]

    [validation]
    top_k = 3
    seeds = 3
    budget = 200
    scale = 0.1
    held_out = { scale = 1.0, seeds = 1 }  # or an array of such tables, each with a name:
    # held_out = [{ name = "full", scale = 1.0 }, { name = "pixels", options = { unit = 64 } }]

    [validation.transfer]         # optional: does the winner hold up in another proxy?
    proxy = "digits"
    slot = "reg"                  # the transfer proxy's slot the searched loss fills
    pair = { cls = "focal" }      # the other slots' losses (zoo ids or expressions)
    baseline = { cls = "focal", reg = "iou_square" }   # every slot: the pair to beat
    top_k = 2                     # the best validated candidates, best first
    seeds = 2                     # candidates and baseline run over the same seeds
    budget = 3000                 # optional, as scale
    options = {}                  # the transfer proxy's options

Every problem is reported with the file, the table and the field.
"""
from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import catalog, ops, proxies
from ..errors import AutolossError, did_you_mean
from ..expr import Param
from ..signatures import SIGNATURES

STRATEGIES = ("random", "tpe", "evolution", "nsga2")


class SpaceError(AutolossError, ValueError):
    """A malformed search-space file."""


@dataclass(frozen=True)
class Slot:
    name: str
    signature: str
    mode: str = "tree"
    seeds: tuple[str, ...] = ()
    primitives: tuple[str, ...] = ()
    terminals: tuple[str, ...] = ()
    constants: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0)
    max_depth: int = 7
    max_nodes: int = 48
    params: dict[str, Param] = field(default_factory=dict)
    #: options of the set-level loss a signature such as rank builds on each candidate
    #: (``Signature.set_level``): rank's ``update`` and ``interpolate``
    set_level: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Space:
    name: str
    description: str
    file: str
    strategy: str
    trials: int
    seed: int
    proxy: str
    budget: Optional[int]
    scale: Optional[float]
    proxy_options: dict[str, Any]
    metric: str
    direction: str
    complexity: bool
    slots: dict[str, Slot]
    choices: dict[str, tuple]
    validation: dict[str, Any]
    population: int = 16
    tournament: int = 4
    crossover: float = 0.3
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def directions(self) -> list[str]:
        return [self.direction, "minimize"] if self.complexity else [self.direction]

    def options_with(self, choices: dict[str, Any]) -> dict[str, Any]:
        """The proxy's options with a candidate's choices merged in (``weights.cls`` nests)."""
        options = copy.deepcopy(self.proxy_options)
        for key, value in choices.items():
            head, _, tail = key.partition(".")
            if tail:
                options.setdefault(head, {})[tail] = value
            else:
                options[key] = value
        return options


def default_dir() -> Path:
    from .. import search_spaces

    return Path(search_spaces.__file__).parent


def names() -> list[str]:
    return sorted(p.stem for p in default_dir().glob("*.toml"))


def load(name_or_path: str | Path) -> Space:
    """A shipped space by name (``box-regression``) or a TOML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        candidate = default_dir() / f"{name_or_path}.toml"
        if not candidate.exists():
            raise SpaceError(f"unknown search space {str(name_or_path)!r}; "
                             f"{did_you_mean(str(name_or_path), names())}, or a path to a .toml file")
        path = candidate
    if not path.exists():
        raise SpaceError(f"{path}: no such search-space file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpaceError(f"{path.name}: not valid TOML: {err}") from None
    return parse_space(data, path.stem, path.name)


def _fail(file: str, table: str, fld: str, problem: str):
    raise SpaceError(f"{file} [{table}] field {fld!r}: {problem}")


def _known(file, table, data: dict, allowed: set):
    unknown = set(data) - allowed
    if unknown:
        fld = sorted(unknown)[0]
        _fail(file, table, fld, f"unknown field; {did_you_mean(fld, allowed)}")


def _get(file, table, data, fld, kind, default=None, required=False):
    if fld not in data:
        if required:
            _fail(file, table, fld, "is required")
        return default
    value = data[fld]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        _fail(file, table, fld, f"must be {' or '.join(k.__name__ for k in kinds)}, got a boolean")
    if not isinstance(value, kinds):
        _fail(file, table, fld, f"must be {' or '.join(k.__name__ for k in kinds)}, "
                                f"got {type(value).__name__}")
    return value


VALIDATION_FIELDS = {"top_k", "seeds", "budget", "scale", "held_out", "transfer"}
HELD_OUT_FIELDS = {"name", "scale", "seeds", "budget", "options"}
TRANSFER_FIELDS = {"proxy", "slot", "pair", "baseline", "top_k", "seeds", "budget", "scale",
                   "options"}


def _validation(file: str, body: Any, proxy_name: str, proxy_options: dict,
                slots: dict[str, Slot]) -> dict[str, Any]:
    """The ``[validation]`` table, checked; ``held_out`` becomes a list of named variants
    and ``transfer`` a checked table (see the module docstring)."""
    if not isinstance(body, dict):
        raise SpaceError(f"{file} [validation]: must be a table (top_k, seeds, budget, scale, "
                         "held_out, transfer)")
    _known(file, "validation", body, VALIDATION_FIELDS)
    out = {k: v for k, v in body.items() if k not in ("held_out", "transfer")}
    for fld in ("top_k", "seeds", "budget"):
        if _get(file, "validation", body, fld, int, 1) < 1:
            _fail(file, "validation", fld, "must be at least 1")
    _positive(file, "validation", body, "scale")
    out["held_out"] = _held_out(file, body.get("held_out"), proxy_name, proxy_options)
    if "transfer" in body:
        out["transfer"] = _transfer(file, body["transfer"], slots)
    return out


def _positive(file, table, body, fld) -> Optional[float]:
    value = _get(file, table, body, fld, (int, float), None)
    if value is not None and not value > 0:
        _fail(file, table, fld, f"must be positive, got {value}")
    return value


def _proxy_with(file, table, name: str, options: dict):
    """The proxy ``name`` built with ``options``, or the error naming the field."""
    try:
        proxies.get(name)
    except AutolossError as err:
        _fail(file, table, "proxy", str(err))
    try:
        return proxies.get(name, **options)
    except (AutolossError, TypeError, ValueError) as err:  # an unknown option, a bad value
        _fail(file, table, "options", f"proxy {name!r} does not take these options: {err}")


def _held_out(file: str, held: Any, proxy_name: str, proxy_options: dict) -> list[dict]:
    """``held_out``: a table or an array of tables, each a named variant of the proxy."""
    if held is None:
        return []
    single = isinstance(held, dict)
    items = [held] if single else held
    if not isinstance(items, list) or not all(isinstance(h, dict) for h in items):
        _fail(file, "validation", "held_out", "must be a table of proxy overrides (name, scale, "
                                              "seeds, budget, options) or an array of such tables")
    out, names = [], set()
    for i, h in enumerate(items):
        table = "validation.held_out" if single else f"validation.held_out[{i}]"
        _known(file, table, h, HELD_OUT_FIELDS)
        name = _get(file, table, h, "name", str, "held-out" if single else f"held-out {i + 1}")
        if name in names:
            _fail(file, table, "name", f"two held-out variants are named {name!r}")
        names.add(name)
        variant = {"name": name, "seeds": _get(file, table, h, "seeds", int, 1),
                   "budget": _get(file, table, h, "budget", int, None),
                   "scale": _positive(file, table, h, "scale"),
                   "options": _get(file, table, h, "options", dict, {})}
        for fld in ("seeds", "budget"):
            if variant[fld] is not None and variant[fld] < 1:
                _fail(file, table, fld, "must be at least 1")
        _proxy_with(file, table, proxy_name, {**proxy_options, **variant["options"]})
        out.append(variant)
    return out


def _transfer(file: str, body: Any, slots: dict[str, Slot]) -> dict[str, Any]:
    """``[validation.transfer]``: the searched loss in another proxy, beside fixed losses for
    that proxy's other slots, against a baseline pair, over the same seeds."""
    table = "validation.transfer"
    if not isinstance(body, dict):
        raise SpaceError(f"{file} [{table}]: must be a table (proxy, slot, pair, baseline, "
                         "top_k, seeds, budget, options)")
    _known(file, table, body, TRANSFER_FIELDS)
    name = _get(file, table, body, "proxy", str, required=True)
    options = _get(file, table, body, "options", dict, {})
    task = _proxy_with(file, table, name, options)
    slot = _get(file, table, body, "slot", str, required=True)
    if len(slots) != 1:
        _fail(file, table, "slot", f"the transfer stage moves one searched loss into another "
                                   f"proxy; this space searches {len(slots)} slots "
                                   f"({', '.join(slots)})")
    (searched, searched_slot), = slots.items()
    known = ", ".join(f"{k} ({v if isinstance(v, str) else ' or '.join(v)})"
                      for k, v in task.slots.items())
    if slot not in task.slots:
        _fail(file, table, "slot", f"proxy {name!r} has no slot {slot!r}; its slots are {known}")
    signature = searched_slot.signature
    if signature not in proxies.slot_signatures(task, slot):
        _fail(file, table, "slot", f"slot {slot!r} of {name!r} takes "
                                   f"{' or '.join(proxies.slot_signatures(task, slot))} losses; "
                                   f"the searched slot {searched!r} is {signature!r}")
    pair = _get(file, table, body, "pair", dict, {})
    _slot_set(file, table, "pair", pair, set(task.slots) - {slot}, name, known,
              f"the losses for {name!r}'s slots other than {slot!r}")
    baseline = _get(file, table, body, "baseline", dict, required=True)
    _slot_set(file, table, "baseline", baseline, set(task.slots), name, known,
              f"a loss for every slot of {name!r}")
    for fld, losses in (("pair", pair), ("baseline", baseline)):
        for s, text in losses.items():
            accepted = (signature,) if s == slot else proxies.slot_signatures(task, s)
            _loss_text(file, table, fld, s, text, accepted,
                       f"slot {s!r} of {name!r}" if s != slot else
                       f"it stands for the searched slot {searched!r}, which")
    out = {"proxy": name, "slot": slot, "searched_slot": searched,
           "pair": dict(pair), "baseline": {s: baseline[s] for s in task.slots},
           "top_k": _get(file, table, body, "top_k", int, 2),
           "seeds": _get(file, table, body, "seeds", int, 2),
           "budget": _get(file, table, body, "budget", int, None),
           "scale": _positive(file, table, body, "scale"), "options": dict(options)}
    for fld in ("top_k", "seeds", "budget"):
        if out[fld] is not None and out[fld] < 1:
            _fail(file, table, fld, "must be at least 1")
    return out


def _slot_set(file, table, fld, losses: dict, expected: set, proxy: str, known: str,
              what: str) -> None:
    missing, extra = sorted(expected - set(losses)), sorted(set(losses) - expected)
    if extra:
        _fail(file, table, fld, f"{extra[0]!r} is not one of {what} (slots of {proxy!r}: "
                                f"{known})")
    if missing:
        _fail(file, table, fld, f"missing slot {missing[0]!r}: give {what} (slots of "
                                f"{proxy!r}: {known})")


def _loss_text(file, table, fld, slot: str, text: Any, accepted: tuple[str, ...],
               where: str) -> None:
    """A zoo id or an expression that fits one of ``accepted`` signatures."""
    import re

    from ..errors import ExpressionError
    from ..parse import parse

    if not isinstance(text, str):
        _fail(file, table, fld, f"slot {slot!r}: must be a zoo id or an expression, got "
                                f"{type(text).__name__}")
    losses = catalog.default().losses
    if text in losses:
        if catalog.get(text).signature not in accepted:
            _fail(file, table, fld, f"slot {slot!r}: zoo loss {text!r} has signature "
                                    f"{catalog.get(text).signature!r}; {where} takes "
                                    f"{' or '.join(accepted)}")
        return
    errors = []
    for sig in accepted:
        try:
            parse(text, SIGNATURES[sig].names, dict(SIGNATURES[sig].params),
                  where=f"{fld}.{slot}")
            return
        except ExpressionError as err:
            errors.append(str(err))
    if re.fullmatch(r"[A-Za-z_]\w*", text.strip()):
        fitting = [k for k, spec in losses.items() if spec.signature in accepted]
        _fail(file, table, fld, f"slot {slot!r}: unknown zoo id {text!r}; "
                                f"{did_you_mean(text, fitting)}")
    _fail(file, table, fld, f"slot {slot!r}: {text!r} is neither a zoo id nor an expression of "
                            f"{' or '.join(accepted)}: {errors[0]}")


def parse_space(data: dict, name: str, file: str = "<space>") -> Space:
    _known(file, "top level", data, {"search", "proxy", "objective", "slots", "choices",
                                     "validation"})
    search = data.get("search", {})
    _known(file, "search", search, {"description", "strategy", "trials", "seed", "population",
                                    "tournament", "crossover"})
    strategy = _get(file, "search", search, "strategy", str, "evolution")
    if strategy not in STRATEGIES:
        _fail(file, "search", "strategy", f"unknown strategy {strategy!r}; use one of "
                                          f"{', '.join(STRATEGIES)}")
    trials = _get(file, "search", search, "trials", int, 50)
    if trials < 1:
        _fail(file, "search", "trials", "must be at least 1")

    proxy_t = data.get("proxy")
    if not isinstance(proxy_t, dict):
        raise SpaceError(f"{file}: missing [proxy] table (name, budget, scale, options)")
    _known(file, "proxy", proxy_t, {"name", "budget", "scale", "options"})
    proxy_name = _get(file, "proxy", proxy_t, "name", str, required=True)
    options = _get(file, "proxy", proxy_t, "options", dict, {})
    try:
        task = proxies.get(proxy_name, **options)
    except TypeError as err:
        _fail(file, "proxy", "options", f"{err}")
    except AutolossError as err:
        _fail(file, "proxy", "name", str(err))

    objective = data.get("objective", {})
    _known(file, "objective", objective, {"metric", "direction", "complexity"})
    metric = _get(file, "objective", objective, "metric", str, task.metric)
    if metric != task.metric:
        _fail(file, "objective", "metric", f"proxy {task.name!r} reports {task.metric!r} as its "
                                           f"primary metric, not {metric!r}")
    direction = _get(file, "objective", objective, "direction", str, task.direction)
    if direction != task.direction:
        _fail(file, "objective", "direction", f"{metric!r} is to be {task.direction}d")

    slots_t = data.get("slots")
    if not isinstance(slots_t, dict) or not slots_t:
        raise SpaceError(f"{file}: missing [slots.<name>] tables (one per loss slot of the proxy)")
    if set(slots_t) != set(task.slots):
        raise SpaceError(f"{file}: [slots] must name the proxy's slots {sorted(task.slots)}, "
                         f"got {sorted(slots_t)}")
    slots = {s: _slot(file, s, body, proxies.slot_signatures(task, s)) for s, body in slots_t.items()}

    choices_t = data.get("choices", {})
    choices = {}
    for key, values in choices_t.items():
        if not isinstance(values, list) or not values:
            _fail(file, "choices", key, "must be a non-empty list of values")
        choices[key] = tuple(values)

    validation = _validation(file, data.get("validation", {}), proxy_name, options, slots)

    return Space(
        name=name, description=_get(file, "search", search, "description", str, ""), file=file,
        strategy=strategy, trials=trials, seed=_get(file, "search", search, "seed", int, 0),
        proxy=proxy_name, budget=_get(file, "proxy", proxy_t, "budget", int, None),
        scale=_get(file, "proxy", proxy_t, "scale", (int, float), None), proxy_options=options,
        metric=metric, direction=direction,
        complexity=_get(file, "objective", objective, "complexity", bool, strategy == "nsga2"),
        slots=slots, choices=choices, validation=validation,
        population=_get(file, "search", search, "population", int, 16),
        tournament=_get(file, "search", search, "tournament", int, 4),
        crossover=float(_get(file, "search", search, "crossover", (int, float), 0.3)), raw=data)


def _slot(file: str, name: str, body: dict, accepted: tuple[str, ...]) -> Slot:
    table = f"slots.{name}"
    if not isinstance(body, dict):
        raise SpaceError(f"{file} [{table}]: must be a table")
    _known(file, table, body, {"signature", "mode", "seeds", "primitives", "terminals",
                               "constants", "max_depth", "max_nodes", "params", "set_level"})
    signature = _get(file, table, body, "signature", str, accepted[0])
    if signature not in accepted:
        _fail(file, table, "signature", f"the proxy's slot takes {' or '.join(accepted)}, "
                                        f"not {signature!r}")
    sig = SIGNATURES[signature]
    mode = _get(file, table, body, "mode", str, "tree")
    if mode not in ("tree", "params"):
        _fail(file, table, "mode", "must be 'tree' (search expressions) or 'params' (tune a zoo "
                                   "loss's parameters)")
    seeds = body.get("seeds", [])
    if seeds == "zoo":  # the ones a search may build on: well-dimensioned expressions
        seeds = [s.id for s in catalog.of_signature(signature)
                 if s.invariant is not False and s.compiles]
    if not isinstance(seeds, list) or not all(isinstance(s, str) for s in seeds):
        _fail(file, table, "seeds", "must be a list of zoo ids or \"zoo\"")
    for s in seeds:
        if s not in catalog.default().losses:
            _fail(file, table, "seeds", f"unknown zoo id {s!r}; "
                                        f"{did_you_mean(s, catalog.default().losses)}")
        if not catalog.default().losses[s].compiles:
            what = ("a set-level loss (a hand-written function)" if catalog.get(s).kind == "S"
                    else "a hand-written batch-level module (state or a sampling mask)")
            _fail(file, table, "seeds", f"{s!r} is {what}; "
                                        "a search evolves expressions: seed it with those")
        if catalog.get(s).signature != signature:
            _fail(file, table, "seeds", f"zoo loss {s!r} has signature "
                                        f"{catalog.get(s).signature!r}, not {signature!r}")
        if catalog.get(s).invariant is False and mode == "tree":
            _fail(file, table, "seeds", f"zoo loss {s!r} is not scale invariant "
                                        f"({catalog.get(s).not_invariant}): a search builds "
                                        "only well-dimensioned candidates; remove it")
    if mode == "params" and len(seeds) != 1:
        _fail(file, table, "seeds", "mode = 'params' tunes exactly one zoo loss: give one seed")
    # the default grammar: the searchable elementwise ops (batch-level ones only when listed)
    prims = body.get("primitives", [n for n in ops.names()
                                    if ops.get(n).searchable and not ops.get(n).batch])
    if not isinstance(prims, list):
        _fail(file, table, "primitives", "must be a list of primitive names")
    for p in prims:
        if p not in ops.REGISTRY:
            _fail(file, table, "primitives", f"unknown primitive {p!r}; "
                                             f"{did_you_mean(p, ops.REGISTRY)}")
    terms = body.get("terminals", "all")
    if terms == "all":  # per-class constants only when listed: a proxy may not pass them
        terms = [n for n in sig.names if n not in sig.class_columns]
    if not isinstance(terms, list) or not terms:
        _fail(file, table, "terminals", "must be \"all\" or a non-empty list of terminal names")
    for t in terms:
        if t not in sig.names:
            _fail(file, table, "terminals", f"{t!r} is not a terminal of the {signature!r} "
                                            f"signature; {did_you_mean(t, sig.names)}")
    consts = body.get("constants", [0.5, 1.0, 2.0, 3.0])
    if not isinstance(consts, list) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in consts):
        _fail(file, table, "constants", "must be a list of numbers")
    max_depth = _get(file, table, body, "max_depth", int, 7)
    max_nodes = _get(file, table, body, "max_nodes", int, 48)
    if not 2 <= max_depth <= 32:
        _fail(file, table, "max_depth", "must lie in [2, 32]")
    if not 3 <= max_nodes <= 512:
        _fail(file, table, "max_nodes", "must lie in [3, 512]")
    extra = {}
    for pname, spec in body.get("params", {}).items():
        try:
            extra[pname] = catalog._param(f"{file} [{table}]", pname, spec, sig)
        except AutolossError as err:
            raise SpaceError(str(err)) from None
        if extra[pname].low is None:
            _fail(file, table, f"params.{pname}", "a searched parameter needs a range = [lo, hi]")
    set_level = _set_level(file, table, body.get("set_level"), sig)
    return Slot(name, signature, mode, tuple(seeds), tuple(prims), tuple(terms),
                tuple(float(c) for c in consts), max_depth, max_nodes, extra, set_level)


def _set_level(file: str, table: str, options: Any, sig) -> dict[str, Any]:
    """A slot's ``set_level`` table: options of the set-level loss its signature builds on
    each candidate (rank: ``update = "error" | "autograd"``, ``interpolate = true |
    false``), checked by building that loss once."""
    if options is None:
        return {}
    if not sig.set_level:
        _fail(file, table, "set_level", f"the {sig.name!r} signature's expressions are losses "
                                        "themselves; set_level is for a signature whose "
                                        "expression is a piece of a set-level loss (rank)")
    if not isinstance(options, dict):
        _fail(file, table, "set_level", "must be a table, e.g. { update = \"autograd\", "
                                        "interpolate = false }")
    from ..compiler import compile_loss
    from ..expr import Var
    from ..zoo import slot_loss

    try:
        slot_loss(compile_loss(Var(sig.columns[0]), sig, name="probe"), **options)
    except (AutolossError, TypeError, ValueError) as err:
        _fail(file, table, "set_level", str(err))
    return dict(options)
