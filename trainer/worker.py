"""The worker: takes queued runs from the store and executes each in a child process.

``execute_run`` (:mod:`trainer.execution`) runs one claimed run in the current process (``avstudio
train`` uses it inline); ``run_worker`` is the loop behind ``avstudio worker``: it claims runs, executes each in a *spawned*
child (so a run can be stopped for good), heartbeats, enforces cancellation after a grace period
and records a final status even when the child dies.

How a worker stops, and what it guarantees (POSIX; on Linux and macOS):

* Each run's child leads a process group of its own, so the worker ends everything a run started
  (a recipe's data-loading processes too) with one ``killpg``, and a signal sent to the worker's
  whole group (``timeout``, Ctrl-C in a terminal) reaches the worker alone.
* SIGTERM or SIGINT to the worker, or to its group: the worker sends SIGTERM to the child, which
  asks the recipe to stop at its next ``should_stop()``; the run ends "interrupted", resumable from
  its last checkpoint. After ``CHILD_STOP_WAIT_S`` the child's group is killed. The same SIGTERM
  reaching the child directly (systemd signals every process of a service) does the same.
* A worker whose heartbeat stops (its machine went away, its network did) has its run marked
  "interrupted" by any other worker on the same database, within ``stale_after_s`` plus one sweep
  (every ``SWEEP_EVERY_S``). Should it come back, its next heartbeat is refused and it stops the run.
* A lost database connection (a server restart) is retried with back-off for ``db_retry_s``: the run
  waits at its next store call, keeps the metrics it buffered, and goes on once the database is back.
* SIGKILL to the worker: the child sees its parent go (a pipe closes), interrupts the run the same
  way and, after ``CHILD_STOP_WAIT_S``, kills its own group. A worker stopped any of these ways
  leaves no process behind, unless one of them put itself in another process group or session.
  The watch runs in a Python thread: a child stuck in C code that never releases the GIL is only
  killed when its group is (by the worker, or by systemd's final SIGKILL).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.database import is_transient
from trainer.execution import StopRequest, execute_run, interrupted_text
from trainer.store import DB_RETRY_S, RunStatus, RunStore

log = logging.getLogger("avstudio.worker")

EXIT_PARENT_GONE = 70  # the child's exit code when its worker died under it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHILD_STOP_WAIT_S = 5.0  # how long a run gets to stop by itself once asked to (then its process group is killed)
STOPPED_TEXT = "the worker was stopped (SIGTERM/SIGINT); resume the run to continue"
SWEEP_EVERY_S = 5.0  # how often a worker looks for runs of lost workers (whose heartbeat is stale)


def _lead_own_process_group() -> bool:
    """Make this process the leader of a new process group (in the same session); whether it is now."""
    if not hasattr(os, "setpgid"):
        return False
    try:
        os.setpgid(0, 0)
    except OSError:  # e.g. a session leader cannot
        log.warning("could not put the run's process in a process group of its own", exc_info=True)
    return os.getpgrp() == os.getpid()


def _kill_process_group(pgid: int | None) -> None:
    """SIGKILL every process still in group ``pgid``: a run's child (its leader) and what it started.

    Called with a child's pid after it was reaped, too: a group's id cannot be taken by a new process
    while any member of the group lives, so this reaches the leftovers and nothing else.
    """
    if pgid is None or pgid <= 1 or not hasattr(os, "killpg") or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left in it
        pass


def _stop_when_orphaned(parent: Any, interrupt: StopRequest, leader: bool, store_url: str, run_id: int) -> None:
    """In a child: once the worker that started it is gone (killed with SIGKILL, say), interrupt the run;
    if it has not ended ``CHILD_STOP_WAIT_S`` later, record it as interrupted and kill this process group
    (or this process)."""
    parent.join()  # returns when the pipe from the parent closes, i.e. when it died
    interrupt.request(f"interrupted: its worker (pid {parent.pid}) died")
    time.sleep(CHILD_STOP_WAIT_S)
    log.warning("run %s: its worker is gone and the run did not stop; killing its process", run_id)

    def record() -> None:
        store = RunStore(store_url)
        try:
            store.finish(run_id, RunStatus.INTERRUPTED, error=interrupted_text(interrupt))
        finally:
            store.close()

    recorder = threading.Thread(target=record, name="record-interrupted", daemon=True)
    recorder.start()
    recorder.join(CHILD_STOP_WAIT_S)  # a database that does not answer must not keep the processes alive
    if leader:
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_PARENT_GONE)


def _child_main(store_url: str, run_id: int, registry_factory: Callable[[], Any], options: dict[str, Any],
                log_level: int) -> None:
    """Entry point of the spawned child that executes one run (see the module's docstring for signals)."""
    leader = _lead_own_process_group()
    interrupt = StopRequest()

    def on_signal(signum: int, _frame: Any) -> None:
        interrupt.request(f"interrupted by {signal.Signals(signum).name}")

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=_stop_when_orphaned, args=(parent, interrupt, leader, store_url, run_id),
                         name="parent-watch", daemon=True).start()
    try:
        execute_run(store_url, run_id, registry_factory, interrupt=interrupt, **options)
    finally:
        if leader and parent is not None and not parent.is_alive():
            os.killpg(os.getpid(), signal.SIGKILL)  # no worker is left to clear up after the run: this process goes too


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


