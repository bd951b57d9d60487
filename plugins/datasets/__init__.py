"""Built-in plugin: registers the procedural datasets and the real-data loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.api import DatasetSpec, UserError, hookimpl
from plugins.datasets.persons import PERSON_ATTRIBUTES, load_persons
from plugins.datasets.real import (
    DatasetFilesMissing,
    load_attribute_folder,
    load_celeba,
    load_cifar10,
    load_cifar100,
    load_image_folder,
    load_mnist,
    load_svhn,
)
from plugins.datasets.shapes import SHAPE_CLASSES, load_shapes

__version__ = "0.1.0"

_GENERATED = ("size", "num_train", "num_val", "num_test", "seed")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS = [str(i) for i in range(10)]
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


def _options(options: dict[str, Any], ints: tuple[str, ...], strings: tuple[str, ...], dataset: str) -> dict:
    """Check option names and turn the integer ones into ints (they may arrive as strings from the CLI)."""
    allowed = (*ints, *strings)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "(none)"
        raise UserError(f"dataset {dataset!r} has no option {unknown[0]!r}; valid options: {valid}")
    out = dict(options)
    for key in ints:
        if key in out:
            try:
                out[key] = int(out[key])
            except (TypeError, ValueError):
                raise UserError(f"dataset {dataset!r}: option {key} must be an integer, got {out[key]!r}") from None
    return out


def _user_errors(load: Callable[..., Any], split: str, root: Path, download: bool | None, dataset: str,
                 **kwargs: Any) -> Any:
    """Missing files and bad folders are the user's to fix: report them as a UserError (``download=None``: a
    loader that takes neither a root nor ``download``)."""
    try:
        return load(split, root, download=download, **kwargs) if download is not None else load(split, **kwargs)
    except (DatasetFilesMissing, ValueError) as exc:
        raise UserError(f"{dataset}: {exc}") from None


def _shapes(split: str, root: Path, download: bool = False, **options: Any):
    return load_shapes(split, root, **_options(options, _GENERATED, (), "shapes"))


def _persons(split: str, root: Path, download: bool = False, **options: Any):
    return load_persons(split, root, **_options(options, _GENERATED, (), "persons"))


def _torchvision(name: str, load, ints: tuple[str, ...] = ()):
    def loader(split: str, root: Path, download: bool = False, **options: Any):
        return _user_errors(load, split, Path(root), bool(download), name, **_options(options, ints, (), name))
    return loader


def _imagefolder(split: str, root: Path, download: bool = False, **options: Any):
    opts = _options(options, ("size",), ("path",), "imagefolder")
    if "path" not in opts:
        raise UserError("dataset 'imagefolder' needs the option path=DIR (a folder of class subfolders)")
    path = Path(opts.pop("path")).expanduser()
    return _user_errors(lambda s, **kw: load_image_folder(path, s, **kw), split, root, None, "imagefolder", **opts)


def _attributes_csv(split: str, root: Path, download: bool = False, **options: Any):
    opts = _options(options, ("size",), ("path", "csv"), "attributes-csv")
    if "path" not in opts or "csv" not in opts:
        raise UserError("dataset 'attributes-csv' needs the options path=IMAGES_DIR and csv=ATTRIBUTES.csv")
    images, table = Path(opts.pop("path")).expanduser(), Path(opts.pop("csv")).expanduser()
    return _user_errors(lambda s, **kw: load_attribute_folder(images, table, s, **kw), split, root, None,
                        "attributes-csv", **opts)


@hookimpl
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
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
    real = "torchvision's loader; files under the data directory, or --download"
    register(DatasetSpec(name="cifar10", title="CIFAR-10", task="classification", description=f"CIFAR-10 ({real}).",
                         load=_torchvision("cifar10", load_cifar10), labels=CIFAR10_CLASSES,
                         splits=("train", "test")))
    register(DatasetSpec(name="cifar100", title="CIFAR-100", task="classification",
                         description=f"CIFAR-100, 100 fine classes ({real}).",
                         load=_torchvision("cifar100", load_cifar100), splits=("train", "test")))
    register(DatasetSpec(name="mnist", title="MNIST", task="classification",
                         description=f"MNIST digits, 28×28 grey; option channels=3 repeats them to RGB ({real}).",
                         load=_torchvision("mnist", load_mnist, ("channels",)), labels=DIGITS,
                         image_size=(28, 28), channels=1, splits=("train", "test")))
    register(DatasetSpec(name="svhn", title="SVHN", task="classification",
                         description=f"Street View House Numbers, cropped digits ({real}).",
                         load=_torchvision("svhn", load_svhn), labels=DIGITS, splits=("train", "test", "extra")))
    register(DatasetSpec(name="celeba", title="CelebA attributes", task="multilabel",
                         description=f"CelebA faces with 40 binary attributes, resized to 64×64 (option size) ({real}).",
                         load=_torchvision("celeba", load_celeba, ("size",)), labels=CELEBA_ATTRIBUTES,
                         image_size=(64, 64)))
    register(DatasetSpec(name="imagefolder", title="Image folder (your data)", task="classification",
                         description="Your images in class subfolders: options path=DIR [size=64]. Uses "
                                     "DIR/train, DIR/val, DIR/test if present, else an 80/10/10 split by file.",
                         load=_imagefolder, image_size=(64, 64)))
    register(DatasetSpec(name="attributes-csv", title="Images + attributes CSV (your data)", task="multilabel",
                         description="Your images plus a CSV 'filename,attr1,attr2,...' of 0/1 or -1/1 values: "
                                     "options path=IMAGES_DIR csv=FILE.csv [size=64]; 80/10/10 split by file.",
                         load=_attributes_csv, image_size=(64, 64)))
