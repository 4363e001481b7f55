"""Bridge between the expression IR and sympy: simplify, LaTeX, symbolic gradients.

Each registry op carries its sympy form; the few functions sympy lacks (sigmoid,
logsigmoid, softplus, stop_grad, wrap) are defined here with their derivatives and LaTeX.
``from_sympy`` maps a sympy expression back to the IR (used after ``simplify`` and
``diff``) by reading those forms backwards. Never call ``sympy.sympify`` on user text: the
IR is built by the safe parser.
"""
from __future__ import annotations

import itertools
import math
import types
from typing import Iterable, Mapping, Optional

import sympy
from sympy.core.operations import AssocOp

from . import expr as E
from . import ops
from .errors import ExpressionError
from .expr import Const, Expr, Param, Var


def _np():
    return __import__("numpy")


# Functions sympy lacks, each with its derivative, LaTeX and numpy form (``numpy``, for
# ``lambdify``).
class sigmoid(sympy.Function):  # noqa: N801 - printed name
    """Logistic function."""

    numpy = staticmethod(lambda x: 1.0 / (1.0 + _np().exp(-x)))

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))

    def _eval_evalf(self, prec):
        return self.rewrite(sympy.exp)._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        s = r"\sigma\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"%s^{%s}" % (s, exp)


class logsigmoid(sympy.Function):  # noqa: N801
    """log(sigmoid(x))."""

    numpy = staticmethod(lambda x: -_np().logaddexp(0.0, -x))

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return -sympy.log(1 + sympy.exp(-x))

    def _eval_evalf(self, prec):
        return self.rewrite(sympy.exp)._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        s = r"\log\sigma\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"\left(%s\right)^{%s}" % (s, exp)


class softplus(sympy.Function):  # noqa: N801
    """log(1 + exp(x))."""

    numpy = staticmethod(lambda x: _np().logaddexp(0.0, x))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sympy.log(1 + sympy.exp(x))

    def _eval_evalf(self, prec):
        return self.rewrite(sympy.exp)._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        s = r"\operatorname{softplus}\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"%s^{%s}" % (s, exp)


class stop_grad(sympy.Function):  # noqa: N801
    """Identity in value with zero derivative (torch ``.detach()``)."""

    numpy = staticmethod(lambda x: x)

    def fdiff(self, argindex=1):
        return sympy.Integer(0)

    def _eval_evalf(self, prec):
        return self.args[0]._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        s = r"\operatorname{sg}\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"%s^{%s}" % (s, exp)


class wrap(sympy.Function):  # noqa: N801
    """a - p round(a / p): ``a`` taken modulo ``p`` into [-p/2, p/2] (an angle difference
    modulo pi). Its derivative is 1 in ``a`` and -round(a / p) = (wrap(a, p) - a) / p in
    ``p``, away from the jumps at a / p = k + 1/2."""

    nargs = 2
    numpy = staticmethod(lambda a, p: a - p * _np().round(a / p))

    def fdiff(self, argindex=1):
        a, p = self.args
        return sympy.Integer(1) if argindex == 1 else (self - a) / p

    def _eval_evalf(self, prec):
        a, p = self.args
        return (a - p * sympy.floor(a / p + sympy.Rational(1, 2)))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        s = r"\operatorname{wrap}\left(%s, %s\right)" % tuple(printer._print(x) for x in self.args)
        return s if exp is None else r"%s^{%s}" % (s, exp)


class _BatchTerm(sympy.Function):
    """A batch-level term (``ops.Op.batch``): a value over the whole batch, so no value at
    one point; held fixed (zero derivative), printed as an operator."""

    def fdiff(self, argindex=1):
        return sympy.Integer(0)

    def _latex(self, printer, exp=None):
        name = type(self).__name__.replace("_", r"\_")
        args = ", ".join(printer._print(a) for a in self.args)
        s = r"\operatorname{%s}\left(%s\right)" % (name, args)
        return s if exp is None else r"%s^{%s}" % (s, exp)


def _ghm_density_numpy(g, bins):
    import torch

    from .runtime import _ghm_density

    g = _np().asarray(g, dtype=float)
    return _ghm_density(torch.as_tensor(g), float(bins)).numpy()


class ghm_density(_BatchTerm):  # noqa: N801
    nargs = 2
    #: lambdify evaluates over whole arrays: the array is the batch
    numpy = staticmethod(_ghm_density_numpy)


class batch_mean(_BatchTerm):  # noqa: N801
    nargs = 1
    numpy = staticmethod(lambda x: _np().zeros_like(_np().asarray(x, dtype=float))
                         + _np().mean(x))


def _row_mean_numpy(x):
    x = _np().asarray(x, dtype=float)
    if x.ndim < 2:
        return x.copy()
    return _np().broadcast_to(x.mean(-1, keepdims=True), x.shape).copy()


