"""One run-status enum, one commit lookup, one config path, one flag parser, one split scaffold."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from app.settings import Settings, env_flag
from app.ui.runs_actions import RunsActions
from plugins.datasets import persons, shapes
from plugins.datasets.procedural import SPLITS
from tests.plugins_for_tests.registry import make_registry
from trainer.config import make_config
from trainer.errors import ConfigError
from trainer.execution import execute_run
from trainer.gitinfo import current_commit
from trainer.store import RunStatus

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    return {name: str(tmp_path / name) for name in ("data_dir", "runs_dir", "assets_dir")}


# -- run statuses ------------------------------------------------------------------------------------


def test_statuses_round_trip_as_the_enum(store):
    run_id = store.enqueue("counter", "count", {"steps": 2})
    assert store.get_run(run_id).status is RunStatus.QUEUED
    assert store.claim_run(run_id, "w", host="h", pid=1).status is RunStatus.RUNNING
    assert [r.id for r in store.list_runs(status=RunStatus.RUNNING)] == [run_id]
    assert [r.id for r in store.list_runs(status="running")] == [run_id]  # plain strings still work
    store.finish(run_id, "failed", error="boom")
    assert store.get_run(run_id).status is RunStatus.FAILED
    assert store.requeue_for_resume(run_id).status is RunStatus.QUEUED
    store.finish(run_id, RunStatus.SUCCEEDED)
    run = store.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED and run.progress == 1.0

    # stored as the plain value; shown, compared and serialised as the value
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT status FROM runs")).scalar() == "succeeded"
    assert run.status == "succeeded" and f"{run.status}" == str(run.status) == "succeeded"
    assert json.loads(json.dumps(asdict(run), default=str))["status"] == "succeeded"
    with pytest.raises(ValueError, match="'running' is not a final status; use one of: succeeded, failed, "
                                         "cancelled, interrupted"):
        store.finish(run_id, RunStatus.RUNNING)
    with pytest.raises(ValueError, match="only failed, cancelled, interrupted runs can resume"):
        store.requeue_for_resume(run_id)


def test_the_enum_matches_the_schema():
    spec = importlib.util.spec_from_file_location(
        "initial_migration", REPO_ROOT / "trainer" / "migrations" / "versions" / "0001_initial.py")
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert tuple(s.value for s in RunStatus) == migration.STATUSES  # the check constraint the database has
    assert set(RunStatus.resumable()) < set(RunStatus.finished()) < set(RunStatus)
    assert RunStatus.QUEUED not in RunStatus.finished() and RunStatus.RUNNING not in RunStatus.finished()


# -- the commit of a run queued from the web UI ----------------------------------------------------


def test_a_run_queued_from_the_ui_records_the_commit(store, avstudio_home, store_url):
    actions = RunsActions(store, make_registry(), Settings(home=avstudio_home, db_url=store_url,
                                                                  enable_training=True))
    run = store.get_run(actions.queue_run("counter", "count", {"steps": 2}))
    assert run.commit == current_commit()
    if (REPO_ROOT / ".git").exists():
        assert run.commit is not None and len(run.commit) == 40


# -- the worker builds configs like the CLI ---------------------------------------------------------


@pytest.mark.parametrize("stored", [{"steps": "many"}, {"stepz": 3}, {"steps": 2.5}])
def test_the_worker_fails_a_bad_stored_config_with_the_config_error(store, store_url, dirs, stored):
    recipe = make_registry().recipe("counter", "count")
    with pytest.raises(ConfigError) as expected:
        make_config(recipe.config_cls, stored)
    run_id = store.enqueue("counter", "count", stored, device="cpu")  # stored as is, not validated
    store.claim_run(run_id, "inline", host="h", pid=os.getpid())
    assert execute_run(store_url, run_id, make_registry, **dirs) is RunStatus.FAILED
    run = store.get_run(run_id)
    assert run.status is RunStatus.FAILED and run.error.splitlines()[0] == str(expected.value)
    assert store.metrics(run_id) == []  # it failed before training started


def test_the_worker_coerces_stored_values_like_the_cli(store, store_url, dirs):
    run_id = store.enqueue("counter", "count", {"steps": "3"}, device="cpu")  # as `--set steps=3` would give
    store.claim_run(run_id, "inline", host="h", pid=os.getpid())
    assert execute_run(store_url, run_id, make_registry, **dirs) is RunStatus.SUCCEEDED
    assert store.get_run(run_id).latest_metrics["final_step"] == 3


# -- one yes/no parser for environment flags --------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("", False), ("1", True), (" TRUE ", True), ("yes", True),
                                                 ("on", True), ("0", False), ("false", False), ("Off", False)])
def test_env_flags_read_the_usual_words(value, expected):
    assert env_flag("AVSTUDIO_X", {"AVSTUDIO_X": value}) is expected
    assert env_flag("AVSTUDIO_X", {}) is False


def test_an_unrecognised_flag_is_an_error_naming_the_variable(avstudio_home, monkeypatch):
    from app.main import server_options

    monkeypatch.setenv("AVSTUDIO_ENABLE_TRAINING", "ture")
    with pytest.raises(ValueError, match="AVSTUDIO_ENABLE_TRAINING must be 1, true, yes or on .* got 'ture'"):
        Settings()
    monkeypatch.setenv("AVSTUDIO_ENABLE_TRAINING", "Yes")
    assert Settings().enable_training is True
    with pytest.raises(ValueError, match="AVSTUDIO_NO_WORKER .* got 'nope'"):
        server_options({"AVSTUDIO_NO_WORKER": "nope"}, True)
    assert server_options({"AVSTUDIO_NO_WORKER": "off"}, True)[2] is True
    assert server_options({"AVSTUDIO_NO_WORKER": "On"}, True)[2] is False


# -- the procedural datasets share their split scaffold, with the same bytes -------------------------


@pytest.mark.parametrize(("module", "salt"), [(shapes, ()), (persons, (7,))])
def test_split_streams_are_the_ones_the_generators_always_used(module, salt, monkeypatch):
    # The seed stream of a split was default_rng([seed, split index, version, *salt]) and the split was
    # rendered in chunks of CHUNK samples before that code moved to plugins/datasets/procedural.py;
    # generate() must still give those bytes, in worker processes or not.
    chunk, n, size, seed = 8, 20, 20, 3
    monkeypatch.setattr(module, "CHUNK", chunk)
    for index, split in enumerate(SPLITS):
        params = module.sample_params(n, np.random.default_rng([seed, index, module.GENERATOR_VERSION, *salt]))
        parts = [module.render({k: v[i:i + chunk] for k, v in params.items()}, size) for i in range(0, n, chunk)]
        images = np.concatenate([p["images"] if isinstance(p, dict) else p for p in parts])
        generated = module.generate(split, n, size=size, seed=seed, workers=2)
        assert np.array_equal(module.generate(split, n, size=size, seed=seed, workers=1)["images"], images)
        assert np.array_equal(generated["images"], images), split
        assert np.array_equal(generated["targets"], params["labels" if module is shapes else "attributes"])


@pytest.mark.parametrize(("load", "name", "version"), [(shapes.load_shapes, "shapes", 4),
                                                       (persons.load_persons, "persons", 4)])
def test_cache_keys_are_unchanged(tmp_path, load, name, version):
    data = load("val", tmp_path, size=16, num_train=2, num_val=5, num_test=3, seed=1)
    assert len(data) == 5
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
        f"v{version}_s16_n2-5-3_seed1_{split}.npz" for split in ("test", "train", "val")]
