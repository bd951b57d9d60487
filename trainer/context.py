"""RunContext: what a recipe's ``train(config, ctx)`` sees of the studio (app.api.TrainContext).

Duck-typed against the protocol: the trainer never imports ``app``. Also home of
:func:`resolve_checkpoint`, which turns a checkpoint reference into a file (the web UI uses it too).
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from trainer import checkpoints
from trainer.checkpoints import Checkpoint
from trainer.records import MetricPoint, RunInfo
from trainer.store import RunStore

FLUSH_EVERY_POINTS = 50
FLUSH_EVERY_S = 2.0
CANCEL_CHECK_EVERY_S = 1.0
PROGRESS_EVERY_S = 1.0
RESUME_STATE = "resume-state.safetensors"

_RUN_REF = re.compile(r"^run:(?P<id>[^/]+)(?:/(?P<name>.+))?$")


def method_assets_dir(registry: Any, assets_root: Path | str | None, method: str) -> Path | None:
    """Where ``method``'s shipped assets live: the method's own ``assets_dir`` (a plugin's package),
    else ``assets_root/<method>`` (the studio's ``assets/``, for the built-ins)."""
    registered = getattr(registry, "methods", {}).get(method) if registry is not None else None
    own = getattr(registered, "assets_dir", None)
    if own is not None:
        return Path(own)
    return Path(assets_root) / method if assets_root is not None else None


def resolve_checkpoint(ref: str, store: RunStore | None, assets_of: Callable[[str], Path | None]) -> Path:
    """The checkpoint file ``ref`` names.

    ``ref`` is one of: a path to a ``.safetensors`` file; ``run:ID`` (that run's newest checkpoint);
    ``run:ID/NAME`` (its checkpoint NAME); ``METHOD/NAME`` (the checkpoint promoted for that method
    and slot, else the shipped ``NAME.safetensors`` in ``assets_of(METHOD)``). Raises ValueError for
    a malformed reference and FileNotFoundError, saying what exists, when nothing matches.
    """
    ref = str(ref).strip()
    if "\x00" in ref:
        raise ValueError(f"bad checkpoint reference {ref[:60]!r}: it contains a NUL byte")
    match = _RUN_REF.match(ref)
    if match:
        if not match["id"].isdigit():
            raise ValueError(f"bad checkpoint reference {ref!r}: expected run:ID or run:ID/NAME with a numeric ID")
        if store is None:
            raise FileNotFoundError(f"cannot resolve {ref!r}: no run store is open")
        run_id, name = int(match["id"]), match["name"]
        try:
            store.get_run(run_id)
        except KeyError:
            raise FileNotFoundError(f"no run {run_id} in the run store (checkpoint reference {ref!r})") from None
        artifact = store.latest_checkpoint(run_id, name)
        if artifact is None:
            names = sorted(a.name for a in store.artifacts(run_id, kind="checkpoint"))
            what = f"checkpoint {name!r}" if name else "checkpoints"
            raise FileNotFoundError(f"run {run_id} has no {what}; it has: {', '.join(names) or 'none'}")
        return _existing(Path(artifact.path), ref)

    try:
        path = Path(ref).expanduser()
        if path.is_file():
            return path
    except (OSError, RuntimeError) as exc:  # a name too long for the file system, an unknown ~user
        raise ValueError(f"bad checkpoint reference {ref[:60]!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if ref.endswith(".safetensors") or path.is_absolute():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    parts = ref.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") or p.startswith("~") for p in parts):
        raise ValueError(f"bad checkpoint reference {ref!r}: use a .safetensors path, run:ID[/NAME] or METHOD/NAME")
    method, name = parts
    if store is not None:
        promoted = store.promoted(method, name)
        if promoted is not None:
            return _existing(Path(promoted.path), ref)
    assets = assets_of(method)
    shipped = checkpoints.shipped_checkpoint(assets, name)
    if shipped is None:
        where = f"no shipped file {Path(assets) / (name + '.safetensors')}" if assets else "no shipped assets"
        raise FileNotFoundError(f"no checkpoint {ref!r}: nothing promoted for {method}/{name} and {where}")
    return shipped


def _existing(path: Path, ref: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ref!r} points at {path}, which no longer exists")
    return path


class RunProgress:
    """Progress of ``total`` steps: reported to the run store at most once per second (and a tqdm bar inline)."""

    def __init__(self, store: RunStore, run_id: int, total: int, desc: str = "", *, show_bar: bool = False) -> None:
        self.store, self.run_id, self.total, self.desc = store, run_id, max(int(total), 1), desc
        self.count = 0
        self._last_report = 0.0
        self.bar = tqdm(total=total, desc=desc or None, file=sys.stderr, dynamic_ncols=True) if show_bar else None

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps."""
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        if time.monotonic() - self._last_report >= PROGRESS_EVERY_S or self.count >= self.total:
            self._report()

    def _report(self) -> None:
        self._last_report = time.monotonic()
        self.store.set_progress(self.run_id, self.count / self.total, self.desc)

    def close(self) -> None:
        self._report()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunContext:
    """The TrainContext of one run: metrics buffered into the store, checkpoints with model cards."""

    def __init__(self, store: RunStore, run: RunInfo, registry: Any, *, device: torch.device,
                 data_dir: Path | str, runs_dir: Path | str, assets_dir: Path | str,
                 config: Any = None, commit: str | None = None, show_progress: bool = False,
                 interrupt: threading.Event | None = None) -> None:
        self.store, self.run, self.registry = store, run, registry
        self.interrupt = interrupt  # set (by a signal, or the worker's death) to stop the run and leave it resumable
        self.interrupted = False  # should_stop() said yes because of ``interrupt``: the recipe stopped early
        self.run_id = run.id
        self.device = device
        self.data_dir = Path(data_dir)
        self.run_dir = Path(runs_dir) / str(run.id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.assets_root = Path(assets_dir)
        self.config = config if config is not None else run.config
        self.commit = commit if commit is not None else run.commit
        self.show_progress = show_progress
        self.last_step = 0  # the highest step logged so far
        self.last_values: dict[str, tuple[int, float]] = {}  # key -> (step, value) last logged
        self._buffer: list[MetricPoint] = []
        self._unsure: list[MetricPoint] = []  # a batch whose write gave up: it may have committed anyway
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._cancelled = False
        self._last_cancel_check = 0.0

    # -- data and metrics --------------------------------------------------------------------
    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split from the studio's data directory."""
        return self.registry.load_dataset(name, split, self.data_dir, **options)

    def log_metrics(self, step: int, **values: float) -> None:
        """Record metric values at ``step``; written in batches (every 50 points or 2 s, and on close)."""
        now = time.time()
        with self._lock:
            self.last_step = max(self.last_step, int(step))
            self.last_values.update({k: (int(step), float(v)) for k, v in values.items()})
            self._buffer.extend(MetricPoint(step=int(step), key=k, value=float(v), time=now) for k, v in values.items())
            due = len(self._buffer) >= FLUSH_EVERY_POINTS or time.monotonic() - self._last_flush >= FLUSH_EVERY_S
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metric points to the store now (safe to call from another thread)."""
        with self._flush_lock:  # one writer at a time, so batches land in order
            with self._lock:
                points, self._buffer = self._buffer, []
                self._last_flush = time.monotonic()
            try:  # first the batch an earlier flush gave up on: its commit may have gone through unanswered
                if self._unsure:
                    self.store.log_metrics(self.run_id, self._unsure, maybe_written=True)
                    self._unsure = []
            except Exception:
                with self._lock:
                    self._buffer[:0] = points
                raise
            if points:
                try:
                    self.store.log_metrics(self.run_id, points)
                except Exception:  # the database stayed unreachable: sent again (looked for first) next flush
                    self._unsure = points
                    raise

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, name: str, tensors: Mapping[str, Any],
                        metadata: Mapping[str, Any] | None = None) -> Path:
        """Save ``run_dir/NAME.safetensors`` plus its JSON model card; record it as the artifact ``name``."""
        self.flush()
        metadata = _json_ready(dict(metadata or {}))
        latest = {k: v for k, v in self.store.get_run(self.run_id).latest_metrics.items() if math.isfinite(v)}
        config = self.run.config
        card = checkpoints.make_card({
            "method": self.run.method, "recipe": self.run.recipe, "config": config,
            "dataset": config.get("dataset") if isinstance(config, dict) else None,
            "run_id": self.run_id, "checkpoint": name, "commit": self.commit, "device": str(self.device),
            "torch": torch.__version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "metrics": latest}, metadata)
        path = checkpoints.save_checkpoint(self.run_dir / f"{name}.safetensors", tensors, card)
        self.store.add_artifact(self.run_id, name, "checkpoint", str(path), metadata)
        return path

    def save_image(self, name: str, image: Any, step: int | None = None) -> Path:
        """Save a PIL image as ``run_dir/images/NAME[-STEP].png`` and record it as the artifact of that
        file name, kind ``image`` (the Runs tab shows a run's images; ``runs show`` lists them)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"image name must be letters, digits, '-', '_' or '.', got {name!r}")
        stem = f"{name}-{int(step):06d}" if step is not None else name
        path = self.run_dir / "images" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
        self.store.add_artifact(self.run_id, stem, "image", str(path), {"step": step} if step is not None else {})
        return path

    def load_checkpoint(self, ref: str) -> Checkpoint:
        """Load a checkpoint (tensors on the CPU): a file path, ``run:ID[/NAME]`` or ``METHOD/NAME``."""
        return checkpoints.load_checkpoint(resolve_checkpoint(ref, self.store, self.assets_of))

    def resume_checkpoint(self, name: str | None = None) -> Checkpoint | None:
        """When this run is being resumed: its last saved checkpoint (of ``name``), else None."""
        if self.run.resume_count <= 0:
            return None
        artifact = self.store.latest_checkpoint(self.run_id, name)
        if artifact is None or not Path(artifact.path).is_file():
            return None
        return checkpoints.load_checkpoint(artifact.path)

    def save_state(self, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
        """Save the resume state (weights, optimiser, schedule, RNG) as ``run_dir/resume-state.safetensors``."""
        self.flush()  # the metrics logged so far belong with this state
        return checkpoints.save_checkpoint(self.run_dir / RESUME_STATE, tensors,
                                           checkpoints.make_card({"run_id": self.run_id}, _json_ready(dict(metadata or {}))))

    def resume_state(self) -> Checkpoint | None:
        """When this run is being resumed: what :meth:`save_state` saved last, else None."""
        path = self.run_dir / RESUME_STATE
        if self.run.resume_count <= 0 or not path.is_file():
            return None
        return checkpoints.load_checkpoint(path)

    def assets_of(self, method: str) -> Path | None:
        """The shipped assets directory of ``method`` (for ``METHOD/NAME`` references)."""
        return method_assets_dir(self.registry, self.assets_root, method)

    # -- control -----------------------------------------------------------------------------
    def should_stop(self, *, fresh: bool = False) -> bool:
        """True once the run was cancelled (the store is asked at most once per second) or interrupted."""
        if self.interrupt is not None and self.interrupt.is_set():
            self.interrupted = True
            return True
        if self._cancelled:
            return True
        now = time.monotonic()
        if fresh or now - self._last_cancel_check >= CANCEL_CHECK_EVERY_S:
            self._last_cancel_check = now
            self._cancelled = self.store.cancel_requested(self.run_id)
        return self._cancelled

    def progress(self, total: int, desc: str = "") -> RunProgress:
        """A progress reporter for ``total`` steps (tqdm on stderr when run inline, the Runs tab always)."""
        return RunProgress(self.store, self.run_id, total, desc, show_bar=self.show_progress)

    def close(self) -> None:
        """Flush the buffered metrics."""
        self.flush()

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_ready(value: dict[str, Any]) -> dict[str, Any]:
    # Metadata goes into a JSON column and a JSON card: tensors and numpy scalars become numbers or text.
    def default(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.numel() == 1:
            return obj.item()
        if hasattr(obj, "item"):
            return obj.item()
        return str(obj)

    # NaN and infinities become null: PostgreSQL's JSON (and strict JSON readers) reject them.
    return json.loads(json.dumps(value, default=default), parse_constant=lambda _name: None)
