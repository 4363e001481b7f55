"""Reverse-mode symbolic differentiation on the expression DAG.

The gradient of an expression is itself an expression, built from the registry's
gradient rules (one per primitive). Forward nodes are shared with the gradient, so the
compiler's common-subexpression pass computes value and gradient in one sweep, which is
what makes the fused forward+backward faster than eager autograd.

The rules reproduce torch's conventions at the non-smooth points (ties of min/max split
the gradient in half, ``clamp`` passes it on the closed interval, ``abs'(0) = 0``,
``relu'(0) = 0``, ``where`` routes it to the selected branch), so the closed-form
gradients agree with autograd of the same expression everywhere.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

from . import expr as E
from . import ops
from .expr import Call, Const, Expr, Var


def vjp(root: Expr, wrt: Iterable[str], seed: Optional[Expr] = None) -> dict[str, Expr]:
    """Adjoint expressions ``d root / d v * seed`` for each variable name in ``wrt``.

    A variable the root does not depend on (through differentiable paths) gets ``Const(0)``.
    """
    wrt = list(wrt)
    targets = set(wrt)
    order = E.postorder(root)
    depends: dict[Expr, bool] = {}
    for node in order:
        if type(node) is Var:
            depends[node] = node.name in targets
        elif type(node) is Call:
            spec = ops.REGISTRY[node.op]
            depends[node] = spec.grad is not None and any(depends[a] for a in node.args)
        else:
            depends[node] = False
    adjoint: dict[Expr, Expr] = {root: seed if seed is not None else Const(1.0)}
    for node in reversed(order):
        if type(node) is not Call or not depends[node] or node not in adjoint:
            continue
        g = adjoint[node]
        grads = ops.REGISTRY[node.op].grad(node.args, node, g)
        for child, gc in zip(node.args, grads):
            if gc is None or not depends[child]:
                continue
            adjoint[child] = E.add(adjoint[child], gc) if child in adjoint else gc
    return {name: adjoint.get(Var(name), Const(0.0)) for name in wrt}


def inline(root: Expr, defs: Mapping[str, Expr]) -> Expr:
    """Substitute definitions for variables, recursively (definitions may use others)."""
    resolved: dict[str, Expr] = {}

    def resolve(name: str, trail: tuple = ()) -> Expr:
        if name in resolved:
            return resolved[name]
        if name in trail:
            raise ValueError(f"definitions are circular: {' -> '.join(trail + (name,))}")
        body = defs[name]
        deps = {v for v in E.variables(body) if v in defs}
        mapping = {Var(v): resolve(v, trail + (name,)) for v in deps}
        resolved[name] = E.substitute(body, mapping) if mapping else body
        return resolved[name]

    used = {v for v in E.variables(root) if v in defs}
    if not used:
        return root
    return E.substitute(root, {Var(v): resolve(v) for v in used})
