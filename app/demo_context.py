"""The contexts the studio hands to plugins outside training: ``DemoContext`` (a method's
``build_demo(ctx)``) and ``CommandContext`` (a plugin's CLI commands).

Checkpoints are looked up on every call (promoted first, then shipped), so promoting a run's
checkpoint in the Runs tab changes what the demo uses without a restart; loaded checkpoints are
cached by path and modification time. A look-up asks the run store at most once every
``PROMOTION_TTL_S`` seconds per checkpoint (a database query on every request was a main cost under
load): a promotion made through this studio's store is seen at once, one made by another process
(``avstudio runs promote``) within that time.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from app.errors import UserError
from app.settings import Settings
from trainer.checkpoints import Checkpoint, CheckpointInfo, load_checkpoint, read_card, shipped_checkpoint
from trainer.context import method_assets_dir, resolve_checkpoint

PROMOTION_TTL_S = 1.0
log = logging.getLogger(__name__)


class _RecentPromotions:
    """The run store's ``promoted`` answers, each kept for ``PROMOTION_TTL_S`` seconds or until a promotion
    changes through that store object (its ``promotions_changed``). Files are still checked on every call."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._recent: dict[tuple[str, str], tuple[int, float, Any]] = {}

    def promoted(self, method: str, slot: str) -> Any:
        changed, now = getattr(self.store, "promotions_changed", 0), time.monotonic()
        recent = self._recent.get((method, slot))
        if recent is not None and recent[0] == changed and now < recent[1]:
            return recent[2]
        answer = self.store.promoted(method, slot)
        if len(self._recent) > 1024:  # slots come from visitors: keep the memo small
            self._recent.clear()
        self._recent[(method, slot)] = (changed, now + PROMOTION_TTL_S, answer)
        return answer


class CheckpointLookup:
    """Where a method's checkpoints are: promoted ones in the run store, shipped ones in its assets."""

    def __init__(self, registry: Any, store: Any, assets_root: Path | str) -> None:
        self.registry, self.store, self.assets_root = registry, store, Path(assets_root)
        self._promotions = _RecentPromotions(store) if store is not None else None

    def assets_of(self, method: str) -> Path | None:
        """The shipped assets directory of ``method``."""
        return method_assets_dir(self.registry, self.assets_root, method)

    def path(self, method: str, name: str) -> Path | None:
        """The promoted file of ``method``/``name`` if it exists, else the shipped one, else None.

        A promotion whose file has gone falls back to the shipped checkpoint, so the demo keeps working.
        ``name`` often comes from a visitor (a demo's selector): anything but a plain checkpoint name
        (a path, ``..``, ``~``) is a UserError, so no file outside the method's checkpoints is reached.
        """
        text = str(name)
        if (not text or len(text) > 200 or text in (".", "..") or text.startswith("~")
                or any(c in text for c in "/\\\x00")):
            raise UserError(f"not a checkpoint name: {text[:60]!r}")
        try:
            return resolve_checkpoint(f"{method}/{name}", self._promotions, self.assets_of)
        except FileNotFoundError:
            return shipped_checkpoint(self.assets_of(method), name)

    def resolve(self, ref: str) -> Path:
        """The file of any checkpoint reference (path, ``run:ID[/NAME]``, ``METHOD/NAME``)."""
        return resolve_checkpoint(ref, self.store, self.assets_of)

    def available(self, method: str) -> list[CheckpointInfo]:
        """Every checkpoint of ``method`` a demo may use, by name: promoted ones over shipped ones."""
        found: dict[str, CheckpointInfo] = {}
        assets = self.assets_of(method)
        if assets is not None and assets.is_dir():
            for path in sorted(assets.glob("*.safetensors")):
                found[path.stem] = CheckpointInfo(path.stem, "shipped", path, read_card(path))
        if self.store is not None:
            for (_, slot), artifact in self.store.promotions(method).items():
                path = Path(artifact.path)
                if path.is_file():
                    found[slot] = CheckpointInfo(slot, "promoted", path, read_card(path))
        return [found[name] for name in sorted(found)]


