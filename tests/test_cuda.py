"""The vectorized core on a GPU, checked against the CPU in float64.

Skipped without CUDA. ``AUTOLOSS_TEST_DEVICE=cpu`` runs the same checks on the CPU (a dry
run of the checks themselves); ``AUTOLOSS_TEST_LARGE`` sets the rows of the large-batch
checks (default 1,000,000; the runtime runs a GPU batch whole, and they force its row
chunks once more); ``AUTOLOSS_TEST_REPORT`` names a markdown file that collects the worst
error of every comparison, passed or not.
``benchmarks/cuda_check.sh`` runs them with the CUDA benchmark.

The truth is the CPU in float64 on the same inputs (float32 inputs rounded first). Errors
are relative to the scale of the truth (its largest finite magnitude): float64 on the
device must agree to 1e-9; float32 to 1e-4, or, where the loss's own conditioning in
float32 costs more (cancellation in an intersection, a GHM bin edge), be no worse than the
CPU in float32 on the same inputs (:func:`compare`). Every result must stay on the device:
outputs are checked, and an op that takes a device tensor and returns a CPU one fails the
test (:class:`HostCopyTrap`), as does the runtime starting CPU worker threads for device
tensors.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from autoloss import assigners, catalog, export, ranking, rotated, runtime, zoo
from autoloss.assigners.testing import AssignerContract, _devices, sample_inputs
from autoloss.expr import Call
from autoloss.population import Failure, PopulationEvaluator
from autoloss.ranksurrogate import RankLoss
from autoloss.signatures import RBOX, SIGNATURES
from conftest import (MODULE_IDS, SET_LEVEL_IDS, ZOO_IDS, degenerate, perfect, reads_per_class,
                      row_inputs, sample, zoo_sample)

DEVICE = os.environ.get("AUTOLOSS_TEST_DEVICE") or next(
    (d for d in _devices() if d != "cpu"), "")
DEVICE_TYPE = torch.device(DEVICE).type if DEVICE else ""
LARGE = int(float(os.environ.get("AUTOLOSS_TEST_LARGE", "1e6")))
REPORT = os.environ.get("AUTOLOSS_TEST_REPORT", "")

pytestmark = [
    pytest.mark.skipif(not DEVICE, reason="no CUDA device (AUTOLOSS_TEST_DEVICE=cpu runs "
                                          "these checks on the CPU)"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated"),
]

F64, F32 = torch.float64, torch.float32
RTOL = {F64: 1e-9, F32: 1e-4}
#: rows of rbox's degenerate pairs where the intersection area has a kink (the same box
#: at another angle, touching edges, a shared corner, coincident vertices): which one-sided
#: derivative the geometry takes there follows the last bit of cos and sin, which the
#: device's libm may round the other way; values are compared, gradients only for finiteness
RBOX_KINKS = (1, 2, 5, 6, 9)


# ------------------------------------------------------------------------------ helpers
class HostCopyTrap(TorchDispatchMode):
    """Records every op that takes a tensor on ``device_type`` and returns one on the CPU:
    a copy to the host, as (op, elements). ``.item()`` and ``bool()`` return Python numbers
    and are not seen; ``.tolist()`` is a copy (of a few elements, where the library reads
    values for its control flow). With ``device_type`` "cpu" (the dry run) it intercepts
    every op but records nothing."""

    def __init__(self, device_type: str, host: str = "cpu"):
        super().__init__()
        self.device_type, self.host, self.copies = device_type, host, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.device_type != self.host and any(
                isinstance(t, torch.Tensor) and t.device.type == self.device_type
                for t in tree_leaves((args, kwargs))):
            self.copies += [(str(func), t.numel()) for t in tree_leaves(out)
                            if isinstance(t, torch.Tensor) and t.device.type == self.host]
        return out


#: a copy to the host of at most this many elements is a read of a few values (``tolist``
#: of the pyramid levels in the assigners), reported but allowed; larger ones fail
SMALL_COPY = 64


@contextlib.contextmanager
def on_device(allow_copies: bool = False):
    """Run device code under :class:`HostCopyTrap` and a spy on the runtime's CPU worker
    pool; fails after the block if a tensor of more than :data:`SMALL_COPY` elements went to
    the host (unless ``allow_copies``) or the runtime threaded device tensors."""
    trap, pools, original = HostCopyTrap(DEVICE_TYPE), [], runtime.pool

    def spy(threads):
        pools.append(threads)
        return original(threads)

    runtime.pool = spy  # the runtime looks its pool up at each call
    try:
        with trap:
            yield trap
    finally:
        runtime.pool = original
    large = sorted({op for op, n in trap.copies if n > SMALL_COPY})
    if large:
        _record("elements copied to the host", max(n for _, n in trap.copies), SMALL_COPY,
                f"{'allowed' if allow_copies else 'FAIL'}: {large}")
    assert allow_copies or not large, f"copies to the host: {sorted(set(trap.copies))}"
    assert DEVICE_TYPE == "cpu" or not pools, "the runtime started CPU threads for device tensors"


def cast(inputs, dtype=None, device=None) -> tuple:
    """Inputs on ``device``, the floating-point ones in ``dtype`` (others as they are)."""
    return tuple(x.to(device=device, dtype=dtype if dtype is not None and x.is_floating_point()
                      else x.dtype) if isinstance(x, torch.Tensor) else x for x in inputs)


def forward_backward(fn, inputs, wrt, gout=None, **kwargs):
    """``fn(*inputs, **kwargs)`` and its gradients with respect to inputs ``wrt`` (None
    where unused), backpropagating ``gout``: a tensor, the seed of a random one, or None
    (ones)."""
    leaves = [x.detach().clone().requires_grad_(True) if i in wrt else x
              for i, x in enumerate(inputs)]
    value = fn(*leaves, **kwargs)
    if gout is None:
        gout = torch.ones_like(value)
    elif isinstance(gout, int):
        g = torch.Generator().manual_seed(gout)
        gout = torch.rand(value.shape, generator=g, dtype=F64).to(value) + 0.5
    else:
        gout = gout.to(value)
    wanted = [leaves[i] for i in wrt]
    grads = torch.autograd.grad(value, wanted, gout, allow_unused=True) if wanted else ()
    return value.detach(), list(grads)


def _record(label: str, worst: float, limit: float, verdict: str) -> None:
    if not REPORT:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    new = not os.path.exists(REPORT)
    with open(REPORT, "a") as f:
        if new:
            f.write(f"# device checks on {DEVICE} ({torch.__version__})\n\n"
                    "worst error relative to the truth's scale; limit; verdict\n\n"
                    "| test | quantity | worst | limit | verdict |\n|---|---|---|---|---|\n")
        f.write(f"| {test} | {label} | {worst:.3g} | {limit:g} | {verdict} |\n")


def compare(label: str, got, truth, rtol: float, baseline=None, least: float = 0.0):
    """Why the device's ``got`` disagrees with the CPU float64 ``truth``, or None.

    NaN and infinite entries must sit at the same places (infinities with the same sign).
    The error of a finite entry is ``|got - truth| / scale``, scale the largest finite
    ``|truth|`` or ``least`` if larger (at a perfect prediction a loss and its gradient are
    rounding residue, 1e-8 of their usual size: the usual size is the scale there); it must
    be <= ``rtol``. Failing that, a float32 ``got`` passes when the
    CPU in float32 (``baseline``, the same computation on the same inputs) is as bad: its
    worst error at most 4x the CPU's and no more than 2x as many entries (+2) past
    ``rtol`` -- the loss's conditioning in float32, not the device.
    """
    if got is None or truth is None:
        if (got is None) != (truth is None):
            return f"{label}: {'no' if got is None else 'a'} gradient on the device, " \
                   f"{'no' if truth is None else 'a'} gradient on the CPU"
        return None
    if DEVICE_TYPE and got.device.type != DEVICE_TYPE:
        _record(label, math.inf, rtol, f"FAIL (on {got.device})")
        return f"{label}: the result is on {got.device}, not on {DEVICE}"
    g, t = got.detach().to("cpu", F64), truth.detach().to("cpu", F64)
    if g.shape != t.shape:
        return f"{label}: shape {list(g.shape)} on the device, {list(t.shape)} on the CPU"
    finite = torch.isfinite(t)
    if not torch.equal(torch.isfinite(g), finite) or not torch.equal(
            g[~finite].nan_to_num(0.0), t[~finite].nan_to_num(0.0)):
        bad = int((torch.isfinite(g) != finite).sum())
        _record(label, math.inf, rtol, f"FAIL ({bad} non-finite entries differ)")
        return f"{label}: non-finite entries differ ({bad} of {t.numel()})"
    floor = 1e-300 if got.dtype == F64 else 1e-30
    scale = max(_size(t), floor, least)
    err = (g[finite] - t[finite]).abs() / scale
    worst = float(err.max()) if err.numel() else 0.0
    if worst <= rtol:
        _record(label, worst, rtol, "ok")
        return None
    past = int((err > rtol).sum())
    if baseline is not None:
        b = baseline.detach().to("cpu", F64)
        base = (b[finite] - t[finite]).abs() / scale
        base_worst, base_past = float(base.max()), int((base > rtol).sum())
        if worst <= 4 * base_worst and past <= 2 * base_past + 2:
            _record(label, worst, rtol, f"ok as CPU float32 (worst {base_worst:.1e}, "
                                        f"{base_past} past the limit)")
            return None
        _record(label, worst, rtol, f"FAIL ({past} past; CPU float32 worst {base_worst:.1e}, "
                                    f"{base_past} past)")
        return (f"{label}: worst error {worst:.3g} x scale {scale:.3g}, {past} of "
                f"{err.numel()} entries past {rtol:g}; CPU float32: worst {base_worst:.3g}, "
                f"{base_past} past")
    _record(label, worst, rtol, f"FAIL ({past} past)")
    return (f"{label}: worst error {worst:.3g} x scale {scale:.3g}, {past} of {err.numel()} "
            f"entries past {rtol:g}")


def compare_all(label, got, truth, rtol, baseline=None, usual=None) -> list[str]:
    """:func:`compare` over (value, [grads]) pairs; ``usual``, a (value, [grads]) truth on
    typical inputs, gives each comparison its least scale."""
    (gv, gg), (tv, tg) = got, truth
    bv, bg = baseline if baseline is not None else (None, [None] * len(tg))
    uv, ug = usual if usual is not None else (None, [None] * len(tg))
    out = [compare(f"{label} value", gv, tv, rtol, bv, _size(uv))]
    out += [compare(f"{label} grad[{k}]", a, b, rtol, c, _size(u))
            for k, (a, b, c, u) in enumerate(zip(gg, tg, bg, ug))]
    return [p for p in out if p]


def _size(t) -> float:
    """The largest finite magnitude of ``t`` (0 for None)."""
    if t is None:
        return 0.0
    t = t.detach().to("cpu", F64)
    t = t[torch.isfinite(t)]
    return float(t.abs().max()) if t.numel() else 0.0


def float_rows(signature: str, inputs) -> list[int]:
    """The inputs that take a gradient: the floating-point ones with a row per sample."""
    return [i for i in row_inputs(signature)
            if isinstance(inputs[i], torch.Tensor) and inputs[i].is_floating_point()]


def on_cpu_too(fn, inputs, wrt, dtype, gout=None, **kwargs):
    """``fn`` on the device in ``dtype``, the float64 truth on the CPU (same rounded
    inputs) and, for float32, the CPU float32 baseline: three (value, grads) pairs (the
    baseline None for float64). Tensor keywords (a weight) go where the inputs go."""
    def call(device=None, to=None):
        xs = cast(cast(inputs, dtype), to, device)
        kw = dict(zip(kwargs, cast(cast(kwargs.values(), dtype), to, device)))
        return forward_backward(fn, xs, wrt, gout, **kw)

    with on_device():
        got = call(DEVICE)
    return got, call(to=F64), call() if dtype == F32 else None


def sync() -> None:
    if DEVICE_TYPE == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_zoo_loss_matches_cpu(loss_id, dtype):
    """Every compiled zoo loss, values and input gradients, every reduction, a weight and
    an avg_factor, on random inputs; in float64 also on degenerate and perfect ones."""
    spec = zoo.get(loss_id)
    sig = spec.signature
    rtol = RTOL[dtype]
    cases = [("random", zoo_sample(loss_id, 4096, seed=1))]
    if dtype == F64:
        cases.append(("degenerate", degenerate(sig)))
        best = perfect(sig, 64, seed=2, loss_id=loss_id)
        if best is not None:
            cases.append(("perfect", best))
    problems = []
    usual = {}  # the random case's truths: the scale of the perfect case's rounding residue
    for case, inputs in cases:
        wrt = float_rows(sig, inputs)
        kinks = case == "degenerate" and sig == "rbox"
        # mmdetection's weight and avg_factor (the weight has the output's shape)
        shape = zoo.build(loss_id)(*inputs).shape
        weight = torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=F64)
        for reduction in ("none", "mean", "sum", "weighted"):
            loss = zoo.build(loss_id, reduction="mean" if reduction == "weighted" else reduction)
            kwargs = {}
            if reduction == "weighted":
                kwargs = {"weight": weight, "avg_factor": 7.0}
            results = on_cpu_too(loss, inputs, wrt, dtype, gout=3, **kwargs)
            if kinks:
                problems += [f"{case} {reduction}: a non-finite gradient" for g in results[0][1]
                             if g is not None and not torch.isfinite(g).all()]
                results = [r if r is None else _unkink(r) for r in results]
            if case == "random":
                usual[reduction] = results[1]
            problems += compare_all(f"{case} {reduction}", *results[:2], rtol, results[2],
                                    usual.get(reduction) if case == "perfect" else None)
    assert not problems, "\n".join(problems)


def _unkink(result):
    """A (value, grads) pair of rbox's degenerate pairs, the gradient rows at kinks dropped
    (:data:`RBOX_KINKS`; the gradient of a row depends on that row only, whatever the
    reduction)."""
    value, grads = result
    return value, [None if g is None else _drop(g, RBOX_KINKS) for g in grads]


def _drop(t: torch.Tensor, rows) -> torch.Tensor:
    keep = [i for i in range(t.shape[0]) if i not in rows]
    return t[torch.tensor(keep, device=t.device)]


_LARGE: dict = {}


def large_inputs(loss_id: str) -> tuple:
    """LARGE rows of a loss's inputs, drawn once per signature (and per-class constants)."""
    key = (zoo.get(loss_id).signature, reads_per_class(loss_id))
    if key not in _LARGE:
        _LARGE[key] = zoo_sample(loss_id, LARGE, seed=5)
    return _LARGE[key]


