"""StudioDemoContext: promoted-then-shipped checkpoint lookup, the load cache, datasets via the registry."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pluggy
import pytest
import torch

from app import api, demo_context
from app.demo_context import StudioDemoContext
from app.plugin_manager import Registry
from app.settings import Settings
from trainer.checkpoints import save_checkpoint
from trainer.store import RunStore


@pytest.fixture
def settings(avstudio_home, tmp_path) -> Settings:
    return Settings(home=avstudio_home, assets_dir=tmp_path / "assets", enable_training=True, demo_device="cpu")


@pytest.fixture
def registry() -> Registry:
    reg = Registry(pm=pluggy.PluginManager(api.PROJECT_NAME))
    reg.datasets["tiny"] = api.DatasetSpec(
        name="tiny", title="Tiny", task="classification", description="three numbers",
        load=lambda split, root, **opts: {"split": split, "root": root, **opts}, labels=["a", "b"])
    return reg


def _save(path, value: float) -> None:
    save_checkpoint(path, {"w": torch.full((2,), value)}, {"value": value})


def test_context_fields_follow_settings(settings, registry, store):
    ctx = StudioDemoContext("counter", settings, registry, store)
    assert isinstance(ctx, api.DemoContext)
    assert ctx.method == "counter" and ctx.device == torch.device("cpu")
    assert ctx.assets_dir == settings.assets_dir / "counter" and ctx.data_dir == settings.data_dir
    assert ctx.training_enabled is True
    assert StudioDemoContext("counter", Settings(home=settings.home, enable_training=False), registry,
                             store).training_enabled is False


def test_checkpoint_lookup_promoted_then_shipped_then_none(settings, registry, store, tmp_path):
    ctx = StudioDemoContext("counter", settings, registry, store)
    assert ctx.checkpoint_path("model") is None and ctx.load_checkpoint("model") is None

    shipped = settings.assets_dir / "counter" / "model.safetensors"
    _save(shipped, 1.0)
    assert ctx.checkpoint_path("model") == shipped
    assert ctx.load_checkpoint("model").tensors["w"].tolist() == [1.0, 1.0]

    # Promoting a run's checkpoint changes what the same context returns: no restart needed.
    trained = tmp_path / "runs" / "1" / "model.safetensors"
    _save(trained, 2.0)
    run_id = store.enqueue("counter", "count", {})
    store.promote("counter", "model", store.add_artifact(run_id, "model", "checkpoint", str(trained)))
    assert ctx.checkpoint_path("model") == trained
    checkpoint = ctx.load_checkpoint("model")
    assert checkpoint.tensors["w"].tolist() == [2.0, 2.0] and checkpoint.card == {"value": 2.0}
    assert ctx.checkpoint_path("other-slot") is None

    # A promoted file that disappeared falls back to the shipped one.
    trained.unlink()
    assert ctx.checkpoint_path("model") == shipped


def test_promotions_are_asked_of_the_store_once_a_moment(settings, registry, store, store_url, tmp_path,
                                                          monkeypatch):
    """Requests do not each query the run store; another process's promotion shows within PROMOTION_TTL_S."""
    now = [1000.0]  # the look-up's clock, moved by hand: no test timing depends on the machine's speed
    monkeypatch.setattr(demo_context, "time", SimpleNamespace(monotonic=lambda: now[0]))
    asked = []
    promoted = store.promoted
    monkeypatch.setattr(store, "promoted", lambda *a: asked.append(a) or promoted(*a))
    ctx = StudioDemoContext("counter", settings, registry, store)
    shipped = settings.assets_dir / "counter" / "model.safetensors"
    _save(shipped, 1.0)
    assert [ctx.checkpoint_path("model") for _ in range(5)] == [shipped] * 5 and len(asked) == 1
    trained = tmp_path / "runs" / "1" / "model.safetensors"
    _save(trained, 2.0)
    run_id = store.enqueue("counter", "count", {})
    artifact = store.add_artifact(run_id, "model", "checkpoint", str(trained))
    other = RunStore(store_url)  # another process (`avstudio runs promote`)
    try:
        other.promote("counter", "model", artifact)
        now[0] += demo_context.PROMOTION_TTL_S / 2
        assert ctx.checkpoint_path("model") == shipped  # not yet asked again ...
        now[0] += demo_context.PROMOTION_TTL_S
        assert ctx.checkpoint_path("model") == trained and len(asked) == 2  # ... within the moment
        other.unpromote("counter", "model")
    finally:
        other.close()
    store.promote("counter", "model", artifact)  # through this store (the Runs tab): seen at once
    assert ctx.checkpoint_path("model") == trained and len(asked) == 3
    store.unpromote("counter", "model")
    assert ctx.checkpoint_path("model") == shipped


def test_load_checkpoint_is_cached_until_the_file_changes(settings, registry, store):
    ctx = StudioDemoContext("counter", settings, registry, store)
    shipped = settings.assets_dir / "counter" / "model.safetensors"
    _save(shipped, 1.0)
    first = ctx.load_checkpoint("model")
    assert ctx.load_checkpoint("model") is first
    _save(shipped, 3.0)
    stamp = shipped.stat().st_mtime + 5  # make the change visible on coarse-mtime file systems
    os.utime(shipped, (stamp, stamp))
    again = ctx.load_checkpoint("model")
    assert again is not first and again.tensors["w"].tolist() == [3.0, 3.0]


def test_dataset_goes_through_the_registry(settings, registry):
    ctx = StudioDemoContext("counter", settings, registry)
    assert ctx.dataset("tiny", "val", size=8) == {"split": "val", "root": settings.data_dir, "size": 8}
    with pytest.raises(api.UserError, match="valid datasets: tiny"):
        ctx.dataset("nope", "train")
