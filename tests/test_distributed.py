"""Distributed searches with real parts: several ``autoloss worker`` processes on one journal
file and on a real PostgreSQL server, and the Ray Tune backend on a real local Ray head.

Marked ``distributed``: the default ``pytest`` run leaves them out (they start servers and
processes); ``.ci/run`` runs them with ``pytest -m distributed``.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autoloss.errors import AutolossError
from autoloss.search.engine import Search, join
from autoloss.search.runs import Run

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
FAST = {"AUTOLOSS_HEARTBEAT_S": "1", "AUTOLOSS_GRACE_S": "4"}  # a dead worker is seen in 4 s


def _space(tmp_path: Path, trials: int, budget: int = 60) -> Path:
    """focal's alpha and gamma on clssim, random strategy: every trial runs the proxy."""
    path = tmp_path / "dist.toml"
    path.write_text(f"""
[search]
description = "test"
strategy = "random"
trials = {trials}
seed = 0
[proxy]
name = "clssim"
budget = {budget}
[objective]
metric = "ap"
direction = "maximize"
[slots.cls]
signature = "sigmoid"
mode = "params"
seeds = ["focal"]
[validation]
top_k = 1
seeds = 1
""")
    return path


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **FAST, **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _worker(folder: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autoloss.cli", "worker", str(folder),
                             "--threads", "1"], env=_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _finished(run: Run) -> list:
    """Trials that ran to an end and count (interrupted ones are rerun by a copy)."""
    return [t for t in run.trials() if t.state.is_finished()
            and not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted"))]


def _check_no_loss_no_duplicate(run: Run, budget: int, workers: int) -> None:
    trials = run.trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert not [t for t in trials if not t.state.is_finished()], "a trial was left open"
    done = _finished(run)
    # a worker starts a trial only while the budget is free: concurrent starts may add one
    # trial per extra worker, never fewer than the budget
    assert budget <= len(done) <= budget + workers - 1, [t.state for t in trials]
    # every interrupted trial was rerun exactly once by its copy
    retried = Counter(t.user_attrs["retry_of"] for t in done if "retry_of" in t.user_attrs)
    interrupted = [t.number for t in trials if t.state == TrialState.FAIL
                   and t.user_attrs.get("interrupted")]
    assert sorted(retried) == sorted(interrupted) and set(retried.values()) <= {1}


def _wait(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))


def _run_with(tmp_path: Path, storage: str, budget: int = 6, proxy_budget: int = 60) -> Run:
    search = Search.create(str(_space(tmp_path, budget, proxy_budget)),
                           runs_dir=tmp_path / "runs",
                           name="dist", storage=storage, threads=1, validate=False)
    return Run(search.folder)


# ------------------------------------------------------------------------ plain checks
def test_sqlite_refuses_parallel_workers(tmp_path):
    with pytest.raises(AutolossError, match="--storage journal"):
        Search.create(str(_space(tmp_path, 4)), runs_dir=tmp_path / "runs", workers=2)
    run = _run_with(tmp_path, "sqlite")
    with pytest.raises(AutolossError, match="SQLite.*--storage journal"):
        join(run)


def test_unknown_storage_is_refused_with_the_choices(tmp_path):
    with pytest.raises(AutolossError, match="journal.*postgresql"):
        Search.create(str(_space(tmp_path, 4)), runs_dir=tmp_path / "runs", storage="mongo")


def test_ray_options_need_the_ray_backend(tmp_path, capsys):
    from autoloss.cli import main

    runs = ["--runs-dir", str(tmp_path / "runs")]
    assert main(["search", "focal-tuning", "--address", "127.0.0.1:1"] + runs) == 2
    assert "need --backend ray" in capsys.readouterr().err
    # nothing listens there: a clear error at once (ray.init would retry for minutes), and
    # no run folder left behind
    port = _free_port()
    assert main(["search", "focal-tuning", "--backend", "ray", "--address",
                 f"127.0.0.1:{port}"] + runs) == 2
    assert "no Ray cluster answers there" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------- journal file
def test_two_workers_on_a_journal_share_the_budget(tmp_path):
    run = _run_with(tmp_path, "journal", budget=8)
    procs = [_worker(run.folder, tmp_path / f"w{i}.log") for i in range(2)]
    _wait(procs, 300)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    _check_no_loss_no_duplicate(run, 8, 2)
    by_worker = Counter(t.user_attrs["worker"] for t in _finished(run))
    assert len(by_worker) == 2, by_worker  # both took trials
    # the run reads the same whatever wrote it: its summary counts every worker's trials
    assert len(run.ranked()) == sum(1 for t in _finished(run) if t.state == TrialState.COMPLETE
                                    and t.user_attrs["verdict"]["status"] == "accepted")


