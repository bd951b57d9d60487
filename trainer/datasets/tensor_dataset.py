"""A whole dataset split held in memory as tensors: uint8 images, targets, optional difficulty."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset):
    """Images as one uint8 N×C×H×W tensor plus their targets; items are ``(float image, target)``.

    ``targets`` is int64 N (``task="classification"``) or float32 N×A of 0/1 (``task="multilabel"``).
    ``difficulty`` (float32 N in [0, 1]) is the ground-truth difficulty where the generator defines one.
    ``labels`` names the classes or attributes in target order. ``meta`` holds extra per-sample
    tensors (e.g. the nuisances that produced each image), for analysis.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, labels: list[str], task: str,
                 difficulty: torch.Tensor | None = None, meta: dict[str, torch.Tensor] | None = None,
                 name: str = "") -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if task not in ("classification", "multilabel"):
            raise ValueError(f"task must be 'classification' or 'multilabel', got {task!r}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        if difficulty is not None and len(difficulty) != len(images):
            raise ValueError(f"{len(images)} images but {len(difficulty)} difficulty values")
        self.images = images
        self.targets = targets.long() if task == "classification" else targets.float()
        self.labels = list(labels)
        self.task = task
        self.difficulty = None if difficulty is None else difficulty.float()
        self.meta = dict(meta or {})
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.images[index].float().div_(255.0), self.targets[index]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        """Number of classes (classification) or attributes (multilabel)."""
        return len(self.labels)

    def float_images(self, index: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Images (all, or ``index``) as float N×C×H×W in [0, 1], for whole-batch training."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageTensorDataset({self.name or '?'}: {n} × {c}×{h}×{w}, {self.task}, {len(self.labels)} labels)"
