"""Whole splits as tensors and augmentation on the device: what image recipes share.

Built-in datasets keep a split as uint8 tensors (``ImageTensorDataset``); training from them on the
device, with the crop and flip done there too, is many times faster on a CPU than a DataLoader.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def split_tensors(dataset: Any, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N×C×H×W) and int64 targets of a classification split (its first ``limit`` when > 0).

    Uses the dataset's ``images`` / ``targets`` tensors when it has them, else reads its items.
    """
    if hasattr(dataset, "images"):
        images, targets = dataset.images, dataset.targets
    else:  # any torch Dataset of (float image in [0, 1], class index)
        items = [dataset[i] for i in range(len(dataset) if limit <= 0 else min(limit, len(dataset)))]
        images = (torch.stack([x for x, _ in items]) * 255).round().to(torch.uint8)
        targets = torch.tensor([int(y) for _, y in items])
    if limit > 0:
        images, targets = images[:limit], targets[:limit]
    return images, targets.long()


def random_crop_flip(images: torch.Tensor, flip: bool = True, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``, per image) and optional horizontal flip (per image) of a uint8
    N×C×H×W batch, on its device; returns floats in [0, 1]."""
    x = images.float().div_(255.0)
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
        rows = (dy + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w)
        cols = (dx + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if flip:
        flipped = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x
