"""What the benchmarks that compare checkpoints share (benchmarks/multitask.py, benchmarks/vgan.py): reading
the checkpoints' cards, the like-with-like error and its "X differ" lines, and training one recipe through
the studio's worker path in a scratch home with the benchmark's data directory."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class BudgetMismatch(ValueError):
    """The checkpoints were not trained at the same budget (or are not what their names say), so they
    cannot be compared."""


def load_cards(paths: Mapping[str, Path], part: str = "metadata") -> dict[str, dict[str, Any]]:
    """Each checkpoint's card (read through ``app.api.training.load_checkpoint``): what the recipe stored
    (``part="metadata"``) or the studio's record of the run (``part="studio"``: commit, created, metrics)."""
    from app.api.training import load_checkpoint

    return {name: dict(getattr(load_checkpoint(path), part)) for name, path in paths.items()}


def differences(what: str, values: Mapping[str, Any]) -> str | None:
    """``"WHAT differ: name value; ..."`` (in ``values``' order) when the values are not all equal (as JSON),
    else None."""
    if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
        return f"{what} differ: " + "; ".join(f"{name} {value!r}" for name, value in values.items())
    return None


@contextmanager
def studio_data(data_dir: str) -> Iterator[None]:
    """The studio's data directory (``AVSTUDIO_DATA``) is ``data_dir`` for the block; afterwards it is as it
    was (unset again when it was unset), so inline jobs leave this process's environment alone."""
    previous = os.environ.get("AVSTUDIO_DATA")
    os.environ["AVSTUDIO_DATA"] = data_dir
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("AVSTUDIO_DATA", None)
        else:
            os.environ["AVSTUDIO_DATA"] = previous


def train_in_scratch_home(plugin: str, method: str, recipe: str, config: Mapping[str, Any], home: str,
                          name: str) -> dict[str, Path]:
    """Train ``method``'s ``recipe`` with ``config`` through the studio's worker path, in a test studio on
    ``home`` with the built-in plugin module ``plugin``; the run's checkpoints (name → path). RuntimeError
    ``training NAME failed: STATUS: ERROR`` when the run did not succeed."""
    from app.testing import open_test_studio

    with open_test_studio(home, [importlib.import_module(plugin)]) as studio:
        result = studio.train(method, recipe, dict(config))
    if result.status != "succeeded":
        raise RuntimeError(f"training {name} failed: {result.status}: {result.error}")
    return dict(result.checkpoints)
