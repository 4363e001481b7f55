"""Cheap rejection before any proxy run, each verdict with its reason.

In order, for a batch of candidates (scored together by the population evaluator):

1. ``duplicate``: the canonical hash was seen -> reuse that trial's result;
2. ``compiles``: unknown names, bad structure -> rejected;
3. ``units`` (:mod:`autoloss.units`): the expression must have the dimension the
   signature asks for (a box loss: dimensionless) -> rejected naming the offending
   subexpression; the numeric probe backs it: values unchanged and gradients scaled by 1/s
   for boxes scaled by s in {1e-2, 1, 1e2, 1e3} and shifted;
4. ``finite``: an op applied to constants that is undefined whatever its other arguments
   (``x / 0``, ``log(0)``: search-mode guards would hide it) -> rejected; values and
   gradients on random and degenerate probe inputs -> rejected if NaN/inf or if the
   gradient is zero everywhere (a loss that cannot train); ``step``: the signature's own
   admissibility check on the same probes (``Signature.screen``; rank: a smoothed step is
   >= 0 and vanishes far below);
5. ``convergence`` (CSE-Autoloss): along sequences of predictions moving to the target
   (IoU -> 1, p -> y) the loss must decrease on average and be minimal at the target;
6. ``equivalent`` (AutoLoss-Zero): normalised gradients on fixed probes match an earlier
   candidate -> reuse its result. On proxies trained with plain gradient steps (boxsim) a
   loss and a multiple of it train differently, so there the gradient norm is part of
   the fingerprint; on Adam-trained proxies (scale-invariant) it is not.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .. import canon, ops, units
from .. import expr as E
from ..expr import Call, Const
from ..errors import AutolossError, require_kind
from ..population import Failure, PopulationEvaluator, Result
from ..signatures import SIGNATURES
from .candidate import Candidate

STEPS = (1.0, 0.6, 0.35, 0.15, 0.05, 0.0)  # distance to the target along a probe sequence


#: values an op's non-constant arguments are tried at by ``undefined_constant_op``
_ANYWHERE = torch.tensor([-1e3, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 1e3],
                         dtype=torch.float64)


def undefined_constant_op(root, canonicalizer: Optional[canon.Canonicalizer] = None,
                          known: Optional[dict] = None) -> Optional[str]:
    """Why ``root`` (canonicalised) holds an op on a constant argument that is NaN or
    infinite whatever its other arguments are (``x / 0``, ``log(0)``, ``sqrt(-1)``), or
    None. Such a candidate is degenerate: in search mode its guarded op would return a
    clamped stand-in instead of failing.

    ``canonicalizer`` and ``known`` (the answer per op and constant arguments) are memos
    to share across a population."""
    known = {} if known is None else known
    for node in E.postorder((canonicalizer or canon.Canonicalizer())(root)):
        if type(node) is not Call or not any(type(a) is Const for a in node.args):
            continue
        # the answer depends on the op and its constant arguments only
        key = (node.op, tuple(a.value if type(a) is Const else None for a in node.args))
        undefined = known.get(key)
        if undefined is None:
            args = [torch.tensor(a.value, dtype=torch.float64) if type(a) is Const
                    else _ANYWHERE for a in node.args]
            with torch.no_grad(), np.errstate(all="ignore"):
                value = ops.REGISTRY[node.op].fn(*args)
            undefined = known[key] = not bool(
                torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).any())
        if undefined:
            return f"{E.to_infix(node)} is undefined whatever its arguments (NaN or infinite)"
    return None


@dataclass
class Verdict:
    ok: bool
    filter: str = ""
    reason: str = ""
    reused_from: Optional[int] = None
    fingerprint: str = ""

    @property
    def status(self) -> str:
        if self.ok:
            return "accepted"
        return "reused" if self.reused_from is not None else "rejected"


def convergence_inputs(signature: str, m: int = 24, seed: int = 0):
    """Inputs of ``len(STEPS)`` blocks of ``m`` rows; block k is at distance STEPS[k]."""
    sig = SIGNATURES[signature]
    if sig.convergence is None:
        raise AutolossError(f"the {signature!r} signature defines no convergence inputs "
                            "(Signature.convergence); its losses can not be screened for "
                            "convergence")
    return sig.convergence(STEPS, m, torch.Generator().manual_seed(seed))


class FilterBank:
    """The rejection filters of one search space (see the module docstring)."""

    def __init__(self, signatures: dict[str, str], *, scale_matters: bool = True,
                 probe_rows: int = 96, seed: int = 0, kind: str = "E"):
        require_kind(kind, "the search filters")
        self.signatures = dict(signatures)
        self.scale_matters = scale_matters
        # memos shared by every batch: canonical forms (the duplicate key, the constant
        # check and the probes' pipelines all canonicalize each candidate), the constant
        # check's answer per op and constants, whether a DAG node holds a batch-level op
        self.canonicalizer = canon.Canonicalizer()
        self._constant_ops: dict = {}
        self._batch_ops: dict = {}
        g = torch.Generator().manual_seed(seed)
        self.probes, self.convergence = {}, {}
        for slot, name in self.signatures.items():
            sig = SIGNATURES[name]
            scaled = None
            if sig.has_units:  # pixel-sized boxes, then scaled and shifted
                scaled = units.probe_inputs(sig, 16, g)
            self.probes[slot] = _Probes(sig, sig.sample(probe_rows, g, dtype=torch.float64),
                                        sig.degenerate(torch.float64), scaled,
                                        canonicalizer=self.canonicalizer,
                                        batch_ops=self._batch_ops)
            self.convergence[slot] = None if sig.convergence is None else _Ladder(
                sig, convergence_inputs(name, seed=seed), batch_ops=self._batch_ops)
        self.seen_keys: dict[str, int] = {}
        self.seen_prints: dict[str, int] = {}

    # -- bookkeeping -----------------------------------------------------------------------
    def remember(self, candidate: Candidate, verdict: Verdict, trial: int) -> None:
        """Record a finished trial so later duplicates and equivalents reuse its result."""
        self.seen_keys.setdefault(candidate.key, trial)
        if verdict.fingerprint:
            self.seen_prints.setdefault(verdict.fingerprint, trial)

    # -- the filters -----------------------------------------------------------------------
    def check(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """The verdict of each candidate (see the module docstring).

        The probes are a few hundred rows: on several torch threads their transcendental
        ops (``exp``, ``log``, ...) pay a thread hand-off that costs more than the
        arithmetic (and up to milliseconds an op when the other cores are busy), so the
        filters run on one thread and restore the caller's count after."""
        before = torch.get_num_threads()
        if before == 1:
            return self._check(candidates)
        torch.set_num_threads(1)
        try:
            return self._check(candidates)
        finally:
            torch.set_num_threads(before)

    def _check(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        verdicts: list[Optional[Verdict]] = [None] * len(candidates)
        batch_keys: dict[str, int] = {}
        todo = []
        for i, cand in enumerate(candidates):
            key = cand.key_with(self.canonicalizer)
            if key in self.seen_keys:
                verdicts[i] = Verdict(False, "duplicate", "same canonical form as trial "
                                      f"{self.seen_keys[key]}", self.seen_keys[key])
            elif key in batch_keys:
                verdicts[i] = Verdict(False, "duplicate", "same canonical form as another "
                                      "candidate of this batch", -1)
            else:
                batch_keys[key] = i
                todo.append(i)
        for i in list(todo):
            verdict = self._dimensions(candidates[i])
            reason = next((r for e in candidates[i].slots.values()
                           for r in [undefined_constant_op(e, self.canonicalizer,
                                                           self._constant_ops)] if r), None)
            if verdict is None and reason is not None:
                verdict = Verdict(False, "finite", reason)
            if verdict is not None:
                verdicts[i] = verdict
                todo.remove(i)
        prints = {i: [] for i in todo}
        for slot in self.signatures:
            graphs, rand, edge, scaled = self.probes[slot].evaluate(
                [candidates[i].slots[slot] for i in todo])
            ladder = self.convergence[slot]
            conv = [None] * len(graphs) if ladder is None else ladder.evaluate_graphs(graphs)
            cleared = self._cleared(rand, edge, scaled, slot)
            for i, r, e, u, c, ok in zip(todo, rand, edge, scaled, conv, cleared):
                if verdicts[i] is not None:
                    continue
                verdicts[i] = ((None if ok else self._compiles(r) or self._finite(r, e, slot)
                                or self._invariant(u, slot)) or self._converges(c, slot))
                if verdicts[i] is None:
                    prints[i].append(self._fingerprint(
                        r, values=bool(SIGNATURES[self.signatures[slot]].set_level)))
        for i in todo:
            if verdicts[i] is not None:
                continue
            choices = repr(sorted(candidates[i].choices.items()))
            fp = hashlib.sha256(("|".join(prints[i]) + choices).encode()).hexdigest()[:16]
            if fp in self.seen_prints:
                verdicts[i] = Verdict(False, "equivalent", "same gradients on the probes as trial "
                                      f"{self.seen_prints[fp]}", self.seen_prints[fp], fp)
            else:
                verdicts[i] = Verdict(True, fingerprint=fp)
        return verdicts  # type: ignore[return-value]

    def _dimensions(self, candidate: Candidate) -> Optional[Verdict]:
        for slot, name in self.signatures.items():
            sig = SIGNATURES[name]
            for p in E.params(candidate.slots[slot]).values():
                fixed = sig.params.get(p.name)
                if fixed is not None and p.default != fixed.default:
                    # the probes share terminals bound at the signature's value: they would
                    # judge another loss than the proxy runs
                    return Verdict(False, "compiles", f"the {name} signature's parameter "
                                   f"{p.name!r} is fixed at {fixed.default:g}, got "
                                   f"{p.default:g} (slot {slot!r})")
            problem = sig.unit_error(candidate.slots[slot])
            if problem:
                return Verdict(False, "units", f"{problem} (slot {slot!r})")
        return None

    def _cleared(self, rand, edge, scaled, slot: str) -> list[bool]:
        """Per candidate, whether :meth:`_compiles`, :meth:`_finite` and :meth:`_invariant`
        all pass, decided for the whole batch in a few tensor ops (the same tests on the
        same numbers); a candidate not cleared goes through those methods, which give the
        reason. One call per candidate costs far more than the arithmetic."""
        cleared = [False] * len(rand)
        if SIGNATURES[self.signatures[slot]].screen is not None:
            return cleared  # a signature's own screen (rank's step shape) is judged one by one
        idx = [j for j, (r, e, u) in enumerate(zip(rand, edge, scaled))
               if type(r) is Result and type(e) is Result and (u is None or type(u) is Result)]
        if not idx:
            return cleared
        columns = list(rand[idx[0]].grads)

        def stack(results):
            return (torch.stack([results[j].value for j in idx]),
                    {c: torch.stack([results[j].grads[c] for j in idx]) for c in columns})

        ok = torch.ones(len(idx), dtype=torch.bool)
        moving = torch.zeros(len(idx), dtype=torch.bool)  # some gradient not zero everywhere
        for part in (rand, edge):
            values, grads = stack(part)
            ok &= torch.isfinite(values).flatten(1).all(1)
            for g in grads.values():
                ok &= torch.isfinite(g).flatten(1).all(1)
                if part is rand:
                    moving |= g.abs().flatten(1).amax(1) != 0
        ok &= moving
        if scaled[idx[0]] is not None:
            values, grads = stack(scaled)
            dims = SIGNATURES[self.signatures[slot]].dims
            ok &= units.scale_invariant(values, grads, units.SCALES,
                                        powers={c: float(dims[c].power) for c in grads})
        for j, flag in zip(idx, ok.tolist()):
            cleared[j] = flag
        return cleared

    def _invariant(self, u, slot: str) -> Optional[Verdict]:
        if u is None:
            return None
        if isinstance(u, Failure):
            return Verdict(False, "compiles", u.reason)
        dims = SIGNATURES[self.signatures[slot]].dims  # column gradients: 1 / its dimension
        problem = units.compare_scales(u.value, u.grads, units.SCALES,
                                       powers={c: float(dims[c].power) for c in u.grads})
        return Verdict(False, "units", f"{problem} (slot {slot!r})") if problem else None

    @staticmethod
    def _compiles(r) -> Optional[Verdict]:
        if isinstance(r, Failure):
            return Verdict(False, "compiles", r.reason)
        return None

    def _finite(self, r: Result, e, slot: str) -> Optional[Verdict]:
        for name, res in (("random probes", r), ("degenerate inputs", e)):
            if isinstance(res, Failure):
                return Verdict(False, "compiles", res.reason)
            if not torch.isfinite(res.value).all():
                bad = int((~torch.isfinite(res.value)).sum())
                return Verdict(False, "finite", f"non-finite loss on {bad} of {res.value.numel()} "
                                                f"{name} ({self.signatures[slot]} slot {slot!r})")
            for col, g in res.grads.items():
                if not torch.isfinite(g).all():
                    return Verdict(False, "finite", f"non-finite gradient d/d{col} on {name} "
                                                    f"(slot {slot!r})")
        screen = SIGNATURES[self.signatures[slot]].screen
        if screen is not None:  # the signature's own admissibility (rank: a step's shape)
            for probe, res in zip(self.probes[slot].groups, (r, e)):
                reason = screen(probe, res.value)
                if reason:
                    return Verdict(False, "step", f"{reason} (slot {slot!r})")
        if all(float(g.abs().max()) == 0.0 for g in r.grads.values()):
            return Verdict(False, "finite", f"zero gradient with respect to the prediction "
                                            f"everywhere (slot {slot!r}): it cannot train")
        return None

    def _converges(self, c, slot: str) -> Optional[Verdict]:
        if c is None:  # the signature has no convergence ladder
            return None
        if isinstance(c, Failure):
            return Verdict(False, "compiles", c.reason)
        c = c.value
        v = c.reshape(len(STEPS), -1, *c.shape[1:]).double()
        v = v.reshape(len(STEPS), v.shape[1], -1).sum(-1)  # per probe row
        if not torch.isfinite(v).all():
            return Verdict(False, "finite", f"non-finite loss on the convergence probes "
                                            f"(slot {slot!r})")
        mean = v.mean(1)
        spread = float(mean.max() - mean.min())
        tol = 1e-9 + 1e-6 * float(mean.abs().max())
        if spread <= tol:
            return Verdict(False, "convergence", f"the loss does not change as the prediction "
                                                 f"approaches the target (slot {slot!r})")
        diffs = mean[1:] - mean[:-1]
        if bool((diffs > 1e-3 * spread + tol).any()):
            k = int(torch.nonzero(diffs > 1e-3 * spread + tol)[0])
            return Verdict(False, "convergence",
                           f"the mean loss rises from {mean[k]:.4g} to {mean[k + 1]:.4g} as the "
                           f"prediction moves towards the target (slot {slot!r})")
        at_target = v[-1]
        worse = (at_target[None] > v[:-1] + 1e-6 * spread + tol).any(0)
        if float(worse.double().mean()) > 0.05:
            return Verdict(False, "convergence",
                           f"the loss is not minimal at a perfect prediction on "
                           f"{float(worse.double().mean()) * 100:.0f}% of the probes (slot {slot!r})")
        return None

    def _fingerprint(self, r: Result, values: bool = False) -> str:
        """The normalised gradients on the probes (and their norm where the scale matters).
        ``values``: a piece of a set-level loss (rank's step) is judged by its values too,
        unnormalised: 2 H and H + c are other ranking losses than H (the precision changes,
        and the error-driven update uses H's values, not its slope)."""
        if values:
            v = torch.cat([r.value.reshape(-1).double()] +
                          [r.grads[c].reshape(-1).double() for c in sorted(r.grads)])
            rounded = np.round(v.numpy(), 4) + 0.0
            return hashlib.sha256(rounded.tobytes()).hexdigest()[:16]
        g = torch.cat([r.grads[c].reshape(-1) for c in sorted(r.grads)]).double()
        norm = float(g.norm())
        direction = (g / norm).numpy() if norm > 0 else g.numpy()
        rounded = np.round(direction, 3) + 0.0  # + 0.0 folds -0.0 into 0.0
        text = rounded.tobytes()
        if self.scale_matters and norm > 0:
            text += f"|{round(math.log10(norm), 1)}".encode()
        return hashlib.sha256(text).hexdigest()[:16]


class _Probes:
    """Random probes, degenerate inputs and (for signatures with units) the scaled and
    shifted copies of the unit probe of one slot, values and gradients.

    Where their shapes agree beyond the rows (box, coord) the sets run as one batch, one
    sweep over the population instead of several (the sweeps of small probe sets cost the
    Python overhead per op, not arithmetic); the losses are row-wise, so each candidate's
    result is split back by rows. A candidate with a batch-level op (kind B: its value at
    a row depends on the whole batch) is not row-wise: it runs on each probe set alone, so
    its batch terms are taken over that probe batch.
    """

    def __init__(self, sig, random_inputs, degenerate_inputs, scaled=None, *,
                 canonicalizer: Optional[canon.Canonicalizer] = None,
                 batch_ops: Optional[dict] = None):
        groups = [random_inputs, degenerate_inputs] + ([scaled[0]] if scaled else [])
        bounds = [0]
        for inputs in groups:
            bounds.append(bounds[-1] + len(inputs[0]))
        self.slices = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
        self.scaled = scaled is not None
        self.sig, self.groups = sig, groups
        self.batch_ops = {} if batch_ops is None else batch_ops
        self._alone: Optional[list] = None  # an evaluator per probe set, made when needed
        joinable = not any(i.per_class for i in sig.inputs) and all(
            (a is None) == (b is None) and (a is None or a.shape[1:] == b.shape[1:])
            for group in groups[1:] for a, b in zip(groups[0], group))
        if joinable:
            joint = tuple(None if parts[0] is None else torch.cat(parts)
                          for parts in zip(*groups))
            self.joint = PopulationEvaluator(sig, joint, mode="search",
                                             canonicalizer=canonicalizer)
        else:
            if scaled is not None:
                raise ValueError(f"the {sig.name!r} signature's unit probe needs row-wise inputs")
            self.joint = None
            self.random = PopulationEvaluator(sig, random_inputs, mode="search",
                                              canonicalizer=canonicalizer)
            self.edges = PopulationEvaluator(sig, degenerate_inputs, mode="search")

    def evaluate(self, expressions):
        """(graphs, results on the random probes, on the degenerate inputs, on the scaled
        copies of the unit probe or Nones)."""
        if self.joint is None:
            graphs = self.random.graphs(expressions)
            return (graphs, self.random.evaluate_graphs(graphs, grad=True),
                    self.edges.evaluate_graphs(graphs, grad=True), [None] * len(graphs))
        graphs = self.joint.graphs(expressions)
        batch = [i for i, g in enumerate(graphs)
                 if not isinstance(g, Failure) and _has_batch_op(g, self.batch_ops)]
        apart = set(batch)
        rowwise = [Failure("batch-level: runs per probe set") if i in apart else g
                   for i, g in enumerate(graphs)]
        both = self.joint.evaluate_graphs(rowwise, grad=True)
        parts = [[self._rows(r, rows) for r in both] for rows in self.slices]
        if batch:
            if self._alone is None:
                self._alone = [PopulationEvaluator(self.sig, inputs, mode="search")
                               for inputs in self.groups]
            for part, evaluator in zip(parts, self._alone):
                for i, r in zip(batch, evaluator.evaluate_graphs([graphs[i] for i in batch],
                                                                 grad=True)):
                    part[i] = r
        return graphs, parts[0], parts[1], parts[2] if self.scaled else [None] * len(graphs)

    @staticmethod
    def _rows(r, rows: slice):
        if isinstance(r, Failure):
            return r
        return Result(r.value[rows], {k: g[rows] for k, g in (r.grads or {}).items()})


class _Ladder:
    """The convergence ladder of one slot: ``len(STEPS)`` blocks of rows, one sweep for the
    row-wise candidates; a candidate with a batch-level op runs on each block alone, so its
    batch terms are taken over one step of the ladder, not over all of them."""

    def __init__(self, sig, inputs, *, batch_ops: Optional[dict] = None):
        self.sig, self.inputs = sig, inputs
        self.batch_ops = {} if batch_ops is None else batch_ops
        self.joint = PopulationEvaluator(sig, inputs, mode="search")
        self._blocks: Optional[list] = None

    def evaluate_graphs(self, graphs):
        batch = [i for i, g in enumerate(graphs)
                 if not isinstance(g, Failure) and _has_batch_op(g, self.batch_ops)]
        apart = set(batch)
        out = self.joint.evaluate_graphs([Failure("batch-level: runs per step") if i in apart
                                          else g for i, g in enumerate(graphs)])
        if batch:
            if self._blocks is None:
                m = len(self.inputs[0]) // len(STEPS)
                self._blocks = [PopulationEvaluator(
                    self.sig, tuple(None if x is None else x[k * m:(k + 1) * m]
                                    for x in self.inputs), mode="search")
                    for k in range(len(STEPS))]
            per_step = [b.evaluate_graphs([graphs[i] for i in batch]) for b in self._blocks]
            for j, i in enumerate(batch):
                results = [step[j] for step in per_step]
                failed = next((r for r in results if isinstance(r, Failure)), None)
                out[i] = failed or Result(torch.cat([r.value for r in results]), None)
        return out


def _has_batch_op(graph, memo: dict) -> bool:
    """Whether ``graph`` holds a batch-level op; ``memo`` keeps the answer per node, so the
    terminals' subgraphs, shared by every candidate, are walked once."""
    for node in E.postorder(graph, memo):
        if node not in memo:
            memo[node] = type(node) is Call and (ops.REGISTRY[node.op].batch
                                                 or any(memo[a] for a in node.args))
    return memo[graph]
