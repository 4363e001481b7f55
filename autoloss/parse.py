"""A safe parser for the infix expression language.

The text is parsed by Python's :mod:`ast` and the tree is walked with an allow-list:
numbers, names that the caller declares (terminals, parameters) or that are built-in
constants (``pi``, ``e``, ``inf``), and the operators and calls of registry primitives:
what an operator means, which names are callable and with how many arguments is read from
the registry at parse time. Nothing is ever evaluated: no ``eval``, ``exec`` or
``sympify`` touches the text. Limits on length, nesting and size keep hostile input
from exhausting the parser.
"""
from __future__ import annotations

import ast
import math
from typing import Iterable, Mapping, Optional, Sequence

from . import ops
from .errors import ExpressionError, did_you_mean
from .expr import Call, Const, Expr, Param, Var, depth, size

MAX_LENGTH = 4000
MAX_DEPTH = 64
MAX_NODES = 2000
MAX_ABS_CONST = 1e12

CONSTANTS = {"pi": math.pi, "e": math.e, "inf": math.inf}

#: Python's operator spellings (syntax only: the registry says which ops they are, if any)
_SPELLING = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.Mod: "%",
    ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
    ast.BitXor: "^", ast.BitAnd: "&", ast.USub: "-", ast.Invert: "~", ast.Not: "not",
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}


def _operator(node: ast.AST, arity: int, comparison: bool) -> Optional[ops.Op]:
    """The registry op the Python operator ``node`` (an ``ast`` operator) stands for."""
    op = ops.spelled(_SPELLING.get(type(node), ""), arity)
    return op if op is not None and op.comparison == comparison else None


def _spellings(arity: int, comparison: bool) -> str:
    return " ".join(op.infix for op in ops.REGISTRY.values()
                    if op.arity == arity and op.infix and op.comparison == comparison)


class Macro:
    """A named helper defined in a catalog entry's ``let`` table, e.g. ``sl1(l)``.

    A macro without arguments is a named subexpression; with arguments it is expanded at
    every call site. Either way the result is plain IR: macros never reach the compiler.
    """

    __slots__ = ("name", "args", "body")

    def __init__(self, name: str, args: tuple[str, ...], body: Expr):
        self.name, self.args, self.body = name, args, body

    def expand(self, values: Sequence[Expr]) -> Expr:
        from .expr import substitute

        return substitute(self.body, {Var(a): v for a, v in zip(self.args, values)})


