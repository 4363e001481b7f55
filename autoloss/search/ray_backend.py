"""The Ray Tune backend: a search's proxy runs as Tune trials on a Ray cluster.

The driver (``autoloss search SPACE --backend ray``) keeps everything that decides: the
run's Optuna study (ask and tell, the sampler), the strategy, the filters and the budget, as
the local engine does (:class:`~autoloss.search.loop.TrialLoop`, whose pieces it reuses).
Tune asks the driver for a trial (:class:`Proposals`, a Tune ``Searcher``); the driver asks
Optuna for one, proposes its candidate and filters it; rejected and reused candidates are
told at once and never reach the cluster; an accepted one travels as its expressions and
choices (``Candidate.attrs()``), is compiled on the worker and run on the proxy
(:func:`evaluate`), whose intermediate reports go to Tune's scheduler (ASHA, or the median
stopping rule) and into the Optuna trial. Every finished Tune trial is told to the study the
moment it ends, so ``autoloss report``, ``export`` and ``--resume`` read it as any other
run's: a killed driver loses no finished trial, and ``--resume`` fails and re-runs the ones
that were on the cluster. A worker that dies mid-trial is Tune's to retry
(``FailureConfig(max_failures)``): the trial's result is told once, when it finally ends.

Ray's own ``OptunaSearch`` is not used: it swallows exceptions from ``tell`` and prunes
nothing; ask/tell stay here, on the driver.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from optuna.trial import FrozenTrial, TrialState

from ..errors import AutolossError
from .filters import FilterBank
from .loop import Opened, TrialLoop
from .optuna_backend import OptunaStudy

SCHEDULERS = ("asha", "median", "none")


class RayError(AutolossError):
    """A Ray cluster or setting that cannot be used as asked."""


@dataclass
class RaySettings:
    """Where and how trials run: ``address`` of the cluster (None: a local Ray started for
    the search), ``max_concurrent`` trials at once (None: the cluster's CPUs over
    ``cpus_per_trial``), the resources each asks, the scheduler, and how many times a trial
    whose worker died is retried."""

    address: Optional[str] = None
    max_concurrent: Optional[int] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str = "asha"
    max_failures: int = 2

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise RayError(f"--scheduler {self.scheduler!r}: one of {', '.join(SCHEDULERS)}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise RayError(f"--cpus-per-trial {self.cpus_per_trial:g} --gpus-per-trial "
                           f"{self.gpus_per_trial:g}: a trial needs a positive number of CPUs "
                           "and a non-negative number of GPUs")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise RayError(f"--max-concurrent {self.max_concurrent}: at least 1")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------ on the worker
def final_step(space) -> int:
    """The step of a trial's last result: one past the proxy's budget, the last step it
    reports (the scheduler stops a trial there, after its metrics arrived)."""
    from .. import proxies

    return (space.budget or proxies.get(space.proxy).default_budget) + 1


@functools.lru_cache(maxsize=8)
def _space(raw_json: str, name: str, file: Optional[str]):
    from .space import parse_space

    return parse_space(json.loads(raw_json), name, file)


def evaluate(config: dict) -> None:
    """A Tune function trainable: one candidate on the proxy, on a Ray worker.

    Reports ``{"value", "step"}`` as the proxy goes (the scheduler stops it early by not
    letting it continue) and a last result with ``final`` set: the metrics, or the reason
    the candidate failed (``failed``; a failed candidate is not a crashed worker, so it is
    not retried)."""
    import torch
    from ray import tune

    from .. import proxies
    from ..proxies.base import CandidateFailure
    from .candidate import Candidate

    torch.set_num_threads(max(1, int(config["threads"])))
    space = _space(config["space"], config["space_name"], config["space_file"])
    signatures = {s: slot.signature for s, slot in space.slots.items()}
    worst = math.inf if space.direction == "minimize" else -math.inf
    last = final_step(space)  # after every step the proxy reports: the scheduler's max_t
    start = time.perf_counter()
    try:
        candidate = Candidate.from_attrs(config["candidate"], signatures)
        losses = {s: candidate.compiled(s, sig, set_level=space.slots[s].set_level)
                  for s, sig in signatures.items()}
        proxy = proxies.get(space.proxy, **space.options_with(candidate.choices))

        def report(step: int, value: float) -> None:
            if math.isfinite(value):
                tune.report({"value": float(value), "step": int(step),
                             "proxy_s": time.perf_counter() - start})

        metrics = proxy.run(losses, budget=space.budget, seed=config["seed"], report=report,
                            scale=space.scale)
        values = [metrics.value] + ([float(candidate.complexity)] if space.complexity else [])
        if not all(math.isfinite(v) for v in values):
            raise CandidateFailure(f"{metrics.metric} is {metrics.value}")
    except CandidateFailure as err:
        tune.report({"value": worst, "step": last, "final": 1, "failed": err.reason,
                     "proxy_s": time.perf_counter() - start})
        return
    tune.report({"value": float(metrics.value), "step": last, "final": 1,
                 "outcome": json.dumps({"values": values, "metrics": metrics.as_dict()}),
                 "proxy_s": time.perf_counter() - start})


# ------------------------------------------------------------------------- on the driver
def proposals(loop: TrialLoop, study: OptunaStudy, bank: FilterBank, settings: RaySettings,
              on_trial: Optional[Callable[[FrozenTrial], None]]):
    """The Tune searcher that hands the cluster the driver's accepted candidates."""
    return _proposals_class()(loop, study, bank, settings, on_trial)


