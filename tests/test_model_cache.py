"""app.api.ModelCache: a demo's networks are built once per checkpoint file and rebuilt when it changes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from app.api import UserError
from app.api.demo import ModelCache
from app.api.training import load_checkpoint, save_checkpoint


class DirectoryContext:
    """The part of app.api.DemoContext a ModelCache uses, over ``<dir>/<name>.safetensors``; ``redirect``
    points a name at another file (as promoting a run's checkpoint does). Counts the loads."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.redirect: dict[str, Path] = {}
        self.loads: list[str] = []

    def checkpoint_path(self, name: str) -> Path | None:
        path = self.redirect.get(name, self.directory / f"{name}.safetensors")
        return path if path.is_file() else None

    def load_checkpoint(self, name: str):
        path = self.checkpoint_path(name)
        if path is None:
            return None
        self.loads.append(name)
        return load_checkpoint(path)


def _save(path: Path, value: float) -> Path:
    save_checkpoint(path, {"weight": torch.full((2,), value)}, {"value": value})
    return path


def _touch_later(path: Path) -> None:
    """Make sure the modification time moves even on a coarse-grained file system."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


class Builder:
    """A build function that records its calls and returns a fresh object holding the weight's value."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *checkpoints) -> dict:
        self.calls += 1
        return {"values": [float(c.tensors["weight"][0]) for c in checkpoints]}


@pytest.fixture
def ctx(tmp_path):
    _save(tmp_path / "net.safetensors", 1.0)
    _save(tmp_path / "policy.safetensors", 2.0)
    return DirectoryContext(tmp_path)


def test_builds_once_and_loads_nothing_before_the_first_request(ctx):
    build = Builder()
    cache = ModelCache(ctx)
    assert ctx.loads == [] and build.calls == 0
    first = cache.get("net", build=build)
    assert first == {"values": [1.0]}
    assert all(cache.get("net", build=build) is first for _ in range(3))
    assert build.calls == 1 and ctx.loads == ["net"]


def test_rebuilds_after_the_file_changes_then_keeps_the_new_one(ctx, tmp_path):
    build = Builder()
    cache = ModelCache(ctx)
    first = cache.get("net", build=build)
    _touch_later(_save(tmp_path / "net.safetensors", 5.0))
    second = cache.get("net", build=build)
    assert second is not first and second == {"values": [5.0]}
    assert cache.get("net", build=build) is second and build.calls == 2


def test_a_promoted_file_elsewhere_rebuilds_and_unpromoting_rebuilds_again(ctx, tmp_path):
    build = Builder()
    cache = ModelCache(ctx)
    assert cache.get("net", build=build) == {"values": [1.0]}
    ctx.redirect["net"] = _save(tmp_path / "run-7-net.safetensors", 7.0)
    assert cache.get("net", build=build) == {"values": [7.0]}
    del ctx.redirect["net"]
    assert cache.get("net", build=build) == {"values": [1.0]} and build.calls == 3


def test_an_entry_of_several_checkpoints_is_rebuilt_when_any_of_them_changes(ctx, tmp_path):
    build = Builder()
    cache = ModelCache(ctx)
    both = cache.get("net", "policy", build=build)
    assert both == {"values": [1.0, 2.0]}  # the checkpoints reach build in the order asked for
    assert cache.get("net", "policy", build=build) is both
    _touch_later(_save(tmp_path / "policy.safetensors", 3.0))
    assert cache.get("net", "policy", build=build) == {"values": [1.0, 3.0]} and build.calls == 2
    assert cache.get("policy", build=build) == {"values": [3.0]}  # another set of names: its own entry


def test_a_missing_checkpoint_is_a_user_error_with_the_given_message_and_builds_nothing(ctx, tmp_path):
    build = Builder()
    cache = ModelCache(ctx, missing=lambda name: f"train `{name}` first")
    with pytest.raises(UserError, match=r"^train `ghost` first$"):
        cache.get("ghost", build=build)
    with pytest.raises(UserError, match=r"^train `ghost` first$"):
        cache.get("net", "ghost", build=build)
    assert build.calls == 0 and ctx.loads == []
    # the default message names the checkpoint and says how to get one
    with pytest.raises(UserError) as info:
        ModelCache(ctx).get("ghost", build=build)
    message = str(info.value)
    assert "`ghost`" in message and "avstudio runs promote" in message and "ghost.safetensors" in message
    # a checkpoint that was there and is removed: a message again, not the stale network
    cache.get("net", build=build)
    (tmp_path / "net.safetensors").unlink()
    with pytest.raises(UserError, match="train `net` first"):
        cache.get("net", build=build)


def test_a_failed_build_is_not_kept(ctx):
    cache = ModelCache(ctx)
    attempts = []

    def failing(checkpoint):
        attempts.append(1)
        raise UserError("not a network of this plugin")

    for _ in range(2):
        with pytest.raises(UserError, match="not a network"):
            cache.get("net", build=failing)
    assert len(attempts) == 2
    assert cache.get("net", build=Builder()) == {"values": [1.0]}


def test_concurrent_first_requests_build_once(ctx):
    build = Builder()
    cache = ModelCache(ctx)

    def slow_build(checkpoint):
        time.sleep(0.05)
        return build(checkpoint)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("net", build=slow_build)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert build.calls == 1 and len(results) == 4 and all(r is results[0] for r in results)


def test_clear_forgets_every_entry(ctx):
    build = Builder()
    cache = ModelCache(ctx)
    first = cache.get("net", build=build)
    cache.clear()
    assert cache.get("net", build=build) is not first and build.calls == 2


def test_at_least_one_name_is_needed(ctx):
    with pytest.raises(ValueError, match="at least one checkpoint name"):
        ModelCache(ctx).get(build=Builder())
