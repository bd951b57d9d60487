"""The ``avstudio`` command line: serve the app, run workers, train, inspect runs, manage plugins.

Global options set the matching ``AVSTUDIO_*`` environment variables while they are parsed, so
everything below (settings, the plugin registry, worker processes started from here) sees them.
Plugins are loaded lazily, only by commands that need them; their ``register_commands(cli)`` hook
runs before click looks up a command it does not know, so plugin commands work like built-ins.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from app.errors import UserError
from app.settings import Settings

log = logging.getLogger("avstudio.cli")

REGISTRY_KEY = "avstudio.registry"


class CliError(click.ClickException):
    """An error shown as one line, ``Error: <message>``, with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message.splitlines()[0] if message else "failed")
        self.exit_code = exit_code


class AvstudioGroup(click.Group):
    """The top-level group: loads plugin commands on demand and turns user errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        _try_load_plugins(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and _try_load_plugins(ctx):
            command = super().get_command(ctx, name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:  # ConfigError included: bad key, bad value, unknown method/recipe
            raise CliError(str(exc), exit_code=2) from None


def _set_env(name: str):
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            os.environ[name] = str(Path(value).resolve()) if isinstance(value, Path) else str(value)
        return value

    return callback


@click.group(cls=AvstudioGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), expose_value=False,
              callback=_set_env("AVSTUDIO_HOME"), help="State directory (env AVSTUDIO_HOME, default ~/.avstudio).")
@click.option("--db-url", expose_value=False, callback=_set_env("AVSTUDIO_DB_URL"),
              help="SQLAlchemy URL of the run store (env AVSTUDIO_DB_URL, default sqlite:///HOME/runs.db).")
@click.option("--plugins-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              expose_value=False, callback=_set_env("AVSTUDIO_PLUGINS_DIR"),
              help="Also load single-file plugins (*.py) from DIR (env AVSTUDIO_PLUGINS_DIR).")
@click.option("--device", expose_value=False, callback=_set_env("AVSTUDIO_DEVICE"),
              help="Training device: auto, cpu, cuda, cuda:1, mps (env AVSTUDIO_DEVICE).")
@click.option("--threads", expose_value=False, callback=_set_env("AVSTUDIO_THREADS"),
              help="CPU threads for recipes, workers and demos: N or auto (env AVSTUDIO_THREADS). "
                   "On a busy 2-core machine, 1 is often much faster.")
@click.version_option(package_name="adaptive-vision-studio", prog_name="avstudio")
def cli() -> None:
    """Adaptive Vision Studio: see and retrain adaptive, efficient vision networks."""


# --------------------------------------------------------------------------------------------
# Settings, registry, store: built on first use
# --------------------------------------------------------------------------------------------


def _settings() -> Settings:
    try:
        settings = Settings()
    except ValueError as exc:  # a malformed AVSTUDIO_* value
        raise CliError(str(exc), exit_code=2) from None
    settings.ensure_dirs()
    return settings


def _registry(ctx: click.Context | None = None):
    """The plugin registry for this invocation (loaded once; plugin commands registered on ``cli``)."""
    ctx = ctx or click.get_current_context()
    meta = ctx.meta
    if REGISTRY_KEY not in meta:
        from app.plugin_manager import registry_from_env

        registry = registry_from_env()
        meta[REGISTRY_KEY] = registry
        _register_plugin_commands(registry)
    return meta[REGISTRY_KEY]


def _register_plugin_commands(registry) -> None:
    """Call every plugin's ``register_commands(cli, ctx)``; a failing plugin is reported, not fatal."""
    from app.demo_context import StudioCommandContext

    builtins = dict(cli.commands)
    registry.run_hook("register_commands", cli=cli, ctx=StudioCommandContext(registry, _settings))
    for name, command in builtins.items():
        if cli.commands.get(name) is not command:  # plugins add commands; they never replace ours
            log.warning("a plugin tried to replace the built-in command %r; keeping the built-in", name)
            cli.commands[name] = command


def _try_load_plugins(ctx: click.Context) -> bool:
    """Load plugins for command lookup (once); False (with a warning) if that is impossible."""
    if REGISTRY_KEY in ctx.meta or ctx.meta.get("avstudio.plugins_tried"):
        return False
    ctx.meta["avstudio.plugins_tried"] = True
    try:
        _registry(ctx)
    except Exception as exc:  # the built-in commands must keep working whatever the plugins do
        click.echo(f"Warning: plugins not loaded: {exc}", err=True)
        return False
    return True


def _store(settings: Settings):
    return settings.open_store()


