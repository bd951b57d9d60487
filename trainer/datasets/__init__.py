"""Datasets: procedural built-ins (``shapes``, ``persons``), real-data loaders and preview grids.

Every loader returns a ``torch.utils.data.Dataset`` of ``(float image C×H×W in [0, 1], target)``
with ``labels`` and ``task``; the built-ins return an :class:`ImageTensorDataset` that also exposes
whole-split tensors (``images``, ``targets``, ``difficulty``).
"""

from trainer.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES, PERSON_ATTRIBUTES, load_persons
from trainer.datasets.preview import preview_grid_image, save_preview_grid
from trainer.datasets.real import (
    DatasetFilesMissing,
    WrappedDataset,
    load_attribute_folder,
    load_celeba,
    load_cifar10,
    load_cifar100,
    load_image_folder,
    load_mnist,
    load_svhn,
)
from trainer.datasets.shapes import SHAPE_CLASSES, load_shapes
from trainer.datasets.tensor_dataset import ImageTensorDataset

__all__ = [
    "BODY_ATTRIBUTES", "HEAD_ATTRIBUTES", "PERSON_ATTRIBUTES", "SHAPE_CLASSES", "DatasetFilesMissing",
    "ImageTensorDataset", "WrappedDataset", "load_attribute_folder", "load_celeba", "load_cifar10",
    "load_cifar100", "load_image_folder", "load_mnist", "load_persons", "load_shapes", "load_svhn",
    "preview_grid_image", "save_preview_grid",
]
