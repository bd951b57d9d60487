"""The procedural datasets: deterministic, disjoint splits, balanced, spread in difficulty, cached, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from app.errors import UserError
from app.plugin_manager import load_registry
from plugins.datasets import persons, persons_figure, shapes
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
    # Each sample's head and body difficulty (ground truth), in [0, 1]; ``difficulty`` is their mean.
    head, body = data.meta["head_difficulty"], data.meta["body_difficulty"]
    assert head.shape == body.shape == (1200,) and head.dtype == body.dtype == torch.float32
    assert 0 <= min(head.min(), body.min()) and max(head.max(), body.max()) <= 1
    assert torch.allclose(data.difficulty, (head + body) / 2)


NUISANCE_PARAMS = ("face_occ_size", "turn", "head_blur", "head_out", "body_occ_size", "fade", "body_blur", "crop")


def _quiet_persons(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Persons parameters with every nuisance off (no region nuisance, camera blur or lean), figure in frame."""
    p = persons.sample_params(n, np.random.default_rng(seed))
    for key in NUISANCE_PARAMS:
        p[key][:] = 0
    p["blur"][:] = 0
    p["lean"][:] = 0
    p["unit"][:] = np.linspace(0.72, 0.92, n)
    p["cy"][:] = np.clip(p["cy"], -0.99 + persons_figure.SOLES * p["unit"], 0.99 - persons_figure.HAT_TOP * p["unit"])
    return p


def _local_y(p: dict[str, np.ndarray], size: int = 64) -> np.ndarray:
    """Each pixel centre's height in the person-local frame (N×H×W; hips 0, crown 1)."""
    from plugins.datasets.raster import local_coords, pixel_grid

    gx, gy = pixel_grid(len(p["unit"]), size)
    return local_coords(gx, gy, p["cx"], p["cy"], p["lean"], p["unit"])[1]