def _stop_child(child: Any, wait_s: float = CHILD_STOP_WAIT_S) -> None:
    """Ask the child to stop (SIGTERM: its run stops at the next should_stop() and ends "interrupted");
    after ``wait_s`` seconds (at once when 0) kill its process group: the child and all it started."""
    if wait_s > 0 and child.is_alive():
        child.terminate()
        child.join(wait_s)
    if child.pid is None:  # it never started
        return
    _kill_process_group(child.pid)
    if child.is_alive():
        child.kill()  # it could not lead a group of its own
    child.join(5.0)


def _exit_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"{exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            pass
    return str(exitcode)


def _supervise(store: RunStore, child: Any, run_id: int, stop: threading.Event, *, grace_s: float,
               heartbeat_s: float, worker_id: str | None = None) -> None:
    """Watch a running child: heartbeat, enforce cancellation, record its end if it could not.

    Meanwhile it sweeps for runs of lost workers; if its own run was marked interrupted by another
    worker (a heartbeat refused), it stops the child and leaves the run as that worker recorded it.
    """
    next_beat = next_cancel_check = 0.0
    next_sweep = time.monotonic() + SWEEP_EVERY_S
    kill_at: float | None = None
    while True:
        child.join(0.1)
        if not child.is_alive():
            break
        now = time.monotonic()
        try:
            if now >= next_beat:
                next_beat = now + heartbeat_s
                if not store.heartbeat(run_id, worker_id):
                    now_run = store.get_run(run_id)
                    # refused: the run finished (the child is ending by itself), or another worker marked
                    # it interrupted, and maybe resumed it since, while this one could not beat
                    if now_run.worker_id != worker_id or now_run.status == RunStatus.INTERRUPTED:
                        log.warning("run %s was marked interrupted by another process (%s); stopping it", run_id,
                                    (now_run.error or "").splitlines()[:1])
                        _stop_child(child)
                        return
            if now >= next_sweep:
                next_sweep = now + SWEEP_EVERY_S
                _sweep(store, worker_id)
            if kill_at is None and now >= next_cancel_check:
                next_cancel_check = now + min(1.0, heartbeat_s)
                if store.cancel_requested(run_id):
                    kill_at = now + grace_s
                    log.info("run %s: cancel requested; stopping it by force in %.0f s unless it stops",
                             run_id, grace_s)
        except Exception:  # a busy or briefly unreachable database must not orphan the child
            log.warning("worker could not reach the run store while supervising run %s", run_id, exc_info=True)
        if kill_at is not None and now >= kill_at:
            _stop_child(child, wait_s=0)  # it had its grace period
            store.finish(run_id, RunStatus.CANCELLED, error=f"stopped by force: still running {grace_s:g} s after the cancel request",
                         worker_id=worker_id)
            log.warning("run %s did not stop within %.0f s of the cancel request; killed", run_id, grace_s)
            return
        if stop.is_set():
            _stop_child(child)
            store.finish(run_id, RunStatus.INTERRUPTED, error=STOPPED_TEXT, worker_id=worker_id)
            log.warning("run %s %s: worker stopping", run_id, store.get_run(run_id).status)
            return
    _kill_process_group(child.pid)  # what the run started and left running
    if store.get_run(run_id).status == RunStatus.RUNNING:
        code = _exit_text(child.exitcode)
        if stop.is_set() or child.exitcode in (-signal.SIGTERM, -signal.SIGINT):
            # a stop signal reached the child before it could handle it (in its first second or two)
            store.finish(run_id, RunStatus.INTERRUPTED, error=f"{STOPPED_TEXT} (worker child exited with code {code})",
                         worker_id=worker_id)
            log.warning("run %s interrupted: worker child exited with code %s", run_id, code)
        else:
            store.finish(run_id, RunStatus.FAILED, error=f"worker child exited with code {code}", worker_id=worker_id)
            log.error("run %s: worker child exited with code %s without a final status", run_id, code)