def subset(result, rows: torch.Tensor):
    """Rows ``rows`` of a (value, grads) pair (on its device)."""
    value, grads = result
    return (value[rows.to(value.device)],
            [None if g is None else g[rows.to(g.device)] for g in grads])


@contextlib.contextmanager
def chunked(module=runtime, prefix: str = ""):
    """Force the row-chunked path: ``runtime.whole`` (or an exported module's copy,
    ``prefix`` + "whole") made to answer no, since a GPU batch otherwise runs whole; fails
    if ``run_chunks`` then did not run."""
    whole, run = prefix + "whole", prefix + "run_chunks"
    original, runs, calls = getattr(module, whole), getattr(module, run), []

    def counted(*args, **kwargs):
        calls.append(1)
        return runs(*args, **kwargs)

    setattr(module, whole, lambda ref: False)
    setattr(module, run, counted)
    try:
        yield
    finally:
        setattr(module, whole, original)
        setattr(module, run, runs)
    assert calls, f"{run} did not run"


@pytest.mark.parametrize("dtype,path", [(F32, "auto"), (F64, "auto"), (F64, "chunked")],
                         ids=["f32", "f64", "f64-chunked"])
@pytest.mark.parametrize("loss_id", ZOO_IDS)
def test_zoo_loss_large_batch_on_the_device(loss_id, dtype, path):
    """LARGE rows, forward and backward, as the runtime runs them on the device (a GPU
    batch whole), and forced through the row-chunked path (``chunked``): serially (no CPU
    threads), without copies to the host; the truth on a random subset of the rows (on
    every row where the loss has batch-level terms, which see the whole batch)."""
    compiled = zoo.compiled(loss_id)
    sig = compiled.signature
    inputs = large_inputs(loss_id)
    per_row = set(row_inputs(sig.name))
    two = sig.prepare("probe", *(x[:2] if i in per_row else x for i, x in enumerate(inputs)))
    out_shape = (LARGE,) + tuple(two.out_shape[1:])
    wrt = float_rows(sig.name, inputs)
    rounded = cast(inputs, dtype)
    loss = zoo.build(loss_id)
    gout = torch.rand(out_shape, generator=torch.Generator().manual_seed(6), dtype=F64) + 0.5
    with chunked() if path == "chunked" else contextlib.nullcontext(), on_device():
        x = cast(rounded, device=DEVICE)
        sync()
        start = time.perf_counter()
        got = forward_backward(loss, x, wrt, gout)
        sync()
        ms = (time.perf_counter() - start) * 1e3
    rows = torch.arange(LARGE)
    if not compiled.batch_terms:  # elementwise: the truth on a subset of the rows
        g = torch.Generator().manual_seed(7)
        rows = torch.unique(torch.cat([rows[:500], rows[-500:],
                                       torch.randperm(LARGE, generator=g)[:20000]]))
    sub = tuple(x[rows] if i in per_row else x for i, x in enumerate(rounded))
    truth = forward_backward(loss, cast(sub, F64), wrt, gout[rows])
    base = forward_backward(loss, sub, wrt, gout[rows]) if dtype == F32 else None
    problems = compare_all(f"{LARGE} rows {path}, {ms:.0f} ms on the device",
                           subset(got, rows), truth, RTOL[dtype], base)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("signature", [n for n, s in SIGNATURES.items() if s.rescale])