def _on_run(action, run_id: int):
    """``action(run_id)`` with the store's KeyError (unknown run) and ValueError (wrong state) as CLI errors."""
    try:
        return action(run_id)
    except KeyError:
        raise CliError(f"no run {run_id}; `avstudio runs list` shows the runs") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _get_run(store, run_id: int):
    return _on_run(store.get_run, run_id)


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _metrics_text(metrics: dict[str, float], limit: int = 3) -> str:
    keys = sorted(metrics)
    text = " ".join(f"{k}={_fmt(metrics[k])}" for k in keys[:limit])
    return text + (" …" if len(keys) > limit else "")


# --------------------------------------------------------------------------------------------
# serve / worker
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--no-worker", is_flag=True, help="Do not start a background training worker.")
@click.option("--share", is_flag=True, help="Create a public Gradio share link.")
def serve(host: str, port: int, no_worker: bool, share: bool) -> None:
    """Start the web app (and, unless --no-worker, a training worker process)."""
    settings = _settings()
    registry = _registry()
    from app.ui import launch

    launch(settings, registry, host=host, port=port, start_worker=not no_worker, share=share)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_when_parent_is_gone(parent_pid: int, interval_s: float = 1.0) -> None:
    """The web app's background worker: once the app is gone, even killed with SIGKILL (which runs no
    clean-up in the app), stop as on SIGTERM, so no worker is left orphaned and a restarted app does
    not end up with two."""
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        log.warning("the process that started this worker (pid %s) is gone: stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


@cli.command()
@click.option("--exit-when-idle", "--once", "exit_when_idle", is_flag=True,
              help="Stop once the queue is empty instead of waiting for more runs.")
@click.option("--max-runs", type=click.IntRange(min=1), help="Stop after executing N runs.")
@click.option("--grace-s", type=float, default=30.0, show_default=True,
              help="Seconds a cancelled run gets to stop by itself before it is stopped for good.")
@click.option("--poll-interval-s", type=float, default=1.0, show_default=True)
@click.option("--stop-with-parent", "parent_pid", type=int, hidden=True,
              help="Stop (as on SIGTERM) once the process with this pid is no longer this one's parent.")
def worker(exit_when_idle: bool, max_runs: int | None, grace_s: float, poll_interval_s: float,
           parent_pid: int | None) -> None:
    """Execute queued runs, one at a time, in this process (several workers may share a database)."""
    settings = _settings()
    if parent_pid is not None:
        _stop_when_parent_is_gone(parent_pid)
    from app.plugin_manager import registry_from_env
    from trainer.worker import run_worker

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # stop like Ctrl-C, so clean-up runs
    try:
        result = run_worker(settings.db_url, registry_from_env, data_dir=settings.data_dir,
                            runs_dir=settings.runs_dir, assets_dir=settings.assets_dir,
                            device=settings.device, poll_interval_s=poll_interval_s, grace_s=grace_s,
                            exit_when_idle=exit_when_idle, max_runs=max_runs, threads=settings.threads,
                            stale_after_s=settings.stale_after_s, db_retry_s=settings.db_retry_s)
    except KeyboardInterrupt:
        click.echo("worker stopped", err=True)
        sys.exit(130)
    click.echo(f"worker finished ({result} run(s) executed)", err=True)


# --------------------------------------------------------------------------------------------
# train (and inline execution, shared with `runs resume --inline`)
# --------------------------------------------------------------------------------------------


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

    from trainer.store import RunStatus
    from trainer.worker import CHILD_STOP_WAIT_S, StopRequest

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
    from trainer.store import RunStatus
    from trainer.worker import execute_run

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


@cli.command(context_settings={"ignore_unknown_options": False})
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


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


@cli.group()
def runs() -> None:
    """List, inspect, compare, cancel, resume and promote runs."""


@runs.command("list")
@click.option("--method", default=None, help="Only runs of this method.")
@click.option("--status", default=None, help="Only runs with this status.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runs_list(method: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """The newest runs first."""
    from trainer.store import RunStatus

    if status is not None and status not in list(RunStatus):
        raise CliError(f"unknown status {status!r}; valid statuses: {', '.join(RunStatus)}", exit_code=2)
    found = _store(_settings()).list_runs(method=method, status=status, limit=limit)
    if as_json:
        _echo_json([asdict(r) for r in found])
        return
    if not found:
        click.echo("no runs yet: start one with `avstudio train METHOD RECIPE`")
        return
    rows = [[r.id, r.method, r.recipe, r.status, r.device, r.host or "", r.created_at, _metrics_text(r.latest_metrics)]
            for r in found]
    click.echo(_table(["id", "method", "recipe", "status", "device", "host", "created", "metrics"], rows))


@runs.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def runs_show(run_id: int, as_json: bool) -> None:
    """Config, params, status, error, latest metrics and artifacts of one run."""
    from trainer.store import RunStatus

    store = _store(_settings())
    run = _get_run(store, run_id)
    params = store.params(run_id)
    artifacts = store.artifacts(run_id)
    from app.promotion import promotions_of_run

    promoted = promotions_of_run(store, run_id)
    if as_json:
        _echo_json({**asdict(run), "params": params,
                    "artifacts": [{**asdict(a), "promoted_as": promoted.get(a.id, [])} for a in artifacts]})
        return
    click.echo(f"run {run.id}: {run.method}/{run.recipe}  [{run.status}]")
    for label, value in [("device", run.device), ("commit", run.commit), ("worker", run.worker_id), ("host", run.host),
                         ("created", run.created_at), ("started", run.started_at),
                         ("finished", run.finished_at), ("resumed", run.resume_count or None)]:
        if value is not None:
            click.echo(f"  {label:<9}{_fmt(value)}")
    if run.status == RunStatus.RUNNING:
        click.echo(f"  progress {run.progress:.0%} {run.progress_desc}")
    if run.error:
        click.echo(f"  error    {run.error}")
    click.echo("config:")
    for key, value in run.config.items():
        click.echo(f"  {key} = {value!r}")
    extra = {k: v for k, v in params.items() if k not in run.config}
    if extra:
        click.echo("params:")
        for key, value in sorted(extra.items()):
            click.echo(f"  {key} = {value}")
    click.echo("metrics:" if run.latest_metrics else "metrics: (none yet)")
    for key in sorted(run.latest_metrics):
        click.echo(f"  {key} = {_fmt(run.latest_metrics[key])}")
    click.echo("artifacts:" if artifacts else "artifacts: (none)")
    for artifact in artifacts:
        slots = promoted.get(artifact.id)
        where = f"  [promoted as {', '.join(slots)}]" if slots else ""
        click.echo(f"  #{artifact.id} {artifact.name} ({artifact.kind}) {artifact.path}{where}")


@runs.command("compare")
@click.argument("run_ids", type=int, nargs=-1, required=True)
@click.option("--metric", "metric_keys", multiple=True, help="Only these metrics (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def runs_compare(run_ids: tuple[int, ...], metric_keys: tuple[str, ...], as_json: bool) -> None:
    """Side by side: the config values that differ, and the final metrics."""
    store = _store(_settings())
    found = [_get_run(store, run_id) for run_id in run_ids]
    config_keys = sorted({k for r in found for k in r.config})
    differing = {k: [r.config.get(k) for r in found] for k in config_keys
                 if len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in found}) > 1}
    all_metrics = sorted({k for r in found for k in r.latest_metrics})
    unknown = [k for k in metric_keys if k not in all_metrics]
    if unknown:
        raise CliError(f"no run has metric {unknown[0]!r}; metrics: {', '.join(all_metrics) or '(none)'}", 2)
    shown = list(metric_keys) or all_metrics
    metrics = {k: [r.latest_metrics.get(k) for r in found] for k in shown}
    if as_json:
        _echo_json({"runs": [r.id for r in found], "method": [r.method for r in found],
                    "recipe": [r.recipe for r in found], "status": [r.status for r in found],
                    "config_differences": differing, "metrics": metrics})
        return
    rows = [["method", *[r.method for r in found]], ["recipe", *[r.recipe for r in found]],
            ["status", *[r.status for r in found]]]
    rows += [[f"config.{k}", *values] for k, values in differing.items()]
    rows += [[f"metric.{k}", *values] for k, values in metrics.items()]
    click.echo(_table(["run", *[str(r.id) for r in found]], rows))
    if not differing:
        click.echo("(the configs are identical)")


@runs.command("cancel")
@click.argument("run_id", type=int)
def runs_cancel(run_id: int) -> None:
    """Cancel a queued run, or ask a running one to stop."""
    from trainer.store import RunStatus

    run = _on_run(_store(_settings()).request_cancel, run_id)
    if run.status == RunStatus.CANCELLED:
        click.echo(f"run {run_id} cancelled")
    else:
        click.echo(f"run {run_id}: cancel requested; it stops at its next check")


@runs.command("resume")
@click.argument("run_id", type=int)
@click.option("--inline", is_flag=True, help="Run it now in this process, like `avstudio train`.")
def runs_resume(run_id: int, inline: bool) -> None:
    """Queue an interrupted, failed or cancelled run again; it resumes from its last checkpoint."""
    settings = _settings()
    store = _store(settings)
    run = _on_run(store.requeue_for_resume, run_id)
    if not inline:
        click.echo(f"run {run_id} queued to resume from its last checkpoint; a worker will pick it up")
        return
    _run_inline(store, settings, _registry(), run_id, run.device)


@runs.command("promote")
@click.argument("run_id", type=int)
@click.option("--name", default=None, help="The checkpoint artifact (needed when the run saved several).")
@click.option("--slot", default=None, help="The demo's checkpoint slot (default: the artifact name); "
                                           "one the method declares.")
def runs_promote(run_id: int, name: str | None, slot: str | None) -> None:
    """Make a run's checkpoint the one its method's demo uses."""
    from app.promotion import choose_artifact, promote_artifact
    from trainer.store import RunStatus

    store = _store(_settings())
    _get_run(store, run_id)
    chosen = choose_artifact(store, run_id, name)
    done = promote_artifact(store, _registry(), chosen.id, slot)
    if done.run_status != RunStatus.SUCCEEDED:
        click.echo(f"Warning: run {run_id} is {done.run_status}", err=True)
    click.echo(done.message())


@runs.command("unpromote")
@click.argument("method")
@click.argument("slot")
def runs_unpromote(method: str, slot: str) -> None:
    """Stop using a promoted checkpoint: METHOD's demo goes back to the shipped one for SLOT."""
    from app.promotion import unpromote

    click.echo(unpromote(_store(_settings()), method, slot))


# --------------------------------------------------------------------------------------------
# plugins / datasets / new-plugin
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--no-demos", is_flag=True, help="Do not build the demos to check them (faster).")
def plugins(show_all: bool, no_demos: bool) -> None:
    """The loaded plugins as JSON: name, version, hooks, status, error, source, methods, datasets.

    Exits with status 1 when a plugin failed to load, to register, or (unless --no-demos) to
    build its demo.
    """
    registry = _registry()
    if not no_demos:
        from app.ui import check_demos

        check_demos(_settings(), registry)
    shown = [p.as_dict() for p in registry.plugins
             if show_all or p.source != "builtin" or p.status != "ok"]
    _echo_json(shown)
    failed = registry.failed()
    if failed:
        raise CliError(f"{len(failed)} plugin(s) failed: " + "; ".join(f"{p.name} ({p.error})" for p in failed))


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def datasets(ctx: click.Context, as_json: bool) -> None:
    """List the registered datasets; `datasets show NAME` saves a preview grid."""
    if ctx.invoked_subcommand is not None:
        return
    specs = sorted(_registry().datasets.values(), key=lambda s: s.name)
    if as_json:
        _echo_json([{"name": s.name, "title": s.title, "task": s.task, "labels": len(s.labels),
                     "image_size": list(s.image_size), "channels": s.channels, "splits": list(s.splits)}
                    for s in specs])
        return
    rows = [[s.name, s.title, s.task, len(s.labels), f"{s.image_size[0]}x{s.image_size[1]}x{s.channels}"]
            for s in specs]
    click.echo(_table(["name", "title", "task", "labels", "size"], rows))


@datasets.command("show")
@click.argument("name")
@click.option("--split", default="train", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write (default: HOME/previews/NAME-SPLIT.png).")
@click.option("-n", "count", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--download", is_flag=True, help="Let the loader download missing files.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A dataset option (repeatable), e.g. -o path=DIR for imagefolder; see `avstudio datasets`.")
def datasets_show(name: str, split: str, out: Path | None, count: int, download: bool,
                  options: tuple[str, ...]) -> None:
    """Save a grid of NAME's first images as a PNG and print its path."""
    from trainer.config import parse_assignments
    from trainer.datasets.preview import save_preview_grid

    settings = _settings()
    values: dict[str, Any] = dict(parse_assignments(options))
    if download:
        values["download"] = True
    dataset = _registry().load_dataset(name, split, settings.data_dir, **values)

    out = out or settings.home / "previews" / f"{name}-{split}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    click.echo(str(save_preview_grid(dataset, out, n=count) or out))


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create avstudio-NAME/.")
def new_plugin(name: str, directory: Path) -> None:
    """Scaffold an installable plugin package avstudio-NAME/ with a method, a recipe and a test."""
    from app.scaffold import check_name_is_free, create_plugin

    check_name_is_free(name, _registry())
    root = create_plugin(name, directory)
    click.echo(f"created {root}")
    click.echo(f"next: pip install -e '{root}[test]' && avstudio plugins && python -m pytest {root / 'tests'}")


def main() -> None:
    """Entry point of the ``avstudio`` console script."""
    logging.basicConfig(level=os.environ.get("AVSTUDIO_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    cli.main(prog_name="avstudio")


if __name__ == "__main__":
    main()
