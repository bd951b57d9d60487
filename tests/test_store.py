"""The run store: queue, lifecycle, metrics, artifacts and promotions on a temporary SQLite file."""

from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from tests.postgres_server import on_postgres_too
from trainer.db_models import Run
from trainer.records import MetricPoint
from trainer.store import RunStore


@on_postgres_too
def test_enqueue_stores_config_and_params(store):
    run_id = store.enqueue("counter", "count", {"steps": 3, "lr": 0.1, "name": "x", "sizes": [1, 2]},
                           device="cpu", commit="abc123")
    run = store.get_run(run_id)
    assert (run.method, run.recipe, run.status, run.device, run.commit) == ("counter", "count", "queued", "cpu", "abc123")
    assert run.config == {"steps": 3, "lr": 0.1, "name": "x", "sizes": [1, 2]}
    assert run.created_at.tzinfo is not None and run.started_at is None and run.resume_count == 0
    assert store.params(run_id) == {"steps": "3", "lr": "0.1", "name": "x", "sizes": "[1, 2]"}


def test_sqlite_file_uses_wal_and_foreign_keys(tmp_path):
    path = tmp_path / "nested" / "dir" / "runs.db"
    opened = RunStore(f"sqlite:///{path}")
    try:
        assert path.is_file()
        with opened.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 20000
    finally:
        opened.close()
    # the status CHECK constraint is in the schema itself
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO runs (method, recipe, config, status, device, created_at, cancel_requested) "
                    "VALUES ('m', 'r', '{}', 'bogus', 'cpu', '2026-01-01', 0)")


def test_get_run_unknown_raises_key_error(store):
    with pytest.raises(KeyError):
        store.get_run(999)


@on_postgres_too
def test_claim_next_takes_oldest_and_never_twice(store):
    first = store.enqueue("m", "r", {})
    second = store.enqueue("m", "r", {})
    a = store.claim_next("w1", host="h", pid=11)
    b = store.claim_next("w2", host="h", pid=12)
    assert (a.id, b.id) == (first, second)
    assert a.status == "running" and a.worker_id == "w1" and a.pid == 11 and a.started_at is not None
    assert store.claim_next("w3", host="h", pid=13) is None
    assert store.claim_run(first, "w3", host="h", pid=13) is None


@on_postgres_too
def test_claim_run_takes_a_specific_queued_run(store):
    store.enqueue("m", "r", {})
    wanted = store.enqueue("m", "r", {})
    run = store.claim_run(wanted, "cli", host="h", pid=1)
    assert run.id == wanted and run.status == "running"
    assert store.claim_next("w", host="h", pid=2).id != wanted


@on_postgres_too
def test_lifecycle_finish_and_first_final_status_wins(store):
    run_id = store.enqueue("m", "r", {})
    store.claim_next("w", host="h", pid=1)
    store.set_started(run_id, device="cpu")
    store.set_progress(run_id, 0.25, "epoch 1")
    run = store.get_run(run_id)
    assert run.device == "cpu" and run.progress == pytest.approx(0.25) and run.progress_desc == "epoch 1"
    store.set_progress(run_id, 7.0)
    assert store.get_run(run_id).progress == 1.0  # clamped
    store.finish(run_id, "failed", error="boom")
    store.finish(run_id, "succeeded")
    run = store.get_run(run_id)
    assert run.status == "failed" and run.error == "boom" and run.finished_at >= run.started_at
    with pytest.raises(ValueError):
        store.finish(run_id, "running")


@on_postgres_too
def test_heartbeat_moves_forward(store):
    run_id = store.enqueue("m", "r", {})
    store.claim_next("w", host="h", pid=1)
    before = store.get_run(run_id).heartbeat_at
    time.sleep(0.01)
    store.heartbeat(run_id)
    assert store.get_run(run_id).heartbeat_at > before


@on_postgres_too
def test_request_cancel(store):
    queued = store.enqueue("m", "r", {})
    running = store.enqueue("m", "r", {})
    store.claim_run(running, "w", host="h", pid=1)
    assert store.request_cancel(queued).status == "cancelled"
    info = store.request_cancel(running)
    assert info.status == "running" and info.cancel_requested and store.cancel_requested(running)
    assert not store.cancel_requested(queued + 1000)
    with pytest.raises(ValueError, match="already finished"):
        store.request_cancel(queued)
    with pytest.raises(KeyError):
        store.request_cancel(12345)


