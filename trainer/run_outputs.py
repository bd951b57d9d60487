"""What a run produced, in the run store: its metric history (and latest values), its artifacts (checkpoints,
images, reports) and the promotions of its checkpoints into a method's demo. :class:`RunOutputs` is the part
of :class:`trainer.store.RunStore` that reads and writes them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from trainer.database import retrying
from trainer.db_models import Artifact, LatestMetric, Metric, Promotion, Run, utcnow
from trainer.records import ArtifactInfo, MetricPoint, metric_from_db, metric_to_db


class RunOutputs:
    """Metrics, artifacts and promotions; mixed into :class:`trainer.store.RunStore`, whose sessions
    (``_sessions``), retry state (``_local``), ``runs_dir`` and ``promotions_changed`` it uses."""

    # -- metrics -----------------------------------------------------------------------------
    @retrying
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
                {"run_id": run_id, "key": p.key, "step": int(p.step), "value": metric_to_db(p.value),
                 "time": float(p.time)} for p in points])
            existing = {m.key: m for m in session.scalars(
                select(LatestMetric).where(LatestMetric.run_id == run_id, LatestMetric.key.in_(list(newest))))}
            for key, p in newest.items():
                row = existing.get(key)
                if row is None:
                    session.add(LatestMetric(run_id=run_id, key=key, value=metric_to_db(p.value), step=int(p.step),
                                             time=float(p.time)))
                elif p.step >= row.step:
                    row.value, row.step, row.time = metric_to_db(p.value), int(p.step), float(p.time)

    @retrying
    def metrics(self, run_id: int, keys: list[str] | None = None) -> list[MetricPoint]:
        """Full history, ordered by key then step."""
        query = (select(Metric.step, Metric.key, Metric.value, Metric.time).where(Metric.run_id == run_id)
                 .order_by(Metric.key, Metric.step, Metric.id))
        if keys is not None:
            query = query.where(Metric.key.in_(list(keys)))
        with self._sessions() as session:
            rows = session.execute(query).all()
        return [MetricPoint(step=s, key=k, value=metric_from_db(v), time=t) for s, k, v, t in rows]

    @retrying
    def metric_keys(self, run_id: int) -> list[str]:
        """The metric keys the run logged, sorted."""
        with self._sessions() as session:
            return list(session.scalars(select(LatestMetric.key).where(LatestMetric.run_id == run_id)
                                        .order_by(LatestMetric.key)))

    # -- artifacts and promotion ------------------------------------------------------------
    @retrying
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

    @retrying
    def artifacts(self, run_id: int, kind: str | None = None) -> list[ArtifactInfo]:
        """The run's artifacts, newest first."""
        query = select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.created_at.desc(),
                                                                             Artifact.id.desc())
        if kind is not None:
            query = query.where(Artifact.kind == kind)
        with self._sessions() as session:
            return [self._artifact_info(a) for a in session.scalars(query)]

    @retrying
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

    @retrying
    def promoted(self, method: str, slot: str) -> ArtifactInfo | None:
        """The artifact promoted for ``method``/``slot``, or None."""
        with self._sessions() as session:
            row = session.scalar(select(Artifact).join(Promotion, Promotion.artifact_id == Artifact.id)
                                 .where(Promotion.method == method, Promotion.slot == slot))
            return self._artifact_info(row) if row is not None else None

    @retrying
    def promotions(self, method: str | None = None) -> dict[tuple[str, str], ArtifactInfo]:
        """Every promotion, keyed by (method, slot)."""
        query = select(Promotion.method, Promotion.slot, Artifact).join(
            Artifact, Promotion.artifact_id == Artifact.id).order_by(Promotion.method, Promotion.slot)
        if method is not None:
            query = query.where(Promotion.method == method)
        with self._sessions() as session:
            return {(m, s): self._artifact_info(a) for m, s, a in session.execute(query)}

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
