"""Generated datasets cached on disk as ``.npz`` (numpy arrays only: loading never runs code)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainer.files import atomic_write

Arrays = dict[str, np.ndarray]


def save_arrays(path: Path, arrays: Arrays) -> Path:
    """Write ``arrays`` to ``path`` atomically (write beside it, then rename)."""
    return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def load_arrays(path: Path) -> Arrays:
    """Read an ``.npz`` written by :func:`save_arrays` (object arrays refused)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def cached_splits(directory: Path, key: str, split: str, splits: tuple[str, ...],
                  generate: Callable[[str], Arrays]) -> Arrays:
    """The arrays of ``split``; on a cache miss every split is generated and written first.

    Files are ``directory/<key>_<split>.npz``; ``generate(split)`` must be deterministic.
    """
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(splits)}")
    path = directory / f"{key}_{split}.npz"
    if not path.exists():
        for name in splits:
            target = directory / f"{key}_{name}.npz"
            if not target.exists():
                save_arrays(target, generate(name))
    return load_arrays(path)
