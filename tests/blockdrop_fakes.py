"""A tiny in-process TrainContext for the BlockDrop tests (and for running the recipes without the
worker: ``python -m tests.blockdrop_fakes OUT_DIR [--device cuda] [key=value ...]``); the demo tests' fake
DemoContext is tests/demo_helpers.py's."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoints import (
    Checkpoint,
    load_checkpoint,
    make_card,
    save_checkpoint,
)
from trainer.datasets.tensor_dataset import ImageTensorDataset


def random_dataset(n: int, num_classes: int = 10, size: int = 32, seed: int = 0) -> ImageTensorDataset:
    """Random images whose class is readable from the mean colour (so a tiny net can learn something)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=g)
    base = (targets.float() / max(num_classes - 1, 1) * 200 + 20).view(n, 1, 1, 1)
    noise = torch.randint(-20, 20, (n, 3, size, size), generator=g).float()
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    difficulty = torch.rand(n, generator=g)
    return ImageTensorDataset(images, targets, [f"c{i}" for i in range(num_classes)], "classification",
                              difficulty=difficulty, name="random")


class _Bar:
    def __init__(self) -> None:
        self.count = 0

    def update(self, n: int = 1) -> None:
        self.count += n

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeTrainContext:
    """Implements app.api.TrainContext in memory; checkpoints land in ``run_dir``.

    ``refs`` maps checkpoint refs (``blockdrop/backbone``) to files; a ref ``blockdrop/NAME`` not in
    ``refs`` falls back to ``run_dir/NAME.safetensors``. Cards are written as the studio writes them
    (format 2: ``studio`` + ``metadata``). ``resuming=True`` makes ``resume_checkpoint`` and
    ``resume_state`` return what this run saved before. ``stop_after`` batches → should_stop.
    """

    def __init__(self, root: Path, device: str = "cpu", datasets: dict | None = None,
                 refs: dict[str, Path] | None = None, stop_after: int | None = None) -> None:
        self.run_id = 1
        self.device = torch.device(device)
        self.data_dir = Path(root) / "data"
        self.run_dir = Path(root) / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.datasets = datasets
        self.refs = dict(refs or {})
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.saved: dict[str, Path] = {}
        self.resuming = False
        self.stop_after = stop_after
        self.stop_calls = 0
        self.states_saved = 0
        self.bars: list[_Bar] = []

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        if self.datasets is not None:
            if (name, split) not in self.datasets:
                raise ValueError(f"no split {split!r}")
            return self.datasets[(name, split)]
        from app.plugin_manager import load_registry
        return load_registry().load_dataset(name, split, self.data_dir, **options)

    def log_metrics(self, step: int, **values: float) -> None:
        self.metrics.append((step, dict(values)))

    def save_checkpoint(self, name: str, tensors: Any, metadata: Any = None) -> Path:
        card = make_card({"method": "blockdrop", "run_id": self.run_id, "checkpoint": name}, metadata)
        path = save_checkpoint(self.run_dir / f"{name}.safetensors", tensors, card)
        self.saved[name] = path
        return path

    def load_checkpoint(self, ref: str) -> Checkpoint:
        if ref in self.refs:
            return load_checkpoint(self.refs[ref], self.device)
        if Path(ref).is_file():
            return load_checkpoint(ref, self.device)
        return load_checkpoint(self.run_dir / f"{ref.split('/')[-1]}.safetensors", self.device)

    def resume_checkpoint(self, name: str | None = None) -> Checkpoint | None:
        if not self.resuming or name not in self.saved:
            return None
        return load_checkpoint(self.saved[name], self.device)

    def save_state(self, tensors: Any, metadata: Any = None) -> Path:
        self.states_saved += 1
        return save_checkpoint(self.run_dir / "resume-state.safetensors", tensors,
                               make_card({"run_id": self.run_id}, metadata))

    def resume_state(self) -> Checkpoint | None:
        path = self.run_dir / "resume-state.safetensors"
        return load_checkpoint(path) if self.resuming and path.is_file() else None

    def should_stop(self) -> bool:
        self.stop_calls += 1
        return self.stop_after is not None and self.stop_calls > self.stop_after

    def progress(self, total: int, desc: str = "") -> _Bar:
        bar = _Bar()
        self.bars.append(bar)
        return bar


def run_pipeline(out: Path, device: str, overrides: dict[str, dict[str, str]], gammas: list[float]) -> None:
    """backbone → policy → finetune for each γ, printing each epoch's metrics and timings."""
    from app.api import make_config
    from plugins.blockdrop import recipes

    ctx = FakeTrainContext(out, device)
    steps = [("backbone", recipes.BackboneConfig, recipes.train_backbone, overrides.get("backbone", {})),
             ("policy", recipes.PolicyConfig, recipes.train_policy, overrides.get("policy", {}))]
    for gamma in gammas:
        steps.append(("finetune", recipes.FinetuneConfig, recipes.train_finetune,
                      {**overrides.get("finetune", {}), "gamma": gamma}))
    for name, cls, train, values in steps:
        start, logged = time.time(), len(ctx.metrics)
        final = train(make_config(cls, values), ctx)
        for step, m in ctx.metrics[logged:]:
            print(name, step, {k: round(v, 4) for k, v in m.items()}, flush=True)
        print(f"== {name} {values} done in {time.time() - start:.1f}s: {final}", flush=True)


if __name__ == "__main__":
    out_dir, *rest = sys.argv[1:]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    over: dict[str, dict[str, str]] = {}
    gammas = [2.0, 10.0]
    for item in rest:
        key, _, value = item.partition("=")
        if key == "gammas":
            gammas = [float(v) for v in value.split(",")]
        else:
            recipe, _, field = key.partition(".")
            over.setdefault(recipe, {})[field] = value
    with contextlib.suppress(KeyboardInterrupt):
        run_pipeline(Path(out_dir), dev, over, gammas)
