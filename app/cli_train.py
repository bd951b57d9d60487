"""``avstudio train``: a run queued (``--detach``) or executed here with a progress bar, in one process or
several (``--nproc``); and the inline execution ``avstudio runs resume --inline`` shares, with its handling
of Ctrl-C (cancel) and of stop signals (interrupt, resumable)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Any

import click

from app.cli_common import CliError, _fmt, _registry, _settings, _store, _table, log
from app.settings import Settings


@contextmanager
def _cancel_on_ctrl_c(store, run_id: int):
    """First Ctrl-C asks the run to stop (cooperatively); a second one cancels it at once."""
    from trainer.store import RunStatus

    previous = signal.getsignal(signal.SIGINT)
    pressed = []

    def handler(signum: int, frame: Any) -> None:
        pressed.append(True)
        if len(pressed) == 1:
            click.echo("\ncancelling… (Ctrl-C again to stop at once)", err=True)
            _in_thread(store.request_cancel, run_id, wait=False)
            return
        _in_thread(store.finish, run_id, RunStatus.CANCELLED, wait=True, error="cancelled with Ctrl-C")
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _interrupt_on_stop_signals(store, run_id: int):
    """SIGTERM (`kill`, `timeout`, a container or systemd stop) and SIGHUP (the terminal went away)
    ask the run to stop at its next should_stop() and end "interrupted", resumable from its last
    checkpoint; a run still going ``CHILD_STOP_WAIT_S`` later (or at a second signal) is recorded as
    interrupted and stopped at once. Yields the StopRequest; a signal set to be ignored (nohup) stays so."""
    import _thread

    from trainer.execution import StopRequest
    from trainer.store import RunStatus
    from trainer.worker import CHILD_STOP_WAIT_S

    interrupt = StopRequest()
    interrupt.signum = None  # the signal that asked for the stop
    timers: list[threading.Timer] = []

    def handler(signum: int, frame: Any) -> None:
        if interrupt.is_set():  # its grace is over
            _in_thread(store.finish, run_id, RunStatus.INTERRUPTED, wait=True, error=f"{interrupt.reason}; "
                       "it did not stop by itself and was stopped at once; resume the run to continue")
            raise KeyboardInterrupt
        interrupt.signum = signum
        interrupt.request(f"interrupted by {signal.Signals(signum).name}")
        timers.append(threading.Timer(CHILD_STOP_WAIT_S, _thread.interrupt_main, (signum,)))
        timers[-1].daemon = True
        timers[-1].start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield interrupt
    finally:
        for timer in timers:
            timer.cancel()
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


def _in_thread(fn, *args: Any, wait: bool, **kwargs: Any) -> None:
    """Call a store method from a signal handler: in a thread, since the interrupted code may hold
    a database transaction (so we wait a few seconds at most)."""

    def call() -> None:
        try:
            fn(*args, **kwargs)
        except (KeyError, ValueError):
            pass  # the run finished meanwhile
        except Exception:
            log.warning("could not update run %s", args[0], exc_info=True)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    if wait:
        thread.join(timeout=5)


def _run_inline(store, settings: Settings, registry, run_id: int, device: str) -> None:
    """Claim a queued run and execute it here with a progress bar; exit non-zero unless it succeeded.

    Ctrl-C cancels it (see ``_cancel_on_ctrl_c``); SIGTERM or SIGHUP interrupt it, resumable.
    """
    from trainer.execution import execute_run
    from trainer.store import RunStatus

    host, pid = socket.gethostname(), os.getpid()
    with _interrupt_on_stop_signals(store, run_id) as interrupt:
        if store.claim_run(run_id, f"cli-{host}-{pid}", host=host, pid=pid) is None:
            raise CliError(f"run {run_id} was taken by a worker; follow it with `avstudio runs show {run_id}`")
        try:
            with _cancel_on_ctrl_c(store, run_id):
                execute_run(settings.db_url, run_id, lambda: registry, data_dir=settings.data_dir,
                            runs_dir=settings.runs_dir, assets_dir=settings.assets_dir, device=device,
                            show_progress=True, threads=settings.threads, interrupt=interrupt,
                            db_retry_s=settings.db_retry_s)
        except KeyboardInterrupt:  # no-op if it has finished
            store.finish(run_id, RunStatus.INTERRUPTED if interrupt.is_set() else RunStatus.CANCELLED,
                         error=f"{interrupt.reason}; resume the run to continue" if interrupt.is_set()
                         else "cancelled with Ctrl-C")
    run = store.get_run(run_id)
    click.echo(f"run {run.id} {run.status} on {run.device}")
    for key in sorted(run.latest_metrics):
        click.echo(f"  {key} = {_fmt(run.latest_metrics[key])}")
    if run.status != RunStatus.SUCCEEDED:
        # a stop signal gives the shell's code for it (143 for SIGTERM), as if it had ended the process
        signum = interrupt.signum if run.status == RunStatus.INTERRUPTED else None
        raise CliError(f"run {run.id} {run.status}" + (f": {run.error}" if run.error else ""),
                       exit_code=130 if run.status == RunStatus.CANCELLED else 128 + signum if signum else 1)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("method")
@click.argument("recipe")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Set a config value (repeatable); see `avstudio train METHOD RECIPE --help-config`.")
@click.option("--device", default=None, help="Device for this run (default: the global --device / auto).")
@click.option("--detach", is_flag=True, help="Only queue the run; a worker will pick it up.")
@click.option("--help-config", is_flag=True, help="List the recipe's config keys, defaults and help, then exit.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes, data parallel (torchrun): one per GPU with --device cuda, "
                   "or N CPU processes; the recipe's batch size is the global batch.")
def train(method: str, recipe: str, assignments: tuple[str, ...], device: str | None, detach: bool,
          help_config: bool, nproc: int) -> None:
    """Train METHOD with RECIPE: inline with a progress bar, or queued with --detach."""
    from trainer.config import (
        config_fields,
        config_to_dict,
        describe_constraints,
        make_config,
        parse_assignments,
    )
    from trainer.devices import check_device_name
    from trainer.gitinfo import current_commit

    settings = _settings()
    registry = _registry()
    chosen = registry.recipe(method, recipe)
    if help_config:
        rows = [[f["name"], getattr(f["type"], "__name__", str(f["type"])), f["default"],
                 describe_constraints(f) or "-", f["help"]] for f in config_fields(chosen.config_cls)]
        click.echo(_table(["key", "type", "default", "allowed", "help"], rows))
        return
    config = make_config(chosen.config_cls, parse_assignments(assignments))
    device = check_device_name(device or settings.device)  # refused before a run row exists
    if nproc > 1:
        from trainer.distributed import check_nproc

        if detach:
            raise CliError("--nproc trains in the foreground; a worker runs a queued run as one process", exit_code=2)
        try:
            device = check_nproc(nproc, device)
        except ValueError as exc:
            raise CliError(str(exc), exit_code=2) from None
    store = _store(settings)
    run_id = store.enqueue(method, recipe, config_to_dict(config), device=device, commit=current_commit())
    if detach:
        click.echo(f"queued run {run_id} ({method}/{recipe}); a worker will pick it up "
                   "(`avstudio worker`, or the one `avstudio serve` starts)")
        return
    click.echo(f"run {run_id}: {method}/{recipe} {config_to_dict(config)}", err=True)
    if nproc > 1:
        _run_distributed(store, settings, run_id, device, nproc)
        return
    _run_inline(store, settings, registry, run_id, device)


def _run_distributed(store, settings: Settings, run_id: int, device: str, nproc: int) -> None:
    """Train a queued run with ``nproc`` processes (trainer.distributed); exit as ``_run_inline`` does."""
    from trainer.distributed import launch_run
    from trainer.store import RunStatus

    try:
        signum = launch_run(store, run_id, nproc=nproc, device=device, registry="app.plugin_manager:registry_from_env",
                            data_dir=settings.data_dir, runs_dir=settings.runs_dir, assets_dir=settings.assets_dir,
                            threads=settings.threads, db_retry_s=settings.db_retry_s)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    run = store.get_run(run_id)
    signum = signum if run.status == RunStatus.INTERRUPTED else None  # as _run_inline: a failure stays a failure
    click.echo(f"run {run.id} {run.status} on {run.device} ({nproc} processes)")
    for key in sorted(run.latest_metrics):
        click.echo(f"  {key} = {_fmt(run.latest_metrics[key])}")
    if run.status != RunStatus.SUCCEEDED:
        raise CliError(f"run {run.id} {run.status}" + (f": {run.error.splitlines()[0]}" if run.error else ""),
                       exit_code=130 if run.status == RunStatus.CANCELLED else 128 + signum if signum else 1)