@on_postgres_too
def test_mark_interrupted_dead_pid_and_stale_heartbeat(store):
    dead = store.enqueue("m", "r", {})
    alive = store.enqueue("m", "r", {})
    elsewhere = store.enqueue("m", "r", {})
    stale = store.enqueue("m", "r", {})
    store.claim_run(dead, "w1", host="here", pid=101)
    store.claim_run(alive, "w2", host="here", pid=102)
    store.claim_run(elsewhere, "w3", host="there", pid=101)
    store.claim_run(stale, "w4", host="there", pid=104)
    old = store.get_run(stale).heartbeat_at - timedelta(seconds=600)
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == stale).values(heartbeat_at=old))
    marked = store.mark_interrupted(host="here", alive_pids={102}, stale_after_s=60)
    assert sorted(marked) == [dead, stale]
    assert store.get_run(dead).status == "interrupted" and "gone" in store.get_run(dead).error
    assert store.get_run(alive).status == "running" and store.get_run(elsewhere).status == "running"
    assert store.mark_interrupted(host="here", alive_pids={102}) == []


@on_postgres_too
def test_a_running_run_whose_heartbeat_went_stale_is_shown_as_interrupted(store):
    """A killed foreground `avstudio train` records nothing: every read of runs ends it once its heartbeat is stale."""
    killed, alive = store.enqueue("m", "r", {}), store.enqueue("m", "r", {})
    store.claim_run(killed, "cli-h-101", host="h", pid=101)
    store.claim_run(alive, "cli-h-102", host="h", pid=102)
    old = store.get_run(killed).heartbeat_at - timedelta(seconds=store.stale_after_s + 1)
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == killed).values(heartbeat_at=old))
    assert [(r.id, r.status) for r in store.list_runs()] == [(alive, "running"), (killed, "interrupted")]
    run = store.get_run(killed)
    assert run.error.startswith("interrupted: no heartbeat for more than 60 s") and run.finished_at is not None
    assert store.requeue_for_resume(killed).status == "queued"  # and it can resume
    # a single read sees it too: the run store of another process, asked for that run alone
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == alive).values(heartbeat_at=old))
    other = RunStore(store.url)
    try:
        assert other.get_run(alive).status == "interrupted"
    finally:
        other.close()


@on_postgres_too
def test_requeue_for_resume(store):
    run_id = store.enqueue("m", "r", {})
    store.claim_next("w", host="h", pid=1)
    with pytest.raises(ValueError, match="running"):
        store.requeue_for_resume(run_id)
    store.finish(run_id, "interrupted", error="worker died")
    run = store.requeue_for_resume(run_id)
    assert run.status == "queued" and run.resume_count == 1 and run.error is None and run.finished_at is None
    assert store.claim_next("w", host="h", pid=2).id == run_id
    store.finish(run_id, "succeeded")
    with pytest.raises(ValueError, match="succeeded"):
        store.requeue_for_resume(run_id)
    with pytest.raises(KeyError):
        store.requeue_for_resume(999)


@on_postgres_too
def test_list_runs_newest_first_with_filters(store):
    ids = [store.enqueue("a", "r", {}), store.enqueue("b", "r", {}), store.enqueue("a", "r", {})]
    store.request_cancel(ids[0])
    assert [r.id for r in store.list_runs()] == ids[::-1]
    assert [r.id for r in store.list_runs(method="a")] == [ids[2], ids[0]]
    assert [r.id for r in store.list_runs(status="cancelled")] == [ids[0]]
    assert len(store.list_runs(limit=2)) == 2


@on_postgres_too
def test_log_metrics_batch_history_and_latest(store):
    run_id = store.enqueue("m", "r", {})
    store.log_metrics(run_id, [MetricPoint(step=s, key="loss", value=1.0 / (s + 1), time=100.0 + s) for s in range(5)]
                      + [MetricPoint(step=4, key="acc", value=0.9, time=104.0)])
    store.log_metrics(run_id, [MetricPoint(step=2, key="loss", value=42.0, time=200.0)])  # late, older step
    history = store.metrics(run_id, keys=["loss"])
    assert [p.step for p in history] == [0, 1, 2, 2, 3, 4]
    assert history[0].value == pytest.approx(1.0) and history[0].time == pytest.approx(100.0)
    assert store.get_run(run_id).latest_metrics == pytest.approx({"loss": 0.2, "acc": 0.9})
    assert store.metric_keys(run_id) == ["acc", "loss"]
    assert [p.key for p in store.metrics(run_id)][:1] == ["acc"]  # ordered by key then step
    assert store.list_runs()[0].latest_metrics["acc"] == pytest.approx(0.9)


@on_postgres_too
def test_non_finite_metrics_are_stored_as_nan(store):
    run_id = store.enqueue("m", "r", {})
    store.log_metrics(run_id, [MetricPoint(0, "loss", float("nan"), 1.0), MetricPoint(1, "loss", float("inf"), 2.0)])
    values = [p.value for p in store.metrics(run_id)]
    assert len(values) == 2 and all(math.isnan(v) for v in values)
    assert math.isnan(store.get_run(run_id).latest_metrics["loss"])


