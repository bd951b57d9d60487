"""The run store: runs, params, metric history, artifacts and promotions, in any SQLAlchemy database.

INTERFACE STUB — the signatures and docstrings below are the agreed contract used by the CLI,
the web UI and the worker. Implement the bodies; do not change names or signatures without
telling the integrator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass
class RunInfo:
    """A detached snapshot of one run (safe to use after the session closed)."""

    id: int
    method: str
    recipe: str
    config: dict[str, Any]
    status: str
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
    path: str  # absolute path of the file (checkpoint: the .safetensors; card beside it as .json)
    metadata: dict[str, Any]
    created_at: datetime


class RunStore:
    """All reads and writes of runs; one short session per call. Thread- and process-safe."""

    def __init__(self, url: str) -> None:
        """Open (and create or upgrade, via Alembic migrations) the database at ``url``.

        SQLite gets WAL, a busy timeout and foreign keys; any other SQLAlchemy URL works.
        """
        raise NotImplementedError

    # -- queue -------------------------------------------------------------------------------
    def enqueue(self, method: str, recipe: str, config: dict[str, Any], *, device: str = "auto",
                commit: str | None = None) -> int:
        """Add a queued run; its config is also stored as params. Returns the run id."""
        raise NotImplementedError

    def claim_next(self, worker_id: str, *, host: str, pid: int) -> RunInfo | None:
        """Atomically take the oldest queued run for this worker (status → running); None if none.

        Two workers on one database never get the same run.
        """
        raise NotImplementedError

    def claim_run(self, run_id: int, worker_id: str, *, host: str, pid: int) -> RunInfo | None:
        """Atomically take this queued run (inline ``avstudio train``); None if someone else has it."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------
    def set_started(self, run_id: int, *, device: str) -> None:
        """Record the device actually used and the start time."""
        raise NotImplementedError

    def heartbeat(self, run_id: int) -> None:
        """Mark the run as alive now (called every few seconds by its worker)."""
        raise NotImplementedError

    def set_progress(self, run_id: int, fraction: float, desc: str = "") -> None:
        raise NotImplementedError

    def finish(self, run_id: int, status: str, *, error: str | None = None) -> None:
        """Set a final status (succeeded / failed / cancelled / interrupted) and the end time."""
        raise NotImplementedError

    def request_cancel(self, run_id: int) -> RunInfo:
        """Ask a run to stop: a queued run is cancelled at once; a running one at its next should_stop().

        Raises KeyError for an unknown run, ValueError for a finished one.
        """
        raise NotImplementedError

    def cancel_requested(self, run_id: int) -> bool:
        raise NotImplementedError

    def mark_interrupted(self, *, host: str, alive_pids: set[int] | None = None,
                         stale_after_s: float = 60.0) -> list[int]:
        """Mark running runs whose worker is gone as interrupted; return their ids.

        A run is gone when it ran on ``host`` and its pid is not alive, or when its heartbeat is
        older than ``stale_after_s`` seconds.
        """
        raise NotImplementedError

    def requeue_for_resume(self, run_id: int) -> RunInfo:
        """Put an interrupted / failed / cancelled run back in the queue to resume from its last checkpoint.

        Increments ``resume_count``. Raises KeyError (unknown) or ValueError (queued / running / succeeded).
        """
        raise NotImplementedError

    # -- reads -------------------------------------------------------------------------------
    def get_run(self, run_id: int) -> RunInfo:
        """The run, with its latest metrics; KeyError when there is none."""
        raise NotImplementedError

    def list_runs(self, *, method: str | None = None, status: str | None = None,
                  limit: int = 100) -> list[RunInfo]:
        """Newest first."""
        raise NotImplementedError

    def params(self, run_id: int) -> dict[str, str]:
        raise NotImplementedError

    # -- metrics -----------------------------------------------------------------------------
    def log_metrics(self, run_id: int, points: list[MetricPoint]) -> None:
        """Insert a batch of metric points in one transaction and update the latest values."""
        raise NotImplementedError

    def metrics(self, run_id: int, keys: list[str] | None = None) -> list[MetricPoint]:
        """Full history, ordered by key then step."""
        raise NotImplementedError

    def metric_keys(self, run_id: int) -> list[str]:
        raise NotImplementedError

    # -- artifacts and promotion ------------------------------------------------------------
    def add_artifact(self, run_id: int, name: str, kind: str, path: str,
                     metadata: dict[str, Any] | None = None) -> int:
        """Record an artifact; a second one with the same (run, name) replaces the first's row."""
        raise NotImplementedError

    def artifacts(self, run_id: int, kind: str | None = None) -> list[ArtifactInfo]:
        raise NotImplementedError

    def get_artifact(self, artifact_id: int) -> ArtifactInfo:
        raise NotImplementedError

    def promote(self, method: str, slot: str, artifact_id: int) -> None:
        """Make this checkpoint artifact the one ``method``'s demo uses for ``slot`` (e.g. "backbone")."""
        raise NotImplementedError

    def promoted(self, method: str, slot: str) -> ArtifactInfo | None:
        raise NotImplementedError

    def promotions(self, method: str | None = None) -> dict[tuple[str, str], ArtifactInfo]:
        raise NotImplementedError

    def close(self) -> None:
        """Dispose of the engine."""
        raise NotImplementedError