def _changed(p: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> np.ndarray:
    """N×H×W: which pixels differ between the renders of ``p`` and ``q``."""
    return (persons_figure.render(p, 64)["images"] != persons_figure.render(q, 64)["images"]).any(1)


def test_persons_head_attributes_live_in_the_head_region():
    """Turning a head attribute on changes only pixels near the head; a body one only below it."""
    p = _quiet_persons(4)
    p["attributes"][:] = 0
    p["noise"][:] = 0
    base = persons_figure.render(p, 64)["images"].astype(int)
    for name, region in (("hat", "head"), ("glasses", "head"), ("smiling", "head"), ("striped_shirt", "body"),
                         ("dark_shoes", "body"), ("long_sleeves", "body")):
        q = {k: v.copy() for k, v in p.items()}
        q["attributes"][:, PERSON_ATTRIBUTES.index(name)] = 1
        if name == "dark_shoes":  # the shoe colour is drawn at sampling time; use a dark one
            q["shoes"][:] = 0.05
        changed = np.abs(persons_figure.render(q, 64)["images"].astype(int) - base).sum(1) > 0  # N×H×W
        for i in range(4):
            rows = np.flatnonzero(changed[i].any(1))
            assert len(rows), name
            head_y = p["cy"][i] + persons_figure.HEAD_Y * p["unit"][i]  # head centre, image units (y up)
            head_row = (1 - head_y) * 32
            if region == "head":
                assert rows.max() < head_row + 0.3 * p["unit"][i] * 32, name
            else:
                assert rows.min() > head_row + 0.15 * p["unit"][i] * 32, name


@pytest.mark.parametrize(("name", "least"), [("smiling", 8), ("long_sleeves", 20), ("glasses", 8), ("hat", 20)])
def test_persons_small_attributes_are_visible(name, least):
    """Toggling an attribute changes enough pixels to be seen at 64×64, even for the smallest figure."""
    p = _quiet_persons(6, seed=1)
    p["attributes"][:, PERSON_ATTRIBUTES.index(name)] = 0
    q = {k: v.copy() for k, v in p.items()}
    q["attributes"][:, PERSON_ATTRIBUTES.index(name)] = 1
    counts = _changed(p, q).sum((1, 2))
    assert counts.min() >= least, (name, counts.tolist())


@pytest.mark.parametrize(("region", "nuisances"), [
    ("head", {"face_occ_size": 0.14, "turn": persons.MAX_TURN, "head_blur": persons.MAX_REGION_BLUR}),
    ("body", {"body_occ_size": 0.36, "fade": persons.MAX_FADE, "body_blur": persons.MAX_REGION_BLUR}),
])
def test_persons_region_nuisances_change_only_their_region(region, nuisances):
    """With everything else the same, a head nuisance leaves the body's pixels byte-identical, and a body
    nuisance the head's; each of them does change its own region."""
    p = _quiet_persons(8, seed=2)
    p["face_occ_xy"][:] = [0.0, persons_figure.FACE_Y - 0.16]  # in front of the chin, lower than it is ever drawn
    p["face_occ_aspect"][:] = 1.3
    p["body_occ_xy"][:] = [0.0, -0.1]  # in front of the hips
    y = _local_y(p)
    for key, value in nuisances.items():
        q = {k: v.copy() for k, v in p.items()}
        q[key][:] = value
        changed = _changed(p, q)
        if region == "head":
            assert not changed[y < 0.45].any(), f"{key} changed body pixels"
            assert (changed & (y > 0.6)).sum((1, 2)).min() >= 10, key
        else:
            assert not changed[y > 0.65].any(), f"{key} changed head pixels"
            assert (changed & (y < 0.4)).sum((1, 2)).min() >= 10, key


def test_persons_frame_nuisances_move_the_figure():
    """'Out of frame' puts part of the head above the image with the feet inside; 'crop' the reverse."""
    p = persons.sample_params(3000, np.random.default_rng(3))
    crown = p["cy"] + persons_figure.HAT_TOP * p["unit"]  # the top of a hat (hats or not, placement is the same)
    soles = p["cy"] - persons_figure.SOLES * p["unit"]
    head_only, crop_only = (p["head_out"] > 0) & (p["crop"] == 0), (p["crop"] > 0) & (p["head_out"] == 0)
    both, neither = (p["head_out"] > 0) & (p["crop"] > 0), (p["head_out"] == 0) & (p["crop"] == 0)
    assert min(head_only.sum(), crop_only.sum(), both.sum(), neither.sum()) > 100
    assert (crown[head_only] > 1).all() and (soles[head_only] > -1).all()
    assert (soles[crop_only] < -1).all() and (crown[crop_only] < 1).all()
    assert (crown[both] > 1).all() and (soles[both] < -1).all() and p["unit"].max() <= persons_figure.MAX_UNIT + 1e-6
    assert (crown[neither] < 1).all() and (soles[neither] > -1).all()


def test_persons_region_difficulty():
    """head_difficulty and body_difficulty: in [0, 1], spread, independent, the documented sums of their terms."""
    arrays = persons.generate("train", 1500, workers=1)
    head, body = arrays["head_difficulty"], arrays["body_difficulty"]
    for d in (head, body):
        assert d.dtype == np.float32 and d.shape == (1500,) and 0 <= d.min() and d.max() <= 1
        assert (d < 0.1).mean() >= 0.2 and (d > 0.4).mean() >= 0.2
    assert abs(np.corrcoef(head, body)[0, 1]) < 0.1  # drawn independently
    for region, weights, d in (("head", persons.HEAD_WEIGHTS, head), ("body", persons.BODY_WEIGHTS, body)):
        terms = {k: arrays[f"{region}_{k}"] for k in weights}
        assert np.allclose(d, persons.region_difficulty(terms, weights), atol=1e-6)
        assert abs(sum(weights.values()) - 1) < 1e-9
        for k, term in terms.items():  # every nuisance is absent in some samples and strong in others
            assert 0.3 < (term == 0).mean() < 0.7 and (term > 0.5).mean() > 0.05, (region, k)
    # The measured occlusion follows the drawn occluder's size.
    drawn = persons.sample_params(1500, persons.split_rng(0, "train", persons.GENERATOR_VERSION, persons.SEED_SALT))
    for region, key in (("head", "face_occ_size"), ("body", "body_occ_size")):
        occluded = arrays[f"{region}_occlusion"]
        assert (occluded[drawn[key] == 0] == 0).all()
        assert np.corrcoef(drawn[key][drawn[key] > 0], occluded[drawn[key] > 0])[0, 1] > 0.5, region


def test_persons_region_difficulty_shows_in_the_pixels():
    """A hard head is a blurred, covered, turned or cut head: its region differs more from the same figure
    rendered without the head's nuisances than an easy head does (and likewise for the body)."""
    p = persons.sample_params(400, np.random.default_rng(5))
    p["blur"][:] = 0
    p["noise"][:] = 0
    clean = {k: v.copy() for k, v in p.items()}
    for key in ("face_occ_size", "turn", "head_blur", "body_occ_size", "fade", "body_blur"):
        clean[key][:] = 0
    a = persons_figure.render(p, 64)
    b = persons_figure.render(clean, 64)
    y = _local_y(p)
    diff = np.abs(a["images"].astype(int) - b["images"].astype(int)).sum(1)
    head_terms, body_terms = persons.difficulty_terms(p, a["head_occluded"], a["body_occluded"])
    for region, terms, weights, mask in (("head", head_terms, persons.HEAD_WEIGHTS, y > 0.6),
                                         ("body", body_terms, persons.BODY_WEIGHTS, y < 0.4)):
        terms = dict(terms, **{k: np.zeros(len(y), np.float32) for k in ("frame", "crop") if k in terms})
        d = persons.region_difficulty(terms, weights)
        change = (diff * mask).sum((1, 2)) / np.maximum(mask.sum((1, 2)), 1)
        assert change[d > 0.3].mean() > 3 * change[d < 0.05].mean() + 1, region


def test_persons_generator_version_and_determinism(tmp_path, monkeypatch):
    a = persons.generate("train", 60, size=32, seed=3, workers=1)
    b = persons.generate("train", 60, size=32, seed=3, workers=2)  # chunking/workers never change the bytes
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["images"], persons.generate("train", 60, size=32, seed=4, workers=1)["images"])
    # Version 4 is the one with region-level difficulty; older caches (v2, v3 files) are never read.
    assert persons.GENERATOR_VERSION == 4
    data = load_persons("val", tmp_path, size=16, num_train=4, num_val=6, num_test=2)
    assert sorted(p.name for p in (tmp_path / "persons").iterdir()) == [
        f"v4_s16_n4-6-2_seed0_{split}.npz" for split in ("test", "train", "val")]
    assert set(data.meta) >= {"head_difficulty", "body_difficulty", "head_occlusion", "body_crop"}
    # The version is part of every split's seed stream: another version draws other figures.
    monkeypatch.setattr(persons, "GENERATOR_VERSION", 3)
    assert not np.array_equal(a["targets"], persons.generate("train", 60, size=32, seed=3, workers=1)["targets"])


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
