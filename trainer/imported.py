"""Checkpoints that come from outside the studio (a Hugging Face Hub repository), recorded in the run store
as a finished run of the pseudo-recipe ``hub-pull`` with one checkpoint artifact: promotion, the Runs tab,
``avstudio runs show`` and backups then treat a pulled checkpoint as any run's.

The run is written finished (``succeeded``) in one transaction, never queued, so no worker ever sees it.
Its config (also its params) records where the file came from: ``repo``, ``revision``, ``commit`` (the
repository's commit) and ``file`` (the file's path in the repository).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from trainer.checkpoints import card_path
from trainer.db_models import Param, Run, RunStatus, utcnow
from trainer.records import ArtifactInfo, MetricPoint

HUB_RECIPE = "hub-pull"


def find_imported(store: Any, method: str, source: Mapping[str, Any]) -> ArtifactInfo | None:
    """The checkpoint artifact of an earlier import of the same file (same ``repo``, ``commit`` and ``file``)
    of ``method``, if its file is still there; None otherwise."""
    for run in store.list_runs(method=method, limit=10_000):
        if run.recipe != HUB_RECIPE or run.status != RunStatus.SUCCEEDED:
            continue
        if all(str(run.config.get(k)) == str(source.get(k)) for k in ("repo", "commit", "file")):
            for artifact in store.artifacts(run.id, kind="checkpoint"):
                if Path(artifact.path).is_file():
                    return artifact
    return None


def import_checkpoint(store: Any, runs_dir: Path | str, method: str, name: str, file: Path | str,
                      card: Mapping[str, Any], source: Mapping[str, Any]) -> ArtifactInfo:
    """Copy ``file`` (a ``.safetensors``) and its card into a new run directory and record it as a finished
    run of ``method`` (recipe ``hub-pull``, config ``source``) with the checkpoint artifact ``name``.

    The card's metrics (``studio.metrics``) become the run's metrics at step 0, so listings show them.
    Returns the artifact. The caller checks the checkpoint first (a refused one leaves nothing behind).
    """
    studio = card.get("studio") if isinstance(card.get("studio"), Mapping) else card
    config = {str(k): v for k, v in source.items()}
    now = utcnow()
    with Session(store.engine) as session, session.begin():
        run = Run(method=method, recipe=HUB_RECIPE, config=config, status=RunStatus.SUCCEEDED.value,
                  device="hub", commit=_text(studio.get("commit"), 64), created_at=now, started_at=now,
                  finished_at=now, cancel_requested=False, progress=1.0,
                  progress_desc=f"pulled from {source.get('repo')}"[:500], resume_count=0)
        session.add(run)
        session.flush()
        run_id = run.id
        session.add_all(Param(run_id=run_id, key=k, value=str(v)) for k, v in config.items())
    run_dir = Path(runs_dir) / str(run_id)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        target = run_dir / f"{name}.safetensors"
        shutil.copyfile(file, target)
        shutil.copyfile(card_path(file), card_path(target))
        metrics = studio.get("metrics") if isinstance(studio.get("metrics"), Mapping) else {}
        points = [MetricPoint(0, str(k), float(v), time.time()) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        store.log_metrics(run_id, points)
        artifact_id = store.add_artifact(run_id, name, "checkpoint", str(target), {"source": "hub", **config})
    except BaseException:
        store.delete_run(run_id)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return store.get_artifact(artifact_id)


def _text(value: Any, limit: int) -> str | None:
    return str(value)[:limit] if value else None
