"""``avstudio runs``: list, show, compare, cancel, resume and promote runs; back them up, restore and export them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from app.cli_common import (
    CliError,
    _echo_json,
    _fmt,
    _get_run,
    _metrics_text,
    _on_run,
    _registry,
    _settings,
    _store,
    _table,
)
from app.cli_train import _run_inline


@click.group()
def runs() -> None:
    """List, inspect, compare, cancel, resume and promote runs; back up, restore and export them."""


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
# runs that survive a restart (app/backup.py, trainer/backup.py) and leave the studio (trainer/export.py)
# --------------------------------------------------------------------------------------------


@runs.command("backup")
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

    if repo:
        from app.hub import hub_token, parse_repo_ref

        parse_repo_ref(repo)
        hub_token(required=True)  # refused before anything is written
    click.echo(backup_now(_settings(), dest, repo))


@runs.command("restore")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
def runs_restore(src: Path) -> None:
    """Restore a backup made by `avstudio runs backup` into this (empty) home: run store and run directories."""
    from trainer.backup import restore

    settings = _settings()
    try:
        manifest = restore(src, settings.db_url, settings.runs_dir)
    except ValueError as exc:
        raise CliError(str(exc), exit_code=2) from None
    click.echo(f"restored {manifest.get('runs', '?')} run(s) from {src} (made {manifest.get('created', '?')})")


@runs.command("export")
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
    from trainer.export import export_run

    store = _store(_settings())
    try:
        for run_id in run_ids:  # every id is checked before anything is written
            _get_run(store, run_id)
        for run_id in run_ids:
            click.echo(str(export_run(store, run_id, out, fmt, artifacts=not no_artifacts)))
    finally:
        store.close()
