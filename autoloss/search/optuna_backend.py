"""The Optuna backend: the one place that drives Optuna's trials and storage.

* :func:`storage`: a run's SQLite storage (``study.db``), the source of truth for trials
  whichever backend ran them;
* :class:`OptunaTrial`: the backend-neutral :class:`~autoloss.search.handle.TrialHandle`
  over an ``optuna.Trial`` (suggestions go to the study's sampler);
* :class:`OptunaStudy`: the local engine's study: ask and tell, interrupted trials failed
  and enqueued again, heartbeats while a proxy runs, pruning decisions from memory.

Everything here uses Optuna's public API (the study's, the trial's and the storage's);
nothing outside this module touches a storage or a trial id.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from .handle import TrialHandle



@contextlib.contextmanager
def quiet():
    """Optuna's INFO lines ("A new study created", "Trial 3 finished") off for the block:
    the search prints its own progress; the user's logging setup is restored after."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)

STUDY = "search"  # the study's name in every run's storage


def storage(folder: Path) -> optuna.storages.RDBStorage:
    """The run's SQLite storage, with heartbeats so stale trials can be detected (and
    re-enqueued: a retried trial keeps its candidate in its user attributes).

    The database runs in write-ahead-log mode with ``synchronous=NORMAL``: a commit appends
    to ``study.db-wal`` without waiting for the disk, which makes the per-trial writes several
    times cheaper. A killed process loses nothing it committed (the log is replayed when the
    database is next opened); only a power cut or an OS crash can roll back the last commits.
    Readers (``autoloss report``, optuna-dashboard) may open the database while it is written.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        store = optuna.storages.RDBStorage(
            f"sqlite:///{Path(folder) / 'study.db'}", heartbeat_interval=5, grace_period=20,
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


def load_study(folder: Path) -> optuna.Study:
    """A run's study, to read (no sampler or pruner of the search's)."""
    return optuna.load_study(study_name=STUDY, storage=storage(folder))


class OptunaTrial(TrialHandle):
    """A trial asked from an Optuna study, as a handle: suggestions go to the study's
    sampler (TPE learns from them), user attributes to the storage."""

    def __init__(self, trial: optuna.Trial, seed: int):
        super().__init__(trial.number, seed)
        self.trial = trial
        self.storage_id: Optional[int] = None  # the storage's id, once OptunaStudy needs it

    def suggest_categorical(self, name, choices):
        return self.trial.suggest_categorical(name, list(choices))

    def suggest_float(self, name, low, high, *, log=False):
        return self.trial.suggest_float(name, low, high, log=log)

    @property
    def user_attrs(self):
        return self.trial.user_attrs

    def set_user_attr(self, key, value):
        self.trial.set_user_attr(key, value)


class OptunaStudy:
    """The run's study as the local engine drives it (one process: ``runs.Lock``).

    ``strategy`` picks the sampler: TPE for ``tpe`` (its suggestions are the tree's
    tokens), random otherwise (the other strategies draw from the handle's generator and
    suggest nothing); the median pruner stops bad single-objective trials early.
    """

    def __init__(self, folder: Path, directions: Sequence[str], strategy: str, seed: int):
        self.seed = seed
        if strategy == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5) if len(directions) == 1
                  else optuna.pruners.NopPruner())
        self.storage = storage(folder)
        with quiet():
            self.study = optuna.create_study(study_name=STUDY, storage=self.storage,
                                             directions=list(directions), sampler=sampler,
                                             pruner=pruner, load_if_exists=True)
        self._study_id = self.storage.get_study_id_from_name(STUDY)
        self._heartbeat: Optional[_Heartbeat] = None

    def trials(self, states: Optional[Sequence[TrialState]] = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    # -- a trial's life ----------------------------------------------------------------------
    def ask(self) -> OptunaTrial:
        with warnings.catch_warnings():  # heartbeats are recorded by _Heartbeat below
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            return OptunaTrial(self.study.ask(), self.seed)

    def complete(self, trial: OptunaTrial, values: Sequence[float]) -> FrozenTrial:
        return self.study.tell(trial.trial, list(values))

    def close(self, trial: OptunaTrial, state: TrialState) -> FrozenTrial:
        """Close a trial that has no values (pruned or failed)."""
        return self.study.tell(trial.trial, state=state)

    def interrupt(self, trial: OptunaTrial | FrozenTrial) -> None:
        """Fail an unfinished trial (``interrupted``: it does not count) and enqueue its
        candidate again, through the storage's retry callback (a WAITING copy of the trial,
        its attributes included): it reruns on resume."""
        if isinstance(trial, OptunaTrial):
            trial.trial.set_user_attr("interrupted", True)
        else:  # a trial a dead process left RUNNING: no Trial object to set it through
            self.storage.set_trial_user_attr(self._storage_id(trial), "interrupted", True)
        frozen = self.study.tell(trial.number, state=TrialState.FAIL)
        callback = self.storage.get_heartbeat_stale_trial_callback()
        if callback is not None and "candidate" in frozen.user_attrs:
            callback(self.study, frozen)

    def recover(self) -> int:
        """Fail the trials a dead process left RUNNING and enqueue their candidates again."""
        stale = self.trials(states=(TrialState.RUNNING,))
        for t in stale:
            self.interrupt(t)
        return len(stale)

    # -- while the proxy runs ----------------------------------------------------------------
    def pruning(self, trial: OptunaTrial, completed: Sequence[FrozenTrial]
                ) -> Callable[[int, float], bool]:
        """``report(step, value) -> prune?``: the value goes to the storage, the decision is
        the study's pruner's, asked from memory (see :class:`_PruningView`)."""
        view = _PruningView(self.study, self.storage, trial.trial, completed,
                            trial_id=self._storage_id(trial))

        def report(step: int, value: float) -> bool:
            trial.trial.report(value, step)
            return view.should_prune(step, value)

        return report

    @contextlib.contextmanager
    def heartbeats(self):
        """One heartbeat thread for the loop; ``watching(trial)`` beats for a trial."""
        self._heartbeat = _Heartbeat(self.storage)
        try:
            yield self
        finally:
            self._heartbeat.stop()
            self._heartbeat = None

    @contextlib.contextmanager
    def watching(self, trial: OptunaTrial):
        if self._heartbeat is None:
            yield
            return
        with self._heartbeat.watching(self._storage_id(trial)):
            yield

    def _storage_id(self, trial: OptunaTrial | FrozenTrial) -> int:
        """The storage's id of a trial (looked up once per handle)."""
        if isinstance(trial, OptunaTrial) and trial.storage_id is not None:
            return trial.storage_id
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self._study_id,
                                                                        trial.number)
        if isinstance(trial, OptunaTrial):
            trial.storage_id = trial_id
        return trial_id


