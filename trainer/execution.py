"""Executing one claimed run in this process (``avstudio train`` inline, a worker's child, the test harness):
:func:`execute_run` builds the run's context, calls its recipe and records how the run ended, while a
heartbeat thread keeps the run alive in the store; :class:`StopRequest` asks it to stop, resumable."""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer.config import make_config
from trainer.context import RunContext
from trainer.devices import apply_threads, resolve_device
from trainer.errors import UserError, failure_line
from trainer.store import DB_RETRY_S, RunStatus, RunStore

log = logging.getLogger("avstudio.worker")

TAKEN_OVER_TEXT = ("interrupted: another worker found its heartbeat stale and marked it interrupted "
                   "(this worker had lost the database)")


class StopRequest(threading.Event):
    """A request to stop a run now and leave it resumable ("interrupted"), with the reason why.

    Set from a signal handler or from another thread; the run's ``ctx.should_stop()`` sees it.
    """

    reason = "interrupted"

    def request(self, reason: str) -> None:
        """Ask for the stop (the first reason given is kept)."""
        if not self.is_set():
            self.reason = reason
            self.set()


class _Heartbeat:
    """A daemon thread that marks the run alive every ``interval_s`` seconds; when the store refuses a
    beat (another worker marked the run interrupted), it asks the run to stop through ``interrupt``."""

    def __init__(self, store: RunStore, run_id: int, interval_s: float = 2.0, *, worker_id: str | None = None,
                 interrupt: StopRequest | None = None) -> None:
        self.store, self.run_id, self.interval_s = store, run_id, interval_s
        self.worker_id, self.interrupt = worker_id, interrupt
        self.ctx: RunContext | None = None  # once set, its buffered metrics are flushed on each beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.store.heartbeat(self.run_id, self.worker_id) and not self._stop.is_set():
                    run = self.store.get_run(self.run_id)
                    # refused: it finished (the beat came after its final status), or it was taken from us
                    if run.status in (RunStatus.RUNNING, RunStatus.INTERRUPTED):
                        log.warning("run %s was marked interrupted by another worker; stopping", self.run_id)
                        if self.interrupt is not None:
                            self.interrupt.request(TAKEN_OVER_TEXT)
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


def failure_text(where: str, exc: BaseException) -> str:
    """The first line of a failed run's error (what the UI and the CLI show): a UserError (a ConfigError
    too) is the user's to fix, so its message alone; any other exception reads ``WHERE: Type: message``,
    as a plugin's failure does (WHERE: ``import`` for a module that failed to import, else where in the
    run it happened: ``start`` or ``train``)."""
    if isinstance(exc, UserError):
        return str(exc).strip() or type(exc).__name__
    return failure_line("import" if isinstance(exc, ImportError) else where, exc)


def _error_text(first_line: str, exc: BaseException) -> str:
    """A failed run's error: its first line, then the traceback (``avstudio runs show`` has it all)."""
    return f"{first_line}\n\n{''.join(traceback.format_exception(exc))}"


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
                device: str = "auto", show_progress: bool = False, threads: int | None = None,
                interrupt: StopRequest | None = None, db_retry_s: float = DB_RETRY_S) -> RunStatus:
    """Execute an already-claimed run in this process and record how it ended; returns the final status.

    The run's own device wins unless it is "auto", in which case ``device`` (the worker's) is used.
    Ends as "succeeded", "cancelled" (when a cancel was requested by the time train returned),
    "interrupted" (``interrupt`` was set and the recipe stopped early for it, or raised after it was
    set: its helper processes may have got the same signal), or "failed" with :func:`failure_text` as
    the first line of ``error`` and the traceback below it (a stored config that no longer validates
    fails the run with the :class:`ConfigError`'s one line). The log gets that line too, with the
    traceback, except for a UserError: the user's to fix, it is logged at INFO, without one.
    A KeyboardInterrupt / SystemExit marks the run "interrupted" and propagates.
    Every store call retries an unreachable database for ``db_retry_s`` seconds.
    """
    apply_threads(threads)
    store = RunStore(store_url, runs_dir=runs_dir, retry_s=db_retry_s)
    ctx: RunContext | None = None
    try:
        run = store.get_run(run_id)
        # only while the worker that holds it (None inline) still does: a run it lost is not its to end
        end = functools.partial(store.finish, run_id, worker_id=run.worker_id)
        with _Heartbeat(store, run_id, worker_id=run.worker_id, interrupt=interrupt) as heartbeat:
            where = "start"  # loading the plugins, the recipe, its config, the device and the context
            try:
                registry = registry_factory()
                recipe = registry.recipe(run.method, run.recipe)
                config = make_config(recipe.config_cls, run.config)
                torch_device = resolve_device(run.device if run.device not in ("", "auto") else device)
                store.set_started(run_id, device=str(torch_device))
                ctx = RunContext(store, run, registry, device=torch_device, data_dir=data_dir, runs_dir=runs_dir,
                                 assets_dir=assets_dir, config=config, show_progress=show_progress,
                                 interrupt=interrupt)
                heartbeat.ctx = ctx
                log.info("run %s: %s/%s on %s", run_id, run.method, run.recipe, torch_device)
                where = "train"
                result = recipe.train(config, ctx)
                # the returned final metrics, except those the recipe already logged at the last step
                final = {k: v for k, v in _final_metrics(result).items()
                         if ctx.last_values.get(k) != (ctx.last_step, v)}
                if final:
                    ctx.log_metrics(ctx.last_step, **final)
                ctx.close()
                if store.cancel_requested(run_id):
                    end(RunStatus.CANCELLED)
                elif ctx.interrupted:  # it stopped early for the interrupt (one that came after its last step does not count)
                    end(RunStatus.INTERRUPTED, error=interrupted_text(interrupt))
                else:
                    end(RunStatus.SUCCEEDED)
            except Exception as exc:
                _close_quietly(ctx)
                first = failure_text(where, exc)
                if interrupt is not None and interrupt.is_set():
                    log.warning("run %s ended with an error after it was interrupted: %s", run_id, first)
                    end(RunStatus.INTERRUPTED, error=f"{interrupted_text(interrupt)}\n\n{_error_text(first, exc)}")
                elif isinstance(exc, UserError):  # `avstudio train` shows its one line; no traceback
                    log.info("run %s failed: %s", run_id, first)
                    end(RunStatus.FAILED, error=_error_text(first, exc))
                else:
                    log.error("run %s failed: %s", run_id, first, exc_info=True)
                    end(RunStatus.FAILED, error=_error_text(first, exc))
            except BaseException as exc:  # Ctrl-C or exit while running inline
                _close_quietly(ctx)
                end(RunStatus.INTERRUPTED, error=f"stopped ({type(exc).__name__}) while running")
                raise
        final_status = store.get_run(run_id).status
        log.info("run %s %s", run_id, final_status)
        return final_status
    finally:
        store.close()


def interrupted_text(interrupt: StopRequest | None) -> str:
    reason = interrupt.reason if interrupt is not None else "interrupted"
    return f"{reason}; resume the run to continue"


def _close_quietly(ctx: RunContext | None) -> None:
    if ctx is not None:
        try:
            ctx.close()
        except Exception:
            log.warning("could not flush the metrics of run %s", ctx.run_id, exc_info=True)
