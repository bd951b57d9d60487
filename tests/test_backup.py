"""Runs survive a restart without PostgreSQL: `avstudio runs backup DEST`, `runs restore`, AVSTUDIO_BACKUP at
start-up (trainer/backup.py, app/backup.py). Nothing here reaches the Hub (the upload call is replaced)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from app import backup as app_backup
from app import hub
from app.testing import open_test_studio
from trainer import backup
from trainer.checkpoints import load_checkpoint
from trainer.records import MetricPoint
from trainer.store import RunStatus, RunStore

SECRET = "hf_backup_secret_token_0123456789"


def fill(studio) -> dict:
    """Two runs: one finished with a metric history, a promoted checkpoint and an image; one failed."""
    with studio.train_context("s3pool", "classifier", {"steps": 3}) as ctx:
        for step in range(1, 4):
            ctx.log_metrics(step, train_loss=1.0 / step, val_error=0.5 - step / 10)
        ctx.save_checkpoint("resnet-max", {"net.w": torch.arange(6.0).reshape(2, 3)}, {"note": "kept"})
        ctx.save_image("sample", Image.new("RGB", (4, 4), "red"), step=3)
        finished = ctx.run_id
    studio.store.promote("s3pool", "resnet-max", studio.store.latest_checkpoint(finished).id)
    failed = studio.store.enqueue("vgan", "vgan", {"steps": 1})
    studio.store.claim_run(failed, "w", host="h", pid=1)
    studio.store.finish(failed, RunStatus.FAILED, error="boom")
    return {"finished": finished, "failed": failed}


def snapshot_of(store: RunStore) -> dict:
    runs = {r.id: (r.method, r.recipe, r.status, r.config, r.error, r.latest_metrics) for r in store.list_runs()}
    metrics = {r: [(p.step, p.key, p.value) for p in store.metrics(r)] for r in runs}
    artifacts = {r: [(a.id, a.name, a.kind, Path(a.path).relative_to(store.runs_dir).as_posix())
                     for a in store.artifacts(r)] for r in runs}
    promotions = {k: a.id for k, a in store.promotions().items()}
    return {"runs": runs, "metrics": metrics, "artifacts": artifacts, "promotions": promotions}


def test_backup_to_a_fresh_home_restored_at_start_up_brings_runs_metrics_and_checkpoints_back(tmp_path):
    dest = tmp_path / "bucket" / "avstudio-backup"
    with open_test_studio(tmp_path / "before") as studio:
        ids = fill(studio)
        before = snapshot_of(studio.store)
        result = studio.cli("runs", "backup", str(dest))
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"backed up 2 run(s) and 3 file(s) to {dest}")
        checkpoint = studio.store.latest_checkpoint(ids["finished"]).path

    with open_test_studio(tmp_path / "after") as fresh:  # another path: the files are found under the new home
        fresh.store.close()
        for path in (fresh.home / "runs.db", fresh.home / "runs.db-wal", fresh.home / "runs.db-shm"):
            path.unlink(missing_ok=True)  # an empty home, as a restarted Space has
        line = app_backup.restore_at_startup(fresh.settings, {"AVSTUDIO_BACKUP": str(dest)})
        assert line.startswith("restored 2 run(s) from the backup in")
        store = fresh.settings.open_store()
        try:
            assert snapshot_of(store) == before
            artifact = store.latest_checkpoint(ids["finished"])
            assert Path(artifact.path).is_relative_to(fresh.settings.runs_dir)
            assert Path(artifact.path).read_bytes() == Path(checkpoint).read_bytes()
            assert torch.equal(load_checkpoint(artifact.path).tensors["net.w"], torch.arange(6.0).reshape(2, 3))
            assert store.get_run(ids["failed"]).error == "boom"
            # the demo uses the restored promotion
            fresh.store = store
            assert fresh.demo_context("s3pool").checkpoint_path("resnet-max") == Path(artifact.path)
            # a second start-up on the kept home restores nothing (the home is no longer empty)
            assert app_backup.restore_at_startup(fresh.settings, {"AVSTUDIO_BACKUP": str(dest)}) is None
        finally:
            store.close()


def test_the_snapshot_is_made_with_the_backup_api_not_by_copying_the_file(tmp_path):
    """Commits still in the write-ahead log (not yet checkpointed into runs.db) are in the backup; a copy of
    the file would miss them. A write transaction not yet committed is not."""
    url = f"sqlite:///{tmp_path / 'home' / 'runs.db'}"
    store = RunStore(url)
    writer = sqlite3.connect(tmp_path / "home" / "runs.db")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    try:
        for i in range(3):
            store.enqueue("s3pool", "classifier", {"i": i})
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO runs (method, recipe, config, status, device, created_at, cancel_requested, "
                       "progress, progress_desc, resume_count) VALUES ('x', 'y', '{}', 'queued', 'cpu', "
                       "'2026-01-01 00:00:00', 0, 0, '', 0)")  # uncommitted while the backup runs
        assert (tmp_path / "home" / "runs.db-wal").stat().st_size > 0
        info = backup.backup(url, tmp_path / "home" / "runs", tmp_path / "dest")
        writer.rollback()
    finally:
        writer.close()
        store.close()
    assert info.runs == 3 and info.schema_revision is not None
    copy = sqlite3.connect(tmp_path / "dest" / "runs.db")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file, no -wal needed
        assert [r[0] for r in copy.execute("SELECT method FROM runs")] == ["s3pool"] * 3
    finally:
        copy.close()
    assert not (tmp_path / "dest" / "runs.db-wal").exists()


def test_a_backup_while_runs_write_is_consistent(tmp_path):
    url = f"sqlite:///{tmp_path / 'home' / 'runs.db'}"
    store = RunStore(url)
    run_id = store.enqueue("s3pool", "classifier", {})
    stop = threading.Event()

    def write() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            store.log_metrics(run_id, [MetricPoint(step, "loss", 1.0 / step, time.time())])

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for i in range(5):
            backup.backup(url, tmp_path / "home" / "runs", tmp_path / f"dest{i}")
    finally:
        stop.set()
        thread.join()
        store.close()
    for i in range(5):
        copy = RunStore(f"sqlite:///{tmp_path / f'dest{i}' / 'runs.db'}")
        try:
            points = copy.metrics(run_id)
            steps = [p.step for p in points]
            assert steps == list(range(1, len(steps) + 1))  # a prefix of the history: no gap, nothing torn
            if points:
                assert copy.get_run(run_id).latest_metrics["loss"] == pytest.approx(1.0 / steps[-1])
        finally:
            copy.close()


def test_a_backup_is_brought_up_to_date_copying_only_what_changed(tmp_path):
    with open_test_studio(tmp_path / "home") as studio:
        ids = fill(studio)
        first = backup.backup(studio.settings.db_url, studio.settings.runs_dir, tmp_path / "dest")
        assert (first.files, first.copied, first.removed) == (3, 3, 0)
        again = backup.backup(studio.settings.db_url, studio.settings.runs_dir, tmp_path / "dest")
        assert (again.files, again.copied, again.removed) == (3, 0, 0)
        image = next(a for a in studio.store.artifacts(ids["finished"]) if a.kind == "image")
        Path(image.path).unlink()
        (studio.settings.runs_dir / "99").mkdir()
        (studio.settings.runs_dir / "99" / "new.txt").write_text("x")
        (studio.settings.runs_dir / "99" / ".new.txt.abc.tmp").write_text("half written")
        third = backup.backup(studio.settings.db_url, studio.settings.runs_dir, tmp_path / "dest")
        assert (third.files, third.copied, third.removed) == (3, 1, 1)
        assert not (tmp_path / "dest" / "runs" / "99" / ".new.txt.abc.tmp").exists()
        assert backup.read_manifest(tmp_path / "dest")["runs"] == 2


def test_restore_never_overwrites_a_home(tmp_path):
    with open_test_studio(tmp_path / "home") as studio:
        fill(studio)
        backup.backup(studio.settings.db_url, studio.settings.runs_dir, tmp_path / "dest")
        with pytest.raises(ValueError, match="the home is not empty"):
            backup.restore(tmp_path / "dest", studio.settings.db_url, studio.settings.runs_dir)
        result = studio.cli("runs", "restore", str(tmp_path / "dest"))
        assert result.exit_code == 2 and "the home is not empty" in result.output
    with pytest.raises(ValueError, match="holds no run store backup"):
        backup.restore(tmp_path, f"sqlite:///{tmp_path / 'new' / 'runs.db'}", tmp_path / "new" / "runs")


def test_cli_restore_into_an_empty_home(tmp_path):
    with open_test_studio(tmp_path / "home") as studio:
        fill(studio)
        backup.backup(studio.settings.db_url, studio.settings.runs_dir, tmp_path / "dest")
    empty = tmp_path / "empty"
    runner_env = {"AVSTUDIO_HOME": str(empty), "AVSTUDIO_DB_URL": f"sqlite:///{empty / 'runs.db'}"}
    from app.cli import cli as avstudio

    saved = {k: os.environ.get(k) for k in runner_env}
    try:
        result = CliRunner().invoke(avstudio, ["runs", "restore", str(tmp_path / "dest")], env=runner_env)
        listed = CliRunner().invoke(avstudio, ["runs", "list"], env=runner_env)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    assert result.exit_code == 0 and result.output.startswith("restored 2 run(s)"), result.output
    assert "s3pool" in listed.output and "failed" in listed.output


def test_the_backup_folder_is_filled_from_the_hub_dataset_first_and_uploaded_after_each_backup(tmp_path, monkeypatch):
    with open_test_studio(tmp_path / "home") as studio:
        fill(studio)
        uploads = []
        monkeypatch.setattr(hub, "upload_folder", lambda folder, repo, **kw: uploads.append((Path(folder), repo, kw))
                            or "https://huggingface.co/datasets/o/b/commit/1")
        monkeypatch.setenv("HF_TOKEN", SECRET)
        config = app_backup.BackupSettings(tmp_path / "dest", "o/b", 10.0)
        loop = app_backup.BackupLoop(studio.settings, config)
        assert loop.stop().startswith("backed up 2 run(s)")  # stopping writes (and uploads) a last backup
        [(folder, repo, kw)] = uploads
        assert (folder, repo, kw["repo_type"], kw["private"], kw["token"]) == (tmp_path / "dest", "o/b", "dataset",
                                                                              True, SECRET)
        assert kw["delete_patterns"] == ["runs/**"]

    fresh = tmp_path / "fresh"
    settings = type(studio.settings)(home=fresh, db_url=f"sqlite:///{fresh / 'runs.db'}")
    fetched = []

    def download(repo, folder):  # the dataset repository holds what was uploaded
        fetched.append(repo)
        import shutil

        shutil.copytree(tmp_path / "dest", folder)

    env = {"AVSTUDIO_BACKUP": str(tmp_path / "empty-bucket"), "AVSTUDIO_BACKUP_REPO": "o/b"}
    assert app_backup.restore_at_startup(settings, env, download=download).startswith("restored 2 run(s)")
    assert fetched == ["o/b"]


def test_a_failing_backup_or_upload_never_stops_the_studio(tmp_path, monkeypatch):
    with open_test_studio(tmp_path / "home") as studio:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        loop = app_backup.BackupLoop(studio.settings, app_backup.BackupSettings(tmp_path / "dest", "o/b", 10.0))
        assert loop.backup().startswith("backup failed: UserError: set HF_TOKEN")


def test_backup_settings_are_checked():
    assert app_backup.backup_settings({}) == app_backup.BackupSettings(None, None, 10.0)
    assert app_backup.backup_settings({"AVSTUDIO_BACKUP": "/b", "AVSTUDIO_BACKUP_EVERY_MIN": "2.5"}).every_min == 2.5
    with pytest.raises(ValueError, match="AVSTUDIO_BACKUP_EVERY_MIN"):
        app_backup.backup_settings({"AVSTUDIO_BACKUP": "/b", "AVSTUDIO_BACKUP_EVERY_MIN": "0"})
    with pytest.raises(ValueError, match="needs AVSTUDIO_BACKUP"):
        app_backup.backup_settings({"AVSTUDIO_BACKUP_REPO": "o/b"})
    with pytest.raises(ValueError, match="Hub dataset repository"):
        app_backup.backup_settings({"AVSTUDIO_BACKUP": "/b", "AVSTUDIO_BACKUP_REPO": "o/b@main"})
    with pytest.raises(ValueError, match="pg_dump"):
        backup.sqlite_file("postgresql+psycopg://u@h/db")


def test_cli_backup_to_a_dataset_repository_needs_hf_token(tmp_path, monkeypatch):
    with open_test_studio(tmp_path / "home") as studio:
        fill(studio)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        result = studio.cli("runs", "backup", str(tmp_path / "dest"), "--repo", "o/b", env={"HF_TOKEN": ""})
        assert result.exit_code == 2 and "HF_TOKEN" in result.output and not (tmp_path / "dest").exists()
        uploads = []
        monkeypatch.setattr(hub, "upload_folder", lambda folder, repo, **kw: uploads.append(repo) or "URL")
        result = studio.cli("runs", "backup", str(tmp_path / "dest"), "--repo", "o/b", env={"HF_TOKEN": SECRET})
        assert result.exit_code == 0 and "uploaded to the dataset o/b: URL" in result.output and uploads == ["o/b"]
        assert SECRET not in result.output


def test_start_up_restores_an_empty_home_and_starts_backing_up(tmp_path):
    from app.startup import prepare_home

    with open_test_studio(tmp_path / "before") as studio:
        fill(studio)
        backup.backup(studio.settings.db_url, studio.settings.runs_dir, tmp_path / "bucket")
        registry = studio.registry
    fresh = tmp_path / "fresh"
    settings = type(studio.settings)(home=fresh, db_url=f"sqlite:///{fresh / 'runs.db'}")
    env = {"AVSTUDIO_BACKUP": str(tmp_path / "bucket"), "AVSTUDIO_BACKUP_EVERY_MIN": "60"}
    loop = prepare_home(settings, registry, env)
    try:
        store = settings.open_store()
        assert len(store.list_runs()) == 2
        store.close()
    finally:
        assert loop.stop().startswith("backed up 2 run(s)") and loop.stop() == loop.last  # once
    assert prepare_home(settings, registry, {}) is None
    with pytest.raises(ValueError, match="AVSTUDIO_BACKUP_EVERY_MIN"):
        prepare_home(settings, registry, {**env, "AVSTUDIO_BACKUP_EVERY_MIN": "soon"})
