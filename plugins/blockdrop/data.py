"""Training data for the BlockDrop recipes: whole splits as uint8 tensors, augmented on the device."""

from __future__ import annotations

import torch

from app.api import TrainContext, UserError
from app.api.training import random_crop_flip, split_tensors


def load_split(ctx: TrainContext, name: str, split: str, num: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and int64 targets of a dataset split (the first ``num`` when num > 0)."""
    return split_tensors(ctx.dataset(name, split), num)


def labels_of(ctx: TrainContext, name: str) -> list[str]:
    """The class names of a dataset (from its train split; [] when it has none)."""
    return list(getattr(ctx.dataset(name, "train"), "labels", []))


def eval_split(ctx: TrainContext, name: str) -> str:
    """The split models are selected on: ``val``, never ``test`` (that one is the benchmark's).

    Raises a UserError when the dataset has no ``val`` split that loads."""
    try:
        ctx.dataset(name, "val")
    except Exception as exc:
        raise UserError(
            f"dataset {name!r} has no 'val' split to select models on ({exc}); the recipes never fall back "
            f"to 'test', which is kept for the final benchmark: add a 'val' split to the dataset "
            f"(DatasetSpec.splits) or train on a dataset that has one") from exc
    return "val"


def augment(images: torch.Tensor, flip: bool, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and optional horizontal flip of a uint8 N×C×H×W batch → float [0, 1]."""
    return random_crop_flip(images, flip, pad)
