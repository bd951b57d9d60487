"""The run store survives processes killed (SIGKILL) while they write to it.

Killed here, at random moments: writers doing what the web app and a worker do to the store, as fast
as they can (many kills: they start in half a second); the web app itself (`python app/main.py`, its
worker and its run's child, all at once, as a container that dies) while clients queue, cancel and
resume runs through its API; and a foreground `avstudio train` logging metrics and checkpoints every
step. After every kill the SQLite file passes `PRAGMA integrity_check` and every run is consistent
(:func:`problems`); metric points are never half a batch; every answered request is in the file; and
a run left `running` by a dead process is shown `interrupted` once its heartbeat is stale, then resumes.

The store writers are this module run as a script (``python -m tests.test_crash_consistency ROLE
URL SEED``): it imports the store alone, not torch, so that killing one costs half a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import update

from trainer.db_models import Run
from trainer.records import MetricPoint
from trainer.store import RunStatus, RunStore

REPO_ROOT = Path(__file__).resolve().parent.parent
COUNTER = "tests.plugins_for_tests.counter_plugin"
KEYS = [f"k{j}" for j in range(10)]  # what a store writer logs at each step
STEPS_PER_BATCH = 5  # a writer's batch: 50 points, as RunContext flushes them

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from Linux's /proc")


# -- what a consistent store looks like -----------------------------------------------------------


def problems(db: Path) -> list[str]:
    """Everything wrong with the run store file ``db``, read with plain sqlite3 (not the store's code)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot, while other processes write on
        found = [f"integrity_check: {row[0]}" for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        found += [f"foreign key: {row}" for row in conn.execute("PRAGMA foreign_key_check")]
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:  # killed before its first migration committed (a migration is one transaction)
            return found
        if not {"alembic_version", "runs", "params", "metrics", "latest_metrics", "artifacts"} <= tables:
            return [*found, f"half a schema: {sorted(tables)}"]
        statuses = [s.value for s in RunStatus]
        for run_id, status, started, finished, heartbeat, pid, config in conn.execute(
                "SELECT id, status, started_at, finished_at, heartbeat_at, pid, config FROM runs"):
            where = f"run {run_id} ({status})"
            if status not in statuses:
                found.append(f"{where}: unknown status")
            if status in RunStatus.finished() and finished is None:
                found.append(f"{where}: finished without an end time")
            if status == RunStatus.RUNNING and (started is None or heartbeat is None or pid is None or finished):
                found.append(f"{where}: running without a start, a heartbeat or a process, or with an end")
            if status == RunStatus.QUEUED and (finished is not None or pid is not None):
                found.append(f"{where}: queued with an end time or a process")
            params = {k for (k,) in conn.execute("SELECT key FROM params WHERE run_id = ?", (run_id,))}
            if params != set(json.loads(config)):
                found.append(f"{where}: params {sorted(params)} are not its config's keys")
        # the latest value of each metric is its point with the highest step, and only metrics logged have one
        history = {(r, k): (s, v) for r, k, s, v in conn.execute(
            "SELECT m.run_id, m.key, m.step, m.value FROM metrics m WHERE m.id = (SELECT n.id FROM metrics n "
            "WHERE n.run_id = m.run_id AND n.key = m.key ORDER BY n.step DESC, n.id DESC LIMIT 1)")}
        latest = {(r, k): (s, v) for r, k, s, v in conn.execute("SELECT run_id, key, step, value FROM latest_metrics")}
        if latest != history:
            found.append(f"latest metrics differ from the history: {sorted(set(latest.items()) ^ set(history.items()))[:5]}")
        return found
    finally:
        conn.close()


def whole_steps(db: Path, run_id: int, keys: list[str]) -> list[int]:
    """The steps at which run ``run_id`` logged ``keys`` (each step once), after checking that no step
    was half-written (each key as often as the others) and none is missing below the last one."""
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(keys))
        rows = conn.execute(f"SELECT step, key, COUNT(*) FROM metrics WHERE run_id = ? AND key IN ({marks}) "
                            "GROUP BY step, key", (run_id, *keys)).fetchall()
    finally:
        conn.close()
    counts: dict[int, dict[str, int]] = {}
    for step, key, count in rows:
        counts.setdefault(step, {})[key] = count
    half = {step: c for step, c in counts.items() if set(c) != set(keys) or len(set(c.values())) != 1}
    assert not half, f"run {run_id}: steps with part of their metrics: {dict(list(half.items())[:3])}"
    steps = sorted(counts)
    assert steps == list(range(len(steps))), f"run {run_id}: steps missing below {steps[-1]}"
    return steps


def _age_heartbeat(store: RunStore, run_id: int) -> None:
    """Make the run's last heartbeat older than the store's limit, as a minute without one would."""
    old = store.get_run(run_id).heartbeat_at - timedelta(seconds=store.stale_after_s + 1)
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=old))


