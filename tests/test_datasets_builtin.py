"""The procedural datasets: deterministic, disjoint splits, balanced, spread in difficulty, cached, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from app.errors import UserError
from app.plugin_manager import load_registry
from plugins.datasets import persons, shapes
from plugins.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES, PERSON_ATTRIBUTES, load_persons
from plugins.datasets.shapes import SHAPE_CLASSES, load_shapes
from trainer.datasets import ImageTensorDataset, preview_grid_image, save_preview_grid

SMALL = dict(num_train=300, num_val=100, num_test=100)


def test_shapes_items_are_float_images_and_class_indices(tmp_path):
    data = load_shapes("train", tmp_path, **SMALL)
    assert isinstance(data, ImageTensorDataset)
    assert data.images.shape == (300, 3, 32, 32) and data.images.dtype == torch.uint8
    image, target = data[7]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert target.dtype == torch.int64 and 0 <= int(target) < 10
    assert data.labels == SHAPE_CLASSES and len(SHAPE_CLASSES) == 10 and data.task == "classification"
    assert data.difficulty.shape == (300,) and 0 <= data.difficulty.min() and data.difficulty.max() <= 1


def test_shapes_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = shapes.generate("train", 120, seed=3, workers=1)
    b = shapes.generate("train", 120, seed=3, workers=2)  # chunking/workers never change the bytes
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = shapes.generate("train", 120, seed=4, workers=1)
    assert not np.array_equal(a["images"], c["images"])
    first = load_shapes("val", tmp_path / "one", **SMALL)
    second = load_shapes("val", tmp_path / "two", **SMALL)
    assert torch.equal(first.images, second.images) and torch.equal(first.targets, second.targets)
    assert torch.equal(first.difficulty, second.difficulty)


def test_shapes_size_is_configurable(tmp_path):
    data = load_shapes("test", tmp_path, size=48, **SMALL)
    assert data.images.shape == (100, 3, 48, 48)


def _image_keys(data: ImageTensorDataset) -> set[bytes]:
    return {bytes(image.numpy().tobytes()) for image in data.images}


@pytest.mark.parametrize("load", [load_shapes, load_persons])
def test_splits_are_disjoint(tmp_path, load):
    splits = [_image_keys(load(s, tmp_path, **SMALL)) for s in ("train", "val", "test")]
    assert len(splits[0]) == 300 and len(splits[1]) == 100  # no duplicates within a split either
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])


def test_shapes_labels_are_balanced(tmp_path):
    data = load_shapes("train", tmp_path, **SMALL)
    counts = torch.bincount(data.targets, minlength=10)
    assert counts.min() >= 29 and counts.max() <= 31  # exactly balanced up to rounding: 300 / 10


def test_shapes_difficulty_has_easy_and_hard_images():
    arrays = shapes.generate("train", 2000, workers=1)
    d = arrays["difficulty"]
    assert (d < 0.3).mean() >= 0.25
    assert (d > 0.6).mean() >= 0.25
    # The difficulty is the documented weighted sum of the per-nuisance terms.
    terms = {k: arrays[f"term_{k}"] for k in shapes.NUISANCES}
    assert np.allclose(d, shapes.difficulty(terms), atol=1e-5)
    assert abs(sum(shapes.DIFFICULTY_WEIGHTS.values()) - 1) < 1e-9


def test_shapes_difficulty_tracks_visible_nuisances():
    """Harder samples are smaller, lower in contrast and noisier: the score describes the image."""
    arrays = shapes.generate("train", 1000, workers=1)
    d = arrays["difficulty"]
    easy, hard = d < np.quantile(d, 0.25), d > np.quantile(d, 0.75)
    for term in ("size", "contrast", "noise", "clutter"):
        assert arrays[f"term_{term}"][hard].mean() > arrays[f"term_{term}"][easy].mean() + 0.2, term
    # Noise shows up in the pixels: neighbouring-pixel differences are larger in hard images.
    images = arrays["images"].astype(np.float32)
    roughness = np.abs(np.diff(images, axis=3)).mean((1, 2, 3))
    assert roughness[hard].mean() > 1.5 * roughness[easy].mean()


# CPU time of this process, not wall time: the test machine is shared, and generation is single-process here.
def test_shapes_generation_is_fast():
    start = time.process_time()
    shapes.generate("train", 2000, workers=1)
    seconds = time.process_time() - start
    # 20,000 images must take well under a minute on 2 cores: 2,000 in under 4 s of one core leaves room.
    assert seconds < 4.0, f"2000 shapes took {seconds:.1f}s of CPU"


def test_persons_generation_is_fast():
    start = time.process_time()
    persons.generate("train", 1000, workers=1)
    seconds = time.process_time() - start
    assert seconds < 4.0, f"1000 persons took {seconds:.1f}s of CPU"  # 20,000 in < 40 s on 2 cores


def test_cache_hit_does_not_regenerate(tmp_path, monkeypatch):
    load_shapes("train", tmp_path, **SMALL)
    files = sorted((tmp_path / "shapes").glob("*.npz"))
    assert [f.name.rsplit("_", 1)[1] for f in files] == ["test.npz", "train.npz", "val.npz"]  # all splits at once
    mtimes = [f.stat().st_mtime_ns for f in files]

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(shapes, "generate", fail)
    again = load_shapes("test", tmp_path, **SMALL)
    assert len(again) == 100
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    with pytest.raises(AssertionError):  # a different key is a cache miss
        load_shapes("test", tmp_path, seed=1, **SMALL)


def test_persons_attributes(tmp_path):
    data = load_persons("train", tmp_path, num_train=1200, num_val=50, num_test=50)
    assert data.task == "multilabel" and data.labels == PERSON_ATTRIBUTES
    assert 12 <= len(PERSON_ATTRIBUTES) <= 16 and len(HEAD_ATTRIBUTES) == len(BODY_ATTRIBUTES)
    image, target = data[0]
    assert image.shape == (3, 64, 64) and target.dtype == torch.float32 and target.shape == (14,)
    assert set(torch.unique(data.targets).tolist()) == {0.0, 1.0}
    freq = data.targets.mean(0)
    assert freq.min() >= 0.2 and freq.max() <= 0.8, dict(zip(PERSON_ATTRIBUTES, freq.tolist(), strict=True))
    # The documented correlations: no beard with a skirt (both depend on the latent flag).
    t = {name: data.targets[:, i].bool() for i, name in enumerate(PERSON_ATTRIBUTES)}
    assert not (t["beard"] & t["skirt"]).any()
    assert t["earrings"][t["long_hair"]].float().mean() > t["earrings"][~t["long_hair"]].float().mean()


def test_persons_head_attributes_live_in_the_head_region():
    """Turning a head attribute on changes only pixels near the head; a body one only below it."""
    p = persons.sample_params(4, np.random.default_rng(0))
    p["attributes"][:] = 0
    p["noise"][:] = 0
    p["blur"][:] = 0
    p["lean"][:] = 0
    base = persons.render(p, 64).astype(int)
    for name, region in (("hat", "head"), ("glasses", "head"), ("striped_shirt", "body"), ("dark_shoes", "body")):
        q = {k: v.copy() for k, v in p.items()}
        q["attributes"][:, PERSON_ATTRIBUTES.index(name)] = 1
        if name == "dark_shoes":  # the shoe colour is drawn at sampling time; use a dark one
            q["shoes"][:] = 0.05
        changed = np.abs(persons.render(q, 64).astype(int) - base).sum(1) > 0  # N×H×W
        for i in range(4):
            rows = np.flatnonzero(changed[i].any(1))
            assert len(rows), name
            head_y = p["cy"][i] + 0.72 * p["unit"][i]  # head centre, image units (y up)
            head_row = (1 - head_y) * 32
            if region == "head":
                assert rows.max() < head_row + 0.3 * p["unit"][i] * 32, name
            else:
                assert rows.min() > head_row + 0.15 * p["unit"][i] * 32, name


def test_plugin_registers_builtins_and_validates_options(tmp_path):
    registry = load_registry(plugins="")
    assert {"shapes", "persons", "cifar10", "cifar100", "mnist", "svhn", "celeba", "imagefolder",
            "attributes-csv"} <= set(registry.datasets)
    data = registry.load_dataset("shapes", "val", tmp_path, num_train="30", num_val="20", num_test="10", size="24")
    assert data.images.shape == (20, 3, 24, 24)
    with pytest.raises(UserError, match="valid options"):
        registry.load_dataset("shapes", "val", tmp_path, colour="red")
    with pytest.raises(UserError, match="integer"):
        registry.load_dataset("persons", "val", tmp_path, size="big")


def test_preview_grid(tmp_path):
    data = load_shapes("val", tmp_path, **SMALL)
    path = save_preview_grid(data, tmp_path / "grid.png", n=16, nrow=4, upscale=2)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == ((4 * 34 + 2) * 2, (4 * 34 + 2) * 2)
    image = preview_grid_image(data, n=8, nrow=8, upscale=1)
    assert image.size == (8 * 34 + 2, 34 + 2) and image.mode == "RGB"
