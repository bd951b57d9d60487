"""The run store: runs, params, metric history, artifacts and promotions, in any SQLAlchemy database.

The signatures here are the contract used by the CLI, the web UI and the worker. The schema lives
in ``trainer/db_models.py`` and is built by the Alembic migrations in ``trainer/migrations``,
which ``RunStore(url)`` applies on open.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, insert, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from trainer.db_models import Artifact, LatestMetric, Metric, Param, Promotion, Run, RunStatus, utcnow

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x61767374  # "avst": the PostgreSQL advisory lock held while migrating
STALE_AFTER_S = 60.0  # a running run with no heartbeat for this long has lost its process (beats come every 2 s)
SCHEMA_REVISION = "0002"  # the head migration (a test checks it), so opening a current database skips alembic


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
    path: str  # absolute path of the file (checkpoint: the .safetensors; card beside it as .json)
    metadata: dict[str, Any]
    created_at: datetime


class RunStore:
    """All reads and writes of runs; one short session per call. Thread- and process-safe.

    Metric values that are NaN or infinite are stored as NULL and read back as ``float("nan")``.
    """

    def __init__(self, url: str, *, stale_after_s: float = STALE_AFTER_S) -> None:
        """Open (and create or upgrade, via Alembic migrations) the database at ``url``.

        SQLite gets WAL, a busy timeout and foreign keys; any other SQLAlchemy URL works.
        ``stale_after_s``: see :meth:`expire_stale`.
        """
        self.url = str(url)
        self.stale_after_s = float(stale_after_s)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        upgrade_to_head(self.engine)

    # -- queue -------------------------------------------------------------------------------
    def enqueue(self, method: str, recipe: str, config: dict[str, Any], *, device: str = "auto",
                commit: str | None = None) -> int:
        """Add a queued run; its config is also stored as params. Returns the run id."""
        config = dict(config)
        with self._sessions.begin() as session:
            run = Run(method=method, recipe=recipe, config=config, status=RunStatus.QUEUED, device=device,
                      commit=commit, created_at=utcnow(), cancel_requested=False, progress=0.0,
                      progress_desc="", resume_count=0)
            session.add(run)
            session.flush()
            session.add_all(Param(run_id=run.id, key=str(k), value=_param_text(v)) for k, v in config.items())
            return run.id

    def claim_next(self, worker_id: str, *, host: str, pid: int) -> RunInfo | None:
        """Atomically take the oldest queued run for this worker (status → running); None if none.

        Two workers on one database never get the same run.
        """
        for _ in range(100):  # each lost race means someone else took a run: try the next one
            with self._sessions() as session:
                candidate = session.scalar(
                    select(Run.id).where(Run.status == RunStatus.QUEUED).order_by(Run.id).limit(1))
            if candidate is None:
                return None
            if self._take(candidate, worker_id, host, pid):
                return self.get_run(candidate)
        return None

    def claim_run(self, run_id: int, worker_id: str, *, host: str, pid: int) -> RunInfo | None:
        """Atomically take this queued run (inline ``avstudio train``); None if someone else has it."""
        return self.get_run(run_id) if self._take(run_id, worker_id, host, pid) else None

    def _take(self, run_id: int, worker_id: str, host: str, pid: int) -> bool:
        # A conditional UPDATE checked by rowcount: atomic on SQLite and PostgreSQL alike.
        now = utcnow()
        with self._sessions.begin() as session:
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED).values(
                    status=RunStatus.RUNNING, worker_id=worker_id, host=host, pid=pid, heartbeat_at=now,
                    started_at=now, finished_at=None, error=None))
            return result.rowcount == 1

    # -- lifecycle ---------------------------------------------------------------------------
    def set_started(self, run_id: int, *, device: str) -> None:
        """Record the device actually used and the start time."""
        self._update(run_id, device=str(device), started_at=utcnow(), heartbeat_at=utcnow())

    def heartbeat(self, run_id: int) -> None:
        """Mark the run as alive now (called every few seconds by its worker)."""
        self._update(run_id, heartbeat_at=utcnow())

    def set_progress(self, run_id: int, fraction: float, desc: str = "") -> None:
        """Record progress (clamped to 0..1) and what it is progress of."""
        fraction = min(1.0, max(0.0, float(fraction))) if math.isfinite(fraction) else 0.0
        self._update(run_id, progress=fraction, progress_desc=str(desc)[:500])

    def finish(self, run_id: int, status: RunStatus | str, *, error: str | None = None) -> None:
        """Set a final status (succeeded / failed / cancelled / interrupted) and the end time.

        The first final status wins: a run that already finished keeps its status.
        """
        final = RunStatus.finished()
        if status not in final:
            raise ValueError(f"{str(status)!r} is not a final status; use one of: {', '.join(final)}")
        status = RunStatus(status)
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if status is RunStatus.SUCCEEDED:
            values["progress"] = 1.0
        with self._sessions.begin() as session:
            session.execute(update(Run).where(Run.id == run_id, Run.status.in_((RunStatus.QUEUED, RunStatus.RUNNING)))
                            .values(**values))

    def request_cancel(self, run_id: int) -> RunInfo:
        """Ask a run to stop: a queued run is cancelled at once; a running one at its next should_stop().

        Raises KeyError for an unknown run, ValueError for a finished one.
        """
        with self._sessions.begin() as session:
            cancelled = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED).values(
                    status=RunStatus.CANCELLED, cancel_requested=True, finished_at=utcnow())).rowcount
            if not cancelled:
                flagged = session.execute(
                    update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING).values(
                        cancel_requested=True)).rowcount
                if not flagged:
                    status = _status_of(session, run_id)
                    raise ValueError(f"run {run_id} already finished ({status}); nothing to cancel")
        return self.get_run(run_id)

    def cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked this run to stop."""
        with self._sessions() as session:
            return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))

    def mark_interrupted(self, *, host: str, alive_pids: set[int] | None = None,
                         stale_after_s: float = 60.0) -> list[int]:
        """Mark running runs whose worker is gone as interrupted; return their ids.

        A run is gone when it ran on ``host`` and its pid is not alive, or when its heartbeat is
        older than ``stale_after_s`` seconds.
        """
        cutoff = utcnow() - timedelta(seconds=stale_after_s)
        with self._sessions() as session:
            running = session.execute(
                select(Run.id, Run.host, Run.pid, Run.heartbeat_at, Run.started_at)
                .where(Run.status == RunStatus.RUNNING)).all()
        gone = []
        for run_id, run_host, pid, heartbeat_at, started_at in running:
            last_seen = heartbeat_at or started_at
            if alive_pids is not None and run_host == host and pid not in alive_pids:
                gone.append((run_id, f"worker process {pid} on {host} is gone"))
            elif last_seen is None or last_seen < cutoff:
                gone.append((run_id, f"no heartbeat for more than {stale_after_s:g} s (worker on {run_host} lost)"))
        marked = []
        for run_id, reason in gone:
            with self._sessions.begin() as session:
                done = session.execute(update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING).values(
                    status=RunStatus.INTERRUPTED, finished_at=utcnow(), error=f"interrupted: {reason}")).rowcount
            if done:
                marked.append(run_id)
        return marked

    def expire_stale(self) -> list[int]:
        """Mark running runs with no heartbeat for ``stale_after_s`` seconds as interrupted; return their ids.

        Their process is gone without a word: a killed foreground ``avstudio train``, a worker on a
        machine that went away. :meth:`get_run` and :meth:`list_runs` call this first, so every
        command and tab that shows runs shows such a run as interrupted (and resumable).
        """
        return self.mark_interrupted(host="", stale_after_s=self.stale_after_s)

    def requeue_for_resume(self, run_id: int) -> RunInfo:
        """Put an interrupted / failed / cancelled run back in the queue to resume from its last checkpoint.

        Increments ``resume_count``. Raises KeyError (unknown) or ValueError (queued / running / succeeded).
        """
        resumable = RunStatus.resumable()
        with self._sessions.begin() as session:
            done = session.execute(
                update(Run).where(Run.id == run_id, Run.status.in_(resumable)).values(
                    status=RunStatus.QUEUED, resume_count=Run.resume_count + 1, finished_at=None, error=None,
                    cancel_requested=False, worker_id=None, host=None, pid=None, heartbeat_at=None)).rowcount
            if not done:
                status = _status_of(session, run_id)
                raise ValueError(f"run {run_id} is {status}; only {', '.join(resumable)} runs can resume")
        return self.get_run(run_id)

    def delete_run(self, run_id: int) -> None:
        """Delete a run and its params, metrics, artifacts rows and promotions (not its files).

        Raises KeyError for an unknown run, ValueError for a running one.
        """
        with self._sessions.begin() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id}")
            if run.status == RunStatus.RUNNING:
                raise ValueError(f"run {run_id} is running; cancel it first")
            session.delete(run)

    # -- reads -------------------------------------------------------------------------------
    def get_run(self, run_id: int) -> RunInfo:
        """The run, with its latest metrics; KeyError when there is none."""
        self.expire_stale()
        with self._sessions() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id}")
            return _run_info(run, self._latest(session, [run_id]).get(run_id, {}))

    def list_runs(self, *, method: str | None = None, status: RunStatus | str | None = None,
                  limit: int = 100) -> list[RunInfo]:
        """Newest first."""
        self.expire_stale()
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if method is not None:
            query = query.where(Run.method == method)
        if status is not None:
            query = query.where(Run.status == status)
        with self._sessions() as session:
            runs = session.scalars(query).all()
            latest = self._latest(session, [r.id for r in runs])
            return [_run_info(r, latest.get(r.id, {})) for r in runs]

    def params(self, run_id: int) -> dict[str, str]:
        """The run's params (its config, as text)."""
        with self._sessions() as session:
            rows = session.execute(select(Param.key, Param.value).where(Param.run_id == run_id)
                                   .order_by(Param.key)).all()
        return dict(rows)

    @staticmethod
    def _latest(session: Session, run_ids: list[int]) -> dict[int, dict[str, float]]:
        latest: dict[int, dict[str, float]] = {}
        if run_ids:
            rows = session.execute(select(LatestMetric.run_id, LatestMetric.key, LatestMetric.value)
                                   .where(LatestMetric.run_id.in_(run_ids))).all()
            for run_id, key, value in rows:
                latest.setdefault(run_id, {})[key] = _from_db(value)
        return latest

    # -- metrics -----------------------------------------------------------------------------
    def log_metrics(self, run_id: int, points: list[MetricPoint]) -> None:
        """Insert a batch of metric points in one transaction and update the latest values.

        NaN and infinite values are stored as NULL (read back as NaN). The latest value of a key
        is its point with the highest step (the later one on a tie).
        """
        if not points:
            return
        newest: dict[str, MetricPoint] = {}
        for p in points:
            if p.key not in newest or p.step >= newest[p.key].step:
                newest[p.key] = p
        with self._sessions.begin() as session:
            session.execute(insert(Metric), [
                {"run_id": run_id, "key": p.key, "step": int(p.step), "value": _to_db(p.value),
                 "time": float(p.time)} for p in points])
            existing = {m.key: m for m in session.scalars(
                select(LatestMetric).where(LatestMetric.run_id == run_id, LatestMetric.key.in_(list(newest))))}
            for key, p in newest.items():
                row = existing.get(key)
                if row is None:
                    session.add(LatestMetric(run_id=run_id, key=key, value=_to_db(p.value), step=int(p.step),
                                             time=float(p.time)))
                elif p.step >= row.step:
                    row.value, row.step, row.time = _to_db(p.value), int(p.step), float(p.time)

    def metrics(self, run_id: int, keys: list[str] | None = None) -> list[MetricPoint]:
        """Full history, ordered by key then step."""
        query = (select(Metric.step, Metric.key, Metric.value, Metric.time).where(Metric.run_id == run_id)
                 .order_by(Metric.key, Metric.step, Metric.id))
        if keys is not None:
            query = query.where(Metric.key.in_(list(keys)))
        with self._sessions() as session:
            rows = session.execute(query).all()
        return [MetricPoint(step=s, key=k, value=_from_db(v), time=t) for s, k, v, t in rows]

    def metric_keys(self, run_id: int) -> list[str]:
        """The metric keys the run logged, sorted."""
        with self._sessions() as session:
            return list(session.scalars(select(LatestMetric.key).where(LatestMetric.run_id == run_id)
                                        .order_by(LatestMetric.key)))

    # -- artifacts and promotion ------------------------------------------------------------
    def add_artifact(self, run_id: int, name: str, kind: str, path: str,
                     metadata: dict[str, Any] | None = None) -> int:
        """Record an artifact; a second one with the same (run, name) replaces the first's row.

        The replaced row keeps its id (so a promotion of it follows the newest file).
        """
        for attempt in range(3):
            try:
                with self._sessions.begin() as session:
                    row = session.scalar(select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name))
                    if row is None:
                        row = Artifact(run_id=run_id, name=name)
                        session.add(row)
                    row.kind, row.path, row.meta, row.created_at = kind, str(path), dict(metadata or {}), utcnow()
                    session.flush()
                    return row.id
            except IntegrityError:  # a concurrent insert of the same name, or an unknown run
                with self._sessions() as session:
                    if session.get(Run, run_id) is None:
                        raise KeyError(f"no run {run_id}") from None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def artifacts(self, run_id: int, kind: str | None = None) -> list[ArtifactInfo]:
        """The run's artifacts, newest first."""
        query = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.created_at.desc(),
                                                                             Artifact.id.desc())
        if kind is not None:
            query = query.where(Artifact.kind == kind)
        with self._sessions() as session:
            return [_artifact_info(a) for a in session.scalars(query)]

    def get_artifact(self, artifact_id: int) -> ArtifactInfo:
        """The artifact; KeyError when there is none."""
        with self._sessions() as session:
            row = session.get(Artifact, artifact_id)
            if row is None:
                raise KeyError(f"no artifact {artifact_id}")
            return _artifact_info(row)

    def latest_checkpoint(self, run_id: int, name: str | None = None) -> ArtifactInfo | None:
        """The run's most recently saved checkpoint artifact (called ``name``, if given), or None."""
        for artifact in self.artifacts(run_id, kind="checkpoint"):
            if name is None or artifact.name == name:
                return artifact
        return None

    def promote(self, method: str, slot: str, artifact_id: int) -> None:
        """Make this checkpoint artifact the one ``method``'s demo uses for ``slot`` (e.g. "backbone").

        Raises KeyError for an unknown artifact, ValueError when it is not a checkpoint.
        """
        with self._sessions.begin() as session:
            artifact = session.get(Artifact, artifact_id)
            if artifact is None:
                raise KeyError(f"no artifact {artifact_id}")
            if artifact.kind != "checkpoint":
                raise ValueError(f"artifact {artifact_id} is a {artifact.kind}, not a checkpoint; promote a checkpoint")
            row = session.get(Promotion, (method, slot))
            if row is None:
                session.add(Promotion(method=method, slot=slot, artifact_id=artifact_id, promoted_at=utcnow()))
            else:
                row.artifact_id, row.promoted_at = artifact_id, utcnow()

    def unpromote(self, method: str, slot: str) -> bool:
        """Forget the promotion of ``method``/``slot`` (the demo falls back to the shipped one)."""
        with self._sessions.begin() as session:
            return bool(session.execute(
                delete(Promotion).where(Promotion.method == method, Promotion.slot == slot)).rowcount)

    def promoted(self, method: str, slot: str) -> ArtifactInfo | None:
        """The artifact promoted for ``method``/``slot``, or None."""
        with self._sessions() as session:
            row = session.scalar(select(Artifact).join(Promotion, Promotion.artifact_id == Artifact.id)
                                 .where(Promotion.method == method, Promotion.slot == slot))
            return _artifact_info(row) if row is not None else None

    def promotions(self, method: str | None = None) -> dict[tuple[str, str], ArtifactInfo]:
        """Every promotion, keyed by (method, slot)."""
        query = select(Promotion.method, Promotion.slot, Artifact).join(
            Artifact, Promotion.artifact_id == Artifact.id).order_by(Promotion.method, Promotion.slot)
        if method is not None:
            query = query.where(Promotion.method == method)
        with self._sessions() as session:
            return {(m, s): _artifact_info(a) for m, s, a in session.execute(query)}

    def close(self) -> None:
        """Dispose of the engine."""
        self.engine.dispose()

    def _update(self, run_id: int, **values: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(update(Run).where(Run.id == run_id).values(**values))


# -- helpers -----------------------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their directory, WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 20})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Crash-safe against a killed process (tests/test_crash_consistency.py SIGKILLs the app and
        # `avstudio train` mid-write): in WAL mode a transaction counts only once its commit frame is in
        # the log, so a process killed mid-transaction leaves nothing half-written, and its locks die
        # with it. synchronous=NORMAL: a returned COMMIT is in the OS's cache, which outlives the
        # process; a power loss may lose the last commits but never corrupts the file. FULL would keep
        # those too, for an fsync per commit (4 ms here against 0.07 ms, with other writers queued
        # behind it). busy_timeout: wait up to 20 s for another writer's lock, not "database is locked".
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=20000", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def alembic_config(url: str | None = None) -> Any:
    """A programmatic Alembic config for the migrations shipped in ``trainer/migrations``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest migration's revision id, as Alembic sees it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_to_head(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema with the Alembic migrations, in one transaction.

    On SQLite the transaction takes the write lock first (BEGIN IMMEDIATE), on PostgreSQL an
    advisory lock, so processes that open a new database together migrate it once. On SQLite
    foreign keys are off meanwhile: a batch migration copies a table and drops the old one,
    which would otherwise cascade-delete the rows that refer to it.
    """
    if current_revision(engine) == (SCHEMA_REVISION if revision == "head" else revision):
        return
    from alembic import command  # imported only when there is something to do (it is slow to import)

    config = alembic_config()
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # only takes effect outside a transaction
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            if connection.in_transaction():
                connection.rollback()
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _to_db(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _from_db(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _status_of(session: Session, run_id: int) -> RunStatus:
    """The run's status; KeyError when there is no such run."""
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    if status is None:
        raise KeyError(f"no run {run_id}")
    return RunStatus(status)


def _run_info(run: Run, latest: dict[str, float]) -> RunInfo:
    return RunInfo(
        id=run.id, method=run.method, recipe=run.recipe, config=dict(run.config or {}), status=RunStatus(run.status),
        device=run.device, commit=run.commit, created_at=run.created_at, started_at=run.started_at,
        finished_at=run.finished_at, error=run.error, worker_id=run.worker_id, progress=float(run.progress or 0.0),
        progress_desc=run.progress_desc or "", cancel_requested=bool(run.cancel_requested),
        resume_count=int(run.resume_count or 0), latest_metrics=dict(latest), host=run.host, pid=run.pid,
        heartbeat_at=run.heartbeat_at)


def _artifact_info(row: Artifact) -> ArtifactInfo:
    return ArtifactInfo(id=row.id, run_id=row.run_id, name=row.name, kind=row.kind, path=row.path,
                        metadata=dict(row.meta or {}), created_at=row.created_at)