@on_postgres_too
def test_artifacts_replace_and_kinds(store, tmp_path):
    run_id = store.enqueue("m", "r", {})
    first = store.add_artifact(run_id, "model", "checkpoint", str(tmp_path / "a.safetensors"), {"step": 1})
    store.add_artifact(run_id, "curve", "figure", str(tmp_path / "curve.png"))
    again = store.add_artifact(run_id, "model", "checkpoint", str(tmp_path / "b.safetensors"), {"step": 2})
    assert again == first
    checkpoints = store.artifacts(run_id, kind="checkpoint")
    assert len(checkpoints) == 1 and checkpoints[0].path.endswith("b.safetensors")
    assert checkpoints[0].metadata == {"step": 2}
    assert {a.name for a in store.artifacts(run_id)} == {"model", "curve"}
    assert store.latest_checkpoint(run_id).name == "model"
    assert store.get_artifact(first).metadata["step"] == 2
    with pytest.raises(KeyError):
        store.get_artifact(999)


@on_postgres_too
def test_promote_and_cascade_delete(store, tmp_path):
    run_a, run_b = store.enqueue("m", "r", {}), store.enqueue("m", "r", {})
    art_a = store.add_artifact(run_a, "model", "checkpoint", str(tmp_path / "a.safetensors"))
    art_b = store.add_artifact(run_b, "model", "checkpoint", str(tmp_path / "b.safetensors"))
    figure = store.add_artifact(run_b, "plot", "figure", str(tmp_path / "p.png"))
    assert store.promoted("m", "model") is None
    store.promote("m", "model", art_a)
    store.promote("m", "model", art_b)  # a second promotion replaces the first
    assert store.promoted("m", "model").id == art_b
    assert list(store.promotions("m")) == [("m", "model")] and store.promotions("other") == {}
    with pytest.raises(ValueError, match="not a checkpoint"):
        store.promote("m", "plot", figure)
    with pytest.raises(KeyError):
        store.promote("m", "model", 999)
    store.delete_run(run_b)  # cascades to artifacts, then to the promotion
    assert store.promoted("m", "model") is None and store.artifacts(run_b) == []
    with pytest.raises(KeyError):
        store.get_run(run_b)
    assert store.unpromote("m", "model") is False


def _claim_all(url: str, worker: str, out) -> None:
    opened = RunStore(url)
    taken = []
    while (run := opened.claim_next(worker, host="h", pid=0)) is not None:
        taken.append(run.id)
    opened.close()
    out.put(taken)


@on_postgres_too
def test_concurrent_processes_claim_each_run_once(store, store_url):
    ids = [store.enqueue("m", "r", {}) for _ in range(30)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(store_url, f"w{i}", out)) for i in range(3)]
    for p in procs:
        p.start()
    taken = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    claimed = sorted(i for chunk in taken for i in chunk)
    assert claimed == ids


@on_postgres_too
def test_heartbeat_is_refused_once_another_worker_marked_the_run_interrupted(store):
    run_id = store.enqueue("m", "r", {})
    store.claim_run(run_id, "w1", host="far", pid=1)
    assert store.heartbeat(run_id, "w1") and store.heartbeat(run_id)
    assert not store.heartbeat(run_id, "w2")  # not that worker's run
    old = store.get_run(run_id).heartbeat_at - timedelta(seconds=store.stale_after_s + 1)
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=old))
    assert store.expire_stale(noticed_by="near:7") == [run_id]
    run = store.get_run(run_id)
    assert run.status == "interrupted" and run.error.endswith("(its worker on far was lost); noticed by worker near:7")
    assert not store.heartbeat(run_id, "w1")  # w1 comes back: refused, so it stops the run
    assert store.get_run(run_id).status == "interrupted"
    # resumed and taken by w3 before w1's run process ends: w1's final status does not end w3's run
    store.requeue_for_resume(run_id)
    store.claim_run(run_id, "w3", host="near", pid=3)
    store.finish(run_id, "interrupted", error="stopped by w1", worker_id="w1")
    assert store.get_run(run_id).status == "running" and store.heartbeat(run_id, "w3")
    store.finish(run_id, "succeeded", worker_id="w3")
    assert store.get_run(run_id).status == "succeeded"