def test_rescale_keeps_the_device(signature):
    """A signature's ``rescale`` (the unit probe's scaling and shift) on device inputs."""
    inputs = sample(signature, 64, seed=8)
    with on_device():
        got = SIGNATURES[signature].rescale(*cast(inputs, device=DEVICE), 10.0, 3.0)
    truth = SIGNATURES[signature].rescale(*inputs, 10.0, 3.0)
    problems = [compare(f"input {k}", a, b, RTOL[F64]) for k, (a, b) in enumerate(zip(got, truth))]
    assert not any(problems), "\n".join(p for p in problems if p)


# ------------------------------------------------- hand-written batch-level modules
def _module_inputs(loss_id: str, n: int, seed: int):
    inputs = sample(zoo.get(loss_id).signature, n, seed)
    if loss_id == "seesaw":  # K classes then 2 objectness logits: labels in [0, K]
        inputs = (inputs[0], inputs[1].clamp(max=inputs[0].shape[1] - 2)) + inputs[2:]
    return inputs


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss_id", MODULE_IDS)
def test_module_loss_and_its_state_match_cpu(loss_id, dtype):
    """The hand-written modules (running state, hard-example masks) moved to the device
    with ``.to()``: three training steps; values, gradients and the state after each,
    against the same module on the CPU fed float64 (and float32: the baseline).

    A state kept in float32 (EQLv2's gradient statistics, WIoU v3's mean, as their
    reference code) is compared to 1e-6, and so is a float64 loss computed from it: one
    float32 rounding (6e-8) may differ between the devices' ``exp``."""
    sig = zoo.get(loss_id).signature
    mine = zoo.build(loss_id).to(DEVICE)
    truth_module = zoo.build(loss_id)
    base_module = zoo.build(loss_id) if dtype == F32 else None
    problems = []
    for step in range(3):
        inputs = _module_inputs(loss_id, 1024, seed=10 + step)
        wrt = float_rows(sig, inputs)
        rounded = cast(inputs, dtype)
        f32_state = any(b.dtype == F32 for b in mine.state_dict().values())
        rtol = max(RTOL[dtype], 1e-6) if f32_state else RTOL[dtype]
        with on_device():
            got = forward_backward(mine, cast(rounded, device=DEVICE), wrt, step)
        truth = forward_backward(truth_module, cast(rounded, F64), wrt, step)
        base = forward_backward(base_module, rounded, wrt, step) if base_module else None
        problems += compare_all(f"step {step}", got, truth, rtol, base)
        theirs = truth_module.state_dict()
        for name, buf in mine.state_dict().items():
            assert buf.device.type == DEVICE_TYPE, f"state {name} is on {buf.device}"
            limit = (0.0 if not buf.is_floating_point()
                     else max(RTOL[dtype], 1e-6) if buf.dtype == F32 else RTOL[dtype])
            problems += [p for p in [compare(
                f"step {step} state {name}", buf, theirs[name], limit,
                base_module.state_dict()[name] if base_module else None)] if p]
    assert not problems, "\n".join(problems)


