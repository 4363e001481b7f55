"""Multi-task weighting: how a detector's task losses (classification, box, quality) become
one training loss.

Each weighting is a small module, built by name from a registry like the assigners'::

    >>> w = weighting.build("uncertainty", tasks=("cls", "reg"))
    >>> total = w({"cls": l_cls, "reg": l_reg})                   # each a scalar tensor
    >>> w.weights()                                               # what it used, {task: float}

Call order per training step: ``w(losses)`` once (it may update its own state or, for
GradNorm, its weights), then the trainer's ``backward`` and optimiser step on the returned
total. Learnable weightings expose ``parameters()`` for the trainer's optimiser (the model's
optimiser trains them, without weight decay); ``bind(shared)`` hands GradNorm the shared
parameters whose gradient norms it balances; ``reset()`` forgets state between runs.

* ``fixed``: sum of w_k L_k (the default: every weight 1);
* ``uncertainty``: Kendall, Gal and Cipolla, CVPR 2018: learnable s_k = log sigma_k^2,
  sum of 0.5 exp(-s_k) L_k + 0.5 s_k (the Gaussian-likelihood form of the paper's eq. 7);
* ``gradnorm``: Chen et al., ICML 2018: learnable w_k moved by their own Adam step on
  sum_k |G_k - mean(G) r_k^alpha| (G_k the norm of the gradient of w_k L_k on the shared
  parameters, r_k the task's loss ratio L_k(t)/L_k(0) over its mean), renormalised to sum K;
* ``dwa``: Dynamic Weight Average, Liu, Johns and Davison, CVPR 2019 (MTAN):
  w_k = K softmax_k(r_k / T), r_k = L_k(t-1) / L_k(t-2) over periods of ``period`` steps
  (the paper's epochs; 1 for the first two periods);
* ``self_balance``: the ranking losses' balance of the box loss against the classification
  loss: every task but ``reference`` weighted by L_ref / L_k, the values detached: per step as
  in RS Loss (``period`` 0), or the mean ratio of the previous period as in aLRP Loss's
  self-balance (initial weight ``init``, 50 in aLRP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from .errors import AutolossError

__all__ = ["Weighting", "names", "get", "build", "WeightingError"]


class WeightingError(AutolossError, ValueError):
    """A weighting that cannot be built or called as asked."""


class Weighting(torch.nn.Module):
    """Task losses in, one total out (see the module docstring)."""

    name = "base"

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise WeightingError(f"tasks must be distinct names, got {list(tasks)!r}")
        self.tasks = tuple(tasks)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        values = self._check(losses)
        w = self.current(values)
        return sum(w[i] * values[i] for i in range(len(self.tasks)))

    def current(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weights (K,) for this step's losses; may update state."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """The weights the last call used (for logs and reports)."""
        return dict(zip(self.tasks, self._last.tolist())) if hasattr(self, "_last") else {}

    def bind(self, shared: Iterable[torch.nn.Parameter]) -> "Weighting":
        return self

    def reset(self) -> None:
        pass

    def _check(self, losses: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        missing = [t for t in self.tasks if t not in losses]
        extra = [t for t in losses if t not in self.tasks]
        if missing or extra:
            raise WeightingError(f"{self.name}: losses for tasks {list(self.tasks)} expected, got "
                                 f"{list(losses)} (missing {missing}, unknown {extra})")
        values = [losses[t] for t in self.tasks]
        for t, v in zip(self.tasks, values):
            if v.dim() != 0:
                raise WeightingError(f"{self.name}: the {t} loss must be a scalar, got shape "
                                     f"{tuple(v.shape)}; reduce it first")
        return values

    def _remember(self, w: torch.Tensor) -> torch.Tensor:
        self._last = w.detach().clone()
        return w


class Fixed(Weighting):
    name = "fixed"

    def __init__(self, tasks, weights: Optional[Mapping[str, float]] = None):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise WeightingError(f"fixed: weights for unknown tasks {sorted(unknown)}; tasks are "
                                 f"{list(self.tasks)}")
        self.register_buffer("w", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))

    def current(self, values):
        return self._remember(self.w.to(values[0]))


class Uncertainty(Weighting):
    name = "uncertainty"

    def __init__(self, tasks, init: float = 0.0):
        super().__init__(tasks)
        self.init = float(init)
        self.log_var = torch.nn.Parameter(torch.full((len(self.tasks),), self.init))

    def forward(self, losses):
        values = self._check(losses)
        s = self.log_var.to(values[0])
        self._remember(0.5 * torch.exp(-s))
        return sum(0.5 * torch.exp(-s[i]) * values[i] + 0.5 * s[i]
                   for i in range(len(self.tasks)))

    def reset(self):
        with torch.no_grad():
            self.log_var.fill_(self.init)


class GradNorm(Weighting):
    name = "gradnorm"

    def __init__(self, tasks, alpha: float = 1.5, lr: float = 0.025):
        super().__init__(tasks)
        if alpha < 0 or lr <= 0:
            raise WeightingError(f"gradnorm: alpha >= 0 and lr > 0, got {alpha}, {lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        self.shared: list[torch.nn.Parameter] = []
        self.reset()

    def bind(self, shared):
        self.shared = [p for p in shared if p.requires_grad]
        if not self.shared:
            raise WeightingError("gradnorm: bind() needs the shared parameters (e.g. the "
                                 "last shared layer) whose gradient norms it balances")
        return self

    def reset(self):
        k = len(self.tasks)
        self.w = torch.ones(k)
        self.initial: Optional[torch.Tensor] = None
        self._m = torch.zeros(k)  # Adam's moments for the weights
        self._v = torch.zeros(k)
        self._t = 0

    def current(self, values):
        if not self.shared:
            raise WeightingError("gradnorm: call bind(shared parameters) before the first step")
        k = len(self.tasks)
        w = self.w.to(values[0])
        # g_k = || d L_k / d W ||: G_k = w_k g_k (w_k a scalar)
        g = torch.stack([
            torch.sqrt(sum((gr.detach() ** 2).sum() for gr in torch.autograd.grad(
                v, self.shared, retain_graph=True, allow_unused=True) if gr is not None))
            for v in values])
        loss = torch.stack([v.detach() for v in values])
        if self.initial is None:
            self.initial = loss.clamp(min=1e-12)
        ratio = loss / self.initial
        r = ratio / ratio.mean()
        G = w * g
        target = (G.mean() * r ** self.alpha).detach()
        # d/dw_k sum_j |G_j - target_j| = sign(G_k - target_k) g_k (the target held constant,
        # as in the paper)
        grad = torch.sign(G - target) * g
        self._t += 1
        self._m = 0.9 * self._m + 0.1 * grad.cpu()
        self._v = 0.999 * self._v + 0.001 * grad.cpu() ** 2
        m_hat = self._m / (1 - 0.9 ** self._t)
        v_hat = self._v / (1 - 0.999 ** self._t)
        self.w = (self.w - self.lr * m_hat / (v_hat.sqrt() + 1e-8)).clamp(min=1e-4)
        self.w = self.w * (k / self.w.sum())
        return self._remember(w)  # this step trains with the weights it measured


class DWA(Weighting):
    name = "dwa"

    def __init__(self, tasks, temperature: float = 2.0, period: int = 100):
        super().__init__(tasks)
        if temperature <= 0 or period < 1:
            raise WeightingError(f"dwa: temperature > 0 and period >= 1, got {temperature}, "
                                 f"{period}")
        self.temperature, self.period = float(temperature), int(period)
        self.reset()

    def reset(self):
        self.means: list[torch.Tensor] = []  # mean loss of each finished period
        self._sum = torch.zeros(len(self.tasks))
        self._n = 0

    def current(self, values):
        k = len(self.tasks)
        if len(self.means) < 2:
            w = torch.ones(k)
        else:
            r = self.means[-1] / self.means[-2].clamp(min=1e-12)
            w = k * torch.softmax(r / self.temperature, 0)
        self._sum += torch.stack([v.detach().cpu() for v in values])
        self._n += 1
        if self._n == self.period:
            self.means = (self.means + [self._sum / self._n])[-2:]
            self._sum, self._n = torch.zeros(k), 0
        return self._remember(w.to(values[0]))


class SelfBalance(Weighting):
    name = "self_balance"

    def __init__(self, tasks, reference: str = "cls", period: int = 0, init: float = 50.0):
        super().__init__(tasks)
        if reference not in self.tasks:
            raise WeightingError(f"self_balance: reference {reference!r} is not one of the tasks "
                                 f"{list(self.tasks)}")
        if period < 0 or init <= 0:
            raise WeightingError(f"self_balance: period >= 0 and init > 0, got {period}, {init}")
        self.reference, self.period, self.init = reference, int(period), float(init)
        self.reset()

    def reset(self):
        k = len(self.tasks)
        self.balance = torch.full((k,), self.init)
        self._sum, self._n = torch.zeros(k), 0

    def current(self, values):
        ref = self.tasks.index(self.reference)
        loss = torch.stack([v.detach().cpu() for v in values])
        ratio = loss[ref] / loss.clamp(min=1e-12)
        if self.period == 0:  # RS Loss: this step's ratio
            w = ratio
        else:  # aLRP Loss: the previous period's mean ratio (init before the first)
            w = self.balance.clone()
            self._sum += ratio
            self._n += 1
            if self._n == self.period:
                self.balance = self._sum / self._n
                self._sum, self._n = torch.zeros_like(self._sum), 0
        w[ref] = 1.0
        return self._remember(w.to(values[0]))


@dataclass(frozen=True)
class Entry:
    id: str
    paper: str
    make: Callable[..., Weighting]
    params: dict[str, Any] = field(default_factory=dict)  # name -> default
    learnable: bool = False


_REGISTRY = {e.id: e for e in (
    Entry("fixed", "(the weighted sum)", Fixed, {"weights": None}),
    Entry("uncertainty", "Kendall, Gal, Cipolla: Multi-Task Learning Using Uncertainty to "
          "Weigh Losses, CVPR 2018", Uncertainty, {"init": 0.0}, learnable=True),
    Entry("gradnorm", "Chen et al.: GradNorm, ICML 2018", GradNorm,
          {"alpha": 1.5, "lr": 0.025}),
    Entry("dwa", "Liu, Johns, Davison: End-to-End Multi-Task Learning with Attention (DWA), "
          "CVPR 2019", DWA, {"temperature": 2.0, "period": 100}),
    Entry("self_balance", "Oksuz et al.: aLRP Loss (NeurIPS 2020) self-balance; RS Loss "
          "(ICCV 2021) value-based balance", SelfBalance,
          {"reference": "cls", "period": 0, "init": 50.0}),
)}


def names() -> list[str]:
    return list(_REGISTRY)


def get(id: str) -> Entry:
    if id not in _REGISTRY:
        raise WeightingError(f"unknown weighting {id!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[id]


def build(id: str, tasks: Sequence[str], **params) -> Weighting:
    """The weighting ``id`` over ``tasks`` with ``params`` (defaults from its entry)."""
    entry = get(id)
    unknown = set(params) - set(entry.params)
    if unknown:
        raise WeightingError(f"{id}: unknown parameters {sorted(unknown)}; it takes "
                             f"{sorted(entry.params) or 'none'}")
    return entry.make(tasks, **params)

