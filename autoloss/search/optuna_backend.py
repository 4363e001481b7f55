"""The Optuna backend: the one place that drives Optuna's trials and storage.

* :func:`storage`: a run's storage, the source of truth for trials whichever backend or
  worker ran them: SQLite (``study.db``, one process: the default), Optuna's journal file
  (``journal.log``: workers on one machine or a shared filesystem) or an RDB URL
  (PostgreSQL: workers on many machines);
* :class:`OptunaTrial`: the backend-neutral :class:`~autoloss.search.handle.TrialHandle`
  over an ``optuna.Trial`` (suggestions go to the study's sampler);
* :class:`OptunaStudy`: a worker's view of the study: ask and tell, interrupted trials
  failed and enqueued again, heartbeats while a proxy runs, stale trials of dead workers
  failed and enqueued again, pruning decisions from memory.

Everything here uses Optuna's public API (the study's, the trial's and the storage's);
nothing outside this module touches a storage or a trial id.
"""
from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..errors import AutolossError
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


STUDY = "search"  # the study's name in a run's own storage file (SQLite, journal)
SQLITE, JOURNAL = "sqlite", "journal"
# a worker's trial is stale after GRACE_S without a beat (environment: for tests, or a
# cluster whose workers stall longer)
HEARTBEAT_S = float(os.environ.get("AUTOLOSS_HEARTBEAT_S", 5))
GRACE_S = float(os.environ.get("AUTOLOSS_GRACE_S", 20))
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # what a trial records of its worker
MAX_RETRIES = 2  # a trial whose worker died is enqueued again at most this many times


class StorageError(AutolossError):
    """A storage that cannot be used as asked."""


def check_storage(url: Optional[str]) -> str:
    """``url`` as a run records it: ``sqlite`` (default), ``journal`` or an RDB URL."""
    url = url or SQLITE
    if url in (SQLITE, JOURNAL) or ("://" in url and not url.startswith("sqlite")):
        return url
    raise StorageError(
        f"--storage {url!r}: not a storage autoloss knows; use 'sqlite' (the default: "
        "study.db in the run folder, one process), 'journal' (journal.log in the run folder: "
        "many workers on one machine or a shared filesystem) or a database URL such as "
        "postgresql+psycopg2://user@host:5432/autoloss (many machines)")


def is_shared(url: Optional[str]) -> bool:
    """Can several processes write the storage at once (SQLite: no)?"""
    return check_storage(url) != SQLITE


def study_name(url: Optional[str], run_name: str) -> str:
    """A run's study name: ``search`` in its own file, the run's name in a shared database
    (one PostgreSQL database holds many runs)."""
    return run_name if "://" in check_storage(url) else STUDY


