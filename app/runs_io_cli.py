"""``avstudio runs backup``, ``runs restore`` and ``runs export``: runs that survive a restart (app/backup.py,
trainer/backup.py) and runs that leave the studio (trainer/export.py). ``app/cli.py`` adds them to ``runs``."""

from __future__ import annotations

from pathlib import Path

import click

COMMANDS: list[click.Command] = []


def _command(fn: click.Command) -> click.Command:
    COMMANDS.append(fn)
    return fn


@_command
@click.command("backup")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--repo", default=None, metavar="OWNER/NAME",
              help="Also upload the backup to this Hub dataset repository (created private; token: HF_TOKEN).")
def runs_backup(dest: Path, repo: str | None) -> None:
    """Back up the run store and run directories into DEST (a backup there is brought up to date).

    The store is copied with SQLite's online backup API (consistent while runs write); the run directories
    are mirrored (only changed files copied). Restore into an empty home with `avstudio runs restore DEST`,
    or at start-up with AVSTUDIO_BACKUP=DEST. SQLite stores only (PostgreSQL: pg_dump).
    """
    from app.backup import backup_now
    from app.cli import _settings

    if repo:
        from app.hub import hub_token, parse_repo_ref

        parse_repo_ref(repo)
        hub_token(required=True)  # refused before anything is written
    click.echo(backup_now(_settings(), dest, repo))


@_command
@click.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
def runs_restore(src: Path) -> None:
    """Restore a backup made by `avstudio runs backup` into this (empty) home: run store and run directories."""
    from app.cli import CliError, _settings
    from trainer.backup import restore

    settings = _settings()
    try:
        manifest = restore(src, settings.db_url, settings.runs_dir)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    click.echo(f"restored {manifest.get('runs', '?')} run(s) from {src} (made {manifest.get('created', '?')})")


@_command
@click.command("export")
@click.argument("run_ids", type=int, nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True,
              help="csv: one row per step (Trackio's import_csv reads it); jsonl: one metric point per line "
                   "(as mlflow.log_metric takes them).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("avstudio-export"),
              show_default=True, help="The folder that gets one run-ID/ folder per run.")
@click.option("--no-artifacts", is_flag=True, help="Leave the run's files (checkpoints, images) out.")
def runs_export(run_ids: tuple[int, ...], fmt: str, out: Path, no_artifacts: bool) -> None:
    """Export runs for other trackers: OUT/run-ID/ with the metrics (metrics.csv or metrics.jsonl),
    params.json, tags.json, run.json and artifacts/ (see docs/hosting.md#runs-leave-the-studio)."""
    from app.cli import CliError, _settings
    from trainer.export import export_run

    store = _settings().open_store()
    try:
        for run_id in run_ids:  # every id is checked before anything is written
            try:
                store.get_run(run_id)
            except KeyError:
                raise CliError(f"no run {run_id}; `avstudio runs list` shows the runs") from None
        for run_id in run_ids:
            click.echo(str(export_run(store, run_id, out, fmt, artifacts=not no_artifacts)))
    finally:
        store.close()
