"""Runs that leave the studio: ``avstudio runs export ID… --format csv|jsonl --out DIR``.

Each run gets a folder ``DIR/run-ID/`` that other trackers read without the studio::

    metrics.csv    (--format csv)   one row per step: ``step``, ``timestamp`` (ISO 8601, UTC), then one column
                                    per metric key, empty where the run logged nothing at that step; the layout
                                    Trackio's ``trackio.import_csv(path, project=...)`` reads (it keeps only the
                                    first 10 letters, digits or '/' of a column name: ``train_loss`` becomes
                                    ``trainloss``)
    metrics.jsonl  (--format jsonl) one metric point per line: ``{"step", "key", "value", "timestamp"}``, the
                                    timestamp in milliseconds since the epoch, as ``mlflow.log_metric(key, value,
                                    step=step, timestamp=timestamp)`` takes them; a NaN or infinite value is null
    params.json    the run's params (its config, as text): ``mlflow.log_params``
    tags.json      method, recipe, status, device, host, commit, times, error, as ``avstudio.*`` tags:
                   ``mlflow.set_tags``
    run.json       the whole run record (config with its types, latest metrics, artifacts with their metadata)
    artifacts/     the run's files (checkpoints with their JSON cards, images, reports) as the run directory holds
                   them: ``mlflow.log_artifacts(path)``

NaN and infinite values are written ``nan``/``inf`` in the CSV (Trackio reads them as floats).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trainer.checkpoints import card_path

FORMATS = ("csv", "jsonl")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_metrics_csv(points: list[Any], path: Path) -> int:
    """The wide CSV of a run's metric points (see the module); returns the number of rows."""
    keys = sorted({p.key for p in points})
    rows: dict[int, dict[str, Any]] = {}
    for p in points:
        row = rows.setdefault(p.step, {"step": p.step, "time": p.time})
        row[p.key] = p.value
        row["time"] = max(row["time"], p.time)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "timestamp", *keys])
        for step in sorted(rows):
            row = rows[step]
            writer.writerow([step, _iso(row["time"]),
                             *(repr(float(row[k])) if k in row else "" for k in keys)])
    return len(rows)


def write_metrics_jsonl(points: list[Any], path: Path) -> int:
    """One JSON object per metric point (see the module); returns the number of lines."""
    with path.open("w", encoding="utf-8") as f:
        for p in sorted(points, key=lambda p: (p.step, p.key, p.time)):
            value = float(p.value)
            f.write(json.dumps({"step": p.step, "key": p.key, "value": value if math.isfinite(value) else None,
                                "timestamp": int(round(p.time * 1000))}) + "\n")
    return len(points)


def tags_of(run: Any) -> dict[str, str]:
    """The run's record as MLflow tags (``avstudio.*``, text)."""
    values = {"method": run.method, "recipe": run.recipe, "status": str(run.status), "run_id": run.id,
              "device": run.device, "host": run.host, "commit": run.commit, "created": run.created_at,
              "started": run.started_at, "finished": run.finished_at, "resumed": run.resume_count or None,
              "error": (run.error or "").splitlines()[0] if run.error else None}
    return {f"avstudio.{k}": (v.isoformat() if isinstance(v, datetime) else str(v))
            for k, v in values.items() if v is not None}


def _copy_artifacts(store: Any, run: Any, folder: Path) -> list[dict[str, Any]]:
    """Copy the run's artifact files (a checkpoint with its card) under ``folder``, keeping their place in the
    run directory where they lie in it; returns the artifacts as recorded, with their exported path."""
    run_dir = Path(store.runs_dir) / str(run.id) if store.runs_dir is not None else None
    listed = []
    for artifact in store.artifacts(run.id):
        path = Path(artifact.path)
        entry = {**asdict(artifact), "exported": None}
        if path.is_file():
            rel = path.relative_to(run_dir) if run_dir is not None and path.is_relative_to(run_dir) else Path(path.name)
            for source in [path] + ([card_path(path)] if artifact.kind == "checkpoint" else []):
                if source.is_file():
                    target = folder / rel.parent / source.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
            entry["exported"] = (Path("artifacts") / rel).as_posix()
        listed.append(entry)
    return listed


def export_run(store: Any, run_id: int, out: Path | str, fmt: str = "csv", *, artifacts: bool = True) -> Path:
    """Write ``out/run-ID/`` for run ``run_id`` (see the module); returns that folder.

    Raises KeyError for an unknown run, ValueError for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    run = store.get_run(run_id)
    folder = Path(out) / f"run-{run.id}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    points = store.metrics(run.id)
    if fmt == "csv":
        write_metrics_csv(points, folder / "metrics.csv")
    else:
        write_metrics_jsonl(points, folder / "metrics.jsonl")
    (folder / "params.json").write_text(json.dumps(store.params(run.id), indent=2, sort_keys=True) + "\n")
    (folder / "tags.json").write_text(json.dumps(tags_of(run), indent=2) + "\n")
    listed = _copy_artifacts(store, run, folder / "artifacts") if artifacts else \
        [{**asdict(a), "exported": None} for a in store.artifacts(run.id)]
    record = {**asdict(run), "artifacts": listed, "metric_points": len(points), "format": fmt}
    (folder / "run.json").write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    return folder