def demo_device(settings: Settings) -> torch.device:
    """The device demos run on: ``AVSTUDIO_DEMO_DEVICE``, whose default ``auto`` follows the studio's
    ``AVSTUDIO_DEVICE``; ``auto`` there too is a CUDA GPU when the server has one, else the CPU (not
    Apple's MPS: demos keep the CPU's answers there). A device this machine lacks falls back to the CPU,
    with a warning, so that a misconfigured server still serves its demos."""
    name = (settings.demo_device or "auto").strip().lower()
    if name == "auto":
        name = (settings.device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from trainer.devices import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        log.warning("demos run on the CPU: %s", exc)
        return torch.device("cpu")


class StudioDemoContext:
    """Implements :class:`app.api.DemoContext` for one method."""

    def __init__(self, method: str, settings: Settings, registry: Any, store: Any = None) -> None:
        self.method = method
        self.device = demo_device(settings)
        self.data_dir = Path(settings.data_dir)
        self.training_enabled = bool(settings.enable_training)
        self._registry = registry
        self._lookup = CheckpointLookup(registry, store, settings.assets_dir)
        assets = self._lookup.assets_of(method)  # the method's own, else the studio's assets/<method>
        self.assets_dir: Path = assets if assets is not None else Path(settings.assets_dir) / method
        self._cache: dict[str, tuple[Path, float, Checkpoint]] = {}
        self._lock = threading.Lock()

    def checkpoint_path(self, name: str) -> Path | None:
        """The file the demo should use for checkpoint ``name``: the promoted one, else the shipped one."""
        return self._lookup.path(self.method, name)

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        """Load :meth:`checkpoint_path` onto the demo device (cached until the file or promotion changes)."""
        path = self.checkpoint_path(name)
        if path is None:
            return None
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[0] == path and cached[1] == mtime:
                return cached[2]
            try:
                checkpoint = load_checkpoint(path, device=self.device)
            except ValueError as exc:  # not safetensors (a pickle included): refused, never unpickled
                raise UserError(f"checkpoint {name!r} cannot be loaded: {exc}") from None
            self._cache[name] = (path, mtime, checkpoint)
            return checkpoint

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every checkpoint the demo may offer (promoted over shipped), by name, with its card."""
        return self._lookup.available(self.method)

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split from the studio's data directory."""
        return self._registry.load_dataset(name, split, self.data_dir, **options)


class StudioCommandContext:
    """Implements :class:`app.api.CommandContext`: settings are read when a command uses them, so the
    global options of ``avstudio`` (``--home``, ``--device``, ...) apply to plugin commands."""

    def __init__(self, registry: Any, settings_factory: Any = Settings) -> None:
        self._registry = registry
        self._settings_factory = settings_factory
        self._store = None

    @property
    def settings(self) -> Settings:
        settings = self._settings_factory()
        settings.ensure_dirs()
        return settings

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def device(self) -> torch.device:
        from trainer.devices import resolve_device

        return resolve_device(self.settings.device)

    def _lookup(self) -> CheckpointLookup:
        settings = self.settings
        if self._store is None or self._store.url != settings.db_url:
            self._store = settings.open_store()
        return CheckpointLookup(self._registry, self._store, settings.assets_dir)

    def load_checkpoint(self, ref: str) -> Checkpoint:
        """Load a checkpoint: a file path, ``run:ID[/NAME]`` or ``METHOD/NAME`` (promoted, else shipped).

        Raises UserError (one line on the CLI) when there is none or the reference is malformed.
        """
        try:
            return load_checkpoint(self._lookup().resolve(ref))
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None

    def checkpoints(self, method: str) -> list[CheckpointInfo]:
        """Every checkpoint ``method``'s demo may use (promoted over shipped)."""
        return self._lookup().available(method)

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split from the studio's data directory."""
        return self._registry.load_dataset(name, split, self.data_dir, **options)
