"""Start and stop the training worker the web app runs beside itself, as a separate process.

Training never runs in the web server's threads: ``avstudio serve`` (and ``python app/main.py``)
start ``python -m app.cli worker`` with the app's settings in its environment, and stop it on exit.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

from app.settings import REPO_ROOT, Settings


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment for a worker process that uses exactly ``settings`` (and the same plugins)."""
    env = dict(os.environ)
    env["AVSTUDIO_HOME"] = str(settings.home.resolve())
    env["AVSTUDIO_DB_URL"] = settings.db_url
    env["AVSTUDIO_DEVICE"] = settings.device
    env["AVSTUDIO_DATA"] = str(settings.data_dir.resolve())
    env["AVSTUDIO_ASSETS"] = str(settings.assets_dir.resolve())
    if settings.threads is not None:
        env["AVSTUDIO_THREADS"] = str(settings.threads)
    if settings.plugins is not None:
        env["AVSTUDIO_PLUGINS"] = settings.plugins
    if settings.plugins_dir is not None:
        env["AVSTUDIO_PLUGINS_DIR"] = str(settings.plugins_dir.resolve())
    # Works from a plain checkout too (a Space running `python app/main.py` without pip install).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def start_background_worker(settings: Settings, *extra_args: str) -> subprocess.Popen:
    """Start ``python -m app.cli worker`` for ``settings``; it is stopped when this process exits, and
    stops by itself when this process is killed.

    Its output goes to this process's stdout/stderr. ``extra_args`` are passed to ``worker``.
    """
    settings.ensure_dirs()
    # --stop-with-parent: the worker also stops when this process dies without running atexit (SIGKILL)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--stop-with-parent", str(os.getpid()),
                             *extra_args], env=worker_env(settings))
    atexit.register(stop_background_worker, proc)
    return proc


def stop_background_worker(proc: subprocess.Popen, timeout: float = 10) -> int | None:
    """Ask the worker to stop (SIGTERM, which it treats like Ctrl-C), kill it after ``timeout`` seconds.

    Returns its exit code (None if it could not be reaped). Safe to call twice.
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
