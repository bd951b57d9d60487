"""Datasets: procedural built-ins (``shapes``, ``persons``), real-data loaders and preview grids.

Every loader returns a ``torch.utils.data.Dataset`` of ``(float image C×H×W in [0, 1], target)``;
the built-ins return an :class:`ImageTensorDataset` that also exposes whole-split tensors.
"""

from trainer.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES, PERSON_ATTRIBUTES, load_persons
from trainer.datasets.shapes import SHAPE_CLASSES, load_shapes
from trainer.datasets.tensor_dataset import ImageTensorDataset

__all__ = ["BODY_ATTRIBUTES", "HEAD_ATTRIBUTES", "PERSON_ATTRIBUTES", "SHAPE_CLASSES", "ImageTensorDataset",
           "load_persons", "load_shapes"]
