"""Shared fixtures: an isolated AVSTUDIO_HOME and a run store on a temporary SQLite file.

Keep this file general; fixtures that only one test file needs belong in that file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.store import RunStore


@pytest.fixture
def avstudio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh studio home; AVSTUDIO_HOME points at it and no other AVSTUDIO_* setting leaks in."""
    home = tmp_path / "avstudio-home"
    home.mkdir()
    for name in ("AVSTUDIO_DB_URL", "AVSTUDIO_DATA", "AVSTUDIO_PLUGINS_DIR", "AVSTUDIO_EXTRA_PLUGINS",
                 "AVSTUDIO_ENABLE_TRAINING", "AVSTUDIO_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AVSTUDIO_HOME", str(home))
    return home


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """The URL of a not-yet-created SQLite run store in a temporary directory."""
    return f"sqlite:///{tmp_path / 'db' / 'runs.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[RunStore]:
    """An open run store on a temporary SQLite file (migrated to head)."""
    opened = RunStore(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one CPU thread for the test (tiny models train faster and repeatably so on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
