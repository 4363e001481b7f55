"""The runtime every compiled loss runs on, shared with the modules ``export`` writes.

Two pieces: the reduction (torchvision's ``reduction`` plus mmdetection's ``weight`` and
``avg_factor``) and the chunked evaluation of a generated function (row chunks small enough
that every temporary stays in cache). A compiled loss calls them from here; an exported
module carries the text below the ``EXPORTED`` marker, renamed private, so the two cannot
drift apart. That text depends on torch only and ``reduce`` is TorchScript-compatible.
"""
from __future__ import annotations

import inspect
import re
from typing import List, Optional

import torch
from torch import Tensor

# EXPORTED: everything below is copied into exported modules (torch only, no autoloss)
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

#: elements per column evaluated at once: temporaries stay in cache
CHUNK = 65536


def reduce(loss: Tensor, reduction: str = "none", weight: Optional[Tensor] = None,
           avg_factor: Optional[float] = None) -> Tensor:
    """``none``, ``mean`` or ``sum`` of ``loss * weight``; ``avg_factor`` divides a ``mean``'s
    sum instead of the count. ``mean`` of an empty batch is 0 with a gradient."""
    if weight is not None:
        if weight.shape != loss.shape:
            if weight.dim() == 1 and loss.dim() == 2 and weight.shape[0] == loss.shape[0]:
                weight = weight.unsqueeze(1)
            else:
                raise ValueError(f"weight must have the loss's shape {list(loss.shape)} (or "
                                 f"({loss.shape[0]},) per sample), got {list(weight.shape)}")
        loss = loss * weight
    if reduction == "none":
        if avg_factor is not None:
            raise ValueError("avg_factor needs reduction='mean'")
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError("avg_factor can not be used with reduction='sum'")
        return loss.sum()
    if reduction == "mean":
        if avg_factor is not None:
            return loss.sum() / (float(avg_factor) + 1.1920928955078125e-07)
        if loss.numel() == 0:
            return 0.0 * loss.sum()
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got '{reduction}'")


def whole(ref: Tensor) -> bool:
    """Whether one call over the whole batch beats chunks: on a GPU always (one kernel an
    op); on the CPU when the batch is within two chunks, or within one with several
    threads (torch would split each small op between the threads, at a cost per op)."""
    if ref.device.type != "cpu":
        return True
    serial = serial_only(ref) or torch.get_num_threads() < 2
    return ref.numel() <= (2 * CHUNK if serial else CHUNK)


