"""What a demo rebuilds from its checkpoints, built on first use and kept until a checkpoint changes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from trainer.errors import UserError

T = TypeVar("T")
Stamp = tuple[str, int, int]  # (resolved file, modification time in ns, size in bytes)


def missing_checkpoint(name: str) -> str:
    """The default message for a checkpoint that is neither promoted nor shipped."""
    return (f"No `{name}` checkpoint yet: train one, then promote the run's `{name}` checkpoint in the Runs tab "
            f"(`avstudio runs promote RUN_ID`) or place `{name}.safetensors` and its `{name}.json` card in the "
            "method's assets.")


class ModelCache(Generic[T]):
    """Networks (or anything else) a demo builds from its checkpoints: built on the first request, then
    kept until a checkpoint they were built from changes.

    An entry is keyed on the checkpoint names it was built from and, for each name, on the file the
    DemoContext resolves it to now (``ctx.checkpoint_path``: the promoted file, else the shipped one),
    that file's modification time (ns) and its size. Promoting another run's checkpoint or replacing
    the file rebuilds the entry on the next request; anything else returns the same object. One cache
    holds one kind of thing (one ``build`` per set of names). Builds run under a lock: concurrent
    first requests (Gradio answers in threads) build once. Nothing is loaded before the first ``get``::

        nets = ModelCache(ctx, missing=how_to_train)
        net = nets.get("resnet-max", build=lambda checkpoint: net_from_checkpoint(checkpoint).eval())
    """

    def __init__(self, ctx: Any, missing: Callable[[str], str] = missing_checkpoint) -> None:
        self.ctx = ctx
        self.missing = missing
        self._entries: dict[tuple[str, ...], tuple[tuple[Stamp, ...], T]] = {}
        self._lock = threading.Lock()

    def stamp(self, name: str) -> Stamp | None:
        """What an entry built from checkpoint ``name`` is keyed on; None when there is no such checkpoint."""
        path = self.ctx.checkpoint_path(name)
        if path is None:
            return None
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        return str(path), stat.st_mtime_ns, stat.st_size

    def get(self, *names: str, build: Callable[..., T]) -> T:
        """What ``build(checkpoint, ...)`` made of checkpoints ``names`` (loaded with ``ctx.load_checkpoint``,
        in that order), rebuilt only when one of their files changed. A missing checkpoint raises a
        UserError with ``missing(name)`` (the first missing name); errors of ``build`` propagate."""
        if not names:
            raise ValueError("ModelCache.get needs at least one checkpoint name")
        stamps = []
        for name in names:  # outside the lock: concurrent requests look up at once and wait only for builds
            stamp = self.stamp(name)
            if stamp is None:
                raise UserError(self.missing(name))
            stamps.append(stamp)
        with self._lock:
            cached = self._entries.get(names)
            if cached is not None and cached[0] == tuple(stamps):
                return cached[1]
            checkpoints = []
            for name in names:
                checkpoint = self.ctx.load_checkpoint(name)
                if checkpoint is None:  # removed between the look-up and the load
                    raise UserError(self.missing(name))
                checkpoints.append(checkpoint)
            value = build(*checkpoints)
            self._entries[names] = (tuple(stamps), value)
            return value

    def clear(self) -> None:
        """Forget every entry (the next request rebuilds)."""
        with self._lock:
            self._entries.clear()
