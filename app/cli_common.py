"""What the ``avstudio`` commands share: the one-line CLI error, the settings, plugin registry and run store of
an invocation (built on first use; loading the registry registers the plugins' commands on the top-level
group), and the output helpers (tables, JSON)."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from app.settings import Settings

log = logging.getLogger("avstudio.cli")

REGISTRY_KEY = "avstudio.registry"


class CliError(click.ClickException):
    """An error shown as one line, ``Error: <message>``, with a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message.splitlines()[0] if message else "failed")
        self.exit_code = exit_code


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
        _register_plugin_commands(registry, ctx.find_root().command)
    return meta[REGISTRY_KEY]


def _register_plugin_commands(registry, cli: click.Group) -> None:
    """Call every plugin's ``register_commands(cli, ctx)`` on the top-level group ``cli``; a failing plugin
    is reported, not fatal."""
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