def parse(
    text: str,
    terminals: Iterable[str] = (),
    params: Optional[Mapping[str, Param]] = None,
    *,
    macros: Optional[Mapping[str, Macro]] = None,
    where: str = "expression",
) -> Expr:
    """Parse ``text`` into an :class:`~autoloss.expr.Expr`.

    Args:
        text: the infix expression, e.g. ``"1 - iou + (enclose - union) / enclose"``.
        terminals: names that become :class:`Var` nodes.
        params: names that become :class:`Param` nodes (with their defaults and ranges).
        where: a short description of the source, used in error messages
            (e.g. ``"primitives/3_regression.toml [giou] expression"``).
    """
    if not isinstance(text, str):
        raise ExpressionError(f"{where}: expected a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"{where}: expression is {len(text)} characters long, the limit is {MAX_LENGTH}"
        )
    if not text.strip():
        raise ExpressionError(f"{where}: expression is empty")
    level = deepest = 0
    for ch in text:
        level += ch == "("
        level -= ch == ")"
        deepest = max(deepest, level)
    if deepest > MAX_DEPTH:
        raise ExpressionError(
            f"{where}: parentheses nest {deepest} deep, the limit is {MAX_DEPTH}"
        )
    text = text.replace("\r", " ").replace("\n", " ")  # TOML multi-line strings
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        col = f" at column {err.offset}" if err.offset else ""
        raise ExpressionError(f"{where}: invalid syntax{col} in {text!r}: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError) as err:
        raise ExpressionError(f"{where}: expression is too deeply nested or too large "
                              f"({type(err).__name__})") from None
    walker = _Walker(text, set(terminals), dict(params or {}), dict(macros or {}), where)
    try:
        result = walker.visit(tree.body, 0)
    except RecursionError:
        raise ExpressionError(f"{where}: expression nests too deeply") from None
    _check_constants(result, where, text)
    if size(result) > MAX_NODES:
        raise ExpressionError(f"{where}: expression has more than {MAX_NODES} nodes")
    if depth(result) > MAX_DEPTH:
        raise ExpressionError(f"{where}: expression is deeper than {MAX_DEPTH} levels")
    return result


class _Walker:
    def __init__(self, text, terminals, params, macros, where):
        self.text = text
        self.terminals = terminals
        self.params = params
        self.macros = macros
        self.where = where

    def fail(self, node: ast.AST, message: str, hint: str = ""):
        col = getattr(node, "col_offset", None)
        at = f" at column {col + 1}" if col is not None else ""
        raise ExpressionError(f"{self.where}: {message}{at} in {self.text!r}"
                              + (f"; {hint}" if hint else ""))

    def visit(self, node: ast.AST, level: int) -> Expr:
        if level > MAX_DEPTH:
            self.fail(node, f"expression is deeper than {MAX_DEPTH} levels")
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            self.fail(node, f"{_describe(node)} is not allowed; expressions may use numbers, "
                            "names, + - * / **, comparisons and calls of primitives")
        return method(node, level + 1)

    def visit_Constant(self, node: ast.Constant, level: int) -> Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(node, f"literal {value!r} is not a real number")
        if isinstance(value, int) and value.bit_length() > 64:
            self.fail(node, "integer literal is too large")
        value = float(value)
        if not math.isfinite(value) or abs(value) > MAX_ABS_CONST:
            self.fail(node, f"constant {node.value!r} is out of range (|c| <= {MAX_ABS_CONST:g})")
        return Const(value)

    def visit_Name(self, node: ast.Name, level: int) -> Expr:
        name = node.id
        if name in self.terminals:
            return Var(name)
        if name in self.params:
            return self.params[name]
        macro = self.macros.get(name)
        if macro is not None:
            if macro.args:
                self.fail(node, f"{name!r} takes {len(macro.args)} argument(s): "
                                f"{name}({', '.join(macro.args)})")
            return macro.body
        if name in CONSTANTS:
            return Const(CONSTANTS[name])
        if name in ops.functions():
            self.fail(node, f"primitive {name!r} must be called, e.g. {name}(x)")
        known = (sorted(self.terminals) + sorted(self.params) + sorted(self.macros)
                 + sorted(CONSTANTS))
        self.fail(node, f"unknown name {name!r}", did_you_mean(name, known))

    def apply(self, node: ast.AST, op: ops.Op, args: Sequence[Expr]) -> Expr:
        complaint = op.validate(*args) if op.validate is not None else None
        if complaint:
            self.fail(node, complaint)
        return Call(op.name, args)

    def visit_UnaryOp(self, node: ast.UnaryOp, level: int) -> Expr:
        if isinstance(node.op, ast.UAdd):
            return self.visit(node.operand, level)
        op = _operator(node.op, 1, comparison=False)
        if op is None:
            self.fail(node, f"operator {type(node.op).__name__} is not allowed")
        operand = self.visit(node.operand, level)
        if (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
                and type(operand) is Const):
            return Const(-operand.value)  # a negative literal is a constant
        return self.apply(node, op, (operand,))

    def visit_BinOp(self, node: ast.BinOp, level: int) -> Expr:
        op = _operator(node.op, 2, comparison=False)
        if op is None:
            self.fail(node, f"operator {type(node.op).__name__} is not allowed "
                            f"(use {_spellings(2, comparison=False)})")
        return self.apply(node, op, (self.visit(node.left, level),
                                     self.visit(node.right, level)))

    def visit_Compare(self, node: ast.Compare, level: int) -> Expr:
        if len(node.ops) != 1:
            self.fail(node, "chained comparisons are not allowed; use one comparison")
        op = _operator(node.ops[0], 2, comparison=True)
        if op is None:
            self.fail(node, f"comparison {type(node.ops[0]).__name__} is not allowed "
                            f"(use {_spellings(2, comparison=True)})")
        return self.apply(node, op, (self.visit(node.left, level),
                                     self.visit(node.comparators[0], level)))

    def visit_Call(self, node: ast.Call, level: int) -> Expr:
        if not isinstance(node.func, ast.Name):
            self.fail(node, "only primitives may be called, by their plain name")
        name = node.func.id
        macro = self.macros.get(name)
        if macro is not None and macro.args:
            if node.keywords or len(node.args) != len(macro.args):
                self.fail(node, f"{name}() takes {len(macro.args)} argument(s): "
                                f"{name}({', '.join(macro.args)})")
            return macro.expand([self.visit(a, level) for a in node.args])
        functions = ops.functions()
        if name not in functions:
            self.fail(node, f"unknown primitive {name!r}", did_you_mean(name, functions))
        if node.keywords:
            self.fail(node, f"{name}() takes no keyword arguments")
        spec = ops.REGISTRY[name]
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(node, f"{name}() does not take *arguments")
        if len(node.args) != spec.arity:
            self.fail(node, f"{name}() takes {spec.arity} argument(s), got {len(node.args)}")
        return self.apply(node, spec, tuple(self.visit(a, level) for a in node.args))


def _check_constants(root: Expr, where: str, text: str) -> None:
    """Reject constant subexpressions that overflow (``2 ** 10 ** 10``)."""
    from .expr import _fold, postorder

    value: dict[Expr, Optional[float]] = {}
    for node in postorder(root):
        if type(node) is Const:
            value[node] = node.value
        elif type(node) is Call and all(value.get(a) is not None for a in node.args):
            folded = _fold(node.op, *(Const(value[a]) for a in node.args))
            if folded is None and ops.REGISTRY[node.op].domain is None:
                raise ExpressionError(f"{where}: constant subexpression {node} overflows or is "
                                      f"undefined in {text!r}")
            value[node] = None if folded is None else folded.value
            if folded is not None and abs(folded.value) > MAX_ABS_CONST and \
                    not math.isinf(folded.value):
                raise ExpressionError(f"{where}: constant subexpression {node} = "
                                      f"{folded.value:g} is out of range in {text!r}")
        else:
            value[node] = None


def _describe(node: ast.AST) -> str:
    return {
        "Attribute": "attribute access",
        "Subscript": "subscripting",
        "Lambda": "a lambda",
        "BoolOp": "'and'/'or'",
        "IfExp": "an if-expression",
        "List": "a list",
        "Tuple": "a tuple",
        "Dict": "a dict",
        "Set": "a set",
        "ListComp": "a comprehension",
        "GeneratorExp": "a generator",
        "NamedExpr": "an assignment expression",
        "JoinedStr": "an f-string",
        "Await": "await",
        "Starred": "a starred expression",
    }.get(type(node).__name__, f"syntax {type(node).__name__!r}")
