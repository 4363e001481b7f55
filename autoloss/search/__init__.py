"""The search engine: search spaces, candidate generation, filters, strategies, runs.

>>> from autoloss.search import Search                              # doctest: +SKIP
>>> summary = Search.create("box-regression", runs_dir="runs").run()
"""
from .candidate import Candidate
from .engine import Search
from .space import Space, load

__all__ = ["Search", "Space", "Candidate", "load"]
