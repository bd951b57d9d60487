"""The DemoContext the studio hands to a method's ``build_demo(ctx)``.

Checkpoints are looked up on every call (promoted first, then shipped), so promoting a run's
checkpoint in the Runs tab changes what the demo uses without a restart; loaded checkpoints are
cached by path and modification time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from app.settings import Settings
from trainer.checkpoints import Checkpoint, load_checkpoint, shipped_checkpoint
from trainer.context import resolve_checkpoint


def resolve_demo_checkpoint(method: str, name: str, store: Any, assets_dir: Path) -> Path | None:
    """The promoted artifact of ``(method, slot=name)`` if its file exists, else the shipped one, else None.

    ``assets_dir`` is the root of the shipped assets (``assets/``, holding ``<method>/<name>.safetensors``).
    A promotion whose file has gone falls back to the shipped checkpoint, so the demo keeps working.
    """
    try:
        return resolve_checkpoint(f"{method}/{name}", store, assets_dir)
    except FileNotFoundError:
        return shipped_checkpoint(assets_dir, method, name)


class StudioDemoContext:
    """Implements :class:`app.api.DemoContext` for one method."""

    def __init__(self, method: str, settings: Settings, registry: Any, store: Any = None) -> None:
        self.method = method
        self.device = torch.device(settings.demo_device or "cpu")
        self.data_dir = Path(settings.data_dir)
        self.assets_dir = Path(settings.assets_dir) / method
        self.training_enabled = bool(settings.enable_training)
        self._assets_root = Path(settings.assets_dir)
        self._registry = registry
        self._store = store
        self._cache: dict[str, tuple[Path, float, Checkpoint]] = {}
        self._lock = threading.Lock()

    def checkpoint_path(self, name: str) -> Path | None:
        """The file the demo should use for checkpoint ``name``: the promoted one, else the shipped one."""
        return resolve_demo_checkpoint(self.method, name, self._store, self._assets_root)

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
            checkpoint = load_checkpoint(path, device=self.device)
            self._cache[name] = (path, mtime, checkpoint)
            return checkpoint

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        """Load a registered dataset split from the studio's data directory."""
        return self._registry.load_dataset(name, split, self.data_dir, **options)
