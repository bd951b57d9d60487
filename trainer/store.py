"""The run store: runs, params, metric history, artifacts and promotions, in any SQLAlchemy database.

The signatures here are the contract used by the CLI, the web UI and the worker. The schema lives
in ``trainer/db_models.py`` and is built by the Alembic migrations in ``trainer/migrations``,
which ``RunStore(url)`` applies on open.

Several processes and machines may share one database (PostgreSQL for several machines): a job is
claimed in one transaction that no other claim can share (``SELECT … FOR UPDATE SKIP LOCKED`` on
PostgreSQL, a write-locked ``BEGIN IMMEDIATE`` transaction on SQLite); heartbeats are timed by the
database's clock, so machines whose clocks disagree never declare each other's runs lost; and a store
opened with ``retry_s`` rides out a lost connection (a server restart) by retrying each call.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from trainer.db_models import Artifact, LatestMetric, Metric, Param, Promotion, Run, RunStatus, utcnow

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_KEY = 0x61767374  # "avst": the PostgreSQL advisory lock held while migrating
STALE_AFTER_S = 60.0  # a running run with no heartbeat for this long has lost its process (beats come every 2 s)
DB_RETRY_S = 600.0  # how long a worker and its runs retry an unreachable database (AVSTUDIO_DB_RETRY_S)
SCHEMA_REVISION = "0003"  # the head migration (a test checks it), so opening a current database skips alembic
RETRY_FIRST_DELAY_S = 0.25  # back-off of a store call whose database is unreachable: 0.25 s, doubling ...
RETRY_MAX_DELAY_S = 5.0  # ... up to 5 s between tries

log = logging.getLogger("avstudio.store")


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away by itself: a lost or refused connection, a server that is
    restarting, a busy SQLite file, a deadlock. Worth retrying; a constraint or a syntax error is not."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (OperationalError, InterfaceError))


def _retrying(method: Callable) -> Callable:
    """Retry ``method`` with back-off while its database is unreachable, for up to the store's ``retry_s``.

    Each store call is one transaction, so a retry repeats a unit of work that did not commit, or whose
    commit went through but whose answer was lost with the connection: a call that must not be done twice
    checks ``self._local.attempt`` (0 on the first try) and looks first (:meth:`log_metrics`). Only the
    outermost call retries (a call inside another one leaves the retry to it).
    """

    @functools.wraps(method)
    def wrapper(self: RunStore, *args: Any, **kwargs: Any) -> Any:
        if self.retry_s <= 0 or getattr(self._local, "retrying", False):
            return method(self, *args, **kwargs)
        self._local.retrying = True
        try:
            deadline = time.monotonic() + self.retry_s
            delay = RETRY_FIRST_DELAY_S
            self._local.attempt = 0
            while True:
                try:
                    return method(self, *args, **kwargs)
                except (DBAPIError, InterfaceError) as exc:
                    if not is_transient(exc) or time.monotonic() + delay > deadline:
                        raise
                    log.warning("run store unreachable in %s (%s); retrying in %.2g s", method.__name__,
                                str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0], delay)
                    if self.give_up is not None and self.give_up.wait(delay):
                        raise
                    if self.give_up is None:
                        time.sleep(delay)
                    delay = min(2 * delay, RETRY_MAX_DELAY_S)
                    self._local.attempt += 1
        finally:
            self._local.retrying = False
            self._local.attempt = 0

    return wrapper


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


class RunStore:
    """All reads and writes of runs; one short session per call. Thread- and process-safe.

    Metric values that are NaN or infinite are stored as NULL and read back as ``float("nan")``.
    Artifact files under ``runs_dir`` are also recorded relative to it and read back under this store's
    ``runs_dir``, so studios that mount one shared ``AVSTUDIO_HOME`` at different paths find them.
    """

    def __init__(self, url: str, *, stale_after_s: float = STALE_AFTER_S, runs_dir: Path | str | None = None,
                 retry_s: float = 0.0, give_up: threading.Event | None = None) -> None:
        """Open (and create or upgrade, via Alembic migrations) the database at ``url``.

        SQLite gets WAL, a busy timeout and foreign keys; any other SQLAlchemy URL works (a pool that
        checks a connection before handing it out, so a restarted server costs no failed call).
        ``stale_after_s``: see :meth:`expire_stale`. ``runs_dir``: where run directories live here (see
        the class). ``retry_s``: how long each call retries, with back-off, while the database is
        unreachable (0: it fails at once; workers and runs retry, the web UI does not wait);
        ``give_up``: an event that ends those retries early (a worker asked to stop).
        Opening does not retry: a wrong URL or a server that is down fails at once.
        """
        self.url = str(url)
        self.stale_after_s = float(stale_after_s)
        self.runs_dir = Path(runs_dir).expanduser() if runs_dir is not None else None
        self.retry_s = float(retry_s)
        self.give_up = give_up
        self.noticed_by: str | None = None  # who this store's process is (a worker id), for the error of a run it expires
        self._local = threading.local()
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Counts the promotions changed through this object, so the demos' look-ups in this process
        # (which cache promotions for a moment) see a promotion from the Runs tab at once.
        self.promotions_changed = 0
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

    @_retrying
    def claim_next(self, worker_id: str, *, host: str, pid: int) -> RunInfo | None:
        """Atomically take the oldest queued run for this worker (status → running); None if none.

        Two workers on one database never get the same run: the oldest queued row is locked and taken
        in one transaction (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so a concurrent claim takes the
        next row instead of waiting; SQLite: ``BEGIN IMMEDIATE``, one writer at a time).
        """
        oldest = (select(Run.id).where(Run.status == RunStatus.QUEUED).order_by(Run.id).limit(1)
                  .with_for_update(skip_locked=True))  # SQLite's compiler leaves the lock clause out
        with self._claim_transaction() as connection:
            run_id = connection.scalar(oldest)
            if run_id is None or not self._take(connection, run_id, worker_id, host, pid):
                return None
        return self.get_run(run_id)

    @_retrying
    def claim_run(self, run_id: int, worker_id: str, *, host: str, pid: int) -> RunInfo | None:
        """Atomically take this queued run (inline ``avstudio train``); None if someone else has it."""
        with self._claim_transaction() as connection:
            taken = self._take(connection, run_id, worker_id, host, pid)
        return self.get_run(run_id) if taken else None

    @contextmanager
    def _claim_transaction(self) -> Iterator[Connection]:
        """One transaction that commits on leaving; on SQLite it holds the write lock from its first statement."""
        with self.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # pysqlite would begin only at the UPDATE, after the SELECT: two claims could both read
                # the same oldest row. BEGIN IMMEDIATE makes the whole claim one writer's.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection
            connection.commit()

    def _take(self, connection: Connection, run_id: int, worker_id: str, host: str, pid: int) -> bool:
        # The status condition, checked by rowcount, keeps this atomic on any database even without the lock.
        now = utcnow()
        result = connection.execute(
            update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED).values(
                status=RunStatus.RUNNING, worker_id=worker_id, host=host, pid=pid, heartbeat_at=self._clock(),
                started_at=now, finished_at=None, error=None))
        return result.rowcount == 1

    def _clock(self) -> Any:
        """The time to record as a heartbeat: the database's own clock where it has one (PostgreSQL), so
        the heartbeats of machines whose clocks disagree compare; this machine's UTC time on SQLite."""
        if self.engine.dialect.name == "postgresql":
            return func.timezone("UTC", func.now())
        return utcnow()

    def _database_now(self, session: Session) -> datetime:
        """Now, by the clock :meth:`_clock` records heartbeats with."""
        if self.engine.dialect.name == "postgresql":
            return session.scalar(select(func.timezone("UTC", func.now()))).replace(tzinfo=timezone.utc)
        return utcnow()

    # -- lifecycle ---------------------------------------------------------------------------
    @_retrying
    def set_started(self, run_id: int, *, device: str) -> None:
        """Record the device actually used and the start time."""
        self._update(run_id, device=str(device), started_at=utcnow(), heartbeat_at=self._clock())

    @_retrying
    def heartbeat(self, run_id: int, worker_id: str | None = None) -> bool:
        """Mark the run as alive now (called every few seconds by its worker and by the run itself).

        Returns False when the run is no longer running (under ``worker_id``, when given): it finished,
        or another worker found its heartbeat stale and marked it interrupted. Its process should stop.
        """
        query = update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING)
        if worker_id is not None:
            query = query.where(Run.worker_id == worker_id)
        with self._sessions.begin() as session:
            return session.execute(query.values(heartbeat_at=self._clock())).rowcount == 1

    @_retrying
    def set_progress(self, run_id: int, fraction: float, desc: str = "") -> None:
        """Record progress (clamped to 0..1) and what it is progress of."""
        fraction = min(1.0, max(0.0, float(fraction))) if math.isfinite(fraction) else 0.0
        self._update(run_id, progress=fraction, progress_desc=str(desc)[:500])

    @_retrying
    def finish(self, run_id: int, status: RunStatus | str, *, error: str | None = None,
               worker_id: str | None = None) -> None:
        """Set a final status (succeeded / failed / cancelled / interrupted) and the end time.

        The first final status wins: a run that already finished keeps its status. With ``worker_id``, only
        while that worker holds the run: a worker that comes back after another one took its run over (and
        the run was resumed elsewhere) cannot end the run it lost, as its heartbeat cannot keep it.
        """
        final = RunStatus.finished()
        if status not in final:
            raise ValueError(f"{str(status)!r} is not a final status; use one of: {', '.join(final)}")
        status = RunStatus(status)
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if status is RunStatus.SUCCEEDED:
            values["progress"] = 1.0
        query = update(Run).where(Run.id == run_id, Run.status.in_((RunStatus.QUEUED, RunStatus.RUNNING)))
        if worker_id is not None:
            query = query.where(Run.worker_id == worker_id)
        with self._sessions.begin() as session:
            session.execute(query.values(**values))

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

    @_retrying
    def cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked this run to stop."""
        with self._sessions() as session:
            return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))

    @_retrying
    def mark_interrupted(self, *, host: str, alive_pids: set[int] | None = None,
                         stale_after_s: float = 60.0, noticed_by: str | None = None,
                         pid_alive: Callable[[int | None], bool] | None = None) -> list[int]:
        """Mark running runs whose worker is gone as interrupted; return their ids.

        A run is gone when it ran on ``host`` and its pid is not alive (not in ``alive_pids``, or
        ``pid_alive(pid)`` is false: asked after the run was read, so a worker that claimed a run a
        moment ago is never taken for dead), or when its heartbeat is
        older than ``stale_after_s`` seconds by the database's clock. ``noticed_by`` (a worker id)
        goes into the run's error text. The heartbeat is checked again in the UPDATE itself, so a
        run that beat meanwhile is left alone.
        """
        with self._sessions() as session:
            cutoff = self._database_now(session) - timedelta(seconds=stale_after_s)
            running = session.execute(
                select(Run.id, Run.host, Run.pid, Run.heartbeat_at, Run.started_at)
                .where(Run.status == RunStatus.RUNNING)).all()
        by = f"; noticed by worker {noticed_by}" if noticed_by else ""
        gone = []
        for run_id, run_host, pid, heartbeat_at, started_at in running:
            last_seen = heartbeat_at or started_at
            # a pid means something on its own host only: another host's runs are not even asked about
            dead = run_host == host and ((alive_pids is not None and pid not in alive_pids)
                                         or (pid_alive is not None and not pid_alive(pid)))
            if dead:
                gone.append((run_id, None, f"worker process {pid} on {host} is gone{by}"))
            elif last_seen is None or last_seen < cutoff:
                gone.append((run_id, cutoff, f"no heartbeat for more than {stale_after_s:g} s "
                                             f"(its worker on {run_host} was lost){by}"))
        marked = []
        for run_id, stale_before, reason in gone:
            query = update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING)
            if stale_before is not None:
                query = query.where((Run.heartbeat_at.is_(None)) | (Run.heartbeat_at < stale_before))
            with self._sessions.begin() as session:
                done = session.execute(query.values(status=RunStatus.INTERRUPTED, finished_at=utcnow(),
                                                    error=f"interrupted: {reason}")).rowcount
            if done:
                marked.append(run_id)
        return marked

    def expire_stale(self, noticed_by: str | None = None) -> list[int]:
        """Mark running runs with no heartbeat for ``stale_after_s`` seconds as interrupted; return their ids.

        Their process is gone without a word: a killed foreground ``avstudio train``, a worker on a
        machine that went away. Every worker calls this every few seconds, and :meth:`get_run` and
        :meth:`list_runs` call it first, so such a run is recorded as interrupted (and resumable) even
        when nobody looks. The worker that ran it, should it come back, finds its heartbeat refused
        (:meth:`heartbeat` returns False) and stops the run.
        """
        return self.mark_interrupted(host="", stale_after_s=self.stale_after_s, noticed_by=noticed_by or self.noticed_by)

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
    @_retrying
    def get_run(self, run_id: int) -> RunInfo:
        """The run, with its latest metrics; KeyError when there is none."""
        self.expire_stale()
        with self._sessions() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id}")
            return _run_info(run, self._latest(session, [run_id]).get(run_id, {}))

    @_retrying
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

    @_retrying
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
    @_retrying
    def log_metrics(self, run_id: int, points: list[MetricPoint], *, maybe_written: bool = False) -> None:
        """Insert a batch of metric points in one transaction and update the latest values.

        NaN and infinite values are stored as NULL (read back as NaN). The latest value of a key
        is its point with the highest step (the later one on a tie). On a retry after a lost connection,
        a batch whose first try did commit (only its answer was lost) is not written again; so with
        ``maybe_written``, for a batch sent again after an earlier call gave up on it.
        """
        if not points:
            return
        newest: dict[str, MetricPoint] = {}
        for p in points:
            if p.key not in newest or p.step >= newest[p.key].step:
                newest[p.key] = p
        with self._sessions.begin() as session:
            if maybe_written or getattr(self._local, "attempt", 0):  # one transaction: all of it is there, or none
                first = points[0]
                if session.scalar(select(Metric.id).where(
                        Metric.run_id == run_id, Metric.key == first.key, Metric.step == int(first.step),
                        Metric.time == float(first.time)).limit(1)) is not None:
                    return
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

    @_retrying
    def metrics(self, run_id: int, keys: list[str] | None = None) -> list[MetricPoint]:
        """Full history, ordered by key then step."""
        query = (select(Metric.step, Metric.key, Metric.value, Metric.time).where(Metric.run_id == run_id)
                 .order_by(Metric.key, Metric.step, Metric.id))
        if keys is not None:
            query = query.where(Metric.key.in_(list(keys)))
        with self._sessions() as session:
            rows = session.execute(query).all()
        return [MetricPoint(step=s, key=k, value=_from_db(v), time=t) for s, k, v, t in rows]

    @_retrying
    def metric_keys(self, run_id: int) -> list[str]:
        """The metric keys the run logged, sorted."""
        with self._sessions() as session:
            return list(session.scalars(select(LatestMetric.key).where(LatestMetric.run_id == run_id)
                                        .order_by(LatestMetric.key)))

    # -- artifacts and promotion ------------------------------------------------------------
    @_retrying
    def add_artifact(self, run_id: int, name: str, kind: str, path: str,
                     metadata: dict[str, Any] | None = None) -> int:
        """Record an artifact; a second one with the same (run, name) replaces the first's row.

        The replaced row keeps its id (so a promotion of it follows the newest file). A file under
        the store's ``runs_dir`` is also recorded relative to it.
        """
        path, run_path = str(path), self._run_path(path)
        for attempt in range(3):
            try:
                with self._sessions.begin() as session:
                    row = session.scalar(select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name))
                    if row is None:
                        row = Artifact(run_id=run_id, name=name)
                        session.add(row)
                    row.kind, row.path, row.run_path = kind, path, run_path
                    row.meta, row.created_at = dict(metadata or {}), utcnow()
                    session.flush()
                    return row.id
            except IntegrityError:  # a concurrent insert of the same name, or an unknown run
                with self._sessions() as session:
                    if session.get(Run, run_id) is None:
                        raise KeyError(f"no run {run_id}") from None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @_retrying
    def artifacts(self, run_id: int, kind: str | None = None) -> list[ArtifactInfo]:
        """The run's artifacts, newest first."""
        query = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.created_at.desc(),
                                                                             Artifact.id.desc())
        if kind is not None:
            query = query.where(Artifact.kind == kind)
        with self._sessions() as session:
            return [self._artifact_info(a) for a in session.scalars(query)]

    @_retrying
    def get_artifact(self, artifact_id: int) -> ArtifactInfo:
        """The artifact; KeyError when there is none."""
        with self._sessions() as session:
            row = session.get(Artifact, artifact_id)
            if row is None:
                raise KeyError(f"no artifact {artifact_id}")
            return self._artifact_info(row)

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
        self.promotions_changed += 1

    def unpromote(self, method: str, slot: str) -> bool:
        """Forget the promotion of ``method``/``slot`` (the demo falls back to the shipped one)."""
        with self._sessions.begin() as session:
            done = bool(session.execute(
                delete(Promotion).where(Promotion.method == method, Promotion.slot == slot)).rowcount)
        self.promotions_changed += 1
        return done

    @_retrying
    def promoted(self, method: str, slot: str) -> ArtifactInfo | None:
        """The artifact promoted for ``method``/``slot``, or None."""
        with self._sessions() as session:
            row = session.scalar(select(Artifact).join(Promotion, Promotion.artifact_id == Artifact.id)
                                 .where(Promotion.method == method, Promotion.slot == slot))
            return self._artifact_info(row) if row is not None else None

    @_retrying
    def promotions(self, method: str | None = None) -> dict[tuple[str, str], ArtifactInfo]:
        """Every promotion, keyed by (method, slot)."""
        query = select(Promotion.method, Promotion.slot, Artifact).join(
            Artifact, Promotion.artifact_id == Artifact.id).order_by(Promotion.method, Promotion.slot)
        if method is not None:
            query = query.where(Promotion.method == method)
        with self._sessions() as session:
            return {(m, s): self._artifact_info(a) for m, s, a in session.execute(query)}

    def close(self) -> None:
        """Dispose of the engine."""
        self.engine.dispose()

    def _update(self, run_id: int, **values: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(update(Run).where(Run.id == run_id).values(**values))

    def _run_path(self, path: Path | str) -> str | None:
        """``path`` relative to ``runs_dir`` when it lies under it, else None."""
        if self.runs_dir is not None:
            absolute, root = Path(os.path.abspath(path)), Path(os.path.abspath(self.runs_dir))
            if absolute.is_relative_to(root):
                return absolute.relative_to(root).as_posix()
        return None

    def _artifact_info(self, row: Artifact) -> ArtifactInfo:
        # The file under this machine's runs_dir, unless only the path as written exists here.
        path = row.path
        if self.runs_dir is not None and row.run_path:
            here = self.runs_dir / row.run_path
            if here.exists() or not Path(path).exists():
                path = str(here)
        return ArtifactInfo(id=row.id, run_id=row.run_id, name=row.name, kind=row.kind, path=path,
                            metadata=dict(row.meta or {}), created_at=row.created_at)


# -- helpers -----------------------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their directory, WAL, a busy timeout and foreign keys.

    Other databases get a pool that tests each connection before use (``pool_pre_ping``): after a
    server restart the first call reconnects instead of failing. A URL whose driver is not installed
    raises ModuleNotFoundError saying what to install.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except (ModuleNotFoundError, NoSuchModuleError) as exc:
            hint = ('pip install "adaptive-vision-studio[postgres]" (psycopg 3); use a postgresql+psycopg:// URL'
                    if parsed.get_backend_name() == "postgresql" else "install the SQLAlchemy driver it names")
            raise ModuleNotFoundError(f"no database driver for {parsed.drivername}:// ({exc}); {hint}") from exc
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
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema down to ``revision`` ("base": no tables), as :func:`upgrade_to_head` takes it up.

    What a newer revision added is dropped with its data; the rows themselves stay.
    """
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> None:
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
            getattr(command, direction)(config, revision)
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

