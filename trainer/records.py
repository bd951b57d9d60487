"""What the run store hands out: detached snapshots of a run, a metric point and an artifact (safe to use
after the session that read them closed), and how metric values are stored (NaN and infinities as NULL)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trainer.db_models import RunStatus


@dataclass
class RunInfo:
    """A detached snapshot of one run (safe to use after the session closed)."""

    id: int
    method: str
    recipe: str
    config: dict[str, Any]
    status: RunStatus
    device: str  # requested ("auto", "cpu", "cuda:0") until started, then the one used
    commit: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    worker_id: str | None
    progress: float  # 0..1, last reported
    progress_desc: str
    cancel_requested: bool
    resume_count: int
    latest_metrics: dict[str, float] = field(default_factory=dict)
    host: str | None = None  # where the worker that claimed it runs
    pid: int | None = None  # that worker's process id
    heartbeat_at: datetime | None = None


@dataclass
class MetricPoint:
    step: int
    key: str
    value: float
    time: float  # unix seconds


@dataclass
class ArtifactInfo:
    id: int
    run_id: int
    name: str  # e.g. "backbone", "policy-g5"
    kind: str  # "checkpoint", "figure", "report", ...
    path: str  # the file here (checkpoint: the .safetensors; card beside it as .json)
    metadata: dict[str, Any]
    created_at: datetime


def metric_to_db(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def metric_from_db(value: float | None) -> float:
    return float("nan") if value is None else float(value)
