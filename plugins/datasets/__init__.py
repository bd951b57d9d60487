"""Built-in plugin: registers the procedural datasets and the real-data loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.api import DatasetSpec, UserError, hookimpl
from trainer.datasets import PERSON_ATTRIBUTES, SHAPE_CLASSES, load_persons, load_shapes

__version__ = "0.1.0"

_INT_OPTIONS = ("size", "num_train", "num_val", "num_test", "seed")


def _ints(options: dict[str, Any], allowed: tuple[str, ...], dataset: str) -> dict[str, int]:
    """Options as ints (they may arrive as strings from the CLI); unknown keys are a UserError."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"dataset {dataset!r} has no option {unknown[0]!r}; valid options: {', '.join(allowed)}")
    try:
        return {k: int(v) for k, v in options.items()}
    except (TypeError, ValueError) as exc:
        raise UserError(f"dataset {dataset!r}: options {', '.join(allowed)} must be integers ({exc})") from None


def _shapes(split: str, root: Path, download: bool = False, **options: Any):
    return load_shapes(split, root, **_ints(options, _INT_OPTIONS, "shapes"))


def _persons(split: str, root: Path, download: bool = False, **options: Any):
    return load_persons(split, root, **_ints(options, _INT_OPTIONS, "persons"))


@hookimpl
def register_datasets(register) -> None:
    register(DatasetSpec(
        name="shapes", title="Shapes (procedural)", task="classification",
        description="10 shape classes under colour, size, rotation, position, background, clutter, "
                    "occlusion, blur and noise nuisances; every image has a ground-truth difficulty in [0, 1].",
        load=_shapes, labels=list(SHAPE_CLASSES), image_size=(32, 32), builtin=True))
    register(DatasetSpec(
        name="persons", title="Persons (procedural)", task="multilabel",
        description="Synthetic person figures with 14 binary attributes: 7 of the head (hat, glasses, beard, "
                    "smiling, long/blond hair, earrings) and 7 of the body (sleeves, stripes, red shirt, skirt, "
                    "bag, dark shoes, belt); pose, scale, skin tone, background and clutter vary.",
        load=_persons, labels=list(PERSON_ATTRIBUTES), image_size=(64, 64), builtin=True))