def test_a_killed_worker_s_trial_is_rerun_by_the_other(tmp_path):
    run = _run_with(tmp_path, "journal", budget=6, proxy_budget=300)  # time to kill one
    victim = _worker(run.folder, tmp_path / "victim.log")
    survivor = _worker(run.folder, tmp_path / "survivor.log")
    deadline, killed = time.monotonic() + 120, None
    while time.monotonic() < deadline and killed is None:
        for t in Run(run.folder).trials():
            if (t.state == TrialState.RUNNING and t.intermediate_values
                    and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")):
                victim.send_signal(signal.SIGKILL)
                killed = t.number
                break
        time.sleep(0.2)
    assert killed is not None, "the victim never ran a trial"
    victim.wait()
    _wait([survivor], 300)
    assert survivor.returncode == 0, (tmp_path / "survivor.log").read_text()
    run = Run(run.folder)
    dead = run.trial(killed)
    assert dead.state == TrialState.FAIL and dead.user_attrs["interrupted"]
    rerun = [t for t in run.trials() if t.user_attrs.get("retry_of") == killed]
    assert len(rerun) == 1 and rerun[0].state.is_finished()
    assert rerun[0].user_attrs["candidate"]["key"] == dead.user_attrs["candidate"]["key"]
    _check_no_loss_no_duplicate(run, 6, 2)


# ---------------------------------------------------------------------------- PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL 15 server in a temporary data directory (as ``nobody`` when we are root:
    the server refuses to run as root); yields its URL and stops it."""
    initdb = shutil.which("initdb") or next(iter(Path("/usr/lib/postgresql").glob(
        "*/bin/initdb")), None)
    if initdb is None:
        pytest.skip("no PostgreSQL server on this machine (the Debian package postgresql)")
    bindir = Path(initdb).resolve().parent
    base = tmp_path_factory.mktemp("pg")
    data, sock, port = base / "data", base / "sock", _free_port()
    sock.mkdir()
    prefix = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for p in (base, sock):
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        os.chmod(base, 0o755)
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                  "--clear-groups"]
    # the temporary directory's parents must be reachable by the server's user
    for parent in base.parents:
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    run = lambda *cmd: subprocess.run(prefix + list(cmd), check=True, capture_output=True,
                                      text=True, cwd=base)
    run(str(bindir / "initdb"), "-D", str(data), "-U", "autoloss", "--auth=trust", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-o",
        f"-p {port} -k {sock} -h 127.0.0.1", "start")
    try:
        yield f"postgresql+psycopg2://autoloss@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")


def test_two_workers_on_postgresql(tmp_path, postgres):
    run = _run_with(tmp_path, postgres, budget=6)
    assert run.storage_url == postgres and run.study_name == "dist"
    procs = [_worker(run.folder, tmp_path / f"w{i}.log") for i in range(2)]
    _wait(procs, 300)
    assert [p.returncode for p in procs] == [0, 0], [(tmp_path / f"w{i}.log").read_text()
                                                     for i in range(2)]
    _check_no_loss_no_duplicate(run, 6, 2)
    assert len(Counter(t.user_attrs["worker"] for t in _finished(run))) == 2


# ------------------------------------------------------------------------------ Ray Tune
@dataclass(frozen=True)
class Head:
    address: str
    env: dict  # a driver's environment: the HOME whose ~/.ray/auth_token the head read


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real Ray head on 127.0.0.1 (``ray start --head``), stopped with ``ray stop``.

    Its HOME holds a token (``~/.ray/auth_token``, which any local ``ray.init()`` writes), so
    ``ray start`` turns token authentication on, as on a user's machine; the drivers share
    that HOME and set no ``RAY_AUTH_MODE``: autoloss must send the token itself.
    """
    ray_bin = Path(sys.executable).parent / "ray"
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(os.urandom(16).hex())
    env = {k: v for k, v in _env(HOME=str(home)).items() if not k.startswith("RAY_AUTH")}
    port = _free_port()
    started = subprocess.run(
        [str(ray_bin), "start", "--head", "--port", str(port), "--num-cpus", "2",
         "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True,
        text=True, env=dict(env, RAY_USAGE_STATS_ENABLED="0"), timeout=120)
    assert "Token authentication is enabled" in started.stdout + started.stderr
    try:
        yield Head(f"127.0.0.1:{port}", env)
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env,
                       timeout=120)


