"""A search: a run folder, its trials, its summary, then its validation.

:class:`Search` puts the parts together, each in its module:

1. the run folder (:mod:`~autoloss.search.runs`): a new one with its ``config.json``, or
   the one ``--resume`` continues, read by :class:`~autoloss.search.runs.Run`;
2. the trials (:class:`~autoloss.search.loop.TrialLoop`): ask, propose, filter, run the
   proxy, tell, until the trial budget or the timeout;
3. the summary (:func:`~autoloss.search.summary.summarize`), written to ``summary.json``;
4. validation and the transfer stage (:class:`~autoloss.search.validation.Validation`),
   each added to ``summary.json`` as it ends.

>>> summary = Search.create("box-regression", runs_dir="runs").run()   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional


from ..evaluate import torch_threads
from . import runs
from .optuna_backend import quiet
from .loop import TrialLoop
from .runs import Run
from .space import Space, load
from .summary import Counts, overhead, summarize
from .validation import Validation


class Search:
    """A search over ``space`` in ``folder`` (see the module docstring).

    ``on_trial(search, trial)`` is called after each trial (the progress display),
    ``on_message(text)`` with each line of validation progress."""

    def __init__(self, space: Space, folder: Path, *, strategy: Optional[str] = None,
                 seed: Optional[int] = None, trials: Optional[int] = None,
                 timeout: Optional[float] = None, threads: Optional[int] = None,
                 validate: bool = True, on_trial: Optional[Callable] = None,
                 on_message: Optional[Callable[[str], None]] = None):
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
                              trials=self.trials, timeout=timeout)

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
            options.update(strategy=run.strategy, seed=run.seed)
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
                                   "threads": search.threads})
        return search

    def run(self) -> dict:
        """Trials, summary, validation, transfer; returns the summary as written."""
        with torch_threads(self.threads or None), quiet(), runs.Lock(self.folder):
            on_trial = (lambda frozen: self.on_trial(self, frozen)) if self.on_trial else None
            self.loop.run(on_trial)
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
