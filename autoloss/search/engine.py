"""A search: a run folder, its trials, its summary, then its validation.

:class:`Search` puts the parts together, each in its module:

1. the run folder (:mod:`~autoloss.search.runs`): a new one with its ``config.json``, or
   the one ``--resume`` continues, read by :class:`~autoloss.search.runs.Run`;
2. the trials (:class:`~autoloss.search.loop.TrialLoop`): ask, propose, filter, run the
   proxy, tell, until the trial budget or the timeout;
3. the summary (:func:`~autoloss.search.summary.summarize`), written to ``summary.json``;
4. validation and the transfer stage (:class:`~autoloss.search.validation.Validation`),
   each added to ``summary.json`` as it ends.

With a shared storage (``storage="journal"`` or a PostgreSQL URL) other processes join
the run's trials with :func:`join` (``autoloss worker RUN``); ``workers=N`` starts N - 1 of
them on this machine. The search process waits for every worker's trials before its summary
and validation, so both read the whole study.

>>> summary = Search.create("box-regression", runs_dir="runs").run()   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional


from ..evaluate import torch_threads
from . import runs
from .optuna_backend import StorageError, check_storage, is_shared, quiet
from .loop import TrialLoop
from .runs import Run
from .space import Space, load
from .summary import Counts, overhead, summarize
from .validation import Validation

if TYPE_CHECKING:
    from .ray_backend import RaySettings


class Search:
    """A search over ``space`` in ``folder`` (see the module docstring).

    ``on_trial(search, trial)`` is called after each trial (the progress display),
    ``on_message(text)`` with each line of validation progress."""

    def __init__(self, space: Space, folder: Path, *, strategy: Optional[str] = None,
                 seed: Optional[int] = None, trials: Optional[int] = None,
                 timeout: Optional[float] = None, threads: Optional[int] = None,
                 validate: bool = True, on_trial: Optional[Callable] = None,
                 on_message: Optional[Callable[[str], None]] = None,
                 storage: Optional[str] = None, workers: int = 1,
                 ray: Optional["RaySettings"] = None):
        self.storage = check_storage(storage)
        self.ray = ray  # None: the local engine; settings: trials on a Ray cluster
        if ray is not None and workers > 1:
            raise StorageError(f"--workers {workers} with --backend ray: the cluster runs the "
                               "trials in parallel (--max-concurrent); leave --workers out")
        if workers < 1:
            raise StorageError(f"--workers {workers}: a search needs at least one worker")
        if workers > 1 and not is_shared(self.storage):
            raise StorageError(
                f"--workers {workers}: SQLite (the default storage) takes one writing process; "
                "for parallel workers add --storage journal (one machine or a shared "
                "filesystem) or --storage postgresql+psycopg2://USER@HOST/DB (many machines)")
        self.workers = workers
        self.strategy_name = strategy or space.strategy
        if self.strategy_name == "nsga2" and not space.complexity:
            space = dataclasses.replace(space, complexity=True)  # NSGA-II: metric x size
        self.space = space
        self.folder = Path(folder)
        self.seed = space.seed if seed is None else seed
        self.trials = trials or space.trials
        self.timeout = timeout
        self.threads = threads
        self.validate_after = validate
        self.on_trial = on_trial
        self.on_message = on_message
        self.loop = TrialLoop(space, self.folder, strategy=self.strategy_name, seed=self.seed,
                              trials=self.trials, timeout=timeout, storage=self.storage)

    @property
    def counts(self) -> Counts:
        return self.loop.counts

    @property
    def interrupted(self) -> bool:
        return self.loop.interrupted

    @classmethod
    def create(cls, space: Space | str, runs_dir: str | Path = "runs", name: Optional[str] = None,
               resume: bool = False, **options) -> "Search":
        """A new run of ``space`` under ``runs_dir`` (``name``: default ``<space>-<time>``),
        or, with ``resume``, the run ``name`` (default: the space's latest) continued with
        its own space, strategy and seed."""
        runs_dir = Path(runs_dir)
        space = load(space) if isinstance(space, str) else space
        if resume:
            run = Run.to_resume(runs_dir, space.name, name)
            options.update(strategy=run.strategy, seed=run.seed, storage=run.storage_url)
            if run.backend == "ray" and options.get("ray") is None:
                from .ray_backend import RaySettings

                options["ray"] = RaySettings(**run.options["ray"])
            options["trials"] = options.get("trials") or run.options["trials"]
            return cls(run.space, run.folder, **options)
        folder = runs_dir / (name or runs.new_name(space.name))
        if (folder / "config.json").exists():
            raise runs.RunError(f"{folder} exists: pass --resume to continue it or --name "
                                "to start another run")
        folder.mkdir(parents=True, exist_ok=True)
        search = cls(space, folder, **options)
        Run.create(folder, space, {"strategy": search.strategy_name, "seed": search.seed,
                                   "trials": search.trials, "timeout": search.timeout,
                                   "threads": search.threads, "storage": search.storage,
                                   "backend": "ray" if search.ray else "local",
                                   "ray": search.ray.as_dict() if search.ray else None})
        if is_shared(search.storage):  # workers may join (and readers read) before we start
            search.loop.study()
        return search

    def run(self) -> dict:
        """Trials, summary, validation, transfer; returns the summary as written."""
        with torch_threads(self.threads or None), quiet(), runs.Lock(self.folder):
            on_trial = (lambda frozen: self.on_trial(self, frozen)) if self.on_trial else None
            helpers = self._start_workers()
            try:
                if self.ray is not None:
                    from .ray_backend import run_trials

                    run_trials(self.loop, self.ray, on_trial)
                else:
                    self.loop.run(on_trial)
            finally:
                for p in helpers:  # they end when the budget is taken (or on Ctrl-C, with us)
                    p.wait()
            run = Run(self.folder, self.space)
            summary = summarize(run, self.counts, strategy=self.strategy_name, seed=self.seed,
                                recovered=self.loop.recovered,
                                overhead=overhead(self.loop.timing),
                                interrupted=self.interrupted)
            runs.write_json(self.folder / "summary.json", summary)
            if self.validate_after and not self.interrupted:
                stage = Validation(run, self.seed, on_message=self.on_message)
                summary["validation"] = stage.validate()
                runs.write_json(self.folder / "summary.json", summary)
                if self.space.validation.get("transfer"):
                    summary["transfer"] = stage.transfer(summary["validation"])
                    runs.write_json(self.folder / "summary.json", summary)
            return summary

    def _start_workers(self) -> list[subprocess.Popen]:
        """``workers - 1`` local ``autoloss worker`` processes on this run's study."""
        if self.workers == 1:
            return []
        cmd = [sys.executable, "-m", "autoloss.cli", "worker", str(self.folder.resolve()),
               "--quiet"] + (["--threads", str(self.threads)] if self.threads else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return [subprocess.Popen(cmd, env=env) for _ in range(self.workers - 1)]


def join(run: Run | str | Path, *, storage: Optional[str] = None, threads: Optional[int] = None,
         trials: Optional[int] = None, timeout: Optional[float] = None,
         on_trial: Optional[Callable] = None) -> TrialLoop:
    """``autoloss worker RUN``: run trials of an existing run on its shared study until its
    budget is taken (this worker's and the others'); returns the loop (its counts, timing).

    ``storage`` stands in for the run's (a URL with a password the run does not record, a
    journal on another mount); ``trials`` raises the run's budget for this worker."""
    run = run if isinstance(run, Run) else Run(Path(run))
    if run.backend == "ray":
        raise StorageError(f"{run.folder}: its trials run on a Ray cluster; to add workers, "
                           "add nodes to the cluster (ray start --address ...)")
    url = check_storage(storage or run.storage_url)
    if not is_shared(url):
        raise StorageError(
            f"{run.folder}: this run keeps its trials in SQLite (study.db), which one process "
            "writes: a worker cannot join it. Start the search with --storage journal (one "
            "machine or a shared filesystem) or --storage postgresql+psycopg2://USER@HOST/DB "
            "(many machines), then start workers with autoloss worker RUN")
    loop = TrialLoop(run.space, run.folder, strategy=run.strategy, seed=run.seed,
                     trials=trials or run.options["trials"], timeout=timeout, storage=url,
                     study_name=run.study_name)
    with torch_threads(threads or None), quiet():
        loop.run((lambda frozen: on_trial(loop, frozen)) if on_trial else None)
    return loop

