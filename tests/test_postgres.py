"""The studio on a real PostgreSQL server (``-m postgres``): several `avstudio worker` processes, one database.

The server: AVSTUDIO_TEST_PG_URL (a role that may create databases; each test gets a database of its own),
else a server on 127.0.0.1:5432 or the local socket. `.ci/run` starts one from Debian's packages:
``eval "$(.ci/postgres start /tmp/avstudio-pg)"``, which also sets AVSTUDIO_TEST_PG_CTL (pg_ctl for that
cluster), so one test can stop and start the server under a running worker. Without a server the tests
are skipped, saying how to get one (tests/postgres_server.py). The store and migration tests of the default
suite marked ``on_postgres_too`` run on PostgreSQL too under ``-m postgres``. This module is also the plugin
that provides the workers' recipe.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import torch

from app.api import Method, Recipe, config_field, hookimpl
from app.settings import REPO_ROOT
from app.testing import wait_for
from tests.postgres_server import connect_args
from trainer.store import RunStore

pytestmark = pytest.mark.postgres


# -- the plugin: a recipe that ticks, and a ledger of every execution --------------------------------


@dataclass
class TickConfig:
    steps: int = config_field(3, "steps")
    sleep_s: float = config_field(0.0, "seconds per step")


def tick(config: TickConfig, ctx) -> dict[str, float]:
    """Log ``tick=step`` each step and checkpoint every 10 steps, after writing one ledger line."""
    with open(Path(os.environ["AVSTUDIO_HOME"]) / "executions.log", "a") as ledger:
        ledger.write(f"{ctx.run_id} {os.getppid()} {os.getpid()} {socket.gethostname()}\n")  # worker, run's process
    resumed = ctx.resume_checkpoint("model")
    start = int(resumed.tensors["step"].item()) + 1 if resumed is not None else 0
    for step in range(start, config.steps):
        if ctx.should_stop():
            return {}
        ctx.log_metrics(step, tick=step)
        if step % 10 == 9 or step == config.steps - 1:
            ctx.save_checkpoint("model", {"step": torch.tensor([step])}, {"step": step})
        time.sleep(config.sleep_s)
    return {"final_step": config.steps}


@hookimpl
def register_methods(register) -> None:
    register(Method(slug="ticker", title="Ticker", paper="-", summary="Ticks (tests).",
                    recipes=[Recipe("tick", TickConfig, tick, "log a metric per step")]))


# -- workers -----------------------------------------------------------------------------------------


def _start_worker(home: Path, url: str, *args: str, **env_overrides: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(home), AVSTUDIO_DB_URL=url, AVSTUDIO_PLUGINS="", AVSTUDIO_EXTRA_PLUGINS=__name__,
               AVSTUDIO_DEVICE="cpu", AVSTUDIO_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT),
               **env_overrides)
    home.mkdir(parents=True, exist_ok=True)
    with (home / "worker.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--poll-interval-s", "0.2", *args],
                                env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


_wait_for = partial(wait_for, timeout_s=120.0, every_s=0.2)


def _ledger(home: Path) -> list[tuple[int, int, int, str]]:
    """(run id, worker pid, run process pid, host) of every execution of the recipe, in order."""
    path = home / "executions.log"
    rows = [line.split() for line in path.read_text().splitlines()] if path.is_file() else []
    return [(int(run_id), int(worker), int(child), host) for run_id, worker, child, host in rows]


def test_four_workers_drain_forty_jobs_each_run_exactly_once(pg_url, tmp_path):
    home = tmp_path / "home"
    store = RunStore(pg_url)
    workers = []
    try:
        ids = [store.enqueue("ticker", "tick", {"steps": 3}, device="cpu") for _ in range(40)]
        workers = [_start_worker(home, pg_url, "--exit-when-idle") for _ in range(4)]
        for worker in workers:
            assert worker.wait(540) == 0, (home / "worker.log").read_text()[-3000:]
        runs = {r.id: r for r in store.list_runs(limit=100)}
        assert sorted(runs) == ids and {r.status for r in runs.values()} == {"succeeded"}
        executions = _ledger(home)
        assert sorted(run_id for run_id, *_ in executions) == ids, "a job ran twice, or never"
        pids = {w.pid for w in workers}
        for run_id, worker_pid, _, host in executions:  # the run row names the worker that ran it
            assert runs[run_id].pid == worker_pid in pids and runs[run_id].host == host == socket.gethostname()
            assert runs[run_id].worker_id == f"{host}:{worker_pid}"
            assert [p.value for p in store.metrics(run_id, ["tick"])] == [0.0, 1.0, 2.0]
        assert len({worker_pid for _, worker_pid, _, _ in executions}) >= 2, "the jobs were not shared out"
        # the Runs tab and `avstudio runs list` show them, with the host of the worker that ran each
        from app.ui.runs_actions import RunsActions

        actions = RunsActions(store, None, None)
        table = actions.runs_list()
        assert sorted(table["id"]) == ids and set(table["host"]) == {socket.gethostname()}
        assert actions.run_detail(ids[0])["host"] == socket.gethostname()
        assert list(actions.run_metrics(ids[0], "tick")["value"]) == [0.0, 1.0, 2.0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
        listed = subprocess.run([sys.executable, "-m", "app.cli", "runs", "list", "--limit", "3"], cwd=REPO_ROOT,
                                env={**env, "AVSTUDIO_DB_URL": pg_url, "AVSTUDIO_HOME": str(home)},
                                capture_output=True, text=True, timeout=120)
        header, *rows = listed.stdout.splitlines()
        assert listed.returncode == 0 and header.split()[:6] == ["id", "method", "recipe", "status", "device", "host"]
        assert [row.split()[:6] for row in rows[1:]] == [  # below the header's underline
            [str(i), "ticker", "tick", "succeeded", "cpu", socket.gethostname()] for i in ids[::-1][:3]]
    finally:
        for worker in workers:
            _stop(worker)
        store.close()


def test_a_lost_workers_run_is_marked_interrupted_by_another_worker(pg_url, tmp_path):
    """Worker A freezes (SIGSTOP: its machine went away); worker B records A's run interrupted; A, back,
    finds its heartbeat refused and stops the run, which stays interrupted and resumes to the end."""
    store = RunStore(pg_url)
    first = second = None
    try:
        run_id = store.enqueue("ticker", "tick", {"steps": 40, "sleep_s": 0.25}, device="cpu")
        first = _start_worker(tmp_path / "a", pg_url)
        _wait_for(lambda: store.metrics(run_id, ["tick"]))
        child = store.get_run(run_id)
        (_, _, run_pid, _), = _ledger(tmp_path / "a")
        os.killpg(first.pid, signal.SIGSTOP)  # the worker ...
        os.killpg(run_pid, signal.SIGSTOP)  # ... and its run, which leads a process group of its own
        second = _start_worker(tmp_path / "b", pg_url, AVSTUDIO_STALE_AFTER_S="3")
        run = _wait_for(lambda: (r := store.get_run(run_id)).status == "interrupted" and r, timeout_s=90)
        # staleness counts from A's last heartbeat, which came up to a beat before the SIGSTOP (one clock here)
        assert run.finished_at - run.heartbeat_at >= timedelta(seconds=3)
        assert "no heartbeat for more than 3 s" in run.error and f"on {child.host} was lost" in run.error
        assert f"noticed by worker {socket.gethostname()}:{second.pid}" in run.error
        os.killpg(run_pid, signal.SIGCONT)
        os.killpg(first.pid, signal.SIGCONT)
        # A's next heartbeat is refused: it stops its run, which keeps the status B recorded
        _wait_for(lambda: not _alive(run_pid), timeout_s=60)
        assert first.poll() is None, "worker A should go on serving"
        assert store.get_run(run_id).status == "interrupted" and len(store.metrics(run_id, ["tick"])) < 40
        store.requeue_for_resume(run_id)
        done = _wait_for(lambda: (r := store.get_run(run_id)).status == "succeeded" and r, timeout_s=120)
        assert done.latest_metrics["tick"] == 39
    finally:
        for worker in (first, second):
            if worker is not None:
                _stop(worker)
        store.close()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in "ZX"
    except OSError:
        return False


def _terminate_connections(admin_url: str, database: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    with psycopg.connect(**connect_args(admin), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                     "pg_backend_pid()", (database,))


@pytest.mark.parametrize("how", ["server-restart", "connections-killed"])
def test_a_worker_rides_out_a_lost_database_connection(pg_url, pg_admin_url, tmp_path, how):
    """Mid-run the server goes away for 4 s (or every connection is killed): the run waits, keeps its
    metrics, and ends succeeded with every step logged once; the worker then takes the next job."""
    ctl = os.environ.get("AVSTUDIO_TEST_PG_CTL")
    if how == "server-restart" and not ctl:
        pytest.skip("restarting the server needs AVSTUDIO_TEST_PG_CTL (pg_ctl of a cluster the tests may "
                    "stop: `.ci/postgres start` sets it)")
    store = RunStore(pg_url, retry_s=120)
    worker = None
    try:
        run_id = store.enqueue("ticker", "tick", {"steps": 60, "sleep_s": 0.1}, device="cpu")
        worker = _start_worker(tmp_path / "home", pg_url)
        _wait_for(lambda: len(store.metrics(run_id, ["tick"])) >= 5)
        if how == "server-restart":
            subprocess.run(f"{ctl} stop", shell=True, check=True, capture_output=True)
            time.sleep(4)
            subprocess.run(f"{ctl} start", shell=True, check=True, capture_output=True)
        else:
            _terminate_connections(pg_admin_url, store.engine.url.database)
        run = _wait_for(lambda: (r := store.get_run(run_id)).status not in ("queued", "running") and r)
        assert run.status == "succeeded", run.error
        assert [p.step for p in store.metrics(run_id, ["tick"])] == list(range(60)), "metrics lost or doubled"
        assert store.latest_checkpoint(run_id, "model").metadata == {"step": 59}
        later = store.enqueue("ticker", "tick", {"steps": 2}, device="cpu")
        assert _wait_for(lambda: store.get_run(later).status == "succeeded")
        log = (tmp_path / "home" / "worker.log").read_text()
        if how == "server-restart":
            assert "run store unreachable" in log  # it did retry, with back-off
    finally:
        if worker is not None:
            _stop(worker)
        store.close()
