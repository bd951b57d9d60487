"""Shared fixtures: an isolated AVSTUDIO_HOME and a run store on a temporary SQLite file.

Keep this file general; fixtures that only one test file needs belong in that file. Helpers that several
test files share live in plain modules beside them (demo_helpers.py, trajectories.py, ...): a test module
never imports another test module (test_test_modules.py checks).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import pg_admin_url, pg_url  # noqa: F401  (fixtures, for on_postgres_too)
from trainer.store import RunStore

SEED = 0


@pytest.fixture(autouse=True)
def seed_generators() -> None:
    """Every test starts from the same random state (Python's random, numpy's global generator, torch's on
    every device), so a test that draws without seeding repeats exactly, alone or anywhere in the suite."""
    import numpy as np
    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)


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
def store_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of a not-yet-created SQLite run store in a temporary directory; for a test marked
    ``on_postgres_too`` (tests/postgres_server.py), in its "postgres" case, a new database on a PostgreSQL server."""
    if getattr(request, "param", "sqlite") == "postgres":
        return request.getfixturevalue("pg_url")
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


@pytest.fixture(scope="session")
def multitask_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A studio with tiny multitask models trained once for the session (tests/multitask_studio.py): the
    multitask demo tests and the example-click test of every plugin's demo use it."""
    from tests.multitask_studio import trained_multitask_studio

    with trained_multitask_studio(tmp_path_factory.mktemp("multitask-demo")) as studio:
        yield studio
