"""The training kit: what recipes and models share, beside the core contract (:mod:`app.api`).

A plugin may import this module as it imports ``app.api`` (the boundary test allows exactly the core
and the two kits); docs/plugins.md, "The training kit", documents every name::

    from app.api.training import TrainLoop, load_module_tensors, module_tensors, split_tensors

- **the training loop**: :class:`TrainLoop` (seeding, epochs and steps, stopping, progress, metrics,
  checkpoints, exact resume, several processes);
- **checkpoint files** (safetensors + a JSON card; loading never executes code from the file):
  :func:`save_checkpoint`, :func:`load_checkpoint`, a model's tensors under a prefix
  (:func:`module_tensors`, :func:`load_module_tensors`) and its architecture from the card
  (:func:`dataclass_from_dict`);
- **dataset building blocks**: a whole split in memory (:class:`ImageTensorDataset`), generated splits
  cached as ``.npz`` (:func:`cached_splits`, :data:`Arrays`), whole-split tensors for fast training
  (:func:`split_tensors`, :func:`random_crop_flip`) and preview grids (:func:`preview_grid_image`,
  :func:`save_preview_grid`).

The names are defined in the trainer (which never imports ``app``) and handed on here unchanged.
"""

from __future__ import annotations

from trainer.checkpoints import (
    dataclass_from_dict,
    load_checkpoint,
    load_module_tensors,
    module_tensors,
    save_checkpoint,
)
from trainer.datasets import (
    Arrays,
    ImageTensorDataset,
    cached_splits,
    preview_grid_image,
    random_crop_flip,
    save_preview_grid,
    split_tensors,
)
from trainer.loop import TrainLoop

__all__ = [
    "Arrays", "ImageTensorDataset", "TrainLoop", "cached_splits", "dataclass_from_dict", "load_checkpoint",
    "load_module_tensors", "module_tensors", "preview_grid_image", "random_crop_flip", "save_checkpoint",
    "save_preview_grid", "split_tensors",
]
