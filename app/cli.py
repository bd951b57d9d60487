"""The ``avstudio`` command line: serve the app, run workers, train, inspect runs, manage plugins.

Global options set the matching ``AVSTUDIO_*`` environment variables while they are parsed, so
everything below (settings, the plugin registry, worker processes started from here) sees them.
Plugins are loaded lazily, only by commands that need them; their ``register_commands(cli)`` hook
runs before click looks up a command it does not know, so plugin commands work like built-ins.

``avstudio train`` is in :mod:`app.cli_train`, ``avstudio runs`` in :mod:`app.cli_runs`, ``avstudio hub`` in
:mod:`app.cli_hub`; what the commands share (settings, registry, store, errors, output) in :mod:`app.cli_common`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from app.cli_common import CliError, _echo_json, _registry, _settings, _table, _try_load_plugins, log
from app.cli_hub import hub
from app.cli_runs import runs
from app.cli_train import train
from app.errors import UserError


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


cli.add_command(train)
cli.add_command(runs)
cli.add_command(hub)


# --------------------------------------------------------------------------------------------
# serve / worker
# --------------------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--no-worker", is_flag=True, help="Do not start a background training worker.")
@click.option("--share", is_flag=True, help="Create a public Gradio share link.")
@click.option("--mcp", "mcp", is_flag=True, default=None,
              help="Also serve Gradio's MCP server: the demos as tools (env AVSTUDIO_MCP; pip install -e '.[mcp]').")
def serve(host: str, port: int, no_worker: bool, share: bool, mcp: bool | None) -> None:
    """Start the web app (and, unless --no-worker, a training worker process).

    Before it opens the run store: an empty home is restored from AVSTUDIO_BACKUP, the models of
    AVSTUDIO_HUB_MODELS are pulled and promoted, and backups start (docs/hosting.md).
    """
    from app.mcp import check_mcp_installed, mcp_requested
    from app.startup import prepare_home

    settings = _settings()
    registry = _registry()
    try:
        mcp = mcp_requested(mcp)
        if mcp:
            check_mcp_installed()
        prepare_home(settings, registry)
    except ValueError as exc:  # a malformed AVSTUDIO_* value, or no mcp package
        raise CliError(str(exc), exit_code=2) from None
    from app.ui import launch

    launch(settings, registry, host=host, port=port, start_worker=not no_worker, share=share, mcp=mcp)


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