STATEFUL = [i for i in MODULE_IDS if zoo.build(i).state_dict()]


@pytest.mark.parametrize("loss_id", STATEFUL)
def test_stateful_module_follows_the_inputs_device_without_to(loss_id):
    """A stateful module left where ``build`` made it (no ``.to()``), called on device
    tensors in training mode: Seesaw and EQLv2 create their state on the inputs' device at
    the first call, WIoU v3 moves its running mean there (it failed on CUDA before:
    registered on the CPU in ``__init__``, updated in place from a device scalar)."""
    module = zoo.build(loss_id)
    inputs = cast(_module_inputs(loss_id, 256, seed=20), device=DEVICE)
    for _ in range(2):
        value = module(*inputs)
    assert value.device.type == DEVICE_TYPE
    for name, buf in module.state_dict().items():
        assert buf.device.type == DEVICE_TYPE, f"state {name!r} stayed on {buf.device}"


# ----------------------------------------------------------------------- set-level losses
def _ranking_batch(n: int, seed: int, positives: float = 0.01):
    """Logits (N,) ~ N(0, 2^2), labels 1 / 0 / -1 (positives, negatives, 10 % ignored), IoU
    targets in (0.1, 1] for the positives."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=F64) * 2
    u = torch.rand(n, generator=g, dtype=F64)
    labels = torch.where(u < positives, 1, torch.where(u < positives + 0.1, -1, 0))
    logits = logits + 1.5 * (labels == 1)  # positives score higher, as in training
    targets = torch.where(labels == 1, torch.rand(n, generator=g, dtype=F64) * 0.9 + 0.1,
                          labels.to(F64).clamp(max=0.0))
    return logits, labels, targets


def _alrp_with_regression(logits, labels):
    reg = torch.linspace(0.05, 0.9, int((labels == 1).sum()), dtype=logits.dtype,
                         device=logits.device)
    parts = ranking.alrp_loss_parts(logits, labels, reg)
    return parts.cls + parts.loc


RANKING = {
    "ap_loss": lambda x, y, t: ranking.ap_loss(x, y),
    "alrp_loss": lambda x, y, t: ranking.alrp_loss(x, y),
    "alrp_loss_parts": lambda x, y, t: _alrp_with_regression(x, y),
    "rs_loss": lambda x, y, t: ranking.rs_loss(x, t),
    "rs_loss_parts": lambda x, y, t: torch.stack(list(ranking.rs_loss_parts(x, t))).sum(),
    "dr_loss": lambda x, y, t: ranking.dr_loss(x, y),
}


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(RANKING))
def test_ranking_loss_matches_cpu(name, dtype):
    """AP, aLRP (with localisation errors), Rank & Sort, DR: values and updates on 200,000
    logits (2,000 positives), and with no positive, no negative, tied logits."""
    fn = RANKING[name]
    logits, labels, targets = _ranking_batch(200_000, seed=30)
    tied = logits.clone()
    tied[::7] = tied[0]
    cases = {"random": (logits, labels, targets), "tied": (tied, labels, targets),
             "no positive": (logits[:5000], labels[:5000].clamp(max=0),
                             targets[:5000].clamp(max=0)),
             "no negative": (logits[:300], torch.ones(300, dtype=labels.dtype),
                             targets[:300].clamp(min=0.3))}
    problems = []
    for case, inputs in cases.items():
        got, truth, base = on_cpu_too(fn, inputs, [0], dtype)
        problems += compare_all(case, got, truth, RTOL[dtype], base)
    assert not problems, "\n".join(problems)


SURROGATES = [(loss_id, update) for loss_id in ZOO_IDS if zoo.get(loss_id).signature == "rank"
              for update in ("error", "autograd")]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss_id,update", SURROGATES)
def test_rank_surrogate_matches_cpu(loss_id, update, dtype):
    """A searchable step as the set-level loss a proxy calls (dense pair blocks through the
    compiled step): 20,000 logits, 200 positives."""
    loss = RankLoss(zoo.compiled(loss_id), update=update)
    logits, labels, _ = _ranking_batch(20_000, seed=31)
    target = labels.to(F64)
    got, truth, base = on_cpu_too(loss, (logits, target), [0], dtype)
    problems = compare_all(update, got, truth, RTOL[dtype], base)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("loss_id", SET_LEVEL_IDS)
def test_set_level_zoo_entry_matches_cpu(loss_id):
    """A set-level zoo entry called as a proxy calls it: (N, C) logits and targets."""
    logits, labels, targets = _ranking_batch(40_000, seed=32)
    inputs = (logits.reshape(-1, 4), targets.clamp(min=0).reshape(-1, 4))
    got, truth, _ = on_cpu_too(zoo.loss(loss_id), inputs, [0], F64)
    problems = compare_all(loss_id, got, truth, RTOL[F64])
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------- rotated boxes
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_rotated_iou_matches_cpu(dtype):
    """Exact rotated IoU and its gradient (both boxes): random, near and degenerate pairs,
    and LARGE random pairs (a random subset of rows compared)."""
    g = torch.Generator().manual_seed(40)
    cases = {"random": RBOX.sample(4096, g, dtype=F64),
             "near": RBOX.sample_near(4096, g, dtype=F64)}
    if dtype == F64:
        cases["degenerate"] = RBOX.degenerate(F64)
    problems = []
    for fn in (rotated.iou, rotated.intersection_area):
        for case, inputs in cases.items():
            got, truth, base = on_cpu_too(fn, inputs, [0, 1], dtype, gout=41)
            if case == "degenerate":
                problems += [f"{fn.__name__} degenerate: non-finite gradient"
                             for t in got[1] if not torch.isfinite(t).all()]
                got = (got[0], [_drop(t, RBOX_KINKS) for t in got[1]])
                truth = (truth[0], [_drop(t, RBOX_KINKS) for t in truth[1]])
            problems += compare_all(f"{fn.__name__} {case}", got, truth, RTOL[dtype], base)
    # LARGE pairs on the device, the truth on a subset
    pred, target = RBOX.sample(LARGE, g, dtype=F64)
    rounded = cast((pred, target), dtype)
    with on_device():
        got = forward_backward(rotated.iou, cast(rounded, device=DEVICE), [0, 1])
    rows = torch.unique(torch.randperm(LARGE, generator=g)[:20000])
    sub = tuple(x[rows] for x in rounded)
    truth = forward_backward(rotated.iou, cast(sub, F64), [0, 1])
    base = forward_backward(rotated.iou, sub, [0, 1]) if dtype == F32 else None
    dev_rows = rows.to(got[0].device)
    mine = (got[0][dev_rows], [t[dev_rows] for t in got[1]])
    problems += compare_all(f"iou {LARGE} pairs", mine, truth, RTOL[dtype], base)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------- export
EXPORTED = ["giou", "focal", "softmax_ce", "dfl", "smooth_l1", "rotated_giou", "ghm_c"]


@pytest.mark.parametrize("loss_id", EXPORTED)
def test_exported_module_runs_on_the_device(loss_id, tmp_path):
    """``autoloss export``'s standalone module on the device: the eager fused path on
    LARGE // 4 rows (as it runs, and forced into row chunks), and the TorchScript module
    (autograd through the value function), against the compiled loss on the CPU."""
    path = export.to_file(zoo.compiled(loss_id), tmp_path / f"{loss_id}.py")
    module = export.load(path)
    func, cls = getattr(module, module.__all__[0]), getattr(module, module.__all__[1])
    problems = []
    n = max(LARGE // 4, 70_000)
    inputs = zoo_sample(loss_id, n, seed=50)
    wrt = [0]
    if DEVICE_TYPE != "cpu":  # the exported runtime is the compiled one's text
        assert module._serial_only(cast(inputs, device=DEVICE)[0]), \
            "the exported runtime would thread device tensors"
    for dtype, path in ((F32, "auto"), (F64, "auto"), (F64, "chunked")):
        with chunked(module, "_") if path == "chunked" else contextlib.nullcontext():
            got, truth, base = on_cpu_too(func, inputs, wrt, dtype, gout=51)
        if dtype == F64:  # the exported module is the compiled loss
            truth = forward_backward(zoo.build(loss_id), inputs, wrt, gout=51)
        problems += compare_all(f"eager {n} rows {str(dtype)[6:]} {path}", got, truth,
                                RTOL[dtype], base)
    small = zoo_sample(loss_id, 4096, seed=52)
    scripted = torch.jit.script(cls(reduction="mean"))
    with on_device():
        got = forward_backward(scripted, cast(small, device=DEVICE), wrt)
    truth = forward_backward(zoo.build(loss_id, reduction="mean"), small, wrt)
    problems += compare_all("torchscript f64", got, truth, RTOL[F64])
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- population
def _population(signature: str) -> list:
    """The signature's zoo expressions, their pairwise sums and products, and their logs
    (partial: guarded in search mode): a population that shares many subtrees."""
    seeds = [s.expression for s in catalog.of_signature(signature) if s.compiles]
    mixed = [Call(op, (a, b)) for op in ("add", "mul") for a, b in zip(seeds, seeds[1:])]
    return seeds + mixed + [Call("log", (e,)) for e in seeds]


@pytest.mark.parametrize("mode", ["search", "exact"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("signature", sorted(SIGNATURES))
def test_population_evaluator_matches_cpu(signature, dtype, mode):
    """The population evaluator (one sweep over the union DAG, buffers recycled) on the
    device: the same candidates fail, the others give the same values and gradients."""
    exprs = _population(signature)
    loss_id = next(s.id for s in catalog.of_signature(signature) if s.compiles)
    inputs = cast(zoo_sample(loss_id, 2048, seed=60), dtype)

    def evaluate(xs):
        ev = PopulationEvaluator(signature, xs, mode=mode)
        return ev.evaluate(exprs, grad=True)

    with on_device():
        got = evaluate(cast(inputs, device=DEVICE))
    truth = evaluate(cast(inputs, F64))
    base = evaluate(inputs) if dtype == F32 else [None] * len(exprs)
    problems = []
    for k, (a, b, c) in enumerate(zip(got, truth, base)):
        if isinstance(a, Failure) or isinstance(b, Failure):
            if isinstance(a, Failure) != isinstance(b, Failure):
                problems.append(f"candidate {k}: {a if isinstance(a, Failure) else 'ok'} on "
                                f"the device, {b if isinstance(b, Failure) else 'ok'} on the CPU")
            continue
        problems += [p for p in [compare(f"candidate {k} value", a.value, b.value,
                                         RTOL[dtype], c.value if c else None)] if p]
        for col in b.grads:
            problems += [p for p in [compare(f"candidate {k} d/d{col}", a.grads[col],
                                             b.grads[col], RTOL[dtype],
                                             c.grads[col] if c else None)] if p]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------- assigners
SCENES = {
    "random": {}, "crowded": {"kind": "crowded"}, "tiny": {"kind": "tiny"},
    "anchors": {"anchors": True},
    "large": {"canvas": 640, "strides": (8, 16, 32), "gts": (40, 7, 0, 60)},
}


def _duplicates(x, kind: str) -> list[int]:
    """Images whose gts 0 and 2 are the same box (``sample_inputs`` crowded, >= 3 gts)."""
    return [i for i in range(x.batch) if kind == "crowded" and int(x.gt_mask[i].sum()) >= 3]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", assigners.names())
def test_assigner_matches_cpu(name, dtype):
    """Every assigner: the same assignment on the device as on the CPU, in the same dtype
    (float64: every prior, bar a tie between two copies of one box; float32: 99 % of the
    priors, rounding near a threshold may flip a few), and the contract's invariants."""
    contract = AssignerContract()
    problems = []
    for scene, options in SCENES.items():
        for seed in (0, 1):
            x = sample_inputs(seed, dtype=dtype, **options)
            xd = sample_inputs(seed, dtype=dtype, device=DEVICE, **options)
            with on_device(allow_copies=name == "hungarian"):  # scipy runs on the host
                mine = assigners.build(name)(xd)
            theirs = assigners.build(name)(x)
            contract.check(mine, xd)
            a, b = mine.gt_index.cpu(), theirs.gt_index
            same = a == b
            for i in _duplicates(x, options.get("kind", "")):
                same[i] |= (a[i] % 2 == 0) & (b[i] % 2 == 0) & (a[i] >= 0) & (b[i] >= 0) & \
                    (a[i] <= 2) & (b[i] <= 2)
            agree = float(same.double().mean())
            limit = 1.0 if dtype == F64 else 0.99
            _record(f"{scene} seed {seed} gt_index agreement", 1 - agree, 1 - limit,
                    "ok" if agree >= limit else "FAIL")
            if agree < limit:
                problems.append(f"{scene} seed {seed}: {int((~same).sum())} of {same.numel()} "
                                "priors assigned differently")
            both = (a == b).to(mine.quality.device)
            for f in ("quality", "weight"):
                got = torch.where(both, getattr(mine, f), 0)
                want = torch.where(both.cpu(), getattr(theirs, f), 0)
                problems += [p for p in [compare(f"{scene} seed {seed} {f}", got, want,
                                                 1e-9 if dtype == F64 else 1e-5)] if p]
    assert not problems, "\n".join(problems)
