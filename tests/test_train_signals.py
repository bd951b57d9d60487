"""A foreground `avstudio train` stopped by signals, as `kill`, `timeout`, a closed terminal or a
container stop do: its run ends `interrupted` and resumes from its last checkpoint; killed with
SIGKILL, it leaves its run `running` only while its heartbeat is fresh.

Each test starts a real `avstudio train` of the counter test plugin in a session of its own; they
all start at once, so that their start-ups (importing torch, 10 s and more on a busy 2-core
machine) overlap. (Ctrl-C, which cancels the run, is tests/test_cli.py's.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from app.cli import cli
from app.cli_train import _interrupt_on_stop_signals
from app.settings import REPO_ROOT
from app.testing import wait_for
from trainer.db_models import Run
from trainer.store import RunStore

COUNTER = "tests.plugins_for_tests.counter_plugin"
_wait_for = partial(wait_for, timeout_s=60.0, every_s=0.05)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")

RUNS = {  # the run each test stops, by test
    # short, as it is resumed to the end; long enough (10 s) that it is still counting when its test stops it,
    # even when the four runs start at once on two busy cores (at 40 steps, 4 s, that was a matter of luck)
    "sigterm": ("count", 100),
    "sighup": ("count", 1000),
    "sigterm-stubborn": ("stubborn", 1000),  # never checks should_stop
    "sigkill": ("count", 1000),
}


@dataclass
class Started:
    home: Path
    store: RunStore
    proc: subprocess.Popen

    def run(self):
        return self.store.list_runs()[0]

    def log(self) -> str:
        return (self.home / "train.log").read_text()[-3000:]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(home), AVSTUDIO_PLUGINS="", AVSTUDIO_EXTRA_PLUGINS=COUNTER, AVSTUDIO_DEVICE="cpu",
               AVSTUDIO_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def _default_stop_signals() -> None:
    """In the child: SIGHUP as a terminal's session has it, even when the tests themselves run under
    `nohup` (which leaves SIGHUP ignored in every process it starts, and a train keeps it so)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(scope="module")
def started(tmp_path_factory) -> Iterator[dict[str, Started]]:
    found: dict[str, Started] = {}
    try:
        for name, (recipe, steps) in RUNS.items():
            home = tmp_path_factory.mktemp(name)
            with (home / "train.log").open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "train", "counter", recipe, "--set", f"steps={steps}",
                     "--set", "sleep_s=0.1"], cwd=REPO_ROOT, env=_env(home), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, start_new_session=True, preexec_fn=_default_stop_signals)
            found[name] = Started(home, RunStore(f"sqlite:///{home / 'runs.db'}"), proc)
        yield found
    finally:
        for one in found.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(one.proc.pid, signal.SIGKILL)
            one.proc.wait(timeout=30)
            one.store.close()


def _counting(one: Started) -> None:
    """Wait until the run has saved a checkpoint or two."""
    def saved() -> bool:
        runs = one.store.list_runs()
        return bool(runs) and runs[0].latest_metrics.get("counted", -1) >= 2 or one.proc.poll() is not None
    _wait_for(saved, timeout_s=120)
    assert one.proc.poll() is None and one.run().status == "running", one.log()