def _ray_search(tmp_path: Path, head: Head, trials: int, budget: int = 60,
                log: Path | None = None, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autoloss.cli", "search", str(_space(tmp_path, trials, budget)),
           "--runs-dir", str(tmp_path / "runs"), "--name", "ray", "--backend", "ray",
           "--address", head.address, "--max-concurrent", "2", "--threads", "1",
           "--no-validate", "--no-report", "--quiet"]
    return subprocess.Popen(cmd, env=dict(head.env, **env),
                            stdout=(log or tmp_path / "ray.log").open("w"),
                            stderr=subprocess.STDOUT)


def _poll(folder: Path) -> list:
    """The run's trials as a reader sees them while the driver writes (none before its
    storage and study exist)."""
    if not (folder / "study.db").exists():
        return []
    try:
        return Run(folder).trials()
    except Exception:  # noqa: BLE001 - the driver is still creating the schema or the study
        return []


def test_ray_search_by_address_lands_in_the_run_storage(tmp_path, ray_head):
    proc = _ray_search(tmp_path, ray_head, trials=6)
    _wait([proc], 300)
    assert proc.returncode == 0, (tmp_path / "ray.log").read_text()
    run = Run(tmp_path / "runs" / "ray")
    assert run.backend == "ray"
    _check_no_loss_no_duplicate(run, 6, 1)
    assert run.ranked(), "no trial completed on the cluster"
    assert (run.folder / "summary.json").exists()
    assert run.export().exists()  # the winner exports as any local run's


def test_a_killed_ray_worker_s_trial_is_retried(tmp_path, ray_head):
    proc = _ray_search(tmp_path, ray_head, trials=4, budget=300)
    folder, deadline, killed = tmp_path / "runs" / "ray", time.monotonic() + 180, None
    while time.monotonic() < deadline and killed is None:
        running = [t for t in _poll(folder) if t.state == TrialState.RUNNING
                   and t.intermediate_values and t.user_attrs.get("ray")]
        if running:  # the Ray worker process that runs it, by the pid the trial records
            os.kill(running[0].user_attrs["ray"]["pid"], signal.SIGKILL)
            killed = running[0].number
        time.sleep(0.3)
    assert killed is not None, ("no Ray trial was caught running; the driver's log:\n"
                                + (tmp_path / "ray.log").read_text()[-4000:])
    _wait([proc], 400)
    assert proc.returncode == 0, (tmp_path / "ray.log").read_text()
    run = Run(folder)
    _check_no_loss_no_duplicate(run, 4, 1)
    # the dead worker's trial was retried (by Tune in place, or enqueued again by the
    # driver) and ended once; no trial was given up
    keys = Counter(t.user_attrs["candidate"]["key"] for t in _finished(run))
    assert max(keys.values()) == 1
    assert all(t.user_attrs["verdict"]["filter"] != "ray" for t in _finished(run))
    victim = run.trial(killed)
    if victim.state == TrialState.FAIL:  # enqueued again by the driver: its copy ran
        assert victim.user_attrs["interrupted"]
        assert [t.number for t in _finished(run) if t.user_attrs.get("retry_of") == killed
                or t.user_attrs["candidate"]["key"] == victim.user_attrs["candidate"]["key"]]
    else:  # retried by Tune in place: it ran twice on the cluster, told once
        assert victim.state.is_finished()


def test_a_killed_ray_driver_resumes_without_losing_trials(tmp_path, ray_head):
    proc = _ray_search(tmp_path, ray_head, trials=6, budget=300)
    folder, deadline = tmp_path / "runs" / "ray", time.monotonic() + 240
    while time.monotonic() < deadline:
        if sum(1 for t in _poll(folder) if t.state == TrialState.COMPLETE) >= 2:
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.state, t.values) for t in _finished(Run(folder))}
    assert len(before) >= 2
    resume = subprocess.run(
        [sys.executable, "-m", "autoloss.cli", "search", str(tmp_path / "dist.toml"),
         "--runs-dir", str(tmp_path / "runs"), "--name", "ray", "--resume", "--threads", "1",
         "--no-validate", "--no-report", "--quiet"], env=ray_head.env, capture_output=True,
        text=True, timeout=400)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    run = Run(folder)
    after = {t.number: (t.state, t.values) for t in _finished(run)}
    assert all(after[n] == v for n, v in before.items())  # nothing finished was lost
    _check_no_loss_no_duplicate(run, 6, 1)


def test_a_driver_refused_by_the_head_s_authentication_says_how_to_fix_it(tmp_path, ray_head):
    # the user opted out of token authentication; the head wants a token
    proc = _ray_search(tmp_path, ray_head, trials=2, RAY_AUTH_MODE="disabled")
    _wait([proc], 300)
    log = (tmp_path / "ray.log").read_text()
    assert proc.returncode == 2, log
    assert "RAY_AUTH_MODE=token" in log and "RAY_AUTH_TOKEN" in log
    assert not (tmp_path / "runs").exists()  # no half-made run to resume or rename
