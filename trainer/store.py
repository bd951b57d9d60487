"""The run store: runs, params, metric history, artifacts and promotions, in any SQLAlchemy database.

The signatures here are the contract used by the CLI, the web UI and the worker. The schema lives
in ``trainer/db_models.py`` and is built by the Alembic migrations in ``trainer/migrations``,
which ``RunStore(url)`` applies on open (``trainer/database.py``: the engine, the migrations, the retry of
a call while the database is unreachable). What it hands out is in ``trainer/records.py``; the metrics,
artifacts and promotions part of :class:`RunStore` in ``trainer/run_outputs.py``.

Several processes and machines may share one database (PostgreSQL for several machines): a job is
claimed in one transaction that no other claim can share (``SELECT … FOR UPDATE SKIP LOCKED`` on
PostgreSQL, a write-locked ``BEGIN IMMEDIATE`` transaction on SQLite); heartbeats are timed by the
database's clock, so machines whose clocks disagree never declare each other's runs lost; and a store
opened with ``retry_s`` rides out a lost connection (a server restart) by retrying each call.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from trainer.database import make_engine, retrying, upgrade_to_head
from trainer.db_models import LatestMetric, Param, Run, RunStatus, utcnow
from trainer.records import RunInfo, metric_from_db
from trainer.run_outputs import RunOutputs

STALE_AFTER_S = 60.0  # a running run with no heartbeat for this long has lost its process (beats come every 2 s)
DB_RETRY_S = 600.0  # how long a worker and its runs retry an unreachable database (AVSTUDIO_DB_RETRY_S)


class RunStore(RunOutputs):
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

    @retrying
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

    @retrying
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
    @retrying
    def set_started(self, run_id: int, *, device: str) -> None:
        """Record the device actually used and the start time."""
        self._update(run_id, device=str(device), started_at=utcnow(), heartbeat_at=self._clock())

    @retrying
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

    @retrying
    def set_progress(self, run_id: int, fraction: float, desc: str = "") -> None:
        """Record progress (clamped to 0..1) and what it is progress of."""
        fraction = min(1.0, max(0.0, float(fraction))) if math.isfinite(fraction) else 0.0
        self._update(run_id, progress=fraction, progress_desc=str(desc)[:500])

    @retrying
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

    @retrying
    def cancel_requested(self, run_id: int) -> bool:
        """Whether someone asked this run to stop."""
        with self._sessions() as session:
            return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))

    @retrying
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
    @retrying
    def get_run(self, run_id: int) -> RunInfo:
        """The run, with its latest metrics; KeyError when there is none."""
        self.expire_stale()
        with self._sessions() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run {run_id}")
            return _run_info(run, self._latest(session, [run_id]).get(run_id, {}))

    @retrying
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

    @retrying
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
                latest.setdefault(run_id, {})[key] = metric_from_db(value)
        return latest

    def close(self) -> None:
        """Dispose of the engine."""
        self.engine.dispose()

    def _update(self, run_id: int, **values: Any) -> None:
        with self._sessions.begin() as session:
            session.execute(update(Run).where(Run.id == run_id).values(**values))


# -- helpers -----------------------------------------------------------------------------------


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


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