@on_postgres_too
def test_shared_home_mounted_elsewhere_finds_artifacts_and_promotions(store_url, tmp_path):
    """A worker writes under its home /a; a studio mounts the same files at /b: it reads them under /b."""
    from trainer.context import resolve_checkpoint

    (tmp_path / "a" / "runs" / "1").mkdir(parents=True)
    (tmp_path / "b").symlink_to(tmp_path / "a")  # the same directory at another path
    worker_side = RunStore(store_url, runs_dir=tmp_path / "a" / "runs")
    studio_side = RunStore(store_url, runs_dir=tmp_path / "b" / "runs")
    try:
        run_id = worker_side.enqueue("m", "r", {})
        written = tmp_path / "a" / "runs" / str(run_id) / "model.safetensors"
        written.parent.mkdir(parents=True, exist_ok=True)
        written.write_bytes(b"weights")
        artifact = worker_side.add_artifact(run_id, "model", "checkpoint", str(written))
        outside = worker_side.add_artifact(run_id, "ref", "report", "/elsewhere/report.json")
        studio_side.promote("m", "model", artifact)
        seen = tmp_path / "b" / "runs" / str(run_id) / "model.safetensors"
        assert studio_side.get_artifact(artifact).path == str(seen)
        assert studio_side.promoted("m", "model").path == str(seen)
        assert resolve_checkpoint("m/model", studio_side, lambda _m: None) == seen
        assert studio_side.get_artifact(outside).path == "/elsewhere/report.json"  # outside the runs dir: as written
        # where only the path as written exists (another layout, same mount point), that path is used
        elsewhere = RunStore(store_url, runs_dir=tmp_path / "c" / "runs")
        try:
            assert elsewhere.get_artifact(artifact).path == str(written)
        finally:
            elsewhere.close()
        # a store that knows no runs dir reads the path as written, as before
        plain = RunStore(store_url)
        try:
            assert plain.get_artifact(artifact).path == str(written)
        finally:
            plain.close()
    finally:
        worker_side.close()
        studio_side.close()


def test_calls_retry_while_the_database_is_unreachable(store, monkeypatch):
    from sqlalchemy.exc import IntegrityError, OperationalError

    import trainer.database as database_module

    monkeypatch.setattr(database_module, "RETRY_FIRST_DELAY_S", 0.01)
    run_id = store.enqueue("m", "r", {})
    real = RunStore._update
    failures = []

    def flaky(self, *args, **kwargs):
        if len(failures) < 3:
            failures.append(1)
            raise OperationalError("UPDATE runs", {}, Exception("server closed the connection unexpectedly"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunStore, "_update", flaky)
    with pytest.raises(OperationalError):  # retry_s=0 (the UI's store): it fails at once
        store.set_progress(run_id, 0.5)
    failures.clear()
    store.retry_s = 30
    store.set_progress(run_id, 0.5)  # three failures, then it goes through
    assert len(failures) == 3 and store.get_run(run_id).progress == 0.5

    def broken(self, *args, **kwargs):
        failures.append(1)
        raise IntegrityError("UPDATE runs", {}, Exception("constraint"))

    monkeypatch.setattr(RunStore, "_update", broken)
    failures.clear()
    with pytest.raises(IntegrityError):  # not a connection problem: no retry
        store.set_progress(run_id, 0.7)
    assert len(failures) == 1


def test_a_metric_batch_whose_commit_answer_was_lost_is_not_written_twice(store, monkeypatch):
    """The commit went through but the connection dropped before its answer: the retry finds the batch."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    import trainer.database as database_module

    monkeypatch.setattr(database_module, "RETRY_FIRST_DELAY_S", 0.01)
    store.retry_s = 30
    run_id = store.enqueue("m", "r", {})
    store.log_metrics(run_id, [MetricPoint(0, "loss", 1.0, 100.0)])
    lost = []

    def lose_the_answer(session):
        if not lost:
            lost.append(1)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    event.listen(store._sessions, "after_commit", lose_the_answer)
    try:
        store.log_metrics(run_id, [MetricPoint(1, "loss", 0.5, 101.0), MetricPoint(1, "acc", 0.7, 101.0)])
    finally:
        event.remove(store._sessions, "after_commit", lose_the_answer)
    assert lost == [1]
    assert [(p.key, p.step) for p in store.metrics(run_id)] == [("acc", 1), ("loss", 0), ("loss", 1)]
    assert store.get_run(run_id).latest_metrics == {"loss": 0.5, "acc": 0.7}
    store.log_metrics(run_id, [MetricPoint(2, "loss", 0.25, 102.0)])  # a first try writes without looking
    assert [p.step for p in store.metrics(run_id, ["loss"])] == [0, 1, 2]


def test_a_postgres_url_without_its_driver_says_what_to_install(monkeypatch):
    import sys

    from trainer.database import make_engine

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install \"adaptive-vision-studio\[postgres\]\""):
        make_engine("postgresql+psycopg://user@127.0.0.1/avstudio")
