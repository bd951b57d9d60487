"""The worker end to end with the counter test plugin: runs, failures, cancels, crashes, resume."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from app.testing import wait_for
from tests.plugins_for_tests import failing_plugin
from tests.plugins_for_tests.registry import make_registry
from tests.processes import alive, child_processes
from trainer.checkpoints import load_checkpoint, save_checkpoint
from trainer.context import RunContext, resolve_checkpoint
from trainer.devices import resolve_device
from trainer.execution import execute_run
from trainer.gitinfo import current_commit
from trainer.store import RunStore
from trainer.worker import run_worker


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    return {name: str(tmp_path / name) for name in ("data_dir", "runs_dir", "assets_dir")}


@pytest.fixture
def spawned() -> Iterator[list]:
    """The worker processes a test starts: any still alive when it ends (it failed early) are stopped, so
    that neither they nor the session (multiprocessing joins its children at exit) run on."""
    workers: list = []
    yield workers
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: the worker stops its run's child too
            worker.join(60)
        if worker.is_alive():
            worker.kill()
            worker.join(10)


_wait_for = partial(wait_for, timeout_s=120.0, every_s=0.1)  # generous: a busy machine starts a run slowly


def _steps_logged(store: RunStore, run_id: int) -> list[int]:
    return [int(p.value) for p in store.metrics(run_id, keys=["counted"])]


def _checkpoint_step(store: RunStore, run_id: int) -> int:
    artifact = store.latest_checkpoint(run_id, "model")
    return -1 if artifact is None else artifact.metadata["step"]


def _run_children(pid: int) -> set[int]:
    """The live processes that process ``pid`` spawned to execute runs (not multiprocessing's helpers)."""
    return {child for child, (_, command) in child_processes(pid).items() if "spawn_main" in command}


def _worker_in_thread(store_url: str, dirs: dict[str, str], **options) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def target() -> None:
        result["processed"] = run_worker(store_url, make_registry, **dirs, exit_when_idle=True, poll_interval_s=0.1,
                                         **options)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


# -- in this process ------------------------------------------------------------------------------


def _fake_accelerators(monkeypatch, *, cuda: int = 0, mps: bool = False) -> None:
    """Pretend this machine has ``cuda`` CUDA devices and (or not) Apple MPS."""
    import torch

    from trainer import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(devices, "_mps_available", lambda: mps)


def _git(*args: str, cwd: Path) -> str:
    import subprocess

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_resolve_device_and_commit(tmp_path, monkeypatch):
    import torch

    # a CPU-only machine: auto is the CPU; asking for an accelerator says what to use instead
    _fake_accelerators(monkeypatch)
    assert resolve_device("auto") == resolve_device("") == resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'tpu'.*use one of: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match=r"'cuda:x'.*use auto, cpu, cuda, cuda:N"):
        resolve_device("cuda:x")
    with pytest.raises(ValueError, match=r"'cuda'.*CUDA is not available here; use cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"'mps'.*MPS is not available here; use cpu or auto"):
        resolve_device("mps")
    # two GPUs: auto prefers CUDA; a missing index names the ones that exist
    _fake_accelerators(monkeypatch, cuda=2, mps=True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' does not exist.*2 CUDA device\(s\) \(cuda:0 \.\. cuda:1\)"):
        resolve_device("cuda:2")
    _fake_accelerators(monkeypatch, mps=True)  # a Mac: auto is MPS
    assert resolve_device("auto") == resolve_device("mps") == torch.device("mps")

    # the commit is the checkout's real HEAD, from any folder inside it; None outside a repository
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    _git("init", "-q", cwd=repo)
    (repo / "f.txt").write_text("one")
    _git("add", "f.txt", cwd=repo)
    _git("commit", "-q", "-m", "one", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    assert current_commit(repo) == current_commit(str(repo / "sub")) == first and len(first) == 40
    (repo / "f.txt").write_text("two")
    _git("commit", "-q", "-am", "two", cwd=repo)
    second = _git("rev-parse", "HEAD", cwd=repo)
    assert second != first and current_commit(repo / "sub") == second
    here = Path(__file__).resolve().parent.parent
    assert current_commit() == current_commit(here / "tests") == _git("rev-parse", "HEAD", cwd=here)
    (tmp_path / "plain").mkdir()
    assert current_commit(tmp_path / "plain") is None and current_commit(tmp_path / "missing") is None
    monkeypatch.setenv("PATH", str(tmp_path / "plain"))  # no git at all: None, not an exception
    assert current_commit(repo) is None


def test_execute_run_inline_records_metrics_and_checkpoint(store, store_url, dirs):
    run_id = store.enqueue("counter", "count", {"steps": 4}, device="cpu", commit="c0ffee")
    assert store.claim_run(run_id, "inline", host="h", pid=os.getpid()) is not None
    assert execute_run(store_url, run_id, make_registry, **dirs) == "succeeded"
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.device == "cpu" and run.progress == 1.0
    assert _steps_logged(store, run_id) == [0, 1, 2, 3]
    losses = [p.value for p in store.metrics(run_id, keys=["loss"])]
    assert losses == sorted(losses, reverse=True) and losses[-1] == pytest.approx(0.25)
    assert run.latest_metrics["final_step"] == 4
    (artifact,) = store.artifacts(run_id, kind="checkpoint")
    assert Path(artifact.path) == Path(dirs["runs_dir"]) / str(run_id) / "model.safetensors"
    checkpoint = load_checkpoint(artifact.path)
    assert checkpoint.tensors["step"].item() == 3
    card = checkpoint.card
    studio = card["studio"]
    assert (studio["run_id"], studio["method"], studio["recipe"], studio["config"]) == (run_id, "counter", "count", {"steps": 4})
    assert card["metadata"]["step"] == 3 and studio["commit"] == "c0ffee" and studio["device"] == "cpu" and "torch" in studio
    assert studio["metrics"]["loss"] == pytest.approx(0.25)  # the latest value when it was saved


def test_execute_run_failure_records_message_and_traceback(store, store_url, dirs):
    run_id = store.enqueue("counter", "count", {"steps": 5, "fail_at": 2})
    store.claim_run(run_id, "inline", host="h", pid=os.getpid())
    assert execute_run(store_url, run_id, make_registry, **dirs) == "failed"
    run = store.get_run(run_id)
    assert run.error.splitlines()[0] == "train: RuntimeError: boom at step 2"
    assert "Traceback" in run.error and "counter_plugin.py" in run.error
    assert _steps_logged(store, run_id) == [0, 1]  # metrics before the failure were flushed


def _make_failing_registry():
    from app.plugin_manager import load_registry

    return load_registry(plugins="", extra_plugins=("tests.plugins_for_tests.failing_plugin",))


@pytest.mark.parametrize("kind, first_line", [
    ("user", failing_plugin.USER_MESSAGE),
    ("config", failing_plugin.CONFIG_MESSAGE),
    ("key", "train: KeyError: 'b'"),
    ("import", f"import: ModuleNotFoundError: No module named '{failing_plugin.MISSING_MODULE}'"),
])
def test_a_failed_run_reads_like_a_failed_plugin(store, store_url, dirs, caplog, kind, first_line):
    """A user's error is its message alone, and no traceback reaches the log (the CLI and the UI show the
    one line); any other exception reads WHERE: Type: message, with the traceback below it and in the log."""
    run_id = store.enqueue("failing", "fit", {"kind": kind}, device="cpu")
    store.claim_run(run_id, "inline", host="h", pid=os.getpid())
    with caplog.at_level(logging.INFO, logger="avstudio.worker"):
        assert execute_run(store_url, run_id, _make_failing_registry, **dirs) == "failed"
    error = store.get_run(run_id).error
    assert error.splitlines()[0] == first_line
    assert "Traceback" in error and "failing_plugin.py" in error  # `avstudio runs show` has the whole story
    logged = [r for r in caplog.records if r.getMessage().startswith(f"run {run_id} failed:")]
    assert [r.getMessage() for r in logged] == [f"run {run_id} failed: {first_line}"]
    if kind in ("user", "config"):
        assert logged[0].levelno < logging.WARNING and logged[0].exc_info is None
    else:
        assert logged[0].levelno == logging.ERROR and logged[0].exc_info is not None


def test_execute_run_with_unknown_recipe_or_config_fails_cleanly(store, store_url, dirs):
    bad_recipe = store.enqueue("counter", "nope", {})
    bad_key = store.enqueue("counter", "count", {"stepz": 3})
    for run_id in (bad_recipe, bad_key):
        store.claim_run(run_id, "inline", host="h", pid=os.getpid())
        assert execute_run(store_url, run_id, make_registry, **dirs) == "failed"
    assert "no recipe 'nope'" in store.get_run(bad_recipe).error.splitlines()[0]
    assert "stepz" in store.get_run(bad_key).error.splitlines()[0]


def test_resolve_checkpoint_refs(store, tmp_path):
    def assets(method):
        return tmp_path / "assets" / method

    shipped = save_checkpoint(assets("counter") / "model.safetensors", {"step": __import__("torch").tensor([0])}, {})
    assert resolve_checkpoint("counter/model", store, assets) == shipped
    assert resolve_checkpoint(str(shipped), None, assets) == shipped
    run_id = store.enqueue("counter", "count", {})
    run_file = save_checkpoint(tmp_path / "r" / "model.safetensors", {"step": __import__("torch").tensor([7])}, {})
    artifact = store.add_artifact(run_id, "model", "checkpoint", str(run_file))
    assert resolve_checkpoint(f"run:{run_id}", store, assets) == run_file
    assert resolve_checkpoint(f"run:{run_id}/model", store, assets) == run_file
    store.promote("counter", "model", artifact)
    assert resolve_checkpoint("counter/model", store, assets) == run_file  # promoted beats shipped
    with pytest.raises(FileNotFoundError, match="no checkpoint 'other'"):
        resolve_checkpoint(f"run:{run_id}/other", store, assets)
    with pytest.raises(FileNotFoundError, match="no run 999"):
        resolve_checkpoint("run:999", store, assets)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint("counter/missing", store, assets)
    with pytest.raises(ValueError):
        resolve_checkpoint("run:abc", store, assets)
    with pytest.raises(ValueError):
        resolve_checkpoint("just-a-name", store, assets)


def test_run_context_buffers_metrics_and_throttles_progress(store, dirs):
    run_id = store.enqueue("counter", "count", {})
    run = store.claim_run(run_id, "inline", host="h", pid=os.getpid())
    ctx = RunContext(store, run, make_registry(), device=resolve_device("cpu"), **dirs)
    for step in range(10):
        ctx.log_metrics(step, loss=float(step))
    assert store.metrics(run_id) == []  # fewer than 50 points and under 2 s: still buffered
    for step in range(10, 60):
        ctx.log_metrics(step, loss=float(step))
    assert len(store.metrics(run_id)) >= 50
    with ctx.progress(100, "phase") as bar:
        bar.update(10)
        bar.update(10)
        assert store.get_run(run_id).progress == pytest.approx(0.1)  # the second update was within 1 s
    assert store.get_run(run_id).progress == pytest.approx(0.2) and store.get_run(run_id).progress_desc == "phase"
    assert ctx.resume_checkpoint() is None and not ctx.should_stop()
    store.request_cancel(run_id)
    assert ctx.should_stop(fresh=True)
    ctx.close()
    assert len(store.metrics(run_id)) == 60


def test_a_metric_batch_a_flush_gave_up_on_is_sent_again_but_never_written_twice(store, dirs, monkeypatch):
    """The database stayed unreachable past the retries, or answered a commit that went through with a lost
    connection: the next flush sends the batch again, looking first, then what came since."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    run_id = store.enqueue("counter", "count", {})
    run = store.claim_run(run_id, "inline", host="h", pid=os.getpid())
    ctx = RunContext(store, run, make_registry(), device=resolve_device("cpu"), **dirs)
    store.retry_s = 0  # give up at once, as after ten minutes of retries

    def lose_the_answer(session):  # the commit is in; its answer never came
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    ctx.log_metrics(0, loss=1.0)
    event.listen(store._sessions, "after_commit", lose_the_answer)
    try:
        with pytest.raises(OperationalError):
            ctx.flush()
    finally:
        event.remove(store._sessions, "after_commit", lose_the_answer)
    ctx.log_metrics(1, loss=0.5)
    ctx.flush()
    assert [(p.key, p.step) for p in store.metrics(run_id)] == [("loss", 0), ("loss", 1)]

    real = RunStore.log_metrics  # and a batch that did not commit at all is written once it can be
    monkeypatch.setattr(RunStore, "log_metrics", lambda *a, **k: (_ for _ in ()).throw(
        OperationalError("INSERT", {}, Exception("could not connect to server"))))
    ctx.log_metrics(2, loss=0.25)
    with pytest.raises(OperationalError):
        ctx.flush()
    ctx.log_metrics(3, loss=0.125)
    with pytest.raises(OperationalError):
        ctx.flush()  # the unsure batch still cannot be sent: step 3 waits behind it
    monkeypatch.setattr(RunStore, "log_metrics", real)
    ctx.close()
    assert [p.step for p in store.metrics(run_id)] == [0, 1, 2, 3]
    assert store.get_run(run_id).latest_metrics == {"loss": 0.125}


# -- through the worker loop ------------------------------------------------------------------------


def test_worker_runs_queued_jobs_end_to_end(store, store_url, dirs):
    ok = store.enqueue("counter", "count", {"steps": 3})
    bad = store.enqueue("counter", "count", {"steps": 3, "fail_at": 1})
    processed = run_worker(store_url, make_registry, **dirs, exit_when_idle=True, worker_id="w-test")
    assert processed == 2
    run = store.get_run(ok)
    assert run.status == "succeeded" and run.worker_id == "w-test" and _steps_logged(store, ok) == [0, 1, 2]
    assert Path(store.latest_checkpoint(ok).path).is_file()
    card = json.loads(Path(store.latest_checkpoint(ok).path).with_suffix(".json").read_text())
    assert card["studio"]["run_id"] == ok and card["studio"]["method"] == "counter"
    assert card["studio"]["config"] == {"steps": 3}
    assert store.get_run(bad).status == "failed" and "boom at step 1" in store.get_run(bad).error


def test_cancel_running_run_cooperatively(store, store_url, dirs):
    run_id = store.enqueue("counter", "count", {"steps": 200, "sleep_s": 0.05})
    thread, result = _worker_in_thread(store_url, dirs, grace_s=30.0)
    _wait_for(lambda: len(_steps_logged(store, run_id)) >= 2 or _checkpoint_step(store, run_id) >= 2)
    asked = time.monotonic()
    store.request_cancel(run_id)
    thread.join(30)
    assert not thread.is_alive() and result["processed"] == 1
    run = store.get_run(run_id)
    assert run.status == "cancelled" and run.error is None  # the recipe stopped by itself, no force
    assert time.monotonic() - asked < 10
    assert _checkpoint_step(store, run_id) < 199


def test_cancel_hard_stops_a_recipe_that_ignores_should_stop(store, store_url, dirs):
    run_id = store.enqueue("counter", "stubborn", {"steps": 1000, "sleep_s": 0.05})
    before = _run_children(os.getpid())
    thread, result = _worker_in_thread(store_url, dirs, grace_s=1.0)
    _wait_for(lambda: _checkpoint_step(store, run_id) >= 1)
    child = _wait_for(lambda: _run_children(os.getpid()) - before)  # the worker runs in this process
    store.request_cancel(run_id)
    thread.join(30)
    assert not thread.is_alive()
    run = store.get_run(run_id)
    assert run.status == "cancelled" and "by force" in run.error
    _wait_for(lambda: not any(alive(pid) for pid in child), timeout_s=10)  # the child is gone for good
    assert _checkpoint_step(store, run_id) < 999


@pytest.mark.slow  # eight runs in two spawned workers; each run is claimed once: test_store (fast), test_postgres
def test_two_worker_processes_run_each_job_exactly_once(store, store_url, dirs, spawned):
    ids = [store.enqueue("counter", "count", {"steps": 2}) for _ in range(8)]
    spawn = mp.get_context("spawn")
    workers = [spawn.Process(target=run_worker, args=(store_url, make_registry),
                             kwargs={**dirs, "exit_when_idle": True, "poll_interval_s": 0.1, "worker_id": f"w{i}"})
               for i in range(2)]
    spawned.extend(workers)
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    runs = [store.get_run(i) for i in ids]
    assert all(r.status == "succeeded" for r in runs)
    for run_id in ids:
        assert _steps_logged(store, run_id) == [0, 1]  # run twice would log each step twice
    assert {r.worker_id for r in runs} <= {"w0", "w1"}


def test_killed_worker_run_is_interrupted_then_resumes_from_checkpoint(store, store_url, dirs, spawned):
    run_id = store.enqueue("counter", "count", {"steps": 12, "sleep_s": 0.15})
    spawn = mp.get_context("spawn")
    worker = spawn.Process(target=run_worker, args=(store_url, make_registry),
                           kwargs={**dirs, "poll_interval_s": 0.1})
    spawned.append(worker)
    worker.start()
    _wait_for(lambda: _checkpoint_step(store, run_id) >= 3)
    child = _wait_for(lambda: _run_children(worker.pid))
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(10)
    # the orphaned child notices its worker died, stops the run, records it and ends: no more checkpoints
    _wait_for(lambda: store.get_run(run_id).status == "interrupted" and not any(alive(pid) for pid in child))
    run = store.get_run(run_id)
    assert f"its worker (pid {worker.pid}) died" in run.error
    checkpoint_file = Path(store.latest_checkpoint(run_id, "model").path)
    step_at_kill = int(load_checkpoint(checkpoint_file).tensors["step"].item())  # the file may be a step ahead of the row
    assert step_at_kill >= 3

    assert run_worker(store_url, make_registry, **dirs, exit_when_idle=True) == 0
    assert store.get_run(run_id).status == "interrupted"

    store.requeue_for_resume(run_id)
    assert run_worker(store_url, make_registry, **dirs, exit_when_idle=True) == 1
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.resume_count == 1
    starts = [int(p.value) for p in store.metrics(run_id, keys=["start_step"])]
    assert starts == [0, step_at_kill + 1] and starts[-1] > 0
    assert _steps_logged(store, run_id)[-1] == 11 and _checkpoint_step(store, run_id) == 11


def test_sigterm_stops_the_worker_and_marks_its_run_interrupted(store, store_url, dirs, spawned):
    run_id = store.enqueue("counter", "stubborn", {"steps": 1000, "sleep_s": 0.05})
    spawn = mp.get_context("spawn")
    worker = spawn.Process(target=run_worker, args=(store_url, make_registry),
                           kwargs={**dirs, "poll_interval_s": 0.1})
    spawned.append(worker)
    worker.start()
    _wait_for(lambda: _checkpoint_step(store, run_id) >= 1)
    child = _wait_for(lambda: _run_children(worker.pid))
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(120)
    assert worker.exitcode == 0  # a clean exit, not death by signal
    run = store.get_run(run_id)
    assert run.status == "interrupted" and "SIGTERM" in run.error
    _wait_for(lambda: not any(alive(pid) for pid in child), timeout_s=10)  # its child was stopped too
    assert store.requeue_for_resume(run_id).status == "queued"