class row_mean(sympy.Function):  # noqa: N801
    """The mean over an element's row (``ops`` ``row_mean``): at one point, the point itself;
    held fixed (zero derivative), printed as an operator. ``lambdify`` evaluates it over
    whole arrays, rows on the last axis. Caveat: sympy folds a ``Piecewise`` (a comparison)
    out of any function inside a ``Piecewise`` condition, pointwise; a condition should test
    the row mean of a plain quantity (``row_mean(t) > 0``, not ``row_mean(y) > 0``)."""

    nargs = 1
    numpy = staticmethod(_row_mean_numpy)

    @classmethod
    def eval(cls, a):
        if a.is_number:
            return a
        return None

    def fdiff(self, argindex=1):
        return sympy.Integer(0)

    def _latex(self, printer, exp=None):
        s = r"\operatorname{row\_mean}\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"%s^{%s}" % (s, exp)


_CUSTOM = (sigmoid, logsigmoid, softplus, stop_grad, wrap, ghm_density, batch_mean, row_mean)

#: namespace handed to the registry's sympy forms
S = types.SimpleNamespace(**{k: getattr(sympy, k) for k in dir(sympy) if not k.startswith("_")},
                          **{f.__name__: f for f in _CUSTOM})

#: numeric implementations of the functions numpy lacks, for ``sympy.lambdify``
NUMPY_FUNCS = {f.__name__: f.numpy for f in _CUSTOM if getattr(f, "numpy", None) is not None}
NUMPY_FUNCS["erf"] = lambda x: _np().vectorize(math.erf, otypes=[float])(x)


def _number(value: float):
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    if value == math.pi:
        return sympy.pi
    if value == math.e:
        return sympy.E
    if value.is_integer():
        return sympy.Integer(int(value))
    frac = sympy.Rational(repr(value))
    if frac.q <= 1000:
        return frac
    return sympy.Float(value, 17)


def symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def to_sympy(root: Expr, *, bind_params: bool = False,
             inline: Optional[Mapping[str, Expr]] = None) -> sympy.Expr:
    """The sympy form of ``root``.

    Args:
        bind_params: replace parameters by their default values.
        inline: terminal definitions to substitute (recursively) for variables.
    """
    done: dict[Expr, sympy.Expr] = {}
    inline = dict(inline or {})

    def conv(node: Expr) -> sympy.Expr:
        stack = [node]
        while stack:
            n = stack[-1]
            if n in done:
                stack.pop()
                continue
            if type(n) is Var and n.name in inline:
                target = inline[n.name]
                if target not in done:
                    stack.append(target)
                    continue
                done[n] = done[target]
            elif type(n) is Var:
                done[n] = symbol(n.name)
            elif type(n) is Param:
                done[n] = _number(n.default) if bind_params else symbol(n.name)
            elif type(n) is Const:
                done[n] = _number(n.value)
            else:
                pending = [a for a in n.args if a not in done]
                if pending:
                    stack.extend(pending)
                    continue
                done[n] = ops.REGISTRY[n.op].sympy(S, *(done[a] for a in n.args))
            stack.pop()
        return done[node]

    return conv(root)


def from_sympy(sym: sympy.Basic, terminals: Iterable[str] = (),
               params: Optional[Mapping[str, Param]] = None) -> Expr:
    """Map a sympy expression back to the IR (inverse of :func:`to_sympy`).

    Each registry op's sympy form, taken on placeholder arguments, is a pattern; a sympy
    node becomes the op whose pattern it fills (the most specific one: ``log(1 + x)`` is
    ``log1p(x)`` before it is ``log(1 + x)``). Sums, products, minima and maxima of more
    than two terms are taken two at a time; a ``Piecewise`` is a chain of selections.
    """
    terminals = set(terminals)
    params = dict(params or {})
    patterns = _patterns()

    def conv(s) -> Expr:
        if s.is_Symbol:
            if s.name in params:
                return params[s.name]
            if s.name in terminals or not terminals:
                return Var(s.name)
            raise ExpressionError(f"sympy result uses unknown symbol {s.name!r}")
        if s in _CONSTANTS:
            return Const(_CONSTANTS[s])
        if s.is_Number:
            return Const(float(s))
        for op, pattern, holes in patterns.get(s.func, ()):
            bound: dict = {}
            if _match(pattern, s, bound):
                return E.call(op.name, *(conv(bound[h]) for h in holes))
        if isinstance(s, AssocOp) and len(s.args) > 2:  # a + b + c = (a + b) + c
            return conv(s.func(s.func(*s.args[:-1], evaluate=False), s.args[-1],
                               evaluate=False))
        if isinstance(s, sympy.Piecewise):
            return _piecewise(s, conv)
        if isinstance(s, sympy.Heaviside):
            # Heaviside(x, H0) appears in sympy derivatives of Max/Min
            x, h0 = s.args[0], s.args[1] if len(s.args) > 1 else sympy.S.Half
            sign = sympy.sign(x)
            return conv((1 + sign) / 2 + (h0 - sympy.S.Half) * (1 - sign ** 2))
        if isinstance(s, sympy.core.relational.Relational):
            return _relational(s, conv)
        raise ExpressionError(
            f"cannot map sympy expression {s} ({type(s).__name__}) back to autoloss primitives"
        )

    return conv(sym)


