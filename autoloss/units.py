"""Physical dimensions of expressions: a box loss must not change when the image is scaled
or shifted.

Every name an expression may use has a dimension: a signature declares its columns' (the
box coordinates are *positions*) and its parameters' (``eps`` is *free*: a regulariser that
takes the dimension of whatever it is added to); the terminals' dimensions are inferred
from their definitions (``pw = px2 - px1`` is a length, ``inter = iw * ih`` an area,
``iou`` is dimensionless). Inference then runs through any expression with one rule per
primitive, declared in the op registry (``Op.units``):

======== ==================================================================================
rule     meaning
======== ==================================================================================
sum      ``a + b``, ``a - b``: equal lengths; positions add as weights (a difference of two
         positions is a length, their mean a position)
same     ``min max clamp``, comparisons: equal dimensions
product  ``a * b``, ``a / b``: length exponents add (subtract); a position may only be
         multiplied or divided by a number (``(px1 + px2) / 2``)
power    ``a ** k``: dimensionless ``k``; a dimensioned base needs a constant ``k``
root     ``sqrt``: half the length exponent
keep     ``-a``, ``stop_grad``: unchanged; ``abs relu``: unchanged, but not of a position
pure     ``exp log sigmoid tanh ...``: dimensionless arguments, dimensionless result
select   ``where(c, a, b)``: ``a`` and ``b`` equal, ``c`` well-formed
sign     ``sign(a)``: any length, dimensionless result
======== ==================================================================================

A position enters a well-formed loss only through differences (translation invariance);
numbers are dimensionless except 0 and inf, which are free like ``eps``. A signature says
what its loss must be (dimensionless for ``box``). Scale invariance then follows from
dimensional homogeneity, up to ``eps``; :func:`scale_probe` is the numeric check that backs
the symbolic one (values unchanged, gradients scaled by 1/s, for boxes scaled by s in
{1e-2, 1, 1e2, 1e3} and translated).

The search builds only well-dimensioned candidates (:mod:`autoloss.search.operators`
generates subtrees of a required dimension) and its filters reject any that still arrive
with :func:`check`'s reason, which names the offending subexpression.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Optional, Sequence

import torch

from . import expr as E
from . import ops
from .errors import AutolossError
from .expr import Call, Const, Expr, Param, Var


class DimensionError(AutolossError, ValueError):
    """An expression that mixes dimensions (names the offending subexpression)."""

    def __init__(self, message: str, node: Optional[Expr] = None):
        super().__init__(message)
        self.node = node


@dataclass(frozen=True)
class Dim:
    """``length ** power``; ``weight`` is 1 for a position, 0 for anything translation
    invariant (a weighted sum of positions has the sum of the weights); ``free`` marks a
    quantity that takes any dimension (0, inf, ``eps``)."""

    power: Fraction = Fraction(0)
    weight: Fraction = Fraction(0)
    free: bool = False

    @property
    def dimensionless(self) -> bool:
        return self.free or (self.power == 0 and self.weight == 0)

    def __str__(self) -> str:
        if self.free:
            return "free"
        if self.weight:
            return "position" if self.weight == 1 else f"weighted position (weight {self.weight})"
        names = {0: "dimensionless", 1: "length", 2: "area", -1: "1/length", -2: "1/area"}
        return names.get(self.power, f"length^{self.power}")


DIMENSIONLESS = Dim()
LENGTH = Dim(Fraction(1))
AREA = Dim(Fraction(2))
POSITION = Dim(Fraction(1), Fraction(1))
FREE = Dim(free=True)

#: the spellings a catalog or signature may use for a parameter's unit
NAMED = {"dimensionless": DIMENSIONLESS, "length": LENGTH, "area": AREA, "position": POSITION,
         "free": FREE}

#: the rule of every primitive (``Op.units`` in the registry names one of these)
RULES = ops.UNIT_RULES


# --------------------------------------------------------------------------- inference
def infer(root: Expr, names: Mapping[str, Dim], params: Optional[Mapping[str, Dim]] = None,
          memo: Optional[dict] = None) -> Dim:
    """The dimension of ``root``; raises :class:`DimensionError` naming the first
    ill-formed subexpression. ``names``: variables' dimensions (unknown ones are
    dimensionless); ``params``: parameters' (default dimensionless); ``memo`` caches the
    dimension of every node (pass a dict to read them back)."""
    dims: dict[Expr, Dim] = {} if memo is None else memo
    params = params or {}
    for node in E.postorder(root, dims):
        if node in dims:
            continue
        if type(node) is Var:
            dims[node] = names.get(node.name, DIMENSIONLESS)
        elif type(node) is Param:
            dims[node] = params.get(node.name, DIMENSIONLESS)
        elif type(node) is Const:
            dims[node] = FREE if node.value == 0 or math.isinf(node.value) else DIMENSIONLESS
        else:
            dims[node] = _apply(node, [dims[a] for a in node.args])
    return dims[root]


def _a(d: Dim) -> str:
    """``d`` with its article: 'an area', 'a length'."""
    text = str(d)
    return ("an " if text[0] in "aeiou" else "a ") + text


def _fail(node: Call, problem: str):
    raise DimensionError(f"`{_text(node)}` {problem}", node)


def _text(node: Expr, limit: int = 90) -> str:
    text = E.to_infix(node)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _unify(node: Call, args: Sequence[Expr], dims: Sequence[Dim], what: str) -> Dim:
    pairs = [(a, d) for a, d in zip(args, dims) if not d.free]
    for a, d in pairs[1:]:
        if d != pairs[0][1]:
            _fail(node, f"{what} {_a(pairs[0][1])} (`{_text(pairs[0][0], 40)}`) and {_a(d)} "
                        f"(`{_text(a, 40)}`)")
    if pairs and pairs[0][1].weight and len(pairs) < len(args):
        _fail(node, f"{what} a position (`{_text(pairs[0][0], 40)}`) and a number: it changes "
                    "when the image is shifted")
    return pairs[0][1] if pairs else FREE


def _invariant(node: Call, d: Dim, what: str) -> None:
    if not d.free and d.weight:
        _fail(node, f"{what} a position (`{_text(node.args[0], 40)}`): it changes when the "
                    "image is shifted; use a difference of positions")


def _apply(node: Call, dims: list[Dim]) -> Dim:
    rule = ops.get(node.op).units
    if rule in ("product", "power", "root"):
        # eps takes the dimension of what it is added to; multiplied, divided or raised it
        # is a plain (dimensionless) number: pw / eps is a length
        dims = [DIMENSIONLESS if d.free and type(a) is not Const else d
                for a, d in zip(node.args, dims)]
    if rule == "pure":
        for a, d in zip(node.args, dims):
            if not d.dimensionless:
                _fail(node, f"needs a dimensionless argument, but `{_text(a, 50)}` is {_a(d)}")
        return DIMENSIONLESS
    if rule == "sum":
        a, b = dims
        if a.free or b.free:
            if a.free and not b.free and node.op == "sub":
                return Dim(b.power, -b.weight)
            return b if a.free else a
        if a.power != b.power:
            _fail(node, f"{'adds' if node.op == 'add' else 'subtracts'} {_a(b)} "
                        f"(`{_text(node.args[1], 40)}`) {'to' if node.op == 'add' else 'from'} "
                        f"{_a(a)} (`{_text(node.args[0], 40)}`)")
        weight = a.weight + b.weight if node.op == "add" else a.weight - b.weight
        return Dim(a.power, weight)
    if rule == "same":
        d = _unify(node, node.args, dims, "compares" if ops.get(node.op).comparison else "mixes")
        return DIMENSIONLESS if ops.get(node.op).comparison else d
    if rule == "select":
        _invariant(node, dims[0], "tests")
        return _unify(node, node.args[1:], dims[1:], "selects between")
    if rule == "keep":
        (d,) = dims
        if node.op in ("neg",):
            return Dim(d.power, -d.weight, d.free)
        if node.op in ("abs", "relu"):
            what = "absolute value" if node.op == "abs" else "positive part"
            _invariant(node, d, f"takes the {what} of")
        return d
    if rule == "sign":
        (d,) = dims
        _invariant(node, d, "takes the sign of")
        return DIMENSIONLESS
    if rule == "root":
        (d,) = dims
        _invariant(node, d, "takes the square root of")
        return d if d.free else Dim(d.power / 2)
    if rule == "product":
        a, b = dims
        x, y = node.args
        if a.free or b.free:
            return FREE
        if node.op == "mul":
            if a.weight or b.weight:
                scale = _number(y) if a.weight else _number(x)
                if (a.weight and b.weight) or scale is None:
                    _fail(node, "multiplies a position by something other than a number: it "
                                "changes when the image is shifted")
                return Dim(a.power + b.power, (a.weight or b.weight) * scale)
            return Dim(a.power + b.power)
        if b.weight:
            _fail(node, f"divides by a position (`{_text(y, 40)}`): it changes when the image "
                        "is shifted")
        if a.weight:
            scale = _number(y)
            if scale is None or scale == 0:
                _fail(node, "divides a position by something other than a number: it changes "
                            "when the image is shifted")
            return Dim(a.power - b.power, a.weight / scale)
        return Dim(a.power - b.power)
    if rule == "power":
        base, ex = dims
        if not ex.dimensionless:
            _fail(node, f"raises to {_a(ex)} (`{_text(node.args[1], 40)}`): exponents must be "
                        "dimensionless")
        _invariant(node, base, "raises to a power")
        if base.free or base.power == 0:
            return base
        k = _number(node.args[1])
        if k is None:
            _fail(node, f"raises {_a(base)} to a non-constant power: the result has no fixed "
                        "dimension")
        return Dim(base.power * k)
    raise AssertionError(f"primitive {node.op!r} has no unit rule")  # the registry test


def _number(node: Expr) -> Optional[Fraction]:
    """A constant's value as a fraction (positions may be scaled by numbers only)."""
    if type(node) is Const and math.isfinite(node.value):
        return Fraction(node.value)  # exact: 0.3333 is not 1/3
    if type(node) is Call and node.op == "neg":
        inner = _number(node.args[0])
        return None if inner is None else -inner
    return None