class _PruningView:
    """The study's pruner, asked from memory.

    ``trial.should_prune()`` reads every trial back from the SQLite storage at each report
    (milliseconds, as long as a short proxy step). Within a trial the finished trials do not
    change, so the view reads them once and hands the same pruner the same frozen trials,
    with the running trial's intermediate values kept here; the decisions are the ones
    ``should_prune()`` would make (tested). The reports still go to the storage.
    """

    def __init__(self, study: optuna.Study, store: Any, trial: optuna.Trial,
                 completed: Optional[Sequence[FrozenTrial]] = None,
                 trial_id: Optional[int] = None):
        self.study = study
        self.pruner = study.pruner
        self.direction = study.direction
        self._completed = list(completed if completed is not None else
                               study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if trial_id is None:
            trial_id = store.get_trial_id_from_study_id_trial_number(
                store.get_study_id_from_name(study.study_name), trial.number)
        self.frozen = copy.copy(store.get_trial(trial_id))  # the storage's copy stays as it is
        self._values: dict[int, float] = dict(self.frozen.intermediate_values)

    def __getattr__(self, name):  # anything else a pruner asks of the study
        return getattr(self.study, name)

    def get_trials(self, deepcopy: bool = False, states=None):
        if states is not None and tuple(states) != (TrialState.COMPLETE,):
            return self.study.get_trials(deepcopy=deepcopy, states=states)
        return self._completed

    def should_prune(self, step: int, value: float) -> bool:
        self._values[step] = value
        self.frozen.intermediate_values = dict(self._values)
        return self.pruner.prune(self, self.frozen)


class _Heartbeat:
    """Records the running trial's heartbeat while the proxy runs, so other readers of the
    storage (optuna's stale-trial detection, a dashboard) can tell a dead run's trials.

    One thread for the whole search: the first beat of a trial comes within one interval of
    its start, so a trial shorter than that writes nothing (``--resume`` fails and re-enqueues
    whatever a dead process left RUNNING, heartbeat or not)."""

    def __init__(self, store):
        self.storage = store
        self.interval = store.get_heartbeat_interval() if hasattr(
            store, "get_heartbeat_interval") else None
        self.trial_id: Optional[int] = None
        self._stop = threading.Event()
        self.thread = None
        if self.interval:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()

    @contextlib.contextmanager
    def watching(self, trial_id: int):
        self.trial_id = trial_id
        try:
            yield
        finally:
            self.trial_id = None

    def _beat(self):
        while not self._stop.wait(self.interval):
            trial_id = self.trial_id
            if trial_id is None:
                continue
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed heartbeat only delays stale detection
                pass

    def stop(self):
        self._stop.set()
        if self.thread is not None:
            self.thread.join()