def _avstudio(one: Started, monkeypatch: pytest.MonkeyPatch, *args: str):
    """``avstudio ARGS`` in this process (torch is imported here once, not per command)."""
    for key, value in _env(one.home).items():
        if key.startswith("AVSTUDIO_") and key != "AVSTUDIO_THREADS":  # leave this process's threads be
            monkeypatch.setenv(key, value)
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_sigterm_interrupts_the_run_and_it_resumes_from_its_checkpoint(started, monkeypatch):
    one = started["sigterm"]
    _counting(one)
    one.proc.send_signal(signal.SIGTERM)
    assert one.proc.wait(timeout=30) == 128 + signal.SIGTERM, one.log()
    run = one.run()
    assert run.status == "interrupted" and run.finished_at is not None, run
    assert run.error == "interrupted by SIGTERM; resume the run to continue"
    assert "Error: run 1 interrupted: interrupted by SIGTERM" in one.log()
    stopped_at = one.store.latest_checkpoint(run.id, "model").metadata["step"]

    resumed = _avstudio(one, monkeypatch, "runs", "resume", str(run.id), "--inline")
    assert resumed.exit_code == 0, resumed.output
    run = one.run()
    assert (run.status, run.resume_count) == ("succeeded", 1)
    assert [int(p.value) for p in one.store.metrics(run.id, ["start_step"])] == [0, stopped_at + 1]
    assert [int(p.value) for p in one.store.metrics(run.id, ["counted"])][-1] == RUNS["sigterm"][1] - 1


def test_sighup_interrupts_the_run(started):
    """The terminal went away (an ssh session that dropped): resumable, not cancelled."""
    one = started["sighup"]
    _counting(one)
    one.proc.send_signal(signal.SIGHUP)
    assert one.proc.wait(timeout=30) == 128 + signal.SIGHUP, one.log()
    run = one.run()
    assert (run.status, run.error) == ("interrupted", "interrupted by SIGHUP; resume the run to continue")


def test_sigterm_stops_a_run_that_never_checks_should_stop_after_a_grace(started):
    one = started["sigterm-stubborn"]
    _counting(one)
    one.proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    assert one.proc.wait(timeout=30) == 128 + signal.SIGTERM, one.log()
    assert time.monotonic() - asked >= 4.0  # it had CHILD_STOP_WAIT_S (5 s) to stop by itself
    run = one.run()
    assert run.status == "interrupted" and "did not stop by itself and was stopped at once" in run.error
    assert run.latest_metrics["counted"] < 999


def test_sigkill_leaves_the_run_running_until_its_heartbeat_is_stale(started, monkeypatch):
    """Nothing runs in a killed process: its heartbeat thread kept the run `running` while it lived,
    and once that heartbeat is older than the store's limit every listing shows it interrupted."""
    from app.ui.runs_actions import RunsActions

    one = started["sigkill"]
    _counting(one)
    first_beat = one.run().heartbeat_at
    _wait_for(lambda: one.run().heartbeat_at > first_beat, timeout_s=15)  # it beats (every 2 s)
    one.proc.kill()
    assert one.proc.wait(timeout=30) == -signal.SIGKILL
    run = one.run()
    assert run.status == "running"  # its last beat is fresh: it might still be alive (on another host)

    old = run.heartbeat_at - timedelta(seconds=one.store.stale_after_s + 1)  # as a minute without one would
    with one.store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run.id).values(heartbeat_at=old))
    # each listing on a store of its own, as each marks the run interrupted when it finds it stale
    copy = one.home / "copy.db"
    with contextlib.closing(sqlite3.connect(one.home / "runs.db")) as db, contextlib.closing(sqlite3.connect(copy)) as to:
        db.backup(to)
    with contextlib.closing(RunStore(f"sqlite:///{copy}")) as copied:
        shown = RunsActions(copied, None, None).runs_list()  # the Runs tab's table
    assert shown.set_index("id").loc[run.id, "status"] == "interrupted"
    listed = json.loads(_avstudio(one, monkeypatch, "runs", "list", "--json").stdout)
    assert [(r["id"], r["status"]) for r in listed] == [(run.id, "interrupted")]
    assert one.run().error.startswith("interrupted: no heartbeat for more than 60 s")
    # resumable (tests/test_crash_consistency.py resumes such a run to its end)
    assert one.store.requeue_for_resume(run.id).status == "queued"


def test_an_ignored_hangup_stays_ignored():
    """Under `nohup`, closing the terminal must not stop the run."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        with _interrupt_on_stop_signals(store=None, run_id=0):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not on_term
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGHUP, previous)
