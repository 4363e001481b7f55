"""Score losses on a proxy over several seeds (``autoloss eval`` and the benchmarks).

>>> from autoloss.evaluate import evaluate, resolve_loss        # doctest: +SKIP
>>> result = evaluate("boxsim", {"reg": "giou"}, seeds=3, scale=0.1)
>>> result.mean, result.std
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch

from . import catalog, proxies, zoo
from .compiler import CompiledLoss, compile_loss
from .errors import AutolossError, ExpressionError
from .parse import parse
from .proxies.base import CandidateFailure, Proxy, slot_signatures
from .proxies.base import gradient_scale as row_gradient_scale
from .signatures import SIGNATURES


def resolve_loss(text: str, accepted: Sequence[str], name: str = "loss",
                 params: Optional[Mapping[str, float]] = None
                 ) -> CompiledLoss | zoo.SetLevelLoss | zoo.ModuleLoss:
    """A zoo id, ``expression`` or ``signature:expression`` -> a compiled loss (or, for a
    set-level zoo id, its :class:`~autoloss.zoo.SetLevelLoss`; for a hand-written
    batch-level one, a new :class:`~autoloss.zoo.ModuleLoss` with its own state).

    ``accepted`` are the signatures the slot takes, tried in order for a bare expression;
    ``params`` declares named parameters an expression may use (name -> default).
    """
    from .expr import Param

    text = text.strip()
    if text in catalog.default().losses:
        spec = zoo.get(text)
        if spec.signature not in accepted:
            raise AutolossError(f"zoo loss {text!r} has signature {spec.signature!r}; this slot "
                                f"takes {' or '.join(accepted)}")
        return zoo.loss(text)
    head, sep, rest = text.partition(":")
    if sep and head.strip() in SIGNATURES:
        candidates, text = [head.strip()], rest
    else:
        candidates = list(accepted)
    errors = []
    for sig_name in candidates:
        sig = SIGNATURES[sig_name]
        declared = dict(sig.params)
        declared.update({k: Param(k, v) for k, v in (params or {}).items() if k not in declared})
        try:
            expr = parse(text, sig.names, declared, where=f"loss {name!r}")
        except ExpressionError as err:
            errors.append(str(err))
            continue
        if sig_name not in accepted:
            raise AutolossError(f"{name}: signature {sig_name!r} does not fit this slot, which "
                                f"takes {' or '.join(accepted)}")
        return zoo.slot_loss(compile_loss(expr, sig, name=name))
    raise AutolossError(f"{text!r} is neither a zoo id nor an expression of "
                        f"{' or '.join(candidates)}: {errors[0]}")


@dataclass
class EvalResult:
    proxy: str
    metric: str
    direction: str
    seeds: list[int]
    values: list[float]
    extra: dict[str, list[float]] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def as_dict(self) -> dict:
        return {"proxy": self.proxy, "metric": self.metric, "direction": self.direction,
                "seeds": self.seeds, "values": self.values, "mean": self.mean, "std": self.std,
                "extra": self.extra, "seconds": self.seconds}


def evaluate(proxy: str | Proxy, losses: Mapping[str, str | Callable], *, seeds: int | Sequence[int] = 1,
             budget: Optional[int] = None, scale: Optional[float] = None,
             threads: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None,
             options: Optional[Mapping] = None) -> EvalResult:
    """Run ``proxy`` with ``losses`` (zoo ids, expressions or compiled losses) per seed.

    ``progress(done, total)`` is called as the proxy reports (for a progress bar).
    Raises :class:`~autoloss.proxies.CandidateFailure` if a loss breaks a run.
    """
    task = proxies.get(proxy, **dict(options or {})) if isinstance(proxy, str) else proxy
    compiled = {}
    for slot, loss in losses.items():
        if slot not in task.slots:
            raise AutolossError(f"proxy {task.name!r} has no slot {slot!r}; its slots are "
                                f"{', '.join(f'{k} ({v})' for k, v in task.slots.items())}")
        compiled[slot] = resolve_loss(loss, slot_signatures(task, slot), slot) \
            if isinstance(loss, str) else loss
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    steps = int(budget or task.default_budget)
    result = EvalResult(task.name, task.metric, task.direction, seed_list, [])
    with torch_threads(threads):
        _run_seeds(task, compiled, seed_list, steps, scale, progress, result)
    return result


def _run_seeds(task, compiled, seed_list, steps, scale, progress, result) -> None:
    for k, seed in enumerate(seed_list):
        def report(step, value, _k=k):
            if progress is not None:
                progress(_k * steps + min(step, steps), len(seed_list) * steps)

        for loss in compiled.values():  # a stateful loss starts each seed afresh
            reset = getattr(loss, "reset", None)
            if callable(reset):
                reset()
        start = time.perf_counter()
        # without a listener a proxy may skip its intermediate evaluations (digits: 3 x COCO)
        metrics = task.run(compiled, budget=steps, seed=seed, scale=scale,
                           report=report if progress is not None else None)
        result.seconds.append(time.perf_counter() - start)
        if not math.isfinite(metrics.value):
            raise CandidateFailure(f"{metrics.metric} is {metrics.value} for seed {seed}")
        result.values.append(metrics.value)
        for key, value in metrics.extra.items():
            result.extra.setdefault(key, []).append(value)
        if progress is not None:
            progress((k + 1) * steps, len(seed_list) * steps)


@contextlib.contextmanager
def torch_threads(threads: Optional[int]):
    """Run the block on ``threads`` torch threads (None: as set), restoring the count after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gradient_scale(loss: CompiledLoss, rows: int = 4096, seed: int = 0) -> float:
    """The mean L2 norm of a loss's gradient with respect to its prediction, per row, on the
    signature's probe inputs with predictions near their targets (``sample_near``, float64):
    how strongly it pulls at weight 1 where a detector spends most of its training.

    A proxy that cannot tell ``k * L`` from ``L`` (boxsim with its calibrated step, Adam on
    clssim) leaves a searched loss's scale arbitrary; ``weight = gradient_scale(reference)
    / gradient_scale(candidate)`` gives it the reference's pull, so that it can replace the
    reference at the reference's weight in a detector (the transfer stage, the export)."""
    sig = loss.signature
    inputs = (sig.sample_near or sig.sample)(rows, torch.Generator().manual_seed(seed),
                                             dtype=torch.float64)
    pred = inputs[0].clone().requires_grad_(True)
    value = loss(pred, *inputs[1:])
    (grad,) = torch.autograd.grad(value.sum(), pred)
    return row_gradient_scale(grad)