_CONSTANTS = {sympy.pi: math.pi, sympy.E: math.e, sympy.oo: math.inf, -sympy.oo: -math.inf}


def _patterns() -> dict:
    """sympy head -> [(op, its sympy form on placeholders, the placeholders)], the most
    specific form first. Built from the registry when asked (it may have grown since)."""
    table: dict = {}
    for op in ops.REGISTRY.values():
        holes = tuple(sympy.Dummy(f"a{i}", real=True) for i in range(op.arity))
        form = op.sympy(S, *holes)
        if form in holes or not form.has(*holes):
            continue  # an identity or a constant matches anything or nothing
        table.setdefault(form.func, []).append((op, form, holes))
    for forms in table.values():
        forms.sort(key=lambda entry: -sum(1 for n in sympy.preorder_traversal(entry[1])
                                          if n not in entry[2]))
    return table


def _match(pattern, s, bound: dict) -> bool:
    """Whether ``s`` is ``pattern`` with its placeholders filled (recorded in ``bound``);
    the terms of a sum, product, min or max may come in any order."""
    if isinstance(pattern, sympy.Dummy):
        if pattern in bound:
            return bound[pattern] == s
        bound[pattern] = s
        return True
    if not pattern.args or pattern.func != s.func or len(pattern.args) != len(s.args):
        return pattern == s
    orders = itertools.permutations(s.args) if isinstance(s, AssocOp) else (s.args,)
    for args in orders:
        trial = dict(bound)
        if all(_match(p, a, trial) for p, a in zip(pattern.args, args)):
            bound.update(trial)
            return True
    return False


def _comparison(rel_op: str) -> ops.Op:
    op = ops.spelled(rel_op, 2)
    if op is None or not op.comparison:
        raise ExpressionError(f"cannot map relation {rel_op!r} to an autoloss comparison")
    return op


def _relational(s, conv) -> Expr:
    return E.call(_comparison(s.rel_op).name, conv(s.lhs), conv(s.rhs))


def _piecewise(s, conv) -> Expr:
    pieces = list(s.args)
    if pieces[-1].cond is not sympy.true:
        raise ExpressionError(f"piecewise without an otherwise-branch: {s}")
    select = next((op for op in ops.REGISTRY.values() if op.condition), None)
    if select is None:
        raise ExpressionError(f"no primitive selects by a condition, needed for {s}")
    out = conv(pieces[-1].expr)
    for piece in reversed(pieces[:-1]):
        cond = piece.cond
        if isinstance(cond, sympy.Ne) and cond.rhs == 0:
            c = conv(cond.lhs)
        elif isinstance(cond, sympy.core.relational.Relational):
            c = _relational(cond, conv)
        else:
            raise ExpressionError(f"cannot map condition {cond} to an autoloss comparison")
        out = E.call(select.name, c, conv(piece.expr), out)
    return out


def simplify(root: Expr) -> Expr:
    """``sympy.simplify`` round trip (keeps the same variables and parameters)."""
    ps = E.params(root)
    return from_sympy(sympy.simplify(to_sympy(root)), E.variables(root), ps)


def gradient(root: Expr, wrt: str, *, inline: Optional[Mapping[str, Expr]] = None) -> sympy.Expr:
    """The symbolic derivative d root / d wrt, as a sympy expression."""
    return sympy.diff(to_sympy(root, inline=inline), symbol(wrt))


LATEX_NAMES = {
    "iou": r"\mathrm{IoU}", "inter": "I", "union": "U", "enclose": "C", "diag2": "c^{2}",
    "rho2": r"\rho^{2}", "eps": r"\epsilon", "logp": r"\log p", "logp_l": r"\log S_{l}",
    "logp_r": r"\log S_{r}",
}


def latex(root: Expr, names: Optional[Mapping[str, str]] = None) -> str:
    """LaTeX of ``root`` with readable names for terminals (``iou -> \\mathrm{IoU}``)."""
    sym = to_sympy(root)
    table = dict(LATEX_NAMES)
    table.update(names or {})
    symbol_names = {s: table[s.name] for s in sym.free_symbols if s.name in table}
    for s in sym.free_symbols:
        if s not in symbol_names and "_" in s.name:
            head, _, tail = s.name.partition("_")
            symbol_names[s] = r"%s_{\mathrm{%s}}" % (head, tail.replace("_", r"\_"))
    return sympy.latex(sym, symbol_names=symbol_names)


def lambdify(root: Expr, variables: Iterable[str], *, inline=None, bind_params=True):
    """A numpy function of ``variables`` evaluating ``root`` through sympy (test oracle)."""
    sym = to_sympy(root, inline=inline, bind_params=bind_params)
    syms = [symbol(v) for v in variables]
    return sympy.lambdify(syms, sym, modules=[NUMPY_FUNCS, "numpy"])
