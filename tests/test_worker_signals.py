"""`avstudio worker` stopped by signals, as systemd, `timeout`, a container or a user stop it.

Each test starts a real worker process in a session of its own, with a run of the recipe below: it
counts steps beside a helper process that it starts and never stops (as a data-loading pool worker
blocked on a full pipe stays). After the signal, the run must be in the state promised, and no
process of the worker's session may be left: not its run's child, not what that child started.
This module is also the plugin that provides the recipe (AVSTUDIO_EXTRA_PLUGINS names it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch

from app.api import Method, Recipe, config_field, hookimpl
from app.settings import REPO_ROOT
from app.testing import wait_for
from tests.processes import session_processes
from trainer.store import RunStore

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file() or not hasattr(os, "killpg"),
                                reason="reads processes from Linux's /proc")

# -- the plugin: a counter with a helper process -----------------------------------------------------


@dataclass
class HelperCountConfig:
    steps: int = config_field(40, "steps to count")
    sleep_s: float = config_field(0.1, "seconds per step")
    stubborn: bool = config_field(False, "never check should_stop, like a recipe blocked rendering a data set")


def train_with_helper(config: HelperCountConfig, ctx) -> dict[str, float]:
    """Count to ``steps``, checkpointing each step, with a helper process left running throughout."""
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    resumed = ctx.resume_checkpoint("model")
    start = int(resumed.tensors["step"].item()) + 1 if resumed is not None else 0
    ctx.log_metrics(start, start_step=start, helper_pid=helper.pid)
    for step in range(start, config.steps):
        if not config.stubborn and ctx.should_stop():
            return {"final_step": step}
        ctx.log_metrics(step, counted=step)
        ctx.save_checkpoint("model", {"step": torch.tensor([step])}, {"step": step})
        time.sleep(config.sleep_s)
    return {"final_step": config.steps}


@hookimpl
def register_methods(register) -> None:
    register(Method(slug="helpers", title="Helpers", paper="-", summary="Counts beside a helper process (tests).",
                    recipes=[Recipe("count", HelperCountConfig, train_with_helper, "count beside a helper process")]))


# -- a worker in its own session, and the processes of that session --------------------------------


_wait_for = partial(wait_for, timeout_s=60.0, every_s=0.05)


@dataclass
class Started:
    """A worker started on one queued run, in a home and a session of its own."""

    home: Path
    store: RunStore
    run_id: int
    worker: subprocess.Popen


def _start_worker(home: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(home), AVSTUDIO_PLUGINS="", AVSTUDIO_EXTRA_PLUGINS=__name__, AVSTUDIO_DEVICE="cpu",
               AVSTUDIO_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    with (home / "worker.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--poll-interval-s", "0.1", *args],
                                env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


RUNS = {  # the run each test stops, by test
    "everyone-sigterm": {"steps": 30, "sleep_s": 0.1},  # short: it is resumed to the end
    "sigkill-stubborn": {"steps": 1000, "sleep_s": 0.2, "stubborn": True},
    "sigterm": {"steps": 1000, "sleep_s": 0.2},
    "sigint-stubborn": {"steps": 1000, "sleep_s": 0.2, "stubborn": True},
}


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Iterator[dict[str, Started]]:
    """A worker per test, all started at once: their start-ups (importing torch twice, 10 s or more
    on a busy 2-core machine) overlap instead of adding up."""
    found: dict[str, Started] = {}
    try:
        for name, config in RUNS.items():
            home = tmp_path_factory.mktemp(name) / "home"
            store = RunStore(f"sqlite:///{home / 'runs.db'}")
            run_id = store.enqueue("helpers", "count", config, device="cpu")
            found[name] = Started(home, store, run_id, _start_worker(home))
        yield found
    finally:
        for one in found.values():
            for pid in session_processes(one.worker.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            one.worker.wait(timeout=30)
            one.store.close()


def _counting(one: Started) -> None:
    """Wait until the run counts, and check that the helper it started is in the worker's session."""
    store, run_id = one.store, one.run_id
    _wait_for(lambda: store.latest_checkpoint(run_id, "model") is not None
              and store.latest_checkpoint(run_id, "model").metadata["step"] >= 2)
    helper = int(store.get_run(run_id).latest_metrics["helper_pid"])
    tree = session_processes(one.worker.pid)
    # the worker, its run's child, the helper the run started (and multiprocessing's resource tracker)
    assert helper in tree and len(tree) >= 3, tree


