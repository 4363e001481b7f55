"""Bridge between the expression IR and sympy: simplify, LaTeX, symbolic gradients.

Each registry op carries its sympy form; the few functions sympy lacks (sigmoid,
logsigmoid, softplus, stop_grad) are defined here with their derivatives and LaTeX.
``from_sympy`` maps a sympy expression back to the IR (used after ``simplify`` and
``diff``). Never call ``sympy.sympify`` on user text: the IR is built by the safe parser.
"""
from __future__ import annotations

import math
import types
from typing import Iterable, Mapping, Optional

import sympy

from . import expr as E
from . import ops
from .errors import ExpressionError
from .expr import Const, Expr, Param, Var


class sigmoid(sympy.Function):  # noqa: N801 - printed name
    """Logistic function."""

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

    def fdiff(self, argindex=1):
        return sympy.Integer(0)

    def _eval_evalf(self, prec):
        return self.args[0]._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        s = r"\operatorname{sg}\left(%s\right)" % printer._print(self.args[0])
        return s if exp is None else r"%s^{%s}" % (s, exp)


#: namespace handed to the registry's sympy forms
S = types.SimpleNamespace(**{k: getattr(sympy, k) for k in dir(sympy) if not k.startswith("_")})
S.sigmoid, S.logsigmoid, S.softplus, S.stop_grad = sigmoid, logsigmoid, softplus, stop_grad

#: numeric implementations of the custom functions, for ``sympy.lambdify``
NUMPY_FUNCS = {
    "sigmoid": lambda x: 1.0 / (1.0 + __import__("numpy").exp(-x)),
    "logsigmoid": lambda x: -__import__("numpy").logaddexp(0.0, -x),
    "softplus": lambda x: __import__("numpy").logaddexp(0.0, x),
    "stop_grad": lambda x: x,
    "erf": lambda x: __import__("numpy").vectorize(math.erf, otypes=[float])(x),
}


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
    """Map a sympy expression back to the IR (inverse of :func:`to_sympy`)."""
    terminals = set(terminals)
    params = dict(params or {})

    def conv(s) -> Expr:
        if s.is_Symbol:
            if s.name in params:
                return params[s.name]
            if s.name in terminals or not terminals:
                return Var(s.name)
            raise ExpressionError(f"sympy result uses unknown symbol {s.name!r}")
        if s is sympy.pi:
            return Const(math.pi)
        if s is sympy.E:
            return Const(math.e)
        if s is sympy.oo:
            return Const(math.inf)
        if s is sympy.S.NegativeInfinity:
            return Const(-math.inf)
        if s.is_Number:
            return Const(float(s))
        if isinstance(s, sympy.Add):
            terms = [conv(a) for a in s.args]
            out = terms[0]
            for t in terms[1:]:
                out = E.add(out, t)
            return out
        if isinstance(s, sympy.Mul):
            out = conv(s.args[0])
            for a in s.args[1:]:
                out = E.mul(out, conv(a))
            return out
        if isinstance(s, sympy.Pow):
            base, ex = s.args
            if ex == sympy.Rational(1, 2):
                return E.call("sqrt", conv(base))
            if base is sympy.E:
                return E.call("exp", conv(ex))
            return E.pow(conv(base), conv(ex))
        if isinstance(s, sympy.exp):
            return E.call("exp", conv(s.args[0]))
        if isinstance(s, (sympy.Min, sympy.Max)):
            op = "min" if isinstance(s, sympy.Min) else "max"
            args = [conv(a) for a in s.args]
            out = args[0]
            for a in args[1:]:
                out = E.call(op, out, a)
            return out
        if isinstance(s, sympy.Piecewise):
            return _piecewise(s, conv)
        if isinstance(s, sympy.Heaviside):
            # Heaviside(x) with H(0) = 1/2 appears in sympy derivatives of Max/Min
            x = conv(s.args[0])
            zero = Const(0.0)
            return E.add(E.call("gt", x, zero),
                         E.mul(Const(0.5), E.call("ge", x, zero)) - E.mul(
                             Const(0.5), E.call("gt", x, zero)))
        if isinstance(s, sympy.core.relational.Relational):
            return _relational(s, conv)
        name = {
            sympy.log: "log", sympy.Abs: "abs", sympy.sign: "sign", sympy.tanh: "tanh",
            sympy.atan: "atan", sympy.sin: "sin", sympy.cos: "cos", sympy.erf: "erf",
            sigmoid: "sigmoid", logsigmoid: "logsigmoid", softplus: "softplus",
            stop_grad: "stop_grad",
        }.get(type(s))
        if name is not None and len(s.args) == 1:
            return E.call(name, conv(s.args[0]))
        raise ExpressionError(
            f"cannot map sympy expression {s} ({type(s).__name__}) back to autoloss primitives"
        )

    return conv(sym)


def _relational(s, conv) -> Expr:
    lhs, rhs = conv(s.lhs), conv(s.rhs)
    op = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge"}.get(s.rel_op)
    if op is None:
        raise ExpressionError(f"cannot map relation {s.rel_op!r} to an autoloss comparison")
    return E.call(op, lhs, rhs)


def _piecewise(s, conv) -> Expr:
    pieces = list(s.args)
    if pieces[-1].cond is not sympy.true:
        raise ExpressionError(f"piecewise without an otherwise-branch: {s}")
    out = conv(pieces[-1].expr)
    for piece in reversed(pieces[:-1]):
        cond = piece.cond
        if isinstance(cond, sympy.Ne) and cond.rhs == 0:
            c = conv(cond.lhs)
        else:
            c = _relational(cond, conv)
        out = E.call("where", c, conv(piece.expr), out)
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