def storage(folder: Path, url: Optional[str] = None,
            create: bool = True) -> optuna.storages.BaseStorage:
    """The run's storage (``url``: see :func:`check_storage`); ``create=False`` for a reader,
    which never makes a run's SQLite file (an error says the run has none yet).

    SQLite runs in write-ahead-log mode with ``synchronous=NORMAL``: a commit appends to
    ``study.db-wal`` without waiting for the disk, which makes the per-trial writes several
    times cheaper. A killed process loses nothing it committed (the log is replayed when the
    database is next opened); only a power cut or an OS crash can roll back the last commits.
    Readers (``autoloss report``, optuna-dashboard) may open the database while it is written.
    A new file gets its schema under another name and is then renamed into place: Optuna
    stamps its schema version check-then-insert, so a reader opening a file whose schema the
    writer is still making would insert the same row and one of the two would fail
    ("UNIQUE constraint failed: alembic_version"); a reader sees no file or a whole one.
    Its heartbeats are Optuna's (one writer: ``--resume`` fails whatever was left RUNNING).

    The shared storages keep their heartbeats as a trial attribute (the journal has no
    heartbeat of its own, and one mechanism serves both): see :class:`OptunaStudy`.
    """
    url = check_storage(url)
    if url == JOURNAL:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(Path(folder) / "journal.log")))
    if url != SQLITE:
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (ImportError, ModuleNotFoundError) as err:
            raise StorageError(f"--storage {url}: the database driver is missing ({err}); "
                               "pip install psycopg2-binary for PostgreSQL") from err
        except sqlalchemy.exc.SQLAlchemyError as err:
            raise StorageError(f"--storage {url}: cannot open the database: "
                               f"{str(err).splitlines()[0]}") from err
    path = Path(folder) / "study.db"
    if not path.exists():
        if not create:
            raise StorageError(f"{path}: no such file: the run has not made its storage yet "
                               "(or the folder is not a run's)")
        fresh = path.with_name(path.name + ".new")
        fresh.unlink(missing_ok=True)  # left by a process killed while making it
        optuna.storages.RDBStorage(f"sqlite:///{fresh}").engine.dispose()
        os.replace(fresh, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        store = optuna.storages.RDBStorage(
            f"sqlite:///{path}", heartbeat_interval=max(1, int(HEARTBEAT_S)),
            grace_period=max(1, int(GRACE_S)), heartbeat_stale_trial_callback=retry,
            engine_kwargs={"connect_args": {"timeout": 30}})
    sqlalchemy.event.listen(store.engine, "connect", _sqlite_pragmas)
    store.engine.dispose()  # the connections opened while creating the schema lack them
    return store


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def load_study(folder: Path, url: Optional[str] = None,
               name: Optional[str] = None) -> optuna.Study:
    """A run's study, to read (no sampler or pruner of the search's)."""
    return optuna.load_study(study_name=name or study_name(url, Path(folder).name),
                             storage=storage(folder, url, create=False))


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
    """The run's study as one worker drives it.

    ``strategy`` picks the sampler: TPE for ``tpe`` (its suggestions are the tree's
    tokens), random otherwise (the other strategies draw from the handle's generator and
    suggest nothing); the median pruner stops bad single-objective trials early.

    With SQLite the worker is the run's only writer (``runs.Lock``): :meth:`recover` fails
    whatever an earlier process left RUNNING. With a shared storage (``url`` journal or an
    RDB URL) other workers may be running trials: each trial carries a ``heartbeat``
    attribute (wall-clock seconds) that its worker renews every ``HEARTBEAT_S``, and
    :meth:`fail_stale` fails only the RUNNING trials whose worker stopped beating for
    ``GRACE_S`` seconds, then enqueues their candidates again (at most ``MAX_RETRIES``
    times). Failing is the claim: the storage lets one worker finish a trial, so two workers
    that notice the same dead trial enqueue it once.
    """

    def __init__(self, folder: Path, directions: Sequence[str], strategy: str, seed: int,
                 url: Optional[str] = None, name: Optional[str] = None):
        self.seed = seed
        self.shared = is_shared(url)
        if strategy == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5) if len(directions) == 1
                  else optuna.pruners.NopPruner())
        self.storage = storage(folder, url)
        self.name = name or study_name(url, Path(folder).name)
        with quiet():
            self.study = optuna.create_study(study_name=self.name, storage=self.storage,
                                             directions=list(directions), sampler=sampler,
                                             pruner=pruner, load_if_exists=True)
        self._study_id = self.storage.get_study_id_from_name(self.name)
        self._heartbeat: Optional[_Heartbeat] = None

    def trials(self, states: Optional[Sequence[TrialState]] = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    # -- a trial's life ----------------------------------------------------------------------
    def ask(self) -> OptunaTrial:
        with warnings.catch_warnings():  # heartbeats are recorded by _Heartbeat below
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            return OptunaTrial(self.study.ask(), self.seed)

    def complete(self, trial: OptunaTrial, values: Sequence[float]) -> FrozenTrial:
        return self._tell(trial, values=list(values))

    def close(self, trial: OptunaTrial, state: TrialState) -> FrozenTrial:
        """Close a trial that has no values (pruned or failed)."""
        return self._tell(trial, state=state)

    def _tell(self, trial: OptunaTrial, **how) -> FrozenTrial:
        """Tell; a trial another worker failed meanwhile (it took this worker for dead) is
        left as it is: its enqueued copy reruns the candidate."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "already finished"
                return self.study.tell(trial.trial, skip_if_finished=self.shared, **how)
        except UpdateFinishedTrialError:
            if not self.shared:
                raise
            return self.storage.get_trial(self._storage_id(trial))

    def interrupt(self, trial: OptunaTrial | FrozenTrial) -> None:
        """Fail an unfinished trial (``interrupted``: it does not count) and enqueue its
        candidate again (a WAITING copy of the trial, its attributes included): it reruns
        on resume or in another worker."""
        if isinstance(trial, OptunaTrial):
            trial.trial.set_user_attr("interrupted", True)
        else:  # a trial a dead process left RUNNING: no Trial object to set it through
            self.storage.set_trial_user_attr(self._storage_id(trial), "interrupted", True)
        frozen = self.study.tell(trial.number, state=TrialState.FAIL)
        self._enqueue_again(frozen)

    def _enqueue_again(self, frozen: FrozenTrial) -> None:
        if "candidate" not in frozen.user_attrs:
            return  # it died before it had a candidate: a new trial proposes one
        self.study.enqueue_trial(dict(frozen.params), user_attrs={
            **frozen.user_attrs, "retry_of": frozen.number})

    def recover(self) -> int:
        """Fail the trials a dead process left RUNNING and enqueue their candidates again
        (with a shared storage: only those whose worker stopped beating)."""
        if self.shared:
            return self.fail_stale()
        stale = self.trials(states=(TrialState.RUNNING,))
        for t in stale:
            self.interrupt(t)
        return len(stale)

    def fail_stale(self, grace: float = GRACE_S) -> int:
        """Fail the RUNNING trials whose worker has not beaten for ``grace`` seconds and
        enqueue each candidate again (``retries`` counts the times; after ``MAX_RETRIES``
        the trial stays failed, with the reason). Returns how many this worker failed."""
        now, failed = time.time(), 0
        for t in self.trials(states=(TrialState.RUNNING,)):
            last = max(t.user_attrs.get("heartbeat", 0.0),
                       t.datetime_start.timestamp() if t.datetime_start else 0.0)
            if now - last < grace:
                continue
            trial_id = self._storage_id(t)
            retries = t.user_attrs.get("retries", 0)
            try:  # the attributes first (a finished trial takes none), then the claim
                if retries >= MAX_RETRIES:
                    self.storage.set_trial_user_attr(trial_id, "verdict", {
                        "status": "failed", "filter": "worker",
                        "reason": f"its worker died {retries + 1} times (no beat for "
                                  f"{now - last:.0f} s); not retried again"})
                else:
                    self.storage.set_trial_user_attr(trial_id, "interrupted", True)
                    self.storage.set_trial_user_attr(trial_id, "retries", retries + 1)
                if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # its worker told, or another worker claimed it
                continue
            failed += 1
            frozen = self.storage.get_trial(trial_id)
            if retries < MAX_RETRIES:
                self._enqueue_again(frozen)
        return failed

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
        if self.shared:
            def beat(trial_id):
                self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            interval = HEARTBEAT_S
        else:
            beat, interval = self.storage.record_heartbeat, self.storage.get_heartbeat_interval()
        self._heartbeat = _Heartbeat(beat, interval)
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
    storage (stale-trial detection by another worker or by ``--resume``, a dashboard) can
    tell a dead worker's trials.

    One thread for the whole search: the first beat of a trial comes within one interval of
    its start (a trial younger than the grace period is never stale)."""

    def __init__(self, beat: Callable[[int], None], interval: Optional[float]):
        self.beat = beat
        self.interval = interval
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
                self.beat(trial_id)
            except Exception:  # noqa: BLE001 - a missed heartbeat only delays stale detection
                pass

    def stop(self):
        self._stop.set()
        if self.thread is not None:
            self.thread.join()
