"""The whole path, as a user drives it through the running app's API:

queue a run → the app's own background worker *process* runs it → status, metrics and a checkpoint
artifact land in the database → promote the checkpoint → the method's demo tab loads it.
"""

from __future__ import annotations

import time

import pytest

from app.plugin_manager import load_registry
from app.settings import Settings
from app.testing import free_port as _free_port
from app.ui import launch

COUNTER_PLUGIN = "tests.plugins_for_tests.counter_plugin"


def _wait_for_status(client, run_id: int, wanted: set[str], timeout_s: float = 90.0) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        detail = client.predict(run_id, api_name="/run_detail")
        if detail["status"] in wanted:
            return detail
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not reach {wanted}; last detail: {detail}")


@pytest.fixture
def studio(avstudio_home, store_url, tmp_path, monkeypatch):
    from gradio_client import Client

    # the worker is a separate process: it finds the test plugin through the environment
    monkeypatch.setenv("AVSTUDIO_PLUGINS", "")
    monkeypatch.setenv("AVSTUDIO_EXTRA_PLUGINS", COUNTER_PLUGIN)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    settings = Settings(home=avstudio_home, db_url=store_url, assets_dir=tmp_path / "assets",
                        enable_training=True, device="cpu", plugins="")
    registry = load_registry(plugins="", extra_plugins=(COUNTER_PLUGIN,))
    demo = launch(settings, registry, port=_free_port(), start_worker=True, prevent_thread_lock=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_queue_train_promote_and_the_demo_uses_the_new_checkpoint(studio, store):
    client = studio
    # before any training the demo has no checkpoint to use
    assert client.predict(3, api_name="/counter_echo") == "value=3 checkpoint_step=None"

    run_id = int(client.predict("counter", "count", '{"steps": 4}', "cpu", api_name="/queue_run"))
    detail = _wait_for_status(client, run_id, {"succeeded", "failed"})
    assert detail["status"] == "succeeded", detail

    # the worker ran in another process and wrote everything to the database
    run = store.get_run(run_id)
    assert run.worker_id and run.pid is not None and run.finished_at is not None
    assert run.device == "cpu" and run.progress == pytest.approx(1.0)
    losses = [(p.step, p.value) for p in store.metrics(run_id, ["loss"])]
    assert losses == [(s, pytest.approx(1.0 / (s + 1))) for s in range(4)]
    (checkpoint,) = store.artifacts(run_id, kind="checkpoint")
    assert checkpoint.name == "model"

    # the UI shows the same metrics
    curves = client.predict(run_id, "loss", api_name="/run_metrics")
    assert [row for row in curves["data"] if row] and len(curves["data"]) == 4

    # promote: the running demo tab now loads that run's checkpoint (the last step, 3)
    client.predict(checkpoint.id, "", api_name="/promote_checkpoint")
    assert store.promoted("counter", "model").id == checkpoint.id
    assert client.predict(3, api_name="/counter_echo") == "value=3 checkpoint_step=3"


@pytest.mark.slow  # the whole path is the test above; recording a failure is test_worker's (fast)
def test_a_failing_run_reports_its_error_through_the_app(studio, store):
    run_id = int(studio.predict("counter", "count", '{"steps": 5, "fail_at": 2}', "cpu",
                                api_name="/queue_run"))
    detail = _wait_for_status(studio, run_id, {"succeeded", "failed"})
    assert detail["status"] == "failed"
    assert store.get_run(run_id).error.splitlines()[0].endswith("boom at step 2")
    # the steps before the failure are kept
    assert [p.step for p in store.metrics(run_id, ["loss"])] == [0, 1]
