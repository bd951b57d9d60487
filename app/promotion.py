"""Promotion: make a run's checkpoint the one a method's demo uses for a slot; the one way the CLI
and the Runs tab promote and un-promote.

A method declares the slots its demo reads (``Method.checkpoint_slots``); a checkpoint is promoted
only into a declared slot, only for the method whose run saved it, and only if the slot's
``check`` accepts it (same architecture, same classes), so a promotion can never break a demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import UserError
from trainer.checkpoints import load_checkpoint
from trainer.store import RunStatus


@dataclass
class Promoted:
    """What a promotion did: the method, slot and artifact, and the file the demo now uses."""

    method: str
    slot: str
    artifact_id: int
    artifact_name: str
    run_id: int
    path: str
    run_status: RunStatus

    def message(self) -> str:
        return (f"promoted run {self.run_id}'s checkpoint {self.artifact_name!r} as {self.method}/{self.slot}: "
                f"the {self.method} demo now uses {self.path}")


def choose_artifact(store: Any, run_id: int, name: str | None) -> Any:
    """The checkpoint artifact ``name`` of run ``run_id`` (the only one when ``name`` is None)."""
    checkpoints = store.artifacts(run_id, kind="checkpoint")
    names = ", ".join(a.name for a in checkpoints) or "(none)"
    if not checkpoints:
        raise UserError(f"run {run_id} saved no checkpoint")
    if name is None:
        if len(checkpoints) > 1:
            raise UserError(f"run {run_id} saved several checkpoints; choose one of: {names}")
        return checkpoints[0]
    chosen = next((a for a in checkpoints if a.name == name), None)
    if chosen is None:
        raise UserError(f"run {run_id} has no checkpoint {name!r}; checkpoints: {names}")
    return chosen


def promote_artifact(store: Any, registry: Any, artifact_id: int, slot: str | None = None) -> Promoted:
    """Promote checkpoint artifact ``artifact_id`` into ``slot`` (default: its name) of its run's method.

    Raises UserError (one line) when the artifact is not a checkpoint, its method is not loaded,
    the slot is not one the method's demo reads, or the slot's check refuses the checkpoint.
    """
    try:
        artifact = store.get_artifact(int(artifact_id))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"no checkpoint artifact {artifact_id!r}") from None
    if artifact.kind != "checkpoint":
        raise UserError(f"artifact {artifact.id} is a {artifact.kind}, not a checkpoint")
    run = store.get_run(artifact.run_id)
    method = registry.method(run.method)
    slot = (slot or "").strip() or artifact.name
    declared = method.slot(slot)
    if declared is None:
        slots = ", ".join(s.name for s in method.checkpoint_slots) or "(none: this method's demo reads no checkpoint)"
        raise UserError(f"{run.method} has no checkpoint slot {slot!r}; its demo reads: {slots}")
    if not Path(artifact.path).is_file():  # e.g. written on another machine, with no shared AVSTUDIO_HOME here
        raise UserError(f"cannot promote artifact {artifact.id}: its file {artifact.path} is not on this machine "
                        "(machines that share runs share one AVSTUDIO_HOME)")
    if declared.check is not None:
        try:
            checkpoint = load_checkpoint(artifact.path)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"cannot promote artifact {artifact.id}: {exc}") from None
        try:
            declared.check(checkpoint)
        except UserError as exc:
            raise UserError(f"cannot promote {artifact.name!r} of run {run.id} as {run.method}/{slot}: {exc}") from None
        except Exception as exc:  # a check that fails for another reason still refuses the checkpoint
            raise UserError(f"cannot promote {artifact.name!r} of run {run.id} as {run.method}/{slot}: "
                            f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    store.promote(run.method, slot, artifact.id)
    return Promoted(run.method, slot, artifact.id, artifact.name, run.id, artifact.path, RunStatus(run.status))


def unpromote(store: Any, method: str, slot: str) -> str:
    """Forget the promotion of ``method``/``slot``: the demo falls back to the shipped checkpoint."""
    if not store.unpromote(method, slot):
        promoted = ", ".join(f"{m}/{s}" for (m, s) in store.promotions(method)) or "none"
        raise UserError(f"nothing is promoted as {method}/{slot}; promoted: {promoted}")
    return f"{method}/{slot} is no longer promoted: the demo uses the shipped checkpoint again (if there is one)"


def promotions_of_run(store: Any, run_id: int) -> dict[int, list[str]]:
    """Artifact id → the ``method/slot`` names it is promoted as, for one run."""
    promoted: dict[int, list[str]] = {}
    for (method, slot), artifact in store.promotions().items():
        if artifact.run_id == run_id:
            promoted.setdefault(artifact.id, []).append(f"{method}/{slot}")
    return promoted
