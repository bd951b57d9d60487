"""Training data for the BlockDrop recipes: whole splits as uint8 tensors, augmented on the device."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from app.api import UserError


def load_split(ctx: Any, name: str, split: str, num: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and int64 targets of a dataset split (the first ``num`` when num > 0)."""
    data = ctx.dataset(name, split)
    if hasattr(data, "images"):
        images, targets = data.images, data.targets
    else:  # any torch Dataset of (float image, target)
        items = [data[i] for i in range(len(data) if num <= 0 else min(num, len(data)))]
        images = (torch.stack([x for x, _ in items]) * 255).round().to(torch.uint8)
        targets = torch.tensor([int(y) for _, y in items])
    if num > 0:
        images, targets = images[:num], targets[:num]
    return images, targets.long()


def labels_of(ctx: Any, name: str) -> list[str]:
    """The class names of a dataset (from its train split; [] when it has none)."""
    return list(getattr(ctx.dataset(name, "train"), "labels", []))


def eval_split(ctx: Any, name: str) -> str:
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
    x = images.float().div_(255.0)
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    x = _crop(padded, rows, cols)
    if flip:
        flipped = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c = padded.shape[:2]
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    channel = torch.arange(c, device=padded.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