def _stop_and_check_nothing_is_left(one: Started, sig: int, *, everyone: bool = False) -> int:
    """Send ``sig`` to the worker; wait until it ends and every process of its session is gone.
    Returns the worker's exit code.

    ``everyone``: first to every other process of the session, then, once its run's child has ended, to
    the worker's process group: the order least kind to the worker, whose run's child is gone before it
    hears of it.
    """
    worker = one.worker
    if everyone:
        for pid in session_processes(worker.pid).keys() - {worker.pid}:
            os.kill(pid, sig)
        # (multiprocessing's resource tracker ignores SIGTERM and SIGINT: it stays until the worker goes)
        _wait_for(lambda: not any("spawn_main" in command for _, command in session_processes(worker.pid).values()),
                  timeout_s=30)
        os.killpg(worker.pid, sig)  # the worker leads its group (and its session)
    else:
        os.kill(worker.pid, sig)
    try:
        code = worker.wait(timeout=30)
        _wait_for(lambda: not session_processes(worker.pid), timeout_s=15)
    except (subprocess.TimeoutExpired, AssertionError):
        pytest.fail(f"processes outlived the worker: {session_processes(worker.pid)}\n"
                    f"{(one.home / 'worker.log').read_text()}")
    return code


# -- the tests (the first one first: its short run must not end before it is stopped) ----------------


def test_sigterm_to_all_the_workers_processes_interrupts_the_run_and_it_resumes(started):
    """`timeout` or a container stop signal the worker's process group; systemd's stop signals every
    process of the service: the worker, its run's child and what that started all get SIGTERM here."""
    one = started["everyone-sigterm"]
    store, run_id = one.store, one.run_id
    _counting(one)
    assert _stop_and_check_nothing_is_left(one, signal.SIGTERM, everyone=True) == 0
    run = store.get_run(run_id)
    assert run.status == "interrupted" and "SIGTERM" in run.error and "code -15" not in run.error
    stopped_at = store.latest_checkpoint(run_id, "model").metadata["step"]

    store.requeue_for_resume(run_id)
    resumed = _start_worker(one.home, "--exit-when-idle")
    assert resumed.wait(timeout=60) == 0
    _wait_for(lambda: not session_processes(resumed.pid), timeout_s=15)  # the helper left behind is cleared too
    run = store.get_run(run_id)
    assert run.status == "succeeded" and run.resume_count == 1
    assert [int(p.value) for p in store.metrics(run_id, ["start_step"])] == [0, stopped_at + 1]
    assert [int(p.value) for p in store.metrics(run_id, ["counted"])][-1] == 29


def test_sigkill_to_the_worker_interrupts_its_run_and_leaves_no_process(started):
    """Nothing runs in the worker after SIGKILL: its run's child notices, and as its run does not stop
    (tests/test_worker.py has one that does), records it as interrupted and kills what is left."""
    one = started["sigkill-stubborn"]
    _counting(one)
    assert _stop_and_check_nothing_is_left(one, signal.SIGKILL) == -signal.SIGKILL
    run = one.store.get_run(one.run_id)
    assert run.status == "interrupted" and f"its worker (pid {one.worker.pid}) died" in run.error
    assert one.store.requeue_for_resume(one.run_id).status == "queued"


@pytest.mark.parametrize(("name", "sig"), [
    pytest.param("sigterm", signal.SIGTERM, id="SIGTERM"),  # `kill PID`, app/worker_process.py's stop
    pytest.param("sigint-stubborn", signal.SIGINT, id="SIGINT-stubborn"),  # never checks should_stop: stopped by force
])
def test_a_signal_to_the_worker_interrupts_its_run_and_leaves_no_process(started, name, sig):
    one = started[name]
    _counting(one)
    assert _stop_and_check_nothing_is_left(one, sig) == 0
    run = one.store.get_run(one.run_id)
    assert run.status == "interrupted", run.error
    if RUNS[name].get("stubborn"):  # killed after the child's grace period
        assert run.error.startswith("the worker was stopped (SIGTERM/SIGINT)")
    else:  # it stopped by itself at its next should_stop
        assert run.error.startswith("interrupted by SIGTERM; resume the run to continue")
    assert "worker finished" in (one.home / "worker.log").read_text()
