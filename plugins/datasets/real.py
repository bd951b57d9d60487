"""Real datasets: torchvision CIFAR-10/100, MNIST, SVHN, CelebA, any ImageFolder, images + attributes CSV.

Every loader returns a Dataset of ``(float image C×H×W in [0, 1], target)`` with ``labels`` and ``task``
attributes. Files are looked for under ``root`` in torchvision's own layout (see docs/datasets.md);
with ``download=True`` torchvision fetches them. Missing files raise :class:`DatasetFilesMissing`
with a message that says where to put them.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv
from torchvision.transforms import functional as TF

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HOLDOUT_SPLITS = ("train", "val", "test")


class DatasetFilesMissing(FileNotFoundError):
    """A dataset's files are not on disk (and were not downloaded)."""


class WrappedDataset(Dataset):
    """Items of ``base`` as ``(float C×H×W in [0, 1], target)``; ``labels`` and ``task`` describe targets."""

    def __init__(self, base: Any, labels: list[str], task: str, to_image: Callable[[Any], torch.Tensor],
                 to_target: Callable[[Any], Any] = lambda t: t, name: str = "") -> None:
        self.base, self.labels, self.task, self.name = base, list(labels), task, name
        self._to_image, self._to_target = to_image, to_target

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, target = self.base[index]
        return self._to_image(image), self._to_target(target)

    def __repr__(self) -> str:
        return f"WrappedDataset({self.name}: {len(self)} items, {self.task}, {len(self.labels)} labels)"


def pil_to_tensor(image: Image.Image, channels: int = 3, size: int | None = None) -> torch.Tensor:
    """A PIL image as float C×H×W in [0, 1] with ``channels`` (1 or 3), optionally centre-cropped square
    and resized to ``size``×``size``."""
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None:
        side = min(image.size)
        image = TF.resize(TF.center_crop(image, [side, side]), [size, size], antialias=True)
    return TF.to_tensor(image)


def _open_torchvision(make: Callable[[bool], Any], title: str, where: Path, download: bool) -> Any:
    """Build a torchvision dataset, turning its 'not found' into a message that says what to do."""
    try:
        return make(download)
    except RuntimeError:
        if download:
            raise
        raise DatasetFilesMissing(
            f"{title} files not found (or corrupted) under {where}. Put the extracted files there "
            f"(see docs/datasets.md), or pass --download to fetch them (needs internet).") from None
    except OSError as exc:  # download=True without a network: URLError and friends
        raise DatasetFilesMissing(
            f"could not download {title} into {where} ({exc.__class__.__name__}: {exc}). Without internet, "
            f"download the files elsewhere and copy them to {where}.") from None


def _train_flag(split: str, title: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"{title} has splits 'train' and 'test', not {split!r}")
    return split == "train"