def run_chunks(fn, cols: List[Tensor], params, value: Tensor, grads) -> None:
    """Evaluate ``fn(*cols, *params)`` row chunk by row chunk into ``value`` and ``grads``.

    ``fn`` returns the value, or (with ``grads``) the value and one gradient per column,
    None where identically zero. ``grads`` holds a destination per column (any view,
    e.g. a column of an (N, 4) buffer), None where the gradient is not wanted; pass no
    ``grads`` for the value only.

    With several torch threads each thread takes one contiguous share of the rows, in
    chunks of half the size: below torch's own grain (32768 elements), so torch does not
    split the small ops again and every thread streams through its share in cache. The
    threads run ``fn`` compiled by TorchScript (:func:`scripted`), which holds no GIL
    between ops, so they run side by side.
    """
    ref = cols[0]
    rows = ref.shape[0] if ref.dim() > 0 else 1
    width = max(1, ref.numel() // max(rows, 1))
    threads = 1 if serial_only(ref) else torch.get_num_threads()
    if threads < 2 or rows < 2 * threads:
        run_rows(fn, cols, params, value, grads, 0, rows, max(1, CHUNK // width))
        return
    step = max(1, CHUNK // 2 // width)
    bounds = [rows * k // threads for k in range(threads + 1)]
    grad_mode = torch.is_grad_enabled()
    fn = scripted(fn)

    def share(k: int) -> None:
        with torch.set_grad_enabled(grad_mode):  # a new thread starts with autograd on
            run_rows(fn, cols, params, value, grads, bounds[k], bounds[k + 1], step)

    list(pool(threads).map(share, range(threads)))  # waits; re-raises a worker's error


def scripted(fn):
    """``fn`` compiled by TorchScript, made once per function (``fn`` itself where it does
    not script). TorchScript runs the ops with the GIL released: from Python every op holds
    it while it is dispatched, a third of a chunk's time, so the threads would wait on each
    other. Values are those of ``fn``: the same ops in the same order."""
    script = getattr(fn, "__scripted__", None)
    if script is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript is deprecated, and still here
                script = torch.jit.script(fn)
        except Exception:  # noqa: BLE001 - any failure to script: run the Python function
            script = fn
        fn.__scripted__ = script
    return script


def serial_only(ref: Tensor) -> bool:
    """Whether the rows must stay on this thread: tracing compilers, inference mode and
    autocast are per-thread states that workers would not share; a forked child has no
    working thread pool; other devices run their own parallel kernels."""
    if torch.compiler.is_compiling() or FORKED:
        return True
    return (ref.device.type != "cpu" or torch.is_inference_mode_enabled()
            or torch.is_autocast_enabled("cpu"))


def dense(c: Tensor) -> Tensor:
    """``c`` made contiguous for the generated code, unless it is broadcast over the rows
    (stride 0: a per-class constant), which elementwise ops read in place as it is."""
    if c.dim() > 0 and c.stride(0) == 0:
        return c
    return c.contiguous()


def run_rows(fn, cols: List[Tensor], params, value: Tensor, grads, begin: int, end: int,
              step: int) -> None:
    for start in range(begin, end, step):
        stop = min(end, start + step)
        out = fn(*[dense(c[start:stop]) for c in cols], *params)
        if not grads:
            value[start:stop] = out
            continue
        value[start:stop] = out[0]
        for dest, g in zip(grads, out[1:]):
            if dest is None:
                continue
            if g is None:
                dest[start:stop].zero_()
            else:
                dest[start:stop].copy_(g)


POOLS = {}
POOLS_LOCK = threading.Lock()
#: set in a forked child: the parent's worker threads and torch's own thread pool do not
#: exist there (torch runs a forked child's ops on one thread), so its chunks run serially
FORKED = []


def pool(threads: int):
    """The worker threads for a thread count, started on first use (a forked child starts
    its own: it inherits the parent's executors but not their threads)."""
    with POOLS_LOCK:
        if threads not in POOLS:
            POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="loss-chunks")
        return POOLS[threads]


def after_fork() -> None:
    POOLS.clear()
    FORKED.append(True)


os.register_at_fork(after_in_child=after_fork)


# Batch-level terms (ops with ``batch=True``): computed once over the whole batch, before
# the chunked elementwise part, with no gradient. Their names are private already.
def _ghm_density(g: Tensor, bins: float) -> Tensor:
    """GHM gradient-density weight of each element (mmdetection ``GHMC``, momentum 0).

    ``g`` in [0, 1] is histogrammed into ``bins`` equal bins (the last edge raised by 1e-6,
    so g = 1 falls in the last bin); an element's weight is ``total / (count in its bin *
    number of non-empty bins)``; an element outside [0, 1] gets weight 0.
    """
    nb = int(bins)
    if nb < 1:
        raise ValueError(f"ghm_density: bins must be at least 1, got {bins}")
    flat = g.detach().reshape(-1)
    edges = torch.arange(nb + 1, dtype=torch.float64, device=g.device) / nb
    edges[-1] = edges[-1] + 1e-6
    edges = edges.to(g.dtype)
    index = torch.bucketize(flat, edges, right=True) - 1  # edges[i] <= g < edges[i + 1]
    inside = (index >= 0) & (index < nb)
    index = torch.where(inside, index, torch.zeros_like(index))
    counts = torch.bincount(index[inside], minlength=nb)
    filled = int((counts > 0).sum().item())
    total = max(float(flat.numel()), 1.0)
    per_bin = counts.to(g.dtype) * float(max(filled, 1))
    weight = total / torch.clamp(per_bin, min=1.0)
    return torch.where(inside, weight[index], torch.zeros_like(flat)).reshape(g.shape)


def _batch_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the whole batch, at every element (no gradient)."""
    return torch.zeros_like(x) + x.detach().mean()


def _row_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over each row (the last axis of a 2-D batch), at every element of
    the row; a 1-D batch's row is the element. No gradient; a new tensor (never a view)."""
    x = x.detach()
    if x.dim() < 2:
        return x.clone()
    return x.mean(-1, keepdim=True).expand_as(x).contiguous()


def source(prefix: str = "_") -> str:
    """The text below the ``EXPORTED`` marker, its names given ``prefix`` (private)."""
    text = inspect.getsource(inspect.getmodule(source)).split("# EXPORTED:", 1)[1]
    text = text.split("\n", 1)[1].split("\ndef source(", 1)[0].rstrip() + "\n"
    for name in EXPORTED_NAMES:
        text = re.sub(rf"\b{name}\b", prefix + name, text)
    return text


#: the module-level names of the exported text that :func:`source` makes private
EXPORTED_NAMES = ("CHUNK", "reduce", "whole", "run_chunks", "scripted", "run_rows", "dense",
                  "serial_only", "POOLS_LOCK", "POOLS", "pool", "FORKED", "after_fork")


#: the runtime functions the registry's torch forms call, by name (batch- and row-level)
BATCH = {"_ghm_density": _ghm_density, "_batch_mean": _batch_mean, "_row_mean": _row_mean}
