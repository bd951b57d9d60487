"""Real-data loaders on tiny files in the real formats, built by the tests (no network)."""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tv

from app.errors import UserError
from app.plugin_manager import load_registry
from plugins.datasets.real import (
    DatasetFilesMissing,
    holdout_split,
    load_attribute_folder,
    load_cifar10,
    load_cifar100,
    load_image_folder,
    load_mnist,
    load_svhn,
    read_attributes_csv,
)
from trainer.datasets import save_preview_grid


def _png(path, color, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# ImageFolder and attributes CSV
# ------------------------------------------------------------------------------------------------


def test_image_folder_classes_items_and_holdout_split(tmp_path):
    for i in range(30):
        _png(tmp_path / "cat" / f"c{i}.png", (200, 10, 10))
        _png(tmp_path / "dog" / f"d{i}.jpg", (10, 10, 200))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    everything = load_image_folder(tmp_path, "all", size=16)
    assert everything.labels == ["cat", "dog"] and everything.task == "classification"
    assert len(everything) == 60
    image, target = everything[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and target == 0
    assert image[0].mean() > 0.7 and image[2].mean() < 0.1  # red cat, values in [0, 1]
    parts = [load_image_folder(tmp_path, s, size=16) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 60 and len(parts[0]) > len(parts[1])
    names = [{str(path) for path, _ in p.base.items} for p in parts]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_image_folder_uses_split_subfolders(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", (i * 40, 0, 0))
    assert len(load_image_folder(tmp_path, "train")) == 8
    test = load_image_folder(tmp_path, "test", size=None)
    assert len(test) == 4 and test[0][0].shape == (3, 12, 20)


def test_image_folder_missing(tmp_path):
    with pytest.raises(DatasetFilesMissing, match="does not exist"):
        load_image_folder(tmp_path / "nope", "train")


def _attribute_folder(tmp_path, rows, header="filename,smiling,hat"):
    images = tmp_path / "images"
    for name, *_ in rows:
        _png(images / name, (0, 255, 0))
    csv_path = tmp_path / "attrs.csv"
    csv_path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return images, csv_path


def test_attribute_folder_reads_minus_one_and_zero(tmp_path):
    rows = [(f"img{i}.png", 1 if i % 2 else -1, 0 if i % 3 else 1) for i in range(12)]
    images, csv_path = _attribute_folder(tmp_path, rows)
    data = load_attribute_folder(images, csv_path, size=8)
    assert data.labels == ["smiling", "hat"] and data.task == "multilabel" and len(data) == 12
    image, target = data[1]
    assert image.shape == (3, 8, 8) and torch.equal(target, torch.tensor([1.0, 0.0]))
    assert torch.equal(data[0][1], torch.tensor([0.0, 1.0]))
    parts = [load_attribute_folder(images, csv_path, s) for s in ("train", "val", "test")
             if any(holdout_split(r[0]) == s for r in rows)]
    assert sum(len(p) for p in parts) == 12


def test_attribute_folder_errors(tmp_path):
    images, csv_path = _attribute_folder(tmp_path, [("a.png", 1, 0)], header="name,smiling,hat")
    with pytest.raises(ValueError, match="first column must be 'filename'"):
        load_attribute_folder(images, csv_path)
    csv_path.write_text("filename,smiling,hat\na.png,1,0\nmissing.png,0,1\n")
    with pytest.raises(DatasetFilesMissing, match="missing.png"):
        load_attribute_folder(images, csv_path)
    csv_path.write_text("filename,smiling,hat\na.png,1,2\n")
    with pytest.raises(ValueError, match="0/1 or -1/1"):
        load_attribute_folder(images, csv_path)
    with pytest.raises(DatasetFilesMissing):
        load_attribute_folder(images, tmp_path / "absent.csv")


@pytest.mark.parametrize(("text", "expected"), [
    ("filename,smiling,hat\na.png,1\n", ["line 2", "2 columns of 3", "missing 'hat'"]),
    ("filename,smiling,hat,bag\na.png,1,0,1\nb.png,1\n", ["line 3", "missing 'hat', 'bag'"]),
    ("filename,smiling,hat\na.png,1,0,1\n", ["line 2", "4 columns", "1 more", "last column 'hat'"]),
    ("filename,smiling,hat\na.png,1,0\nb.png,1,yes\n", ["line 3", "column 'hat'", "'yes'", "0/1 or -1/1"]),
    ("filename,smiling,hat\n\na.png,0.5,0\n", ["line 3", "column 'smiling'", "'0.5'"]),  # the blank line counts
    ("filename,smiling,hat\na.png,,1\n", ["line 2", "column 'smiling'", "got ''"]),
    ("filename,smiling,,hat\na.png,1,0,1\n", ["line 1", "column(s) 3 of the header have no name"]),
    ("filename,hat,smiling,hat\na.png,1,0,1\n", ["line 1", "names 'hat' more than once"]),
], ids=["too-few", "two-missing", "too-many", "not-binary", "after-a-blank-line", "empty-value", "unnamed-column",
        "repeated-column"])
def test_attributes_csv_errors_name_the_line_and_the_column(tmp_path, text, expected):
    csv_path = tmp_path / "attrs.csv"
    csv_path.write_text(text)
    with pytest.raises(ValueError) as raised:
        read_attributes_csv(csv_path)
    message = str(raised.value)
    assert message.startswith(f"{csv_path} line ")
    for part in expected:
        assert part in message


def test_attributes_csv_skips_blank_lines(tmp_path):
    csv_path = tmp_path / "attrs.csv"
    csv_path.write_text("filename, smiling ,hat\n\na.png,1,-1\n  ,  \n\nb.png,false,true\n\n")
    assert read_attributes_csv(csv_path) == (["smiling", "hat"], [("a.png", [1.0, 0.0]), ("b.png", [0.0, 1.0])])


def test_user_folders_through_the_plugin(tmp_path):
    for i in range(10):
        _png(tmp_path / "folder" / "x" / f"{i}.png", (0, 0, 0))
        _png(tmp_path / "folder" / "y" / f"{i}.png", (255, 255, 255))
    images, csv_path = _attribute_folder(tmp_path, [(f"p{i}.png", i % 2, 1) for i in range(6)])
    registry = load_registry(plugins="")
    folder = registry.load_dataset("imagefolder", "train", tmp_path, path=str(tmp_path / "folder"), size="24")
    assert folder[0][0].shape == (3, 24, 24) and folder.labels == ["x", "y"]
    table = registry.load_dataset("attributes-csv", "train", tmp_path, path=str(images), csv=str(csv_path))
    assert table.labels == ["smiling", "hat"] and table[0][0].shape == (3, 64, 64)
    with pytest.raises(UserError, match="path="):
        registry.load_dataset("imagefolder", "train", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        registry.load_dataset("imagefolder", "train", tmp_path, path=str(tmp_path / "missing"))
    csv_path.write_text("filename,smiling,hat\np0.png,1,maybe\n")  # the UI shows the line and the column
    with pytest.raises(UserError, match=r"^attributes-csv: .* line 2, column 'hat': .* got 'maybe'$"):
        registry.load_dataset("attributes-csv", "train", tmp_path, path=str(images), csv=str(csv_path))
    save_preview_grid(folder, tmp_path / "grid.png", n=4)
    assert (tmp_path / "grid.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# torchvision formats: CIFAR python pickles, MNIST idx, SVHN .mat
# ------------------------------------------------------------------------------------------------


def _cifar_batch(path, n, label_key, num_classes, seed):
    rng = np.random.default_rng(seed)
    entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: rng.integers(0, num_classes, n).tolist()}
    path.write_bytes(pickle.dumps(entry))
    return entry


def test_cifar10_from_python_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {name: _cifar_batch(folder / name, 3, "labels", 10, i)
               for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"])}
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    # torchvision checks each file's md5: point it at our tiny files' checksums.
    monkeypatch.setattr(tv.CIFAR10, "train_list", [[f"data_batch_{k}", _md5(folder / f"data_batch_{k}")]
                                                    for k in range(1, 6)])
    monkeypatch.setattr(tv.CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(tv.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                             "md5": _md5(folder / "batches.meta")})
    train, test = load_cifar10("train", tmp_path), load_cifar10("test", tmp_path)
    assert len(train) == 15 and len(test) == 3 and train.labels == classes
    image, target = test[1]
    raw = batches["test_batch"]["data"][1].reshape(3, 32, 32)
    assert image.shape == (3, 32, 32) and torch.allclose(image, torch.from_numpy(raw).float() / 255)
    assert target == batches["test_batch"]["labels"][1]
    registry = load_registry(plugins="")
    assert len(registry.load_dataset("cifar10", "test", tmp_path)) == 3


def test_cifar100_from_python_batches(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 4, "fine_labels", 100, 0)
    test = _cifar_batch(folder / "test", 2, "fine_labels", 100, 1)
    names = [f"class{i}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    monkeypatch.setattr(tv.CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(tv.CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(tv.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names",
                                              "md5": _md5(folder / "meta")})
    data = load_cifar100("test", tmp_path)
    assert len(data) == 2 and len(data.labels) == 100 and data[0][1] == test["fine_labels"][0]
    assert len(load_cifar100("train", tmp_path)) == 4


def _idx(path, array: np.ndarray):
    magic = {1: 0x0801, 3: 0x0803}[array.ndim]
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
                     + array.astype(np.uint8).tobytes())


def test_mnist_from_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    for prefix in ("train", "t10k"):
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    grey = load_mnist("train", tmp_path)
    image, target = grey[2]
    assert image.shape == (1, 28, 28) and target == 4
    assert torch.allclose(image[0], torch.from_numpy(images[2]).float() / 255)
    rgb = load_mnist("test", tmp_path, channels=3)
    assert rgb[0][0].shape == (3, 28, 28) and torch.equal(rgb[0][0][0], rgb[0][0][2])
    registry = load_registry(plugins="")
    assert registry.load_dataset("mnist", "test", tmp_path, channels="3")[1][0].shape == (3, 28, 28)


def test_svhn_from_mat_file(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    folder = tmp_path / "svhn"
    folder.mkdir()
    rng = np.random.default_rng(0)
    scipy_io.savemat(folder / "test_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8),
                                                 "y": np.array([[10], [1], [2], [3]], dtype=np.uint8)})
    split_list = dict(tv.SVHN.split_list)
    split_list["test"] = ["", "test_32x32.mat", _md5(folder / "test_32x32.mat")]
    monkeypatch.setattr(tv.SVHN, "split_list", split_list)
    data = load_svhn("test", tmp_path)
    assert len(data) == 4 and data[0][1] == 0 and data[3][1] == 3  # SVHN's label 10 is digit 0
    assert data[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "svhn", "celeba"])
def test_missing_files_say_what_to_do(tmp_path, name):
    registry = load_registry(plugins="")
    with pytest.raises(UserError) as info:
        registry.load_dataset(name, "train", tmp_path)
    message = str(info.value)
    assert "--download" in message and str(tmp_path) in message and "not found" in message