def load_cifar10(split: str, root: Path, *, download: bool = False) -> WrappedDataset:
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` from ``root/cifar-10-batches-py``."""
    train = _train_flag(split, "CIFAR-10")
    base = _open_torchvision(lambda d: tv.CIFAR10(str(root), train=train, download=d), "CIFAR-10",
                             Path(root) / "cifar-10-batches-py", download)
    return WrappedDataset(base, base.classes, "classification", TF.to_tensor, name=f"cifar10/{split}")


def load_cifar100(split: str, root: Path, *, download: bool = False) -> WrappedDataset:
    """CIFAR-100 (fine labels) via ``torchvision.datasets.CIFAR100`` from ``root/cifar-100-python``."""
    train = _train_flag(split, "CIFAR-100")
    base = _open_torchvision(lambda d: tv.CIFAR100(str(root), train=train, download=d), "CIFAR-100",
                             Path(root) / "cifar-100-python", download)
    return WrappedDataset(base, base.classes, "classification", TF.to_tensor, name=f"cifar100/{split}")


def load_mnist(split: str, root: Path, *, download: bool = False, channels: int = 1) -> WrappedDataset:
    """MNIST via ``torchvision.datasets.MNIST`` from ``root/MNIST/raw``; ``channels=3`` repeats the grey."""
    if channels not in (1, 3):
        raise ValueError(f"MNIST channels must be 1 or 3, got {channels}")
    train = _train_flag(split, "MNIST")
    base = _open_torchvision(lambda d: tv.MNIST(str(root), train=train, download=d), "MNIST",
                             Path(root) / "MNIST" / "raw", download)
    labels = [str(i) for i in range(10)]
    return WrappedDataset(base, labels, "classification", lambda im: pil_to_tensor(im, channels),
                          to_target=int, name=f"mnist/{split}")


def load_svhn(split: str, root: Path, *, download: bool = False) -> WrappedDataset:
    """SVHN (cropped digits) via ``torchvision.datasets.SVHN`` from ``root/svhn/<split>_32x32.mat``."""
    if split not in ("train", "test", "extra"):
        raise ValueError(f"SVHN has splits 'train', 'test' and 'extra', not {split!r}")
    where = Path(root) / "svhn"
    base = _open_torchvision(lambda d: tv.SVHN(str(where), split=split, download=d), "SVHN", where, download)
    labels = [str(i) for i in range(10)]
    return WrappedDataset(base, labels, "classification", TF.to_tensor, to_target=int, name=f"svhn/{split}")


def load_celeba(split: str, root: Path, *, download: bool = False, size: int = 64) -> WrappedDataset:
    """CelebA's 40 binary attributes via ``torchvision.datasets.CelebA`` from ``root/celeba``.

    Images are centre-cropped square and resized to ``size``; targets are float 0/1 vectors.
    """
    splits = {"train": "train", "val": "valid", "test": "test"}
    if split not in splits:
        raise ValueError(f"CelebA has splits {', '.join(splits)}, not {split!r}")
    base = _open_torchvision(
        lambda d: tv.CelebA(str(root), split=splits[split], target_type="attr", download=d), "CelebA",
        Path(root) / "celeba", download)
    return WrappedDataset(base, [a for a in base.attr_names if a], "multilabel",
                          lambda im: pil_to_tensor(im, 3, size), to_target=lambda t: t.float(),
                          name=f"celeba/{split}")


# ------------------------------------------------------------------------------------------------
# Users' own folders
# ------------------------------------------------------------------------------------------------


def holdout_split(key: str) -> str:
    """Deterministic 80/10/10 train/val/test assignment of a file, from a hash of its relative path."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


class _FileList(Dataset):
    """(path, target) pairs read with PIL at load time."""

    def __init__(self, items: list[tuple[Path, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        path, target = self.items[index]
        with Image.open(path) as image:
            image.load()
            return image, target


def load_image_folder(root_dir: Path | str, split: str = "train", *, size: int | None = 64,
                      channels: int = 3) -> WrappedDataset:
    """A classification dataset from an ImageFolder tree (``class_name/image.png``).

    If ``root_dir`` has a ``split`` subfolder (``train/``, ``val/``, ``test/``) that tree is used;
    otherwise the files are split 80/10/10 by a hash of their path (``split="all"`` takes every file).
    Images are centre-cropped square and resized to ``size`` (None keeps them; they must then agree).
    """
    root_dir = Path(root_dir).expanduser()
    if not root_dir.is_dir():
        raise DatasetFilesMissing(f"image folder {root_dir} does not exist; expected {root_dir}/<class>/<image>.png")
    tree, holdout = (root_dir / split, False) if (root_dir / split).is_dir() else (root_dir, split != "all")
    if split not in (*HOLDOUT_SPLITS, "all"):
        raise ValueError(f"split must be one of train, val, test, all; got {split!r}")
    base = tv.ImageFolder(str(tree), loader=lambda p: p, is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))
    items = [(Path(p), t) for p, t in base.samples
             if not holdout or holdout_split(str(Path(p).relative_to(tree))) == split]
    if not items:
        raise ValueError(f"no images for split {split!r} in {tree}")
    files = _FileList(items)
    return WrappedDataset(files, base.classes, "classification", lambda im: pil_to_tensor(im, channels, size),
                          name=f"imagefolder:{tree}/{split}")


def _binary(value: str, where: str) -> float:
    text = value.strip()
    if text in ("1", "1.0", "true", "True"):
        return 1.0
    if text in ("0", "0.0", "-1", "-1.0", "false", "False"):
        return 0.0
    raise ValueError(f"{where}: attribute values must be 0/1 or -1/1, got {value!r}")


def _check_header(csv_path: Path, header: list[str] | None) -> list[str]:
    """The attribute names of a ``filename,attr1,attr2,...`` header; a ValueError naming what is wrong."""
    if not header or header[0].strip().lower() not in ("filename", "file", "image", "path"):
        raise ValueError(f"{csv_path}: the first column must be 'filename' (header: filename,attr1,attr2,...)")
    names = [h.strip() for h in header[1:]]
    if not names:
        raise ValueError(f"{csv_path}: no attribute columns after 'filename'")
    empty = [str(i) for i, name in enumerate(names, start=2) if not name]
    if empty:
        raise ValueError(f"{csv_path} line 1: column(s) {', '.join(empty)} of the header have no name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{csv_path} line 1: the header names {', '.join(map(repr, repeated))} more than once")
    return names


def _row_length_error(where: str, row: list[str], header: list[str]) -> ValueError:
    if len(row) < len(header):
        missing = ", ".join(repr(h.strip()) for h in header[len(row):])
        return ValueError(f"{where}: {len(row)} columns of {len(header)}, missing {missing}")
    return ValueError(f"{where}: {len(row)} columns, {len(row) - len(header)} more than the header's {len(header)} "
                      f"(after its last column {header[-1].strip()!r})")


def read_attributes_csv(csv_path: Path | str) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Parse ``filename,attr1,attr2,...`` rows into (attribute names, [(filename, 0/1 values)]).

    Blank lines are skipped. A bad header (no ``filename`` first, an empty or repeated name), a row with
    too few or too many columns and a value that is not 0/1 or -1/1 raise a ValueError naming the line,
    and the columns by their header names.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetFilesMissing(f"attributes CSV {csv_path} does not exist")
    with csv_path.open(newline="") as f:
        reader = csv.reader(f)
        header: list[str] = next(reader, [])  # [] for an empty file: refused by _check_header
        names = _check_header(csv_path, header)
        rows = []
        for row in reader:
            if not row or not "".join(row).strip():
                continue
            where = f"{csv_path} line {reader.line_num}"
            if len(row) != len(header):
                raise _row_length_error(where, row, header)
            values = [_binary(v, f"{where}, column {name!r}") for name, v in zip(names, row[1:], strict=True)]
            rows.append((row[0].strip(), values))
    return names, rows


def load_attribute_folder(images_dir: Path | str, csv_path: Path | str, split: str = "all", *,
                          size: int | None = 64) -> WrappedDataset:
    """A multi-label dataset: images in ``images_dir`` plus their 0/1 (or -1/1) attributes in ``csv_path``.

    ``split`` is ``all`` or train/val/test (80/10/10 by a hash of the file name). Every listed image
    must exist; targets are float 0/1 vectors in the CSV's column order.
    """
    images_dir = Path(images_dir).expanduser()
    if not images_dir.is_dir():
        raise DatasetFilesMissing(f"images folder {images_dir} does not exist")
    if split not in (*HOLDOUT_SPLITS, "all"):
        raise ValueError(f"split must be one of train, val, test, all; got {split!r}")
    names, rows = read_attributes_csv(csv_path)
    items = []
    for filename, values in rows:
        path = images_dir / filename
        if not path.is_file():
            raise DatasetFilesMissing(f"{csv_path} lists {filename!r} but {path} does not exist")
        if split == "all" or holdout_split(filename) == split:
            items.append((path, torch.tensor(values)))
    if not items:
        raise ValueError(f"no images for split {split!r} in {csv_path}")
    return WrappedDataset(_FileList(items), names, "multilabel", lambda im: pil_to_tensor(im, 3, size),
                          name=f"attributes:{csv_path}/{split}")