def _sweep(store: RunStore, worker_id: str | None) -> None:
    """Record the runs of lost workers (stale heartbeats) as interrupted."""
    marked = store.expire_stale(noticed_by=worker_id)
    if marked:
        log.warning("marked runs of lost workers (no heartbeat for %g s) as interrupted: %s",
                    store.stale_after_s, ", ".join(map(str, marked)))


def run_worker(store_url: str, registry_factory: Callable[[], Any], *, data_dir: Path | str,
               runs_dir: Path | str, assets_dir: Path | str, device: str = "auto",
               poll_interval_s: float = 1.0, grace_s: float = 30.0, heartbeat_s: float = 2.0,
               stale_after_s: float = 60.0, exit_when_idle: bool = False, max_runs: int | None = None,
               worker_id: str | None = None, stop_event: threading.Event | None = None,
               threads: int | None = None, db_retry_s: float = DB_RETRY_S) -> int:
    """Claim and execute queued runs until stopped; returns how many runs it processed.

    On start, running runs whose worker is gone (dead pid on this host, or no heartbeat for
    ``stale_after_s``) are marked "interrupted", and every ``SWEEP_EVERY_S`` so are runs of workers on
    any machine whose heartbeat went stale. Store calls retry an unreachable database for
    ``db_retry_s`` seconds (an idle worker waits for it as long as it takes). Each run executes in a spawned child process;
    ``registry_factory`` must be a picklable module-level callable. SIGTERM/SIGINT stop the current
    run (marked "interrupted") and end the loop, as does setting ``stop_event`` (for a worker run in
    a thread). ``exit_when_idle`` returns when the queue is empty.
    """
    host, pid = socket.gethostname(), os.getpid()
    worker_id = worker_id or f"{host}:{pid}"
    options = {"data_dir": str(data_dir), "runs_dir": str(runs_dir), "assets_dir": str(assets_dir),
               "device": device, "show_progress": False, "threads": threads, "db_retry_s": db_retry_s}
    spawn = mp.get_context("spawn")
    stop = stop_event if stop_event is not None else threading.Event()
    previous_handlers = _install_signal_handlers(stop)
    store = RunStore(store_url, stale_after_s=stale_after_s, runs_dir=runs_dir, retry_s=db_retry_s, give_up=stop)
    store.noticed_by = worker_id  # its reads expire stale runs too: say who did
    processed = 0
    try:
        gone = store.mark_interrupted(host=host, pid_alive=_pid_alive, stale_after_s=stale_after_s,
                                      noticed_by=worker_id)
        if gone:
            log.warning("marked runs of dead workers as interrupted: %s", ", ".join(map(str, gone)))
        log.info("worker %s started (device %s)", worker_id, device)
        next_sweep = 0.0
        while not stop.is_set() and (max_runs is None or processed < max_runs):
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_EVERY_S
                    _sweep(store, worker_id)
                run = store.claim_next(worker_id, host=host, pid=pid)
            except Exception as exc:  # the store's retries ran out: an idle worker waits on
                if not is_transient(exc) or stop.is_set():
                    raise
                log.error("run store still unreachable after %g s; waiting", db_retry_s, exc_info=True)
                stop.wait(poll_interval_s)
                continue
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
                _supervise(store, child, run.id, stop, grace_s=grace_s, heartbeat_s=heartbeat_s, worker_id=worker_id)
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