def check(root: Expr, names: Mapping[str, Dim], params: Optional[Mapping[str, Dim]] = None,
          want: Dim = DIMENSIONLESS) -> Optional[str]:
    """Why ``root`` is not a well-formed quantity of dimension ``want``, or None."""
    try:
        got = infer(root, names, params)
    except DimensionError as err:
        return str(err)
    if not got.free and got != want:
        return (f"the loss is {_a(got)}, but it must be {want}: it would change when the image "
                "is scaled" + (" or shifted" if got.weight else ""))
    return None


# ----------------------------------------------------------------------- numeric probe
SCALES = (1e-2, 1.0, 1e2, 1e3)


def probe_inputs(signature, rows: int, generator: torch.Generator):
    """The unit probe of a signature with units: ``rows`` pixel-sized samples (the
    signature's ``sample`` times 10, so ``eps`` stays negligible at scale 1e-2), at every
    scale of :data:`SCALES` (see :func:`scale_probe`)."""
    base = signature.rescale(*signature.sample(rows, generator, dtype=torch.float64), 10.0, 0.0)
    return scale_probe(base, signature.rescale)


def scale_probe(inputs: Sequence[torch.Tensor], rescale, scales: Sequence[float] = SCALES,
                shift: float = 37.0) -> tuple[tuple[torch.Tensor, ...], list[float]]:
    """The probe inputs at every scale, stacked by rows (block k is scale ``scales[k]``,
    translated by ``shift * scales[k]``): one batch for a row-wise evaluator."""
    blocks = [rescale(*inputs, s, shift * s * (1 + k)) for k, s in enumerate(scales)]
    return tuple(torch.cat(parts) for parts in zip(*blocks)), list(scales)


