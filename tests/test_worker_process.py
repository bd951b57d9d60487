"""The web app's background worker (app/worker_process.py) does not outlive the app, even when the app is
killed with SIGKILL and runs none of its clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

APP = """
import time
from app.settings import Settings
from app.worker_process import start_background_worker
proc = start_background_worker(Settings())
print(proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def test_the_background_worker_stops_when_the_app_is_killed(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(tmp_path), AVSTUDIO_PLUGINS="", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    app = subprocess.Popen([sys.executable, "-c", APP], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    worker_pid = int(app.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "runs.db").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker is up: it has opened the store
        assert _alive(worker_pid)
        app.kill()  # SIGKILL: no atexit in the app, so only the worker itself can notice
        app.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker_pid), "the worker outlived the app that started it"
    finally:
        for pid in (app.pid, worker_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
