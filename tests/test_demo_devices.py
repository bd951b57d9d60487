"""Demos run on a CUDA GPU when the server has one (docs/gpu.md): ``AVSTUDIO_DEMO_DEVICE``, whose default
``auto`` follows the studio's ``AVSTUDIO_DEVICE``, and on the GPU every demo answers as on the CPU.

The ``test_cuda_*`` test needs a GPU (it skips without one); ``benchmarks/gpu.py`` runs it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.demo_context import StudioDemoContext, demo_device
from app.plugin_manager import load_registry
from app.settings import ASSETS_DIR, Settings


def _settings(tmp_path: Path, **values: str) -> Settings:
    return Settings(home=tmp_path / "home", db_url=f"sqlite:///{tmp_path / 'runs.db'}", assets_dir=ASSETS_DIR,
                    **values)


def test_the_demo_device_follows_the_studios_device(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a server with a GPU
    assert demo_device(_settings(tmp_path, demo_device="auto", device="auto")) == torch.device("cuda")
    assert demo_device(_settings(tmp_path, demo_device="auto", device="cpu")) == torch.device("cpu")
    assert demo_device(_settings(tmp_path, demo_device="cpu", device="auto")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU server
    assert demo_device(_settings(tmp_path, demo_device="auto", device="auto")) == torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="app.demo_context"):
        assert demo_device(_settings(tmp_path, demo_device="cuda", device="auto")) == torch.device("cpu")
    assert "demos run on the CPU" in caplog.text and "CUDA is not available" in caplog.text


def test_the_default_setting_is_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("AVSTUDIO_DEMO_DEVICE", raising=False)
    monkeypatch.setenv("AVSTUDIO_DEVICE", "cpu")
    settings = Settings(home=tmp_path)
    assert settings.demo_device == "auto" and demo_device(settings) == torch.device("cpu")


def _example(method: str) -> Image.Image:
    path = sorted((ASSETS_DIR / method / "examples").glob("*.png"))[0]
    return Image.open(path).convert("RGB")


def _answers(tmp_path: Path, device: str) -> dict:
    """What every demo answers for its first example image, with its models on ``device``."""
    from plugins.blockdrop.demo import BlockDropDemo
    from plugins.multitask.demo import MultitaskDemo
    from plugins.s3pool.demo import S3PoolDemo
    from plugins.vgan.demo import VganDemo

    settings = _settings(tmp_path / device, demo_device=device)
    registry = load_registry(plugins="")

    def context(method: str) -> StudioDemoContext:
        ctx = StudioDemoContext(method, settings, registry)
        assert ctx.device.type == device
        return ctx

    blockdrop = BlockDropDemo(context("blockdrop"))
    policy = blockdrop.policy_names()[0]
    bd = blockdrop.predict(_example("blockdrop"), policy, latency_repeats=1)
    multitask = MultitaskDemo(context("multitask"))
    vgan = VganDemo(context("vgan"))
    return {
        "blockdrop": {"full": bd["full_top3"], "blockdrop": bd["blockdrop_top3"], "policy": bd["policy"]},
        "s3pool": {name: r["probabilities"] for name, r in S3PoolDemo(context("s3pool")).predict(_example("s3pool")).items()},
        "multitask": multitask.predict(_example("multitask"))["probabilities"],
        "vgan_samples": torch.from_numpy(vgan.samples("vgan", seed=3, count=4)["images"]).float(),
        "vgan_energy": vgan.energy(_example("vgan"), "vgan")["energy"],
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_every_demo_answers_as_on_the_cpu(tmp_path):
    cpu, cuda = _answers(tmp_path, "cpu"), _answers(tmp_path, "cuda")
    assert cuda["blockdrop"]["policy"] == cpu["blockdrop"]["policy"]
    for key in ("full", "blockdrop"):
        assert list(cuda["blockdrop"][key]) == list(cpu["blockdrop"][key])  # the same top-3, in order
        assert list(cuda["blockdrop"][key].values()) == pytest.approx(list(cpu["blockdrop"][key].values()), abs=2e-3)
    for name, probabilities in cpu["s3pool"].items():
        assert cuda["s3pool"][name] == pytest.approx(probabilities, abs=2e-3), name
    assert cuda["multitask"] == pytest.approx(cpu["multitask"], abs=2e-3)
    assert (cuda["vgan_samples"] - cpu["vgan_samples"]).abs().max() <= 3  # uint8 levels
    assert cuda["vgan_energy"] == pytest.approx(cpu["vgan_energy"], rel=1e-3, abs=1e-3)


def test_the_answers_compared_on_a_gpu_are_read_alike_on_the_cpu(tmp_path):
    """The CUDA test's reading of every demo works (so it cannot rot while no GPU runs it)."""
    answers = _answers(tmp_path, "cpu")
    assert len(answers["blockdrop"]["full"]) == 3 and set(answers["s3pool"]) and answers["multitask"]
    assert answers["vgan_samples"].shape[0] == 4 and isinstance(answers["vgan_energy"], float)
