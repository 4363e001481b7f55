"""The primitive registry: one entry per op, read by everything else.

An entry holds, in one place, everything any part of autoloss needs to know about a
primitive: its arity and operator spelling (parser and printer), its torch form (compiler,
exporter, population evaluator) with an optional emit hook for special argument kinds, its
scalar form (compile-time constants), its guarded search-mode form (a total expression
replacing a partial op), its vector-Jacobian product as an expression (the fused
closed-form gradient), its sympy form (simplify, LaTeX, symbolic gradient; ``from_sympy``
reads it backwards) and the sampling ranges the registry test uses to check torch against
sympy. Nothing outside this module names an op to decide how to treat it: the other
modules read these fields at use time, so an op registered later (a test's) is seen too.

Adding a primitive is adding one ``_register(Op(...))`` call below.

Templates use ``{0}``, ``{1}``, ... for the argument sources. Gradient rules receive the
argument expressions, the node's own value (``out``) and the incoming adjoint ``g`` and
return one adjoint per argument (``None`` where the op passes no gradient); they are
written with the smart constructors of :mod:`autoloss.expr`, so they fold trivially.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from . import runtime
from .errors import UnknownNameError, did_you_mean

GradRule = Callable[[Sequence["object"], "object", "object"], Sequence[Optional["object"]]]

#: tiny positive number used by guarded (search-mode) ops
TINY = 1e-12
#: the unit rules of :mod:`autoloss.units` (kept here: ops must not import units)
UNIT_RULES = ("sum", "same", "product", "power", "root", "keep", "pure", "select", "sign")
#: exp() arguments are clamped here in search mode (as CSE-Autoloss does at 88 for float32)
EXP_MAX = 80.0


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    torch: str
    sympy: Callable
    grad: Optional[GradRule]
    doc: str
    math: Optional[str] = None  # Python-float form, for parameter-only subexpressions
    guard: Optional[Callable] = None  # search mode: args -> guarded expression, finite
    #: a partial op's domain, as search mode clamps its argument into it (the guard, unless
    #: one is given); the parser leaves a constant outside it to the search's filter
    domain: Optional[tuple[float, float]] = None
    infix: Optional[str] = None  # binary operator spelling, e.g. "+"
    prefix: Optional[str] = None  # unary operator spelling, e.g. "-"
    precedence: int = 6
    right_assoc: bool = False  # a ** b ** c is a ** (b ** c)
    commutative: bool = False
    idempotent: bool = False  # f(a, a) is a
    comparison: bool = False  # the torch form is a bool tensor (1.0 or 0.0 as a number)
    #: the first argument is a truth value (non-zero is true) choosing between the others;
    #: a number there picks one of them, which the value then is (no new tensor)
    condition: bool = False
    alias: bool = False  # the value is its first argument's memory (a view, e.g. .detach())
    #: parse-time check of the arguments (Expr nodes): a complaint, or None
    validate: Optional[Callable] = None
    #: code generation: (emitter, node) -> torch source, or None for the template; called
    #: for nodes whose value is a tensor (see :class:`autoloss.codegen.Emitter`)
    emit: Optional[Callable] = None
    sample: tuple = ()  # (lo, hi) per argument for the registry's torch-vs-sympy test
    out: Optional[str] = None  # torch function taking out= (evaluators reuse dead buffers)
    tensor_args: bool = False  # the torch form takes tensors only (numbers are broadcast)
    #: how physical dimensions pass through it (a rule of :mod:`autoloss.units`)
    units: str = "pure"
    #: a batch-level term (kind B): its value at a row depends on the whole batch (GHM's
    #: gradient density, a batch mean). The torch form is a function of
    #: :mod:`autoloss.runtime` over the whole batch, taking a tensor then numbers; it has
    #: no gradient (``grad`` is None) and the compiler evaluates it once, before the
    #: chunked elementwise part, feeding its value in as an extra gradient-free column.
    #: Elementwise-only checks (the registry's torch-vs-sympy test) skip such ops, and
    #: search spaces use them only when a space lists them.
    batch: bool = False
    #: offered by a search space's default grammar (``primitives`` not given); a space may
    #: still list it. Off for gradient control, for batch-level terms and for ``wrap``
    #: (periodic: an angle's, which a rotated-box space lists)
    searchable: bool = True
    fn: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        args = ", ".join(f"_a{i}" for i in range(self.arity))
        body = self.torch.format(*(f"_a{i}" for i in range(self.arity)))
        # The template is a constant of this module, never user text.
        fn = eval(f"lambda {args}: {body}", {"torch": torch, **runtime.BATCH})  # noqa: S307
        object.__setattr__(self, "fn", fn)
        if self.domain is not None and self.guard is None:
            lo, hi = self.domain
            object.__setattr__(self, "guard", lambda a: _clamped(self.name, a, lo, hi))
        if self.batch and (self.grad is not None or self.out is not None):
            raise RuntimeError(f"primitive {self.name!r}: a batch op has no gradient and no "
                               "out= form")
        if self.out is not None and not callable(getattr(torch, self.out, None)):
            raise RuntimeError(f"primitive {self.name!r}: torch.{self.out} does not exist")

    @property
    def differentiable(self) -> bool:
        return self.grad is not None


REGISTRY: dict[str, Op] = {}


def _register(op: Op) -> None:
    if op.name in REGISTRY:
        raise RuntimeError(f"primitive {op.name!r} registered twice")
    if len(op.sample) not in (0, op.arity):
        raise RuntimeError(f"primitive {op.name!r}: sample needs one range per argument")
    if op.units not in UNIT_RULES:
        raise RuntimeError(f"primitive {op.name!r}: unknown unit rule {op.units!r}")
    if (op.domain or op.prefix) and op.arity != 1 or op.infix and op.arity != 2:
        raise RuntimeError(f"primitive {op.name!r}: a domain or a prefix spelling needs one "
                           "argument, an infix spelling two")
    REGISTRY[op.name] = op


def get(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown primitive {name!r}; {did_you_mean(name, REGISTRY)}"
        ) from None


def names() -> list[str]:
    return sorted(REGISTRY)


def batch_ops() -> list[str]:
    """Names of the batch-level ops (``Op.batch``)."""
    return sorted(n for n, op in REGISTRY.items() if op.batch)


def functions() -> list[str]:
    """Names of the ops written as calls, ``log(x)`` (not as operators)."""
    return sorted(n for n, op in REGISTRY.items() if not (op.infix or op.prefix))


def spelled(symbol: str, arity: int) -> Optional[Op]:
    """The op written as the operator ``symbol`` with ``arity`` operands (``-a``, ``a - b``)."""
    for op in REGISTRY.values():
        if op.arity == arity and symbol in (op.prefix, op.infix):
            return op
    return None


# --------------------------------------------------------------------------- gradients
# Imported lazily inside the rules: expr imports this module for arities.
def _e():
    global _expr
    if _expr is None:  # once: the gradient rules call this for every node they build
        from . import expr

        _expr = expr
    return _expr


_expr = None


def _tie_split(a, b, g, sign_of):
    """torch.minimum/maximum semantics: the gradient is split in half on ties."""
    E = _e()
    half = E.mul(E.const(0.5), g)
    ga = E.mul(half, _tie_share(a, b, sign_of))
    gb = E.sub(g, ga)
    return ga, gb


@functools.lru_cache(maxsize=4096)
def _tie_share(a, b, sign_of: float):
    """``1 + sign_of * sign(a - b)``: twice the share of ``a`` (1 on a tie). It depends on
    the arguments only, so it is built once per pair: the terminals' min and max (box
    intersections, enclosing boxes) are differentiated again for every candidate."""
    E = _e()
    return E.add(E.const(1.0), E.mul(E.const(sign_of), E.call("sign", E.sub(a, b))))


def _g_add(a, out, g):
    return g, g


def _g_sub(a, out, g):
    return g, _e().neg(g)


def _g_mul(a, out, g):
    E = _e()
    return E.mul(g, a[1]), E.mul(g, a[0])


def _g_div(a, out, g):
    E = _e()
    ga = E.div(g, a[1])
    return ga, E.neg(E.mul(ga, out))


def _g_pow(a, out, g):
    E = _e()
    base, ex = a
    if isinstance(ex, E.Const):
        if ex.value == 2.0:
            gb = E.mul(E.mul(E.const(2.0), g), base)
        else:
            gb = E.mul(E.mul(g, ex), E.pow(base, E.const(ex.value - 1.0)))
    else:
        gb = E.mul(E.mul(g, ex), E.pow(base, E.sub(ex, E.const(1.0))))
    return gb, E.mul(E.mul(g, out), E.call("log", base))


def _g_neg(a, out, g):
    return (_e().neg(g),)


def _g_exp(a, out, g):
    return (_e().mul(g, out),)


def _g_log(a, out, g):
    return (_e().div(g, a[0]),)


def _g_log1p(a, out, g):
    E = _e()
    return (E.div(g, E.add(E.const(1.0), a[0])),)


def _g_sqrt(a, out, g):
    E = _e()
    return (E.div(E.mul(E.const(0.5), g), out),)


def _g_abs(a, out, g):
    E = _e()
    return (E.mul(g, E.call("sign", a[0])),)


def _g_sigmoid(a, out, g):
    # sigmoid' = sigmoid(x) sigmoid(-x), written so that sigmoid(x) and sigmoid(-x) share
    # one product node (focal-type losses hold both)
    E = _e()
    x = a[0]
    inner = x.args[0] if isinstance(x, E.Call) and x.op == "neg" else x
    both = E.mul(E.call("sigmoid", inner), E.call("sigmoid", E.neg(inner)))
    return (E.mul(g, both),)


def _g_logsigmoid(a, out, g):
    E = _e()
    return (E.mul(g, E.call("sigmoid", E.neg(a[0]))),)


def _g_softplus(a, out, g):
    E = _e()
    return (E.mul(g, E.call("sigmoid", a[0])),)


def _g_bce_logits(a, out, g):
    E = _e()
    z, y = a
    return (E.mul(g, E.sub(E.call("sigmoid", z), y)), E.mul(g, E.neg(z)))


def _g_tanh(a, out, g):
    E = _e()
    return (E.mul(g, E.sub(E.const(1.0), E.mul(out, out))),)


def _g_atan(a, out, g):
    E = _e()
    return (E.div(g, E.add(E.const(1.0), E.mul(a[0], a[0]))),)


def _g_asin(a, out, g):
    E = _e()
    return (E.div(g, E.call("sqrt", E.sub(E.const(1.0), E.mul(a[0], a[0])))),)


def _g_sin(a, out, g):
    E = _e()
    return (E.mul(g, E.call("cos", a[0])),)


def _g_cos(a, out, g):
    E = _e()
    return (E.neg(E.mul(g, E.call("sin", a[0]))),)


def _g_erf(a, out, g):
    E = _e()
    two_over_sqrt_pi = 1.1283791670955126
    gauss = E.call("exp", E.neg(E.mul(a[0], a[0])))
    return (E.mul(E.mul(E.const(two_over_sqrt_pi), g), gauss),)


def _g_wrap(a, out, g):
    # wrap(a, p) = a - p round(a / p): round is piecewise constant, so d/da = 1 and
    # d/dp = -round(a / p) = (wrap(a, p) - a) / p
    E = _e()
    return g, E.mul(g, E.div(E.sub(out, a[0]), a[1]))


def _g_min(a, out, g):
    return _tie_split(a[0], a[1], g, -1.0)


def _g_max(a, out, g):
    return _tie_split(a[0], a[1], g, 1.0)


def _g_clamp(a, out, g):
    # torch.clamp passes the gradient on the closed interval [lo, hi]
    E = _e()
    x, lo, hi = a
    inside = E.mul(E.call("ge", x, lo), E.call("le", x, hi))
    below = E.call("lt", x, lo)
    above = E.call("gt", x, hi)
    return E.mul(g, inside), E.mul(g, below), E.mul(g, above)


def _g_relu(a, out, g):
    E = _e()
    return (E.mul(g, E.call("gt", a[0], E.const(0.0))),)


def _g_where(a, out, g):
    E = _e()
    zero = E.const(0.0)
    return None, E.call("where", a[0], g, zero), E.call("where", a[0], zero, g)


# ------------------------------------------------------------------------------ guards
# Search mode rewrites each partial op into a total one, as an expression, so the
# closed-form gradient of a guarded candidate matches its value. Guards remove domain
# errors (log or sqrt of a negative, division by zero, exp and pow overflow); a value that
# overflows anyway on huge finite inputs is caught by the search's finiteness filter.
_INF = float("inf")


def _clamped(op, a, lo, hi):
    E = _e()
    return E.call(op, E.call("clamp", a, E.const(lo), E.const(hi)))


def _safe_div(a, b):
    """a * b / (b * b + TINY^2): a / b wherever |b| >> TINY, finite everywhere, and four cheap
    arithmetic ops (no comparisons or selects)."""
    E = _e()
    return E.div(E.mul(a, b), E.add(E.mul(b, b), E.const(TINY * TINY)))


def _away_from_zero(b):
    E = _e()
    tiny = E.const(TINY)
    small = E.call("lt", E.call("abs", b), tiny)
    signed = E.call("where", E.call("lt", b, E.const(0.0)), E.const(-TINY), tiny)
    return E.call("where", small, signed, b)


def _guard_pow(base, ex):
    """Integer powers stay polynomial; any other power is exp(b log a) with a > 0, bounded."""
    E = _e()
    if isinstance(ex, E.Const) and ex.value.is_integer() and ex.value >= 0:
        return E.pow(base, ex)
    if isinstance(ex, E.Const) and ex.value.is_integer():
        return E.pow(_away_from_zero(base), ex)
    log_base = E.call("log", E.call("clamp", base, E.const(TINY), E.const(_INF)))
    return _clamped("exp", E.mul(ex, log_base), -_INF, EXP_MAX)


def _small_exponent(base, ex):
    if isinstance(ex, _e().Const) and abs(ex.value) > 64:
        return f"exponent {ex.value:g} is too large (|exponent| <= 64)"
    return None


# --------------------------------------------------------------------- code generation
# Emit hooks write a better torch form than the template for some arguments (a number
# where torch wants a tensor, a square) and return None otherwise. ``em`` is the
# :class:`autoloss.codegen.Emitter`: ``em.tensor[node]`` says whether a node is a tensor,
# ``em.src``/``em.full`` render an argument, ``em.unary`` writes a one-tensor call that
# may overwrite its argument or a dead buffer.
def _is_const(x, value: float) -> bool:
    return isinstance(x, _e().Const) and x.value == value


def _emit_square(em, node):
    x, ex = node.args
    return em.unary(node, "square", x) if _is_const(ex, 2.0) else None


def _emit_rsub(em, node):
    # number - tensor: what Tensor.__rsub__ calls, without its Python wrapper
    c, x = node.args
    if em.tensor[c]:
        return None
    return f"torch.rsub({em.src(x)}, {em.src(c)})"


def _emit_rdiv(em, node):
    # number / tensor: what Tensor.__rtruediv__ calls, without its Python wrapper
    c, x = node.args
    if em.tensor[c]:
        return None
    c, x = em.src(c), em.src(x)
    if c == "1.0":
        return f"torch.reciprocal({x})"
    if em.inplace:  # (in autograd code the reciprocal is saved for the backward)
        return f"torch.reciprocal({x}).mul_({c})"
    return f"(torch.reciprocal({x}) * {c})"


def _emit_bound(side):
    """min/max of a tensor and a number: a one-sided clamp (``side`` names the bound)."""

    def emit(em, node):
        a, b = node.args
        if em.tensor[a] and em.tensor[b]:
            return None
        t, c = (a, b) if em.tensor[a] else (b, a)
        return em.unary(node, "clamp", t, f"{side}={em.src(c)}")

    return emit


def _emit_clamp(em, node):
    x, lo, hi = node.args
    if em.tensor[lo] or em.tensor[hi]:
        if all(em.tensor[v] for v in node.args):
            return None
        # torch.clamp takes a tensor and two bounds alike (numbers or tensors)
        return f"torch.clamp({', '.join(em.full(v) for v in node.args)})"
    if not em.tensor[x]:
        return f"torch.clamp({em.full(x)}, {em.src(lo)}, {em.src(hi)})"
    if _is_const(hi, _INF):
        return em.unary(node, "clamp", x, f"min={em.src(lo)}")
    if _is_const(lo, -_INF):
        return em.unary(node, "clamp", x, f"max={em.src(hi)}")
    return None


def _emit_where(em, node):
    c, a, b = node.args
    boolean = em.boolean(c)  # a comparison: already a truth value
    if not em.tensor[c]:  # a number picks a branch: a Python conditional
        cond = (REGISTRY[c.op].torch.format(*(em.src(x) for x in c.args)) if boolean
                else f"{em.src(c)} != 0")
        return f"({em.full(a)} if {cond} else {em.full(b)})"
    cond = em.src(c, arith=False) if boolean else f"({em.src(c)} != 0)"
    if em.tensor[a] or em.tensor[b]:
        return f"torch.where({cond}, {em.src(a)}, {em.src(b)})"
    # two Python numbers would give a tensor of torch's default dtype
    if _is_const(a, 1.0) and _is_const(b, 0.0):
        return f"{cond}.to({em.dtype_ref}.dtype)"
    return f"torch.where({cond}, {em.full(a)}, {em.src(b)})"


def _numbers_after_first(*args):
    """A batch op takes a tensor, then numbers (constants or parameters, no terminal)."""
    E = _e()
    for i, a in enumerate(args[1:], 2):
        if E.variables(a):
            return f"argument {i} must be a number (a constant or a parameter), not a tensor"
    return None


# ------------------------------------------------------------------------------ sympy
def _sym_cmp(rel):
    return lambda s, a, b: s.Piecewise((s.Integer(1), rel(a, b)), (s.Integer(0), True))


_POS = (0.2, 3.0)
_ANY = (-3.0, 3.0)

# Arithmetic ------------------------------------------------------------------------
_register(Op("add", 2, "({0} + {1})", lambda s, a, b: a + b, _g_add, "a + b",
             math="({0} + {1})", infix="+", precedence=2, commutative=True, sample=(_ANY, _ANY), out="add", units="sum"))
_register(Op("sub", 2, "({0} - {1})", lambda s, a, b: a - b, _g_sub, "a - b",
             math="({0} - {1})", infix="-", precedence=2, emit=_emit_rsub, sample=(_ANY, _ANY),
             out="sub", units="sum"))
_register(Op("mul", 2, "({0} * {1})", lambda s, a, b: a * b, _g_mul, "a * b",
             math="({0} * {1})", infix="*", precedence=3, commutative=True, sample=(_ANY, _ANY), out="mul", units="product"))
_register(Op("div", 2, "({0} / {1})", lambda s, a, b: a / b, _g_div, "a / b",
             math="({0} / {1})", infix="/", precedence=3, emit=_emit_rdiv,
             guard=lambda a, b: _safe_div(a, b), sample=(_ANY, _POS), out="div", units="product"))
_register(Op("pow", 2, "torch.pow({0}, {1})", lambda s, a, b: a ** b, _g_pow, "a ** b",
             math="({0} ** {1})", infix="**", precedence=5, right_assoc=True, guard=_guard_pow,
             validate=_small_exponent, emit=_emit_square, sample=(_POS, (-2.0, 3.0)), out="pow",
             units="power"))
_register(Op("neg", 1, "(-{0})", lambda s, a: -a, _g_neg, "-a",
             math="(-{0})", prefix="-", precedence=4, sample=(_ANY,), out="neg", units="keep"))

# Elementary functions ----------------------------------------------------------------
_register(Op("exp", 1, "torch.exp({0})", lambda s, a: s.exp(a), _g_exp, "e ** a",
             math="math.exp({0})", guard=lambda a: _clamped("exp", a, -_INF, EXP_MAX),
             sample=(_ANY,), out="exp"))
_register(Op("log", 1, "torch.log({0})", lambda s, a: s.log(a), _g_log, "natural logarithm",
             math="math.log({0})",
             domain=(TINY, _INF), sample=(_POS,), out="log"))
_register(Op("log1p", 1, "torch.log1p({0})", lambda s, a: s.log(1 + a), _g_log1p,
             "log(1 + a), accurate for small a",
             math="math.log1p({0})",
             domain=(-1.0 + 1e-7, _INF), sample=((-0.5, 3.0),), out="log1p"))
_register(Op("sqrt", 1, "torch.sqrt({0})", lambda s, a: s.sqrt(a), _g_sqrt, "square root",
             math="math.sqrt({0})",
             domain=(TINY, _INF), sample=(_POS,), out="sqrt", units="root"))
_register(Op("abs", 1, "torch.abs({0})", lambda s, a: s.Abs(a), _g_abs, "absolute value",
             math="abs({0})", sample=(_ANY,), out="abs", units="keep"))
_register(Op("sign", 1, "torch.sign({0})", lambda s, a: s.sign(a), None,
             "sign (-1, 0 or 1), no gradient", math="float(({0} > 0) - ({0} < 0))",
             sample=(_ANY,), out="sign", units="sign"))
_register(Op("sigmoid", 1, "torch.sigmoid({0})", lambda s, a: s.sigmoid(a), _g_sigmoid,
             "logistic function 1 / (1 + e ** -a)",
             math="(1.0 / (1.0 + math.exp(-({0}))))", sample=(_ANY,), out="sigmoid"))
_register(Op("logsigmoid", 1, "torch.nn.functional.logsigmoid({0})",
             lambda s, a: s.logsigmoid(a), _g_logsigmoid, "log(sigmoid(a)), stable",
             math="(min({0}, 0.0) - math.log1p(math.exp(-abs({0}))))", sample=(_ANY,)))
_register(Op("softplus", 1, "torch.nn.functional.softplus({0})",
             lambda s, a: s.softplus(a), _g_softplus, "log(1 + e ** a), stable",
             math="(max({0}, 0.0) + math.log1p(math.exp(-abs({0}))))", sample=(_ANY,)))
_register(Op("bce_logits", 2,
             "torch.nn.functional.binary_cross_entropy_with_logits({0}, {1}, reduction='none')",
             lambda s, z, y: -(y * s.logsigmoid(z) + (1 - y) * s.logsigmoid(-z)), _g_bce_logits,
             "binary cross-entropy of logit a and target b in [0, 1]: "
             "-(b logsigmoid(a) + (1 - b) logsigmoid(-a)), one fused kernel",
             math="(max({0}, 0.0) - {0} * {1} + math.log1p(math.exp(-abs({0}))))",
             sample=(_ANY, (0.0, 1.0)), tensor_args=True))
_register(Op("relu", 1, "torch.relu({0})", lambda s, a: s.Max(a, 0), _g_relu,
             "max(a, 0) with zero gradient at 0", math="max({0}, 0.0)", sample=(_ANY,), units="keep"))
_register(Op("tanh", 1, "torch.tanh({0})", lambda s, a: s.tanh(a), _g_tanh,
             "hyperbolic tangent", math="math.tanh({0})", sample=(_ANY,), out="tanh"))
_register(Op("atan", 1, "torch.atan({0})", lambda s, a: s.atan(a), _g_atan, "arc tangent",
             math="math.atan({0})", sample=(_ANY,), out="atan"))
_register(Op("asin", 1, "torch.asin({0})", lambda s, a: s.asin(a), _g_asin, "arc sine",
             math="math.asin({0})",
             domain=(-1.0 + 1e-6, 1.0 - 1e-6), sample=((-0.9, 0.9),), out="asin"))
_register(Op("sin", 1, "torch.sin({0})", lambda s, a: s.sin(a), _g_sin, "sine",
             math="math.sin({0})", sample=(_ANY,), out="sin"))
_register(Op("cos", 1, "torch.cos({0})", lambda s, a: s.cos(a), _g_cos, "cosine",
             math="math.cos({0})", sample=(_ANY,), out="cos"))
_register(Op("erf", 1, "torch.erf({0})", lambda s, a: s.erf(a), _g_erf, "error function",
             math="math.erf({0})", sample=(_ANY,), out="erf"))

# Piecewise ---------------------------------------------------------------------------
_register(Op("min", 2, "torch.minimum({0}, {1})", lambda s, a, b: s.Min(a, b), _g_min,
             "elementwise minimum (gradient split on ties, as torch)",
             math="min({0}, {1})", commutative=True, idempotent=True, emit=_emit_bound("max"),
             sample=(_ANY, _ANY), out="minimum", units="same"))
_register(Op("max", 2, "torch.maximum({0}, {1})", lambda s, a, b: s.Max(a, b), _g_max,
             "elementwise maximum (gradient split on ties, as torch)",
             math="max({0}, {1})", commutative=True, idempotent=True, emit=_emit_bound("min"),
             sample=(_ANY, _ANY), out="maximum", units="same"))
_register(Op("clamp", 3, "torch.clamp({0}, {1}, {2})",
             lambda s, x, lo, hi: s.Min(s.Max(x, lo), hi), _g_clamp,
             "clamp(x, lo, hi); use inf for an open side",
             math="min(max({0}, {1}), {2})", emit=_emit_clamp,
             sample=(_ANY, (-2.0, -1.0), (1.0, 2.0)), out="clamp", units="same"))
_register(Op("where", 3, "torch.where({0} != 0, {1}, {2})",
             lambda s, c, a, b: s.Piecewise((a, s.Ne(c, 0)), (b, True)), _g_where,
             "where(cond, a, b): a where cond is non-zero, else b",
             math="({1} if {0} else {2})", condition=True, emit=_emit_where,
             sample=((0.0, 1.0), _ANY, _ANY), out="where", units="select"))

# Periodic ------------------------------------------------------------------------------
_register(Op("wrap", 2, "({0} - {1} * torch.round({0} / {1}))", lambda s, a, p: s.wrap(a, p),
             _g_wrap, "a - p round(a / p): a taken modulo p into [-p/2, p/2] (an angle "
             "difference modulo pi: wrap(dt, pi)); gradient 1 in a, -round(a / p) in p",
             math="({0} - {1} * round({0} / {1}))",
             guard=lambda a, p: _e().call("wrap", a, _away_from_zero(p)),
             sample=((-8.0, 8.0), (1.0, 3.5)), units="same", searchable=False))

# Comparisons (1.0 or 0.0, no gradient) ------------------------------------------------
for _name, _sym, _rel in (
    ("lt", "<", lambda a, b: a < b),
    ("le", "<=", lambda a, b: a <= b),
    ("gt", ">", lambda a, b: a > b),
    ("ge", ">=", lambda a, b: a >= b),
):
    _register(Op(_name, 2, f"({{0}} {_sym} {{1}})", _sym_cmp(_rel), None,
                 f"1 where a {_sym} b else 0 (no gradient)",
                 math=f"float({{0}} {_sym} {{1}})", infix=_sym, precedence=1,
                 comparison=True, sample=(_ANY, _ANY), units="same"))

# Gradient control -----------------------------------------------------------------------
_register(Op("stop_grad", 1, "{0}.detach()", lambda s, a: s.stop_grad(a), None,
             "identity in value, blocks the gradient (torch .detach())",
             math="{0}", alias=True, sample=(_ANY,), units="keep", searchable=False))

# Batch-level terms (kind B; no gradient, evaluated over the whole batch first) -----------
_register(Op("ghm_density", 2, "_ghm_density({0}, {1})",
             lambda s, g, bins: s.ghm_density(g, bins), None,
             "GHM gradient-density weight of g in [0, 1] over the whole batch, bins equal "
             "bins: total / (count in g's bin * non-empty bins) (mmdet GHMC, momentum 0); "
             "no gradient",
             math="1.0", sample=((0.0, 1.0), (10.0, 10.0)), units="pure", batch=True,
             validate=_numbers_after_first))
_register(Op("batch_mean", 1, "_batch_mean({0})", lambda s, a: s.batch_mean(a), None,
             "mean of a over the whole batch, at every element; no gradient",
             math="{0}", sample=(_ANY,), units="keep", batch=True))

# Row-level terms (no gradient; each row's value depends on that row alone, so a loss using
# them stays elementwise, kind E: the compiled code runs on whole rows) ---------------------
_register(Op("row_mean", 1, "_row_mean({0})", lambda s, a: s.row_mean(a), None,
             "mean of a over its row, at every element of the row: over the C classes of a "
             "sigmoid batch (a per-class weight's mean; the share of positive classes), the "
             "4 entries of a coord one; a one-column batch's row is the element itself. "
             "No gradient (a per-class constant or a target goes in: class-balanced "
             "renormalisation, EQL's foreground test)",
             math="{0}", sample=(_ANY,), units="keep", searchable=False))
