"""Score many candidate expressions on one batch, sharing the terminals.

The evaluator prepares the batch once (the signature's columns), keeps the terminals
(``iou``, ``enclose``, ``p``, ...) computed once per batch, and evaluates the union DAG of
all candidates in one sweep: a subexpression shared by several candidates (mutations of
one another share a lot) is computed once, and every intermediate tensor is freed as soon
as its last reader has run.

Batch-level ops (``ops.Op.batch``, kind B) need no special care here: the evaluator runs
each op over the whole batch at once, so a batch op sees the whole batch (the evaluator's
batch) and, having no gradient rule, passes none. Set-level (S) losses are refused.

Candidates that fail (unknown names, a primitive applied outside its domain in exact
mode, non-finite values) come back as :class:`Failure` with a reason instead of raising,
so a search can reject them and go on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

from . import autodiff, ops
from . import expr as E
from .compiler import Mode, Pipeline, check_names
from .errors import AutolossError, require_kind
from .expr import Call, Const, Expr, Param, Var
from .signatures import Signature
from .signatures import get as get_signature


@dataclass(frozen=True)
class Failure:
    """Why a candidate could not be evaluated."""

    reason: str

    def __bool__(self) -> bool:
        return False


@dataclass
class Result:
    """Value (the signature's output shape) and, if asked, column gradients."""

    value: torch.Tensor
    grads: Optional[dict[str, torch.Tensor]] = None


def bind(expression: Expr, values: Optional[Mapping[str, float]] = None,
         memo: Optional[dict] = None) -> Expr:
    """Replace parameters by constants (their defaults unless ``values`` names them)."""
    values = dict(values or {})

    def fn(node: Expr, ch) -> Expr:
        if type(node) is Param:
            return Const(values.get(node.name, node.default))
        return node.rebuild(ch)

    return E.transform(expression, fn, memo)


class PopulationEvaluator:
    """Evaluate a population of expressions of one signature on one batch.

    Args:
        signature: the signature (name or object).
        inputs: the batch, as the signature's inputs (e.g. ``pred, target``).
        mode: ``"search"`` (guarded ops, the default for candidates) or ``"exact"``.
        grad_inputs: indices of the inputs whose column gradients :meth:`evaluate`
            returns with ``grad=True`` (default: the first input, the prediction); a
            column computed from several inputs (rbox's ``rinter``) is one of each's.
        canonicalizer: a :class:`~autoloss.canon.Canonicalizer` to share (its memo)
            with other users of the same expressions (the search filters).
    """

    def __init__(self, signature: Signature | str, inputs: Sequence[torch.Tensor], *,
                 mode: Mode = "search", grad_inputs: Sequence[int] = (0,),
                 params: Optional[Mapping[str, float]] = None, kind: str = "E",
                 canonicalizer=None):
        require_kind(kind, "the population evaluator")
        self.signature = get_signature(signature) if isinstance(signature, str) else signature
        sig = self.signature
        with torch.no_grad():
            self.prep = sig.prepare("population", *sig.check(tuple(inputs), "population"))
        self.mode = mode
        self.columns = {Var(n): t for n, t in zip(sig.columns, self.prep.columns)}
        self.grad_columns = [c for c, sources in zip(sig.columns, sig.column_sources)
                             if set(sources) & set(grad_inputs)]
        self.sig_params = {k: p.default for k, p in sig.params.items()}
        self.sig_params.update(params or {})
        ref = self.prep.columns[0]
        self.dtype, self.device = ref.dtype, ref.device
        self._consts: dict[float, torch.Tensor] = {}
        self.pipeline = Pipeline(sig, mode, bind=self.sig_params, canonicalizer=canonicalizer)
        self._checked: set[Expr] = set()
        self._bound: dict[tuple, dict] = {}
        # terminals are kept for the lifetime of the evaluator: computed once per batch
        self.terminal_nodes: set[Expr] = set(self.pipeline.table.values())
        self.cache: dict[Expr, torch.Tensor] = dict(self.columns)
        self.nodes_evaluated = 0

    # -- building the DAG ------------------------------------------------------------------
    def graph(self, expression: Expr, params: Optional[Mapping[str, float]] = None) -> Expr:
        """The evaluable DAG of one candidate (parameters bound, terminals inlined)."""
        if expression not in self._checked:
            check_names(expression, self.signature)
            self._checked.add(expression)
        values = dict(self.sig_params)
        values.update(params or {})
        memo = self._bound.setdefault(tuple(sorted(values.items())), {})
        return self.pipeline.graph(bind(expression, values, memo))

    # -- evaluation --------------------------------------------------------------------------
    def graphs(self, expressions: Sequence[Expr],
               params: Optional[Sequence[Optional[Mapping[str, float]]]] = None,
               ) -> list[Expr | Failure]:
        """The evaluable DAG of each expression, or why it does not compile."""
        params = list(params) if params is not None else [None] * len(expressions)
        out: list[Expr | Failure] = []
        for expression, p in zip(expressions, params):
            try:
                out.append(self.graph(expression, p))
            except (AutolossError, ValueError, RecursionError) as err:
                out.append(Failure(f"does not compile: {err}"))
        return out

    def evaluate(self, expressions: Sequence[Expr], *, grad: bool = False,
                 params: Optional[Sequence[Optional[Mapping[str, float]]]] = None,
                 ) -> list[Result | Failure]:
        """Evaluate every expression; failures are returned, not raised."""
        return self.evaluate_graphs(self.graphs(expressions, params), grad=grad)

    def evaluate_graphs(self, graphs: Sequence[Expr | Failure], *, grad: bool = False,
                        ) -> list[Result | Failure]:
        """:meth:`evaluate` for DAGs from :meth:`graphs` (of any evaluator of the same
        signature, mode and parameters: one DAG can be scored on several batches)."""
        roots: list[Optional[list[Expr]]] = []
        out: list[Result | Failure | None] = []
        for g in graphs:
            if isinstance(g, Failure):
                roots.append(None)
                out.append(g)
                continue
            nodes = [g]
            if grad:
                adj = autodiff.vjp(g, self.grad_columns)
                nodes += [adj[c] for c in self.grad_columns]
            roots.append(nodes)
            out.append(None)
        values = self._run([n for r in roots if r is not None for n in r])
        for i, nodes in enumerate(roots):
            if nodes is None:
                continue
            tensors = [values.get(n) for n in nodes]
            bad = next((t for t in tensors if isinstance(t, Failure)), None)
            if bad is not None:
                out[i] = bad
                continue
            value = self._shape(tensors[0])
            grads = None
            if grad:
                grads = {c: self._shape(t) for c, t in zip(self.grad_columns, tensors[1:])}
            out[i] = Result(value, grads)
        return out  # type: ignore[return-value]

    def values(self, expressions: Sequence[Expr]) -> list[torch.Tensor | Failure]:
        """Loss values only (the signature's output shape), failures in place."""
        return [r.value if isinstance(r, Result) else r for r in self.evaluate(expressions)]

    # -- internals ---------------------------------------------------------------------------
    def _const(self, value: float) -> torch.Tensor:
        t = self._consts.get(value)
        if t is None:
            t = self._consts[value] = torch.tensor(value, dtype=self.dtype, device=self.device)
        return t

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        shape = self.prep.columns[0].shape
        return t.expand(shape) if t.shape != shape else t

    def _run(self, roots: Sequence[Expr]) -> dict[Expr, torch.Tensor | Failure]:
        """Evaluate the union DAG once, freeing or recycling every tensor after its last use.

        A node whose op can write into an argument (``Op.out``) reuses the buffer of an
        argument that dies there, so a sweep allocates a handful of buffers, not one per node.
        """
        order = E.postorder_many(roots)
        remaining: dict[Expr, int] = {}
        for node in order:
            if type(node) is Call:
                for child in node.args:
                    remaining[child] = remaining.get(child, 0) + 1
        wanted = set(roots)
        registry, cache, terminal_nodes = ops.REGISTRY, self.cache, self.terminal_nodes
        shape = self.prep.columns[0].shape
        live: dict[Expr, torch.Tensor | Failure] = {}
        owned: set[Expr] = set()  # nodes holding a private full-size buffer
        pool: list[torch.Tensor] = []  # buffers of dead nodes, reused (fewer allocations)
        results: dict[Expr, torch.Tensor | Failure] = {}
        for node in order:
            if node in cache:
                value = cache[node]
            elif type(node) is Const:
                value = self._const(node.value)
            elif type(node) is Call:
                spec = registry[node.op]
                args = [live[a] if a in live else cache[a] if a in cache
                        else self._const(a.value) for a in node.args]
                fail = None
                for a in args:
                    if isinstance(a, Failure):
                        fail = a
                        break
                if fail is not None:
                    value = fail
                else:
                    writes = spec.out is not None or spec.comparison  # (_writes_out)
                    donor = self._donor(node, owned, remaining, wanted) if writes else None
                    if donor is not None:
                        buffer = live.get(donor)
                        owned.discard(donor)
                    elif pool and writes and any(
                            a.shape == shape for a in args):  # a full-size result only
                        buffer = pool.pop()  # a recycled, still cache-warm buffer
                    else:
                        buffer = None
                    value = self._apply(node, args, buffer)
                self.nodes_evaluated += 1
                if isinstance(value, torch.Tensor):
                    if spec.alias:  # its argument's memory: nobody owns it
                        owned.discard(node.args[0])
                    elif node in terminal_nodes:
                        cache[node] = value
                    elif value.shape == shape:
                        owned.add(node)
            else:
                value = Failure(f"unbound variable or parameter {E.to_infix(node)!r}")
            live[node] = value
            if node in wanted:
                results[node] = value
            for child in (node.args if type(node) is Call else ()):
                left = remaining[child] = remaining[child] - 1
                if left == 0:
                    dead = live.pop(child, None)
                    if child in owned:
                        owned.discard(child)
                        if child not in wanted and isinstance(dead, torch.Tensor):
                            pool.append(dead)
        return results

    @staticmethod
    def _writes_out(node: Call) -> bool:
        spec = ops.REGISTRY[node.op]
        return spec.out is not None or spec.comparison

    @classmethod
    def _donor(cls, node: Call, owned, remaining, wanted) -> Optional[Expr]:
        if not cls._writes_out(node):
            return None
        for child in node.args:
            if (child in owned and child not in wanted
                    and remaining[child] == node.args.count(child)):
                return child
        return None

    def _apply(self, node: Call, args: list[torch.Tensor],
               out: Optional[torch.Tensor] = None) -> torch.Tensor | Failure:
        spec = ops.REGISTRY[node.op]
        try:
            if spec.comparison:
                mask = spec.fn(*args)
                value = out.copy_(mask) if out is not None else mask.to(self.dtype)
            elif spec.alias:
                value = args[0]
            elif out is not None:
                if spec.condition:
                    args = [args[0] != 0, *args[1:]]
                value = getattr(torch, spec.out)(*args, out=out)
            else:
                value = spec.fn(*args)
        except (RuntimeError, ValueError) as err:  # (a batch op's bad argument: ValueError)
            return Failure(f"{node.op}() failed: {err}")
        return value
