"""Dataset building blocks the studio and plugins share: an in-memory tensor dataset, an on-disk
``.npz`` split cache, and preview grids. The datasets themselves are plugins (``plugins/datasets``).
"""

from trainer.datasets.cache import Arrays, cached_splits, load_arrays, save_arrays
from trainer.datasets.preview import preview_grid_image, save_preview_grid
from trainer.datasets.tensor_dataset import ImageTensorDataset
from trainer.datasets.tensors import random_crop_flip, split_tensors

__all__ = ["Arrays", "ImageTensorDataset", "cached_splits", "load_arrays", "preview_grid_image", "save_arrays",
           "random_crop_flip", "save_preview_grid", "split_tensors"]