@functools.cache
def _proposals_class():
    """:class:`Proposals`, a Tune ``Searcher``: defined on first use, since importing Ray
    changes ``sys.path`` and an import of autoloss must not."""
    from ray.tune.search import Searcher

    class Proposals(Searcher):
        """The Tune searcher that hands the cluster the driver's accepted candidates (see the
        module docstring); ``loop`` lends it the local engine's pieces."""

        def __init__(self, loop: TrialLoop, study: OptunaStudy, bank: FilterBank,
                     settings: RaySettings, on_trial: Optional[Callable[[FrozenTrial], None]]):
            super().__init__(metric="value",
                             mode="min" if loop.space.direction == "minimize" else "max")
            self.loop, self.study, self.bank, self.settings = loop, study, bank, settings
            self.on_trial = on_trial
            self.start = time.monotonic()
            self.running: dict[str, tuple[Opened, float]] = {}  # Tune id -> trial, its start

        def budget_left(self) -> bool:
            loop = self.loop
            if loop.timeout and time.monotonic() - self.start > loop.timeout:
                return False
            return loop.counts.finished + len(self.running) < loop.trials

        def suggest(self, trial_id: str):
            loop = self.loop
            while self.budget_left():
                t_step = time.perf_counter()
                opened = loop.open(self.study, self.bank)
                state, values, extra, proxy_s = loop.settle(opened)
                if state is None:  # accepted: it goes to the cluster
                    self.running[trial_id] = (opened, t_step)
                    return self.config_of(opened)
                frozen = loop.close(self.study, self.bank, opened, state, values, extra, proxy_s)
                self.tally(frozen, t_step, 0.0)
            return Searcher.FINISHED

        def config_of(self, opened: Opened) -> dict:
            space = self.loop.space
            return {"candidate": opened.candidate.attrs(), "number": opened.trial.number,
                    "seed": self.loop.seed, "threads": max(1, int(self.settings.cpus_per_trial)),
                    "space": json.dumps(space.raw), "space_name": space.name,
                    "space_file": space.file}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            opened, _ = self.running.get(trial_id, (None, 0.0))
            if opened is None or result.get("final"):
                return
            trial = opened.trial.trial
            where = {"node": result.get("node_ip"), "pid": result.get("pid")}
            if trial.user_attrs.get("ray") != where:  # where it runs (a retry moves it)
                trial.set_user_attr("ray", where)
            if not self.loop.space.complexity:  # Optuna takes reports of one objective only
                trial.report(result["value"], result["step"])

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                              error: bool = False) -> None:
            if trial_id not in self.running:
                return
            opened, t_step = self.running.pop(trial_id)
            result = result or {}
            proxy_s = float(result.get("proxy_s") or 0.0)
            if error:  # Tune gave up on it (its retries spent, or it died before it started)
                self.error(opened, t_step)
                return
            extra, values = {}, None
            if result.get("final") and "failed" in result:
                state = TrialState.FAIL
                opened.record.update(status="failed", filter="proxy", reason=result["failed"])
            elif result.get("final"):
                outcome = json.loads(result["outcome"])  # JSON: Tune flattens nested results
                state, values, extra = TrialState.COMPLETE, outcome["values"], outcome["metrics"]
            else:  # the scheduler stopped it
                state = TrialState.PRUNED
            frozen = self.loop.close(self.study, self.bank, opened, state, values, extra, proxy_s)
            self.tally(frozen, t_step, proxy_s)

        def error(self, opened: Opened, t_step: float) -> None:
            """A Tune trial that errored: Tune retries a running trial whose worker died
            (``FailureConfig``), but not one that died while it was being placed, and it gives
            up after ``max_failures``. The driver enqueues the candidate again (the same bound,
            counted on the Optuna trial) so that no candidate is lost to a dead node; after
            that the trial fails with the reason."""
            trial = opened.trial
            retries = trial.user_attrs.get("retries", 0)
            if retries < self.settings.max_failures:
                trial.set_user_attr("retries", retries + 1)
                trial.set_user_attr("verdict", opened.record)
                self.study.interrupt(trial)  # failed as interrupted, enqueued again
                return
            opened.record.update(status="failed", filter="ray", reason=(
                f"the Ray trial errored {retries + 1} times (its worker died or raised); see "
                "the Tune trial's error.txt under ray/ in the run folder"))
            frozen = self.loop.close(self.study, self.bank, opened, TrialState.FAIL, None, {}, 0.0)
            self.tally(frozen, t_step, 0.0)

        def tally(self, frozen: FrozenTrial, t_step: float, proxy_s: float) -> None:
            timing = self.loop.timing
            timing["trials"] += 1
            timing["wall_s"] += time.perf_counter() - t_step
            timing["proxy_s"] += proxy_s
            if self.on_trial is not None:
                self.on_trial(frozen)

        # The Optuna storage is the search's state (``--resume`` reads it): Tune's experiment
        # snapshots keep nothing of the searcher, which holds the study.
        def __getstate__(self):
            return {}

        def save(self, checkpoint_path: str) -> None:
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

    return Proposals


