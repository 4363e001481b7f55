"""Run folders: ``runs/<name>/`` with the resolved config, the Optuna storage and outputs.

::

    runs/box-regression-20261126-101500/
        config.json        the resolved search space and the command's options
        study.db           Optuna storage (SQLite): the source of truth for trials
        summary.json       machine-readable summary (written as the search goes and at its end)
        report.md, *.png   ``autoloss report``
        best_loss.py       the exported best loss (with a transfer stage: the best candidate
                           that holds up in the transfer proxy, else the baseline's loss)
        .lock              the PID of the process running the search
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import optuna
import sqlalchemy

from ..errors import AutolossError

optuna.logging.set_verbosity(optuna.logging.WARNING)


class RunError(AutolossError):
    """A run folder that cannot be used as asked."""


def storage(folder: Path) -> optuna.storages.RDBStorage:
    """The run's SQLite storage, with heartbeats so stale trials can be detected (and
    re-enqueued: a retried trial keeps its candidate in its user attributes).

    The database runs in write-ahead-log mode with ``synchronous=NORMAL``: a commit appends
    to ``study.db-wal`` without waiting for the disk, which makes the per-trial writes several
    times cheaper. A killed process loses nothing it committed (the log is replayed when the
    database is next opened); only a power cut or an OS crash can roll back the last commits.
    Readers (``autoloss report``, optuna-dashboard) may open the database while it is written.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        store = optuna.storages.RDBStorage(
            f"sqlite:///{folder / 'study.db'}", heartbeat_interval=5, grace_period=20,
            heartbeat_stale_trial_callback=retry,
            engine_kwargs={"connect_args": {"timeout": 30}})
    sqlalchemy.event.listen(store.engine, "connect", _sqlite_pragmas)
    store.engine.dispose()  # the connections opened while creating the schema lack them
    return store


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def new_name(space: str) -> str:
    return f"{space}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def latest(runs_dir: Path, space: str) -> Optional[Path]:
    found = sorted((p for p in runs_dir.glob(f"{space}-*") if (p / "config.json").exists()),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve(run: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Path:
    """A run folder from its path or its name under ``runs_dir``."""
    path = Path(run)
    for candidate in (path, Path(runs_dir) / path):
        if (candidate / "config.json").exists():
            return candidate
    raise RunError(f"{run}: not a run folder (no config.json); runs are under "
                   f"{Path(runs_dir).resolve()}")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    tmp.replace(path)  # atomic: a kill never leaves half a summary


def _jsonable(x):
    if isinstance(x, float):
        return None
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lock:
    """One process per run: the PID in ``.lock``; a dead owner's lock is taken over."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def owner(self) -> Optional[int]:
        try:
            pid = int(self.path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid != os.getpid() and _alive(pid) else None

    def __enter__(self):
        pid = self.owner()
        if pid is not None:
            raise RunError(f"{self.path.parent}: another search (PID {pid}) is running it")
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except FileNotFoundError:
            pass


def export_run(args) -> int:
    """``autoloss export RUN [--trial N | --best]``: trial N, or the run's best (the best
    candidate that holds up in the transfer proxy; the baseline's loss when none does)."""
    from .report import export_best, exported_note

    if args.trial is not None and getattr(args, "best", False):
        raise RunError("--trial N and --best exclude each other: --best exports the run's "
                       "best that holds up, --trial N that trial")
    folder = resolve(args.run, getattr(args, "runs_dir", "runs"))
    path = export_best(folder, trial=args.trial, output=args.output, name=args.name,
                       trainable=args.trainable_constants, check=args.check)
    print(f"wrote {path}" + (f" (trial {args.trial})" if args.trial is not None else
                             f": {exported_note(read_json(folder / 'summary.json'))}"))
    return 0
