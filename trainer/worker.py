"""The worker: takes queued runs from the store and executes each in a child process.

``execute_run`` runs one claimed run in the current process (``avstudio train`` uses it inline);
``run_worker`` is the loop behind ``avstudio worker``: it claims runs, executes each in a *spawned*
child (so a run can be stopped for good), heartbeats, enforces cancellation after a grace period
and records a final status even when the child dies.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer.config import make_config
from trainer.context import RunContext
from trainer.devices import apply_threads, resolve_device
from trainer.store import RunStatus, RunStore

log = logging.getLogger("avstudio.worker")

EXIT_PARENT_GONE = 70  # the child's exit code when its worker died under it


class _Heartbeat:
    """A daemon thread that marks the run alive every ``interval_s`` seconds."""

    def __init__(self, store: RunStore, run_id: int, interval_s: float = 2.0) -> None:
        self.store, self.run_id, self.interval_s = store, run_id, interval_s
        self.ctx: RunContext | None = None  # once set, its buffered metrics are flushed on each beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.heartbeat(self.run_id)
                if self.ctx is not None:
                    self.ctx.flush()  # so a recipe that logs rarely still shows up live
            except Exception:  # a missed beat is not worth killing the run for
                log.warning("heartbeat of run %s failed", self.run_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _error_text(exc: BaseException) -> str:
    """The exception message as the first line (what the UI shows), then the traceback."""
    message = str(exc).strip() or type(exc).__name__
    return f"{message}\n\n{''.join(traceback.format_exception(exc))}"


def _final_metrics(result: Any) -> dict[str, float]:
    if not isinstance(result, Mapping):
        return {}
    final = {}
    for key, value in result.items():
        try:
            final[str(key)] = float(value)
        except (TypeError, ValueError):
            log.warning("final metric %r is not a number (%r); not logged", key, value)
    return final


def execute_run(store_url: str, run_id: int, registry_factory: Callable[[], Any], *,
                data_dir: Path | str, runs_dir: Path | str, assets_dir: Path | str,
                device: str = "auto", show_progress: bool = False, threads: int | None = None) -> RunStatus:
    """Execute an already-claimed run in this process and record how it ended; returns the final status.

    The run's own device wins unless it is "auto", in which case ``device`` (the worker's) is used.
    Ends as "succeeded", "cancelled" (when a stop was requested by the time train returned), or
    "failed" with the error message as the first line of ``error`` and the traceback below it (a
    stored config that no longer validates fails the run with the :class:`ConfigError`'s one line).
    A KeyboardInterrupt / SystemExit marks the run "interrupted" and propagates.
    """
    apply_threads(threads)
    store = RunStore(store_url)
    ctx: RunContext | None = None
    try:
        run = store.get_run(run_id)
        with _Heartbeat(store, run_id) as heartbeat:
            try:
                registry = registry_factory()
                recipe = registry.recipe(run.method, run.recipe)
                config = make_config(recipe.config_cls, run.config)
                torch_device = resolve_device(run.device if run.device not in ("", "auto") else device)
                store.set_started(run_id, device=str(torch_device))
                ctx = RunContext(store, run, registry, device=torch_device, data_dir=data_dir, runs_dir=runs_dir,
                                 assets_dir=assets_dir, config=config, show_progress=show_progress)
                heartbeat.ctx = ctx
                log.info("run %s: %s/%s on %s", run_id, run.method, run.recipe, torch_device)
                result = recipe.train(config, ctx)
                # the returned final metrics, except those the recipe already logged at the last step
                final = {k: v for k, v in _final_metrics(result).items()
                         if ctx.last_values.get(k) != (ctx.last_step, v)}
                if final:
                    ctx.log_metrics(ctx.last_step, **final)
                ctx.close()
                status = RunStatus.CANCELLED if ctx.should_stop(fresh=True) else RunStatus.SUCCEEDED
                store.finish(run_id, status)
            except Exception as exc:
                log.error("run %s failed: %s", run_id, exc, exc_info=True)
                _close_quietly(ctx)
                store.finish(run_id, RunStatus.FAILED, error=_error_text(exc))
            except BaseException as exc:  # Ctrl-C or exit while running inline
                _close_quietly(ctx)
                store.finish(run_id, RunStatus.INTERRUPTED, error=f"stopped ({type(exc).__name__}) while running")
                raise
        final_status = store.get_run(run_id).status
        log.info("run %s %s", run_id, final_status)
        return final_status
    finally:
        store.close()


def _close_quietly(ctx: RunContext | None) -> None:
    if ctx is not None:
        try:
            ctx.close()
        except Exception:
            log.warning("could not flush the metrics of run %s", ctx.run_id, exc_info=True)


# -- the worker loop ------------------------------------------------------------------------------


def _exit_with_parent() -> None:
    """In a child: exit at once when the worker that started us dies (e.g. killed with SIGKILL)."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_main(store_url: str, run_id: int, registry_factory: Callable[[], Any], options: dict[str, Any],
                log_level: int) -> None:
    """Entry point of the spawned child that executes one run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _exit_with_parent()
    execute_run(store_url, run_id, registry_factory, **options)


def _pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def _alive_pids(store: RunStore, host: str) -> set[int]:
    return {r.pid for r in store.list_runs(status=RunStatus.RUNNING, limit=100_000)
            if r.host == host and r.pid is not None and _pid_alive(r.pid)}


def _stop_child(child: Any, wait_s: float = 5.0) -> None:
    """Terminate the child, then kill it if it does not go."""
    if child.is_alive():
        child.terminate()
        child.join(wait_s)
    if child.is_alive():
        child.kill()
        child.join(wait_s)


def _supervise(store: RunStore, child: Any, run_id: int, stop: threading.Event, *, grace_s: float,
               heartbeat_s: float) -> None:
    """Watch a running child: heartbeat, enforce cancellation, record its end if it could not."""
    next_beat = next_cancel_check = 0.0
    kill_at: float | None = None
    while True:
        child.join(0.1)
        if not child.is_alive():
            break
        now = time.monotonic()
        try:
            if now >= next_beat:
                next_beat = now + heartbeat_s
                store.heartbeat(run_id)
            if kill_at is None and now >= next_cancel_check:
                next_cancel_check = now + min(1.0, heartbeat_s)
                if store.cancel_requested(run_id):
                    kill_at = now + grace_s
                    log.info("run %s: cancel requested; stopping it by force in %.0f s unless it stops",
                             run_id, grace_s)
        except Exception:  # a busy or briefly unreachable database must not orphan the child
            log.warning("worker could not reach the run store while supervising run %s", run_id, exc_info=True)
        if kill_at is not None and now >= kill_at:
            _stop_child(child)
            store.finish(run_id, RunStatus.CANCELLED, error=f"stopped by force: still running {grace_s:g} s after the cancel request")
            log.warning("run %s did not stop within %.0f s of the cancel request; killed", run_id, grace_s)
            return
        if stop.is_set():
            _stop_child(child)
            store.finish(run_id, RunStatus.INTERRUPTED, error="the worker was stopped (SIGTERM/SIGINT); resume the run to continue")
            log.warning("run %s interrupted: worker stopping", run_id)
            return
    if store.get_run(run_id).status == RunStatus.RUNNING:
        store.finish(run_id, RunStatus.FAILED, error=f"worker child exited with code {child.exitcode}")
        log.error("run %s: worker child exited with code %s without a final status", run_id, child.exitcode)


def run_worker(store_url: str, registry_factory: Callable[[], Any], *, data_dir: Path | str,
               runs_dir: Path | str, assets_dir: Path | str, device: str = "auto",
               poll_interval_s: float = 1.0, grace_s: float = 30.0, heartbeat_s: float = 2.0,
               stale_after_s: float = 60.0, exit_when_idle: bool = False, max_runs: int | None = None,
               worker_id: str | None = None, stop_event: threading.Event | None = None,
               threads: int | None = None) -> int:
    """Claim and execute queued runs until stopped; returns how many runs it processed.

    On start, running runs whose worker is gone (dead pid on this host, or no heartbeat for
    ``stale_after_s``) are marked "interrupted". Each run executes in a spawned child process;
    ``registry_factory`` must be a picklable module-level callable. SIGTERM/SIGINT stop the current
    run (marked "interrupted") and end the loop, as does setting ``stop_event`` (for a worker run in
    a thread). ``exit_when_idle`` returns when the queue is empty.
    """
    host, pid = socket.gethostname(), os.getpid()
    worker_id = worker_id or f"{host}:{pid}"
    options = {"data_dir": str(data_dir), "runs_dir": str(runs_dir), "assets_dir": str(assets_dir),
               "device": device, "show_progress": False, "threads": threads}
    spawn = mp.get_context("spawn")
    stop = stop_event if stop_event is not None else threading.Event()
    previous_handlers = _install_signal_handlers(stop)
    store = RunStore(store_url)
    processed = 0
    try:
        gone = store.mark_interrupted(host=host, alive_pids=_alive_pids(store, host), stale_after_s=stale_after_s)
        if gone:
            log.warning("marked runs of dead workers as interrupted: %s", ", ".join(map(str, gone)))
        log.info("worker %s started (device %s)", worker_id, device)
        while not stop.is_set() and (max_runs is None or processed < max_runs):
            run = store.claim_next(worker_id, host=host, pid=pid)
            if run is None:
                if exit_when_idle:
                    break
                stop.wait(poll_interval_s)
                continue
            log.info("worker %s took run %s (%s/%s)", worker_id, run.id, run.method, run.recipe)
            child = spawn.Process(target=_child_main, name=f"avstudio-run-{run.id}",
                                  args=(store_url, run.id, registry_factory, options, log.getEffectiveLevel()))
            try:
                child.start()
                _supervise(store, child, run.id, stop, grace_s=grace_s, heartbeat_s=heartbeat_s)
            except BaseException:
                _stop_child(child)
                store.finish(run.id, RunStatus.INTERRUPTED, error="the worker failed while supervising this run")
                raise
            processed += 1
    finally:
        _restore_signal_handlers(previous_handlers)
        store.close()
        log.info("worker %s stopped after %d run(s)", worker_id, processed)
    return processed


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signals only reach the main thread; a worker in a thread is stopped by its owner

    def handle(signum: int, _frame: Any) -> None:
        log.warning("worker got signal %s; stopping", signal.Signals(signum).name)
        stop.set()

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
