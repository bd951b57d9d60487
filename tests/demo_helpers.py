"""What the plugin demo tests share (not a test module): a fake DemoContext over a folder of checkpoints, the
tab built in a ``gr.Blocks`` and its events by name, noise images and example files, and tiny untrained
checkpoints of BlockDrop, S3Pool and VGAN (multitask's are trained: tests/multitask_studio.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from trainer.checkpoints import (
    Checkpoint,
    CheckpointInfo,
    load_checkpoint,
    module_tensors,
    read_card,
    save_checkpoint,
)


class FakeDemoContext:
    """Implements app.api.DemoContext over a directory of checkpoints (``<assets_dir>/<name>.safetensors``
    beside their JSON cards), on the CPU, training off.

    ``load_checkpoint`` is cached until the file changes, as the studio's is; ``loads`` lists the names it
    read from disk. ``datasets`` maps ``(name, split)`` to what ``dataset`` returns; without it, asking for a
    dataset fails the test (that demo reads none).
    """

    def __init__(self, method: str, assets_dir: Path, *, datasets: Mapping[tuple[str, str], Any] | None = None,
                 data_dir: Path | None = None) -> None:
        self.method = method
        self.device = torch.device("cpu")
        self.assets_dir = Path(assets_dir)
        self.data_dir = Path(data_dir) if data_dir is not None else self.assets_dir / "data"
        self.training_enabled = False
        self.datasets = datasets
        self.loads: list[str] = []
        self._cache: dict[str, tuple[int, Checkpoint]] = {}

    def checkpoint_path(self, name: str) -> Path | None:
        path = self.assets_dir / f"{name}.safetensors"
        return path if path.is_file() else None

    def load_checkpoint(self, name: str) -> Checkpoint | None:
        path = self.checkpoint_path(name)
        if path is None:
            return None
        mtime = path.stat().st_mtime_ns
        if name not in self._cache or self._cache[name][0] != mtime:
            self.loads.append(name)
            self._cache[name] = (mtime, load_checkpoint(path))
        return self._cache[name][1]

    def checkpoints(self) -> list[CheckpointInfo]:
        return [CheckpointInfo(p.stem, "shipped", p, read_card(p))
                for p in sorted(self.assets_dir.glob("*.safetensors"))]

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        if self.datasets is None:
            raise AssertionError(f"the {self.method} demo read dataset {name!r} ({split}); "
                                 "give FakeDemoContext datasets= if it should")
        return self.datasets[(name, split)]


# -- the built tab ---------------------------------------------------------------------------------


def built_tab(build_demo: Callable[[Any], Any], ctx: Any) -> tuple[Any, dict[str, dict]]:
    """``build_demo(ctx)`` inside a ``gr.Blocks``: (the blocks, the components' configs by elem_id)."""
    import gradio as gr

    with gr.Blocks() as blocks:
        build_demo(ctx)
    by_elem = {c["props"]["elem_id"]: c for c in blocks.config["components"] if c["props"].get("elem_id")}
    return blocks, by_elem


def event_fn(blocks: Any, api_name: str) -> Any:
    """The registered function (``.fn`` calls it) of the event named ``api_name``."""
    return next(f for f in blocks.fns.values() if f.api_name == api_name)


# -- images ------------------------------------------------------------------------------------------


def noise_image(seed: int = 0, size: tuple[int, int] = (37, 53)) -> Image.Image:
    """An RGB image of uniform noise, ``size`` = (height, width), the same for the same seed."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def example_file(assets: Path, size: int = 32) -> Path:
    """``assets/examples/0_noise.png``, a noise image: the one example a demo built on ``assets`` lists."""
    examples = Path(assets) / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    noise_image(1, (size, size)).save(examples / "0_noise.png")
    return examples / "0_noise.png"


# -- tiny checkpoints ----------------------------------------------------------------------------------

BLOCKDROP_LABELS = [f"shape{i}" for i in range(10)]


def blockdrop_card(**extra: Any) -> dict[str, Any]:
    return {"depth": 8, "num_classes": 10, "num_blocks": 3, "labels": BLOCKDROP_LABELS, "image_size": [32, 32],
            **extra}


def save_blockdrop_assets(assets: Path) -> Path:
    """A ResNet-8 backbone and two policies over it: ``policy-g1`` keeps only block 1, ``policy-g5`` all 3."""
    from plugins.blockdrop.model import build_policy, build_resnet

    torch.manual_seed(0)
    backbone = build_resnet(8, 10)
    save_checkpoint(assets / "backbone.safetensors", module_tensors(backbone, "backbone"),
                    blockdrop_card(kind="backbone"))
    for gamma, bias in ((1, -0.2), (5, 3.0)):
        policy = build_policy(3)
        torch.nn.init.constant_(policy.fc.bias, bias)
        torch.nn.init.zeros_(policy.fc.weight)
        policy.fc.bias.data[0] = 3.0  # block 1 always kept
        save_checkpoint(assets / f"policy-g{gamma}.safetensors",
                        {**module_tensors(backbone, "backbone"), **module_tensors(policy, "policy")},
                        blockdrop_card(kind="finetune", gamma=gamma, free_blocks=3, policy_input_size=32))
    return assets


S3POOL_LABELS = tuple(f"shape{i}" for i in range(10))
S3POOL_REPORT = {
    "benchmark": "s3pool",
    "figures": {
        "test_error": {"max": {"1000": 0.30, "250": 0.50}, "s3pool": {"250": 0.40, "1000": 0.25}},
        "test_error_std": {"max": {"250": 0.02, "1000": 0.01}, "s3pool": {"250": 0.03, "1000": 0.015}},
        "grid_sweep": {"2-2": {"train_error": 0.0, "test_error": 0.45}, "16-8": {"train_error": 0.1, "test_error": 0.4}},
        "ensemble": {"deterministic": 0.4, "uniform": 0.45, "ensemble_2": 0.41},
        "layer_overhead": 1.3,
    },
}


def save_s3pool_net(assets: Path, downsample: str) -> None:
    from plugins.s3pool.model import NetConfig, build_net

    config = NetConfig(depth=8, width=4, downsample=downsample, labels=S3POOL_LABELS)
    net = build_net(config)
    save_checkpoint(assets / f"{config.name}.safetensors", module_tensors(net, "net"), {"net": asdict(config)})


def save_s3pool_assets(assets: Path) -> Path:
    """The max-pool and S3Pool nets (depth 8, width 4) and a benchmark report (:data:`S3POOL_REPORT`)."""
    torch.manual_seed(0)
    assets.mkdir(parents=True, exist_ok=True)
    save_s3pool_net(assets, "max")
    save_s3pool_net(assets, "s3pool")
    (assets / "benchmark-report.json").write_text(json.dumps(S3POOL_REPORT))
    return assets


VGAN_LABELS = ("circle", "square")


def save_vgan_model(assets: Path, kind: str, seed: int, with_energies: bool = True) -> Any:
    """A tiny ``kind`` model (vgan, gan or vcd) as ``assets/<kind>.safetensors``; its GanConfig."""
    from plugins.vgan.model import GanConfig, build_models

    torch.manual_seed(seed)
    cfg = GanConfig(kind=kind, width=4, hidden=16, experts=1 if kind == "gan" else 8, latent_dim=8,
                    gen_width=4, labels=VGAN_LABELS)
    energy_net, generator = build_models(cfg)
    rng = np.random.default_rng(seed)
    metadata: dict[str, Any] = {"net": asdict(cfg), "kind": kind, "dataset": "shapes", "config": {"steps": 10},
                                "budget": {"steps": 10, "batch_size": 8, "k": 1}, "metrics": {}}
    if with_energies:
        lo = 0.0 if kind == "gan" else 2.0
        metadata["energies"] = {"real": [round(float(v), 4) for v in lo + rng.gamma(2.0, 0.5, 512)],
                                "generated": [round(float(v), 4) for v in lo + 1 + rng.gamma(2.0, 0.5, 512)]}
    save_checkpoint(assets / f"{kind}.safetensors",
                    {**module_tensors(energy_net, "energy"), **module_tensors(generator, "generator")}, metadata)
    return cfg


def save_vgan_assets(assets: Path) -> Path:
    """The VGAN, GAN and VCD models, with energy histograms on their cards."""
    assets.mkdir(parents=True, exist_ok=True)
    for seed, kind in enumerate(("vgan", "gan", "vcd")):
        save_vgan_model(assets, kind, seed)
    return assets
