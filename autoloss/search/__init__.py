"""The search engine: search spaces, candidate generation, filters, strategies, runs.

>>> from autoloss.search import Search                              # doctest: +SKIP
>>> summary = Search.create("box-regression", runs_dir="runs").run()
>>> from autoloss.search import Run
>>> Run.find(summary["run"]).best_trial()

``Search`` and ``Run`` are imported on first use: reading a run (``autoloss report``,
``autoloss export``) does not load the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .candidate import Candidate
from .space import Space, load

if TYPE_CHECKING:
    from .engine import Search
    from .runs import Run

__all__ = ["Search", "Run", "Space", "Candidate", "load"]


def __getattr__(name: str):
    if name == "Search":
        from .engine import Search

        return Search
    if name == "Run":
        from .runs import Run

        return Run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