def compare_scales(value: torch.Tensor, grads: Mapping[str, torch.Tensor],
                   scales: Sequence[float], rtol: float = 1e-4,
                   powers: Optional[Mapping[str, object]] = None) -> Optional[str]:
    """Why a loss evaluated on :func:`scale_probe`'s blocks is not scale and translation
    invariant (values equal, gradients times the scale to the power of what they are
    taken with respect to equal), or None. ``powers``: that length power per gradient, a
    number or one per entry of its last dimension (an angle's is 0, an area's 2); 1 (a
    position or a length) where not given."""
    bad_v, bad_g, v, ref = _scale_mismatch(value[None], {n: g[None] for n, g in grads.items()},
                                           scales, rtol, powers)
    if bool(bad_v.any()):
        _, s, i = (int(x) for x in bad_v.nonzero()[0])
        return (f"not scale invariant: for boxes scaled by {scales[s]:g} (and shifted) the loss "
                f"is {float(v[0, s, i]):.6g} instead of {float(ref[0, i]):.6g}")
    if bad_g is not None and bool(bad_g.any()):
        names = list(grads)
        _, s, c, _ = (int(x) for x in bad_g.nonzero()[0])
        return (f"not scale invariant: for boxes scaled by {scales[s]:g} the gradient "
                f"d/d{names[c]} is not 1/{scales[s]:g} times the unscaled one (for a "
                f"position or a length; 1/{scales[s]:g}^2 for an area, 1 for an angle)")
    return None