def _host_port(address: str) -> tuple[str, str]:
    """HOST and PORT of ``[ray://]HOST:PORT`` (an empty host is 127.0.0.1)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host or "127.0.0.1", port


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast where ``ray.init`` would retry for minutes: nothing listens at ADDRESS."""
    import socket

    host, port = _host_port(address)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise RayError(f"--address {address}: no Ray cluster answers there ({err}); start one "
                       "with `ray start --head --port 6379`, or leave --address out to run on "
                       "a Ray started for this search") from None


def _on_this_machine(host: str) -> bool:
    """Whether HOST (a name or an address) is this machine: loopback, or one of its addresses."""
    import ipaddress
    import socket

    try:
        ip = socket.gethostbyname(host)
        if ipaddress.ip_address(ip).is_loopback:
            return True
        return ip in socket.gethostbyname_ex(socket.gethostname())[2]
    except (OSError, ValueError):
        return False


def _local_token() -> Optional[str]:
    """Where Ray would find an authentication token on this machine (None: nowhere)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return str(path)
    return None


def use_token_auth_for(address: str) -> bool:
    """Send this machine's Ray token to a head on this machine; returns whether it now does.

    ``ray start --head`` turns token authentication on when it finds a token (``~/.ray/
    auth_token``, which any local ``ray.init()`` of Ray >= 2.5x writes, autoloss's own local
    Ray searches included), but a driver given an explicit address never sends one unless
    ``RAY_AUTH_MODE=token``: ``ray start`` then ``autoloss search --address 127.0.0.1:6379``
    would fail with "InvalidAuthToken". For a head on this machine (the same token file) the
    token is sent; a token-mode driver also connects to a head without authentication. An
    explicit ``RAY_AUTH_MODE`` is left alone, and a token is never sent to another machine
    unasked.
    """
    host, _ = _host_port(address)
    if "RAY_AUTH_MODE" in os.environ or not _on_this_machine(host) or _local_token() is None:
        return False
    os.environ["RAY_AUTH_MODE"] = "token"  # for this driver and the processes it starts
    try:  # Ray caches its config at import: refresh it, as Ray's own ``ray start`` does
        from ray._raylet import Config
        Config.initialize("")
    except (ImportError, AttributeError):  # a Ray without token authentication
        pass
    return True


def connect(address: Optional[str], cpus: Optional[int] = None) -> bool:
    """Connect to the cluster at ``address`` (None: start a local Ray); returns whether
    this call connected (the caller then shuts Ray down after)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address:
        check_address(address)
        use_token_auth_for(address)
        kwargs["address"] = address
    else:
        kwargs.update(num_cpus=cpus or os.cpu_count(), include_dashboard=False)
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        hint = ""
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = ("; if the cluster uses token authentication (`ray start` turns it on where "
                    "it finds ~/.ray/auth_token), run with RAY_AUTH_MODE=token and the "
                    "cluster's token in RAY_AUTH_TOKEN (see docs/distributed.md)")
        elif address:
            hint = (f"; this driver sent the token from {_local_token() or 'nowhere'}: check "
                    "that it is the cluster's (`ray get-auth-token` on the head prints it)")
        raise RayError(f"--address {address}: Ray could not connect ({err}){hint}; start a "
                       "cluster with `ray start --head --port 6379`, or leave --address out "
                       "for a local Ray") from err
    return True


