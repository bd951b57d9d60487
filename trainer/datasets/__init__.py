"""Datasets: procedural built-ins (``shapes``, ``persons``), real-data loaders and preview grids.

Every loader returns a ``torch.utils.data.Dataset`` of ``(float image C×H×W in [0, 1], target)``;
the built-ins return an :class:`ImageTensorDataset` that also exposes whole-split tensors.
"""

from trainer.datasets.shapes import SHAPE_CLASSES, load_shapes
from trainer.datasets.tensor_dataset import ImageTensorDataset

__all__ = ["SHAPE_CLASSES", "ImageTensorDataset", "load_shapes"]