def scale_invariant(values: torch.Tensor, grads: Mapping[str, torch.Tensor],
                    scales: Sequence[float], rtol: float = 1e-4,
                    powers: Optional[Mapping[str, object]] = None) -> torch.Tensor:
    """:func:`compare_scales` for a stack of losses at once (the leading dimension of
    ``values`` and of every gradient): a bool per loss, True where it finds no problem
    (the same arithmetic, so the same answer; ask :func:`compare_scales` for the reason)."""
    bad_v, bad_g, _, _ = _scale_mismatch(values, grads, scales, rtol, powers)
    ok = ~bad_v.flatten(1).any(1)
    return ok if bad_g is None else ok & ~bad_g.flatten(1).any(1)


def _scale_mismatch(value, grads, scales, rtol, powers):
    """The entries that break invariance, for losses stacked along the first dimension:
    values (loss, scale, entry), gradients (loss, scale, gradient, entry) or None, and
    the values with their unscaled reference."""
    k = len(scales)
    ref_index = list(scales).index(1.0)
    v = value.detach().double().reshape(len(value), k, -1)
    ref = v[:, ref_index]
    tol = rtol * ref.abs() + 1e-9 * (1 + ref.abs().amax(1, keepdim=True))
    bad_v = (v - ref[:, None]).abs() > tol[:, None]
    if not grads:
        return bad_v, None, v, ref
    scale = torch.tensor(scales, dtype=torch.float64)[:, None]
    blocks = []
    for n, grad in grads.items():
        grad = grad.detach().double()
        power = torch.as_tensor((powers or {}).get(n, 1.0), dtype=torch.float64)
        factor = scale ** power.expand(grad.shape[1:]).reshape(k, -1)
        blocks.append(grad.reshape(len(grad), k, -1) * factor)
    g = torch.stack(blocks, 2)  # (loss, scale, gradient, entry): the same at every scale
    ref_g = g[:, ref_index]
    gtol = 1e-3 * ref_g.abs() + 1e-6 * (ref_g.abs().amax(2, keepdim=True) + 1e-12)
    bad_g = (g - ref_g[:, None]).abs() > gtol[:, None]
    return bad_v, bad_g, v, ref