def _trial_name(trial) -> str:
    return f"trial-{trial.config['number']}-{trial.trial_id}"


def run_trials(loop: TrialLoop, settings: RaySettings,
               on_trial: Optional[Callable[[FrozenTrial], None]] = None) -> None:
    """The session of a Ray search: what :meth:`TrialLoop.run` is for the local engine."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner: ours is enough
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    study = loop.study()
    loop.recovered = study.recover()
    from .. import symbolic  # noqa: F401 - sympy's import is start-up, not per trial

    bank = FilterBank(loop.signatures, seed=loop.seed,
                      scale_matters=getattr(loop.proxy, "gradient_scale_matters", True))
    loop.replay(study, bank)
    import ray

    connected = connect(settings.address)
    concurrent = settings.max_concurrent or max(
        1, int(ray.cluster_resources().get("CPU", 1) // settings.cpus_per_trial))
    mode = "min" if loop.space.direction == "minimize" else "max"
    max_t = final_step(loop.space)
    if loop.space.complexity or settings.scheduler == "none":  # the local engine: no pruner
        scheduler = None                                      # for two objectives
    elif settings.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="step", metric="value", mode=mode, max_t=max_t,
                                  grace_period=max(1, max_t // 10), reduction_factor=3)
    else:  # the local engine's rule: below the median of earlier trials at the same step
        scheduler = MedianStoppingRule(time_attr="step", metric="value", mode=mode,
                                       grace_period=0, min_samples_required=5)
    searcher = proposals(loop, study, bank, settings, on_trial)
    trainable = tune.with_resources(evaluate, {"cpu": settings.cpus_per_trial,
                                               "gpu": settings.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=concurrent, reuse_actors=True,
                                    trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=f"tune-{int(time.time())}", storage_path=str(Path(loop.folder).resolve()
                                                              / "ray"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures)))
    try:
        tuner.fit()
    except KeyboardInterrupt:
        loop.interrupted = True
    finally:
        for opened, _ in list(searcher.running.values()):  # on the cluster when we stopped
            study.interrupt(opened.trial)
        searcher.running.clear()
        if connected:
            ray.shutdown()
