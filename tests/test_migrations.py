"""Alembic migrations: an empty database goes to head; a database at 0001 keeps its rows; head goes down again."""

from __future__ import annotations

import multiprocessing as mp

from sqlalchemy import create_engine, inspect, text

from tests.postgres_server import on_postgres_too
from trainer.database import (
    SCHEMA_REVISION,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade_to_head,
)
from trainer.records import MetricPoint
from trainer.store import RunStore


def test_schema_revision_constant_is_alembics_head():
    # RunStore skips Alembic when a database is at SCHEMA_REVISION: bump it with every new migration
    assert head_revision() == SCHEMA_REVISION == "0003"


@on_postgres_too
def test_empty_database_goes_to_head(store_url):
    store = RunStore(store_url)
    try:
        assert current_revision(store.engine) == "0003"
        tables = set(inspect(store.engine).get_table_names())
        assert {"runs", "params", "metrics", "latest_metrics", "artifacts", "promotions"} <= tables
        columns = {c["name"] for c in inspect(store.engine).get_columns("runs")}
        assert {"progress", "progress_desc", "resume_count", "heartbeat_at", "cancel_requested"} <= columns
    finally:
        store.close()


@on_postgres_too
def test_database_at_0001_is_upgraded_without_losing_rows(store_url):
    engine = make_engine(store_url)
    upgrade_to_head(engine, revision="0001")
    assert current_revision(engine) == "0001"
    assert "promotions" not in inspect(engine).get_table_names()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (method, recipe, config, status, device, created_at, cancel_requested, error) "
            "VALUES ('counter', 'count', '{\"steps\": 4}', 'failed', 'cpu', '2026-01-02 03:04:05', FALSE, 'old')"))
        conn.execute(text("INSERT INTO params (run_id, key, value) VALUES (1, 'steps', '4')"))
        conn.execute(text("INSERT INTO metrics (run_id, key, step, value, time) VALUES (1, 'loss', 3, 0.5, 10.0)"))
        conn.execute(text("INSERT INTO latest_metrics (run_id, key, step, value, time) VALUES (1, 'loss', 3, 0.5, 10.0)"))
    engine.dispose()

    store = RunStore(store_url)
    try:
        assert current_revision(store.engine) == "0003"
        run = store.get_run(1)
        assert (run.method, run.status, run.config, run.error) == ("counter", "failed", {"steps": 4}, "old")
        assert (run.progress, run.progress_desc, run.resume_count) == (0.0, "", 0)
        assert run.latest_metrics == {"loss": 0.5} and store.params(1) == {"steps": "4"}
        assert store.requeue_for_resume(1).resume_count == 1  # the new columns work on old rows
        assert store.enqueue("counter", "count", {}) == 2
    finally:
        store.close()


def _columns(engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


@on_postgres_too
def test_head_goes_down_step_by_step_keeping_rows_then_up_again(store_url, tmp_path):
    store = RunStore(store_url, runs_dir=tmp_path / "runs")
    try:
        run_id = store.enqueue("counter", "count", {"steps": 4})
        store.log_metrics(run_id, [MetricPoint(3, "loss", 0.5, 10.0)])
        artifact = store.add_artifact(run_id, "model", "checkpoint", str(tmp_path / "runs" / "1" / "model.safetensors"))
        store.promote("counter", "model", artifact)
    finally:
        store.close()
    engine = make_engine(store_url)
    try:
        downgrade(engine, "0002")
        assert current_revision(engine) == "0002" and "run_path" not in _columns(engine, "artifacts")
        downgrade(engine, "0001")
        assert current_revision(engine) == "0001" and "promotions" not in inspect(engine).get_table_names()
        assert not {"progress", "progress_desc", "resume_count"} & _columns(engine, "runs")
        with engine.connect() as conn:  # the rows of the tables that stay are kept
            assert conn.execute(text("SELECT method, status FROM runs")).all() == [("counter", "queued")]
            assert conn.execute(text("SELECT path FROM artifacts")).scalar().endswith("model.safetensors")
            assert conn.execute(text("SELECT value FROM latest_metrics")).scalar() == 0.5
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_to_head(engine)
        assert current_revision(engine) == SCHEMA_REVISION and "run_path" in _columns(engine, "artifacts")
    finally:
        engine.dispose()


def _spy_on_alembic_upgrade(monkeypatch) -> list[str]:
    """Record every ``alembic.command.upgrade`` call (its target revision), still running it."""
    from alembic import command

    calls: list[str] = []
    real_upgrade = command.upgrade

    def spy(config, revision, *args, **kwargs):
        calls.append(revision)
        return real_upgrade(config, revision, *args, **kwargs)

    monkeypatch.setattr(command, "upgrade", spy)
    return calls


@on_postgres_too
def test_reopening_at_head_is_a_no_op(store_url, monkeypatch):
    from alembic.script import ScriptDirectory

    from trainer.database import MIGRATIONS_DIR, alembic_config

    # the constant RunStore compares with is the head of the migration scripts themselves
    scripts = ScriptDirectory.from_config(alembic_config())
    assert scripts.get_heads() == [SCHEMA_REVISION]
    assert {script.revision for script in scripts.walk_revisions()} == {
        path.name.split("_")[0] for path in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py")}

    upgrades = _spy_on_alembic_upgrade(monkeypatch)
    first = RunStore(store_url)
    try:
        assert upgrades == ["head"]  # a new database is migrated, once
        run_id = first.enqueue("m", "r", {"k": 1})
    finally:
        first.close()

    store = RunStore(store_url)
    try:
        assert upgrades == ["head"], "reopening a database at head ran Alembic again"
        assert current_revision(store.engine) == SCHEMA_REVISION
        assert [(r.id, r.method, r.config) for r in store.list_runs()] == [(run_id, "m", {"k": 1})]
        assert store.enqueue("m", "r", {}) == run_id + 1
    finally:
        store.close()
    engine = make_engine(store_url)
    try:
        upgrade_to_head(engine)
    finally:
        engine.dispose()
    assert upgrades == ["head"]


def _open(url: str) -> None:
    RunStore(url).close()


@on_postgres_too
def test_processes_opening_a_new_database_together_migrate_it_once(store_url):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open, args=(store_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    engine = create_engine(store_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0003"]
    engine.dispose()