def _lost_runs_become_interrupted_and_resumable(store: RunStore, running: list[int]) -> None:
    """Runs left ``running`` by a killed process: once their heartbeat is stale, every listing shows them
    interrupted, and each can be queued to resume."""
    for run_id in running:
        _age_heartbeat(store, run_id)
    assert {r.id: r.status for r in store.list_runs(limit=100_000) if r.id in running} == dict.fromkeys(
        running, "interrupted")
    for run_id in running:
        assert store.requeue_for_resume(run_id).status == "queued"


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` at once (a container that dies), and wait until they are gone."""
    from app.testing import wait_for
    from tests.processes import session_processes

    for pid in session_processes(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not session_processes(sid), timeout_s=15, every_s=0.05)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(home), AVSTUDIO_PLUGINS="", AVSTUDIO_EXTRA_PLUGINS=COUNTER, AVSTUDIO_DEVICE="cpu",
               AVSTUDIO_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def _avstudio_in_process(home: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    """``avstudio ARGS`` run in this process (torch is imported once, not per command)."""
    from click.testing import CliRunner

    from app.cli import cli

    for key, value in _env(home).items():
        if key.startswith("AVSTUDIO_") and key != "AVSTUDIO_THREADS":  # leave this process's torch threads be
            monkeypatch.setenv(key, value)
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_checks_see_what_a_torn_write_would_leave(tmp_path):
    """What the tests below rely on: problems() and whole_steps() do see a broken store."""
    db = tmp_path / "runs.db"
    store = RunStore(f"sqlite:///{db}")
    run_id = store.enqueue("m", "r", {"a": 1})
    store.claim_run(run_id, "w", host="h", pid=1)
    store.log_metrics(run_id, [MetricPoint(s, k, 1.0, 0.0) for s in range(3) for k in KEYS])
    store.close()
    assert problems(db) == [] and whole_steps(db, run_id, KEYS) == [0, 1, 2]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM metrics WHERE step = 2 AND key = 'k3'")  # half a batch
        conn.execute("DELETE FROM params")
        conn.execute("UPDATE runs SET status = 'succeeded'")
    found = "\n".join(problems(db))
    for what in ("latest metrics differ", "params [] are not its config's keys", "finished without an end time"):
        assert what in found
    with pytest.raises(AssertionError, match="part of their metrics"):
        whole_steps(db, run_id, KEYS)


# -- store writers killed at random moments ---------------------------------------------------------


def _write_like_a_worker(store: RunStore, rng: random.Random) -> None:
    """Claim runs and log whole steps of metrics (from the last step committed), heartbeats, progress,
    checkpoints and a final status; first interrupt the runs of the dead worker before this one."""
    host, pid = socket.gethostname(), os.getpid()
    for run_id in store.mark_interrupted(host=host, alive_pids={pid}):
        with contextlib.suppress(ValueError):  # the app cancelled or resumed it meanwhile
            store.requeue_for_resume(run_id)
    while True:
        run = store.claim_next(f"writer-{pid}", host=host, pid=pid)
        if run is None:
            time.sleep(0.01)
            continue
        done = [p.step for p in store.metrics(run.id, [KEYS[0]])]
        step = done[-1] + 1 if done else 0
        for _ in range(rng.randint(1, 30)):
            store.log_metrics(run.id, [MetricPoint(s, k, s + j / 10, time.time())
                                       for s in range(step, step + STEPS_PER_BATCH) for j, k in enumerate(KEYS)])
            step += STEPS_PER_BATCH
            store.heartbeat(run.id)
            store.set_progress(run.id, rng.random(), "writing")
            if rng.random() < 0.3:
                store.add_artifact(run.id, "model", "checkpoint", f"/nowhere/{run.id}.safetensors", {"step": step - 1})
            if store.cancel_requested(run.id):
                break
        store.finish(run.id, RunStatus.CANCELLED if store.cancel_requested(run.id)
                     else rng.choice([RunStatus.SUCCEEDED, RunStatus.FAILED]), error="written")


def _write_like_the_app(store: RunStore, rng: random.Random) -> None:
    """Queue runs (with params), cancel, resume and delete them, and list them, at random."""
    while True:
        ids = [r.id for r in store.list_runs(limit=50)]
        action = rng.random()
        with contextlib.suppress(KeyError, ValueError):  # a run in the wrong state for it, or gone
            if action < 0.5 or not ids:
                store.enqueue("writers", "write", {"seed": rng.random(), "note": "x" * rng.randint(0, 3000),
                                                   "layers": [rng.randint(1, 9)] * rng.randint(0, 20)})
            elif action < 0.75:
                store.request_cancel(rng.choice(ids))
            elif action < 0.95:
                store.requeue_for_resume(rng.choice(ids))
            else:
                store.delete_run(rng.choice(ids))


def _start_writer(role: str, url: str, seed: int, log: Path) -> subprocess.Popen:
    """A store writer; it prints "ready" once it has opened the store (and migrated a new file).
    Its warnings go to ``log`` (a pipe nobody reads would fill up and block it)."""
    with log.open("a") as errors:
        return subprocess.Popen([sys.executable, "-m", "tests.test_crash_consistency", role, url, str(seed)],
                                cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                                stdout=subprocess.PIPE, stderr=errors, text=True)


def _ready(writer: subprocess.Popen, log: Path) -> None:
    ready, _, _ = select.select([writer.stdout], [], [], 120)
    assert ready and writer.stdout.readline() == "ready\n", log.read_text()[-3000:]


def _kill_writers_at_random(tmp_path: Path, kills: int, seed: int) -> None:
    db = tmp_path / "runs.db"
    url = f"sqlite:///{db}"
    print(f"seed {seed}")  # shown when it fails
    rng = random.Random(seed)
    log = tmp_path / "writers.log"
    writers = {role: _start_writer(role, url, rng.randrange(10**6), log) for role in ("app", "worker")}
    try:
        for kill in range(kills):
            role = ("app", "worker")[kill % 2]
            if kill:  # the first kill comes during the start-up, likely while it migrates the new file
                _ready(writers[role], log)
            time.sleep(rng.uniform(0.0, 0.8))
            writers[role].kill()
            # it was writing, not failing
            assert writers[role].wait(timeout=30) == -signal.SIGKILL, log.read_text()[-3000:]
            writers[role].stdout.close()
            assert problems(db) == []  # the other one writes on meanwhile
            writers[role] = _start_writer(role, url, rng.randrange(10**6), log)
        time.sleep(0.5)
    finally:
        for writer in writers.values():
            writer.kill()
            writer.wait(timeout=30)
    assert problems(db) == []
    store = RunStore(url)
    try:
        runs = store.list_runs(limit=100_000)  # the writers' runs, a running one too
        for run in runs:
            if store.metrics(run.id, [KEYS[0]]):
                whole_steps(db, run.id, KEYS)
        _lost_runs_become_interrupted_and_resumable(store, [r.id for r in runs if r.status == RunStatus.RUNNING])
        assert sum(len(store.metrics(r.id, [KEYS[0]])) for r in runs) >= STEPS_PER_BATCH  # they did write
        assert problems(db) == []
    finally:
        store.close()


def test_store_writers_killed_at_random_moments_leave_a_consistent_store(tmp_path, booting_app):
    # (booting_app: the app of the test below starts meanwhile)
    _kill_writers_at_random(tmp_path, kills=10, seed=14)


@pytest.mark.slow
def test_store_writers_killed_at_random_moments_many_times(tmp_path):
    _kill_writers_at_random(tmp_path, kills=150, seed=int(time.time()))


# -- the web app killed while clients queue, cancel and resume runs ---------------------------------


@dataclass
class App:
    """`python app/main.py` started on ``home``, in a session of its own (with its worker, if any)."""

    home: Path
    port: int
    proc: subprocess.Popen


def _start_app(home: Path, *, worker: bool) -> App:
    from app.testing import free_port

    port = free_port()
    env = {**_env(home), "AVSTUDIO_ENABLE_TRAINING": "1", "AVSTUDIO_NO_WORKER": "0" if worker else "1",
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    with (home / "app.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "app/main.py"], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    return App(home, port, proc)


@pytest.fixture(scope="module")
def booting_app(tmp_path_factory) -> Iterator[App]:
    """An app with no worker, started by the first test that asks for it, so that its start-up (10 s
    and more) overlaps the tests that run before the one that kills it."""
    home = tmp_path_factory.mktemp("app") / "home"
    home.mkdir()
    app = _start_app(home, worker=False)
    yield app
    if app.proc.poll() is None:
        _kill_session(app.proc.pid)
    app.proc.wait(timeout=30)


def _client(app: App):
    from gradio_client import Client

    deadline = time.monotonic() + 120
    while True:
        try:
            return Client(f"http://127.0.0.1:{app.port}/", verbose=False)
        except Exception:
            if app.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the app did not start:\n{(app.home / 'app.log').read_text()[-3000:]}") from None
            time.sleep(0.3)


def _use_the_runs_api(client, answered: list[int], stop: threading.Event, seed: int) -> None:
    """Queue short counter runs, cancel and resume them, until ``stop`` (or the app dies)."""
    rng = random.Random(seed)
    mine: list[int] = []
    while not stop.is_set():
        action = rng.random()
        try:
            if action < 0.6 or not mine:
                config = {"steps": rng.randint(2, 40), "sleep_s": 0.05}
                mine.append(int(client.predict("counter", "count", config, "cpu", "", api_name="/queue_run")))
                answered.append(mine[-1])
            elif action < 0.9:
                client.predict(rng.choice(mine), "", api_name="/cancel_run")
            else:
                client.predict(rng.choice(mine), "", api_name="/resume_run")
        except Exception:  # a refusal (a run in the wrong state), or the app is gone
            if stop.is_set():
                return


def _kill_the_app_mid_write(app: App, rng: random.Random, *, training: bool) -> list[int]:
    """Have three clients write through the app's API and SIGKILL all its processes at a random moment
    (``training``: while its worker trains a run); returns the ids of the runs
    the app said it queued."""
    from app.testing import wait_for

    _wait_for = partial(wait_for, every_s=0.05)

    answered: list[int] = []
    stop = threading.Event()
    try:
        client = _client(app)
        if training:  # a long run first, that the worker is training when the app dies
            answered.append(int(client.predict("counter", "count", {"steps": 400, "sleep_s": 0.05}, "cpu", "",
                                               api_name="/queue_run")))
        for _ in range(3):
            threading.Thread(target=_use_the_runs_api, args=(_client(app), answered, stop, rng.randrange(10**6)),
                             daemon=True).start()
        if training:  # (it may be one that an earlier start left, resumed)
            with contextlib.closing(RunStore(f"sqlite:///{app.home / 'runs.db'}")) as store:
                _wait_for(lambda: any(r.latest_metrics.get("counted", -1) >= 1 for r in store.list_runs(status="running")),
                          timeout_s=180)
        else:
            _wait_for(lambda: len(answered) >= 5, timeout_s=60)
        time.sleep(rng.uniform(0.0, 1.0))
        assert app.proc.poll() is None, (app.home / "app.log").read_text()[-3000:]
    finally:
        _kill_session(app.proc.pid)
        stop.set()
        app.proc.wait(timeout=30)
    return list(answered)


def _check_after_the_app_died(home: Path, answered: list[int], *, training: bool) -> None:
    db = home / "runs.db"
    assert problems(db) == []
    with contextlib.closing(RunStore(f"sqlite:///{db}")) as store:
        runs = {r.id: r for r in store.list_runs(limit=100_000)}
        assert set(answered) <= set(runs)  # every run the app said it queued is in the file
        for run in runs.values():
            if "counted" in run.latest_metrics:
                whole_steps(db, run.id, ["loss", "counted"])
        if training:
            running = [i for i, r in runs.items() if r.status == RunStatus.RUNNING]
            assert running  # what its worker trained
            _lost_runs_become_interrupted_and_resumable(store, running)
    assert problems(db) == []


def test_the_web_app_killed_while_it_queues_and_cancels_runs(booting_app):
    answered = _kill_the_app_mid_write(booting_app, random.Random(), training=False)
    _check_after_the_app_died(booting_app.home, answered, training=False)


@pytest.mark.slow
def test_the_web_app_and_its_worker_killed_many_times(tmp_path):
    """All of the app's processes killed while its worker trains a run, four times on one home: each
    time the run shows interrupted once stale and is queued again, and the next start trains on."""
    rng = random.Random()
    for _ in range(4):
        answered = _kill_the_app_mid_write(_start_app(tmp_path, worker=True), rng, training=True)
        _check_after_the_app_died(tmp_path, answered, training=True)


# -- `avstudio train` killed while it logs metrics and checkpoints every step --------------------------


def _start_train(home: Path, *args: str) -> subprocess.Popen:
    with (home / "train.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT, env=_env(home),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def _checkpointed_step(store: RunStore, run_id: int) -> int:
    from trainer.checkpoints import load_checkpoint

    return int(load_checkpoint(store.latest_checkpoint(run_id, "model").path).tensors["step"].item())


def _kill_while_counting(home: Path, proc: subprocess.Popen, run_id: int, rng: random.Random) -> None:
    """SIGKILL ``proc`` once its run counted past a random step; check the store; age the run's heartbeat."""
    from app.testing import wait_for

    _wait_for = partial(wait_for, every_s=0.05)

    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    try:
        target = store.get_run(run_id).latest_metrics.get("counted", -1) + rng.randint(5, 150)
        _wait_for(lambda: store.get_run(run_id).latest_metrics.get("counted", -1) >= target or proc.poll() is not None,
                  timeout_s=120, every_s=0.005)
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL, (home / "train.log").read_text()[-3000:]
        assert problems(home / "runs.db") == []
        run = store.get_run(run_id)
        assert run.status == "running"  # for now: its heartbeat is fresh
        steps = whole_steps(home / "runs.db", run_id, ["loss", "counted"])
        # the checkpoint a resume starts from (its file can be a step newer than its record, written
        # first) is never ahead of the metrics committed: they are written before it
        assert _checkpointed_step(store, run_id) <= steps[-1]
        _age_heartbeat(store, run_id)
    finally:
        store.close()


def _train_killed_at_random(home: Path, monkeypatch: pytest.MonkeyPatch, kills: int, rng: random.Random) -> None:
    steps = 150 * kills + 300  # each kill comes at most 150 steps after the last one
    proc = _start_train(home, "train", "counter", "count", "--set", f"steps={steps}", "--set", "sleep_s=0")
    from app.testing import wait_for

    _wait_for = partial(wait_for, every_s=0.05)

    _wait_for(lambda: (home / "runs.db").is_file(), timeout_s=60)
    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    try:
        run_id = _wait_for(lambda: [r.id for r in store.list_runs()], timeout_s=60)[0]
        for kill in range(kills):
            if kill:
                proc = _start_train(home, "runs", "resume", str(run_id), "--inline")
            _kill_while_counting(home, proc, run_id, rng)
            listed = _avstudio_in_process(home, monkeypatch, "runs", "list", "--json")
            assert [r["status"] for r in json.loads(listed.stdout) if r["id"] == run_id] == ["interrupted"]
        checkpointed = _checkpointed_step(store, run_id)
        resumed = _avstudio_in_process(home, monkeypatch, "runs", "resume", str(run_id), "--inline")
        assert resumed.exit_code == 0, resumed.output
        run = store.get_run(run_id)
        assert (run.status, run.resume_count) == ("succeeded", kills)
        assert [int(p.value) for p in store.metrics(run_id, ["start_step"])][-1] == checkpointed + 1
        assert whole_steps(home / "runs.db", run_id, ["loss", "counted"]) == list(range(steps))  # none lost
        assert problems(home / "runs.db") == []
    finally:
        store.close()


def test_avstudio_train_killed_while_it_logs_fast_then_resumes(tmp_path, monkeypatch):
    _train_killed_at_random(tmp_path, monkeypatch, kills=1, rng=random.Random())


@pytest.mark.slow
def test_avstudio_train_killed_many_times_then_resumes(tmp_path, monkeypatch):
    _train_killed_at_random(tmp_path, monkeypatch, kills=8, rng=random.Random())


if __name__ == "__main__":  # a store writer: python -m tests.test_crash_consistency {app,worker} URL SEED
    role, url, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writer = {"app": _write_like_the_app, "worker": _write_like_a_worker}[role]
    opened = RunStore(url)
    print("ready", flush=True)
    writer(opened, random.Random(seed))
