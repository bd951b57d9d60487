"""BlockDrop demo handlers: any image in, top-3 + block map out; clear errors; no-checkpoint case."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.api import UserError
from plugins.blockdrop import analysis
from plugins.blockdrop.demo import BlockDropDemo, build_demo, panel_frames
from tests.blockdrop_fakes import random_dataset
from tests.demo_helpers import (
    BLOCKDROP_LABELS,
    FakeDemoContext,
    built_tab,
    save_blockdrop_assets,
)


@pytest.fixture
def assets(tmp_path):
    return save_blockdrop_assets(tmp_path / "assets")


@pytest.fixture
def demo(assets, tmp_path):
    data = {("shapes", "test"): random_dataset(40, seed=3)}
    return BlockDropDemo(FakeDemoContext("blockdrop", assets, datasets=data, data_dir=tmp_path / "data"))


def _png(image: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def _images():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    sixteen = Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)
    return {
        "rgba": rgb.convert("RGBA"),
        "grey": rgb.convert("L"),
        "palette": rgb.convert("P"),
        "16-bit png": _png(sixteen),
        "cmyk jpeg": _png(rgb.convert("CMYK"), format="JPEG"),
        "exif-rotated jpeg": _png(rgb, format="JPEG", exif=exif),
        "odd size array": np.asarray(rgb),
        "sketchpad": {"composite": np.asarray(rgb.convert("RGBA")), "background": None, "layers": []},
    }


def _uploads_and_what_the_model_must_see() -> dict[str, tuple[object, np.ndarray]]:
    """Each kind of upload, with the 8-bit RGB pixels (H×W×3) it must reach the model as.

    The expected pixels are computed here independently of app/images.py, and every case has an effect
    to get right: transparent pixels (→ white), a palette's transparent index, an EXIF rotation, 16-bit
    and float values (scaled, not clipped), a sketchpad's composite layer."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    white = np.full_like(rgb, 255)
    alpha = np.where(np.arange(53)[None, :] < 20, 0, 255).astype(np.uint8).repeat(37, 0)  # left 20 columns clear
    rgba = np.dstack([rgb, alpha])
    composited = np.where(alpha[..., None] == 0, white, rgb)
    palette = Image.fromarray(rgb).convert("P")
    clear_index = int(np.asarray(palette)[0, 0])
    palette.info["transparency"] = clear_index
    palette_rgb = np.where((np.asarray(palette) == clear_index)[..., None], 255, np.asarray(palette.convert("RGB")))
    sixteen = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50  # 0 .. 59950
    sixteen_rgb = (sixteen / sixteen.max() * 255).astype(np.uint8)[..., None].repeat(3, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    rotated = _png(Image.fromarray(rgb), format="JPEG", exif=exif)
    rotated_rgb = np.asarray(Image.open(io.BytesIO(rotated)).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    cmyk = _png(Image.fromarray(rgb).convert("CMYK"), format="JPEG")
    unit = rgb / 255.0
    grey = Image.fromarray(rgb).convert("L")
    return {
        "rgba": (Image.fromarray(rgba, "RGBA"), composited),
        "grey": (grey, np.asarray(grey)[..., None].repeat(3, 2)),
        "palette with a transparent index": (palette, palette_rgb),
        "16-bit png": (_png(Image.fromarray(sixteen)), sixteen_rgb),
        "16-bit array": (sixteen, sixteen_rgb),
        "float array in [0, 1]": (unit, (np.clip(unit, 0, 1) * 255).astype(np.uint8)),
        "cmyk jpeg": (cmyk, np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))),
        "exif-rotated jpeg": (rotated, rotated_rgb),
        "odd size array": (rgb, rgb),
        "sketchpad": ({"composite": rgba, "background": rgb, "layers": []}, composited),
    }


@pytest.mark.parametrize("kind", list(_uploads_and_what_the_model_must_see()))
def test_predict_accepts_any_image(demo, kind, monkeypatch):
    from plugins.blockdrop import demo as demo_module

    upload, expected = _uploads_and_what_the_model_must_see()[kind]
    seen = []
    real_load = demo_module.load_rgb_image

    def spy(source):
        seen.append(real_load(source))
        return seen[-1]

    monkeypatch.setattr(demo_module, "load_rgb_image", spy)
    result = demo.predict(upload, "policy-g1", latency_repeats=2)
    # the model saw exactly the upright, opaque-on-white, full-range 8-bit RGB image
    (image,) = seen
    assert image.mode == "RGB" and np.asarray(image).shape == expected.shape
    assert np.array_equal(np.asarray(image), expected), f"{kind}: the pixels that reached the model are wrong"
    reference = demo.predict(Image.fromarray(expected), "policy-g1", latency_repeats=1)
    assert result["full_top3"] == pytest.approx(reference["full_top3"])
    assert result["blockdrop_top3"] == pytest.approx(reference["blockdrop_top3"])
    assert result["policy"] == reference["policy"]
    assert len(result["full_top3"]) == 3 and len(result["blockdrop_top3"]) == 3
    assert set(result["full_top3"]) <= set(BLOCKDROP_LABELS)
    assert sum(result["full_top3"].values()) <= 1.0 + 1e-6
    assert result["num_blocks"] == 3 and result["policy"][0] == 1
    assert result["blocks_used"] == sum(result["policy"])
    assert result["block_map_html"].count("<tr>") == 3  # one row per stage
    assert result["latency_full_ms"] > 0 and result["latency_blockdrop_ms"] > 0
    assert result["flops_blockdrop"] == pytest.approx(
        demo.models("policy-g1")["flops"].blockdrop(torch.tensor([result["policy"]]))[0].item())


def test_policies_differ_in_blocks_and_flops(demo):
    image = _images()["rgba"]
    sparse = demo.predict(image, "policy-g1", latency_repeats=1)
    dense = demo.predict(image, "policy-g5", latency_repeats=1)
    assert sparse["policy"] == [1, 0, 0] and dense["policy"] == [1, 1, 1]
    assert sparse["flops_blockdrop"] < dense["flops_blockdrop"]
    assert dense["flops_blockdrop"] == dense["flops_full"] + dense["flops_policy_net"]
    assert demo.policy_names() == ["policy-g1", "policy-g5"]


def test_corrupt_file_is_a_clear_user_error(demo, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(UserError, match="not a readable image"):
        demo.predict(str(bad), "policy-g1")
    with pytest.raises(UserError, match="No image"):
        demo.predict(None, "policy-g1")


def test_no_checkpoint_says_how_to_train(tmp_path):
    demo = BlockDropDemo(FakeDemoContext("blockdrop", tmp_path / "empty"))
    assert demo.policy_names() == []
    with pytest.raises(UserError, match="avstudio train blockdrop backbone"):
        demo.predict(_images()["rgba"], "policy-g1")
    with pytest.raises(UserError, match="avstudio train blockdrop"):
        demo.dataset_panel()


def test_unknown_policy_names_the_valid_ones(demo):
    with pytest.raises(UserError, match="policy-g1"):
        demo.predict(_images()["rgba"], "policy-g99")


def test_dataset_panel_is_computed_once_and_cached_on_disk(demo, tmp_path, monkeypatch):
    panel = demo.dataset_panel("policy-g5")
    assert panel["selected"] == "policy-g5" and panel["num_images"] == 40
    g1, g5 = panel["policies"]["policy-g1"], panel["policies"]["policy-g5"]
    assert sum(g1["histogram"]) == 40 and g1["mean_blocks"] == pytest.approx(1.0)
    assert g5["mean_blocks"] == pytest.approx(3.0) and g5["accuracy"] == pytest.approx(panel["accuracy_full"])
    assert len(g1["fewest"]) == 8 and len(g1["class_mean_blocks"]) == 10
    assert g1["spearman_difficulty"] == 0.0  # every image used the same number of blocks
    frames = panel_frames(panel)
    assert set(frames["curve"]["method"]) >= {"full ResNet", "FirstK", "RandomK", "BlockDrop policy-g1"}
    assert list(frames["histogram"]["images"]) == g5["histogram"]
    assert list((tmp_path / "data" / "blockdrop-panels").glob("panel-*.json"))

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(analysis, "dataset_panel", boom)
    assert demo.dataset_panel("policy-g1")["policies"]["policy-g1"] == g1  # memory cache
    fresh = BlockDropDemo(demo.ctx)  # a restarted app: the disk cache answers
    assert fresh.dataset_panel("policy-g1")["policies"]["policy-g1"]["accuracy"] == g1["accuracy"]


def test_models_are_cached_until_the_file_changes(demo, assets):
    first = demo.models("policy-g1")
    assert demo.models("policy-g1") is first
    path = assets / "policy-g1.safetensors"
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    assert demo.models("policy-g1") is not first


def test_build_demo_wires_named_events(assets, tmp_path):
    import gradio as gr

    with gr.Blocks() as blocks:
        build_demo(FakeDemoContext("blockdrop", assets, data_dir=tmp_path))
    names = {dep.get("api_name") for dep in blocks.config["dependencies"]}
    assert {"blockdrop_predict", "blockdrop_predict_sketch", "blockdrop_dataset_panel"} <= names

    with gr.Blocks() as empty:
        build_demo(FakeDemoContext("blockdrop", tmp_path / "none", data_dir=tmp_path))
    texts = [c.get("props", {}).get("value") for c in empty.config["components"]]
    assert any(isinstance(t, str) and "avstudio train blockdrop" in t for t in texts)


def test_upload_component_passes_corrupt_files_to_the_handler(demo, tmp_path):
    import gradio as gr
    from gradio.data_classes import ImageData

    from app.api.demo import lenient_upload

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    component = lenient_upload(gr.Image(type="filepath"))
    passed = component.preprocess(ImageData(path=str(bad)))
    assert passed == str(bad)
    with pytest.raises(UserError, match="not a readable image"):
        demo.predict(passed, "policy-g1")


# -- demo conventions (docs/plugins.md) -----------------------------------------------------------


def _built(assets, tmp_path):
    return built_tab(build_demo, FakeDemoContext("blockdrop", assets, data_dir=tmp_path / "data"))


def test_the_demo_shows_what_the_network_sees_at_a_readable_size(demo, assets, tmp_path):
    from app.api.demo import enlarge, model_input_update
    from plugins.blockdrop.demo import READABLE_PX

    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    r = demo.predict(image, "policy-g1", latency_repeats=1)
    assert r["input_resolution"] == (32, 32)
    seen = r["model_input"]
    assert seen.shape == (32, 32, 3) and seen.dtype == np.uint8
    expected = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR))
    assert np.abs(seen.astype(int) - expected.astype(int)).max() <= 1  # the resized image, not the upload
    big = enlarge(seen, READABLE_PX)
    assert big.shape == (READABLE_PX, READABLE_PX, 3) and READABLE_PX >= 128
    assert (big[::8, ::8] == seen).all() and (big[7::8, 7::8] == seen).all()  # nearest neighbour, crisp
    assert enlarge(np.zeros((512, 300, 3), np.uint8)).shape == (512, 300, 3)  # large inputs left alone
    update = model_input_update(r, size=READABLE_PX)
    assert update["label"] == "what the network sees: 32×32" and (update["value"] == big).all()
    assert "32×32" in _built_stats(assets, tmp_path, image)

    _, by_elem = _built(assets, tmp_path)
    shown = by_elem["blockdrop-model-input"]
    assert shown["type"] == "image" and shown["props"]["label"].startswith("what the network sees")
    upload = by_elem["blockdrop-input"]["props"]
    assert (upload.get("height") or 0) >= 128 or (upload.get("width") or 0) >= 128
    from plugins.blockdrop.demo import PIXELATED_CSS

    assert "#blockdrop-input img" in PIXELATED_CSS and "image-rendering: pixelated" in PIXELATED_CSS


def _built_stats(assets, tmp_path, image):
    blocks, _ = _built(assets, tmp_path)
    fn = next(f for f in blocks.fns.values() if f.name == "run")
    *_, stats, seen = fn.fn(image, "policy-g1")
    assert seen["label"] == "what the network sees: 32×32" and seen["value"].shape[:2] == (256, 256)
    return stats


def test_the_policy_selector_opens_on_the_recommended_operating_point(assets, tmp_path):
    import json
    import shutil

    from plugins.blockdrop.demo import RECOMMENDED_POLICY, default_policy

    report = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "blockdrop.json").read_text())
    assert report["figures"]["policy"] == f"{RECOMMENDED_POLICY}.safetensors"  # the benchmarked choice
    assert default_policy(["policy-g0.5", "policy-g1", "policy-g2"]) == "policy-g1"
    assert default_policy(["policy-g0.5", "policy-g2"]) == "policy-g0.5"
    assert default_policy([]) is None
    shutil.copy(assets / "policy-g1.safetensors", assets / "policy-g0.5.safetensors")
    card = json.loads((assets / "policy-g1.json").read_text())
    (assets / "policy-g0.5.json").write_text(json.dumps({**card, "gamma": 0.5}))  # its card's γ sorts it first
    _, by_elem = _built(assets, tmp_path)
    dropdown = by_elem["blockdrop-policy"]["props"]
    assert [c[0] for c in dropdown["choices"]][0] == "policy-g0.5" and dropdown["value"] == "policy-g1"


def test_latency_is_measured_once_per_model_and_each_request_times_its_own_forwards(demo, monkeypatch):
    from plugins.blockdrop import analysis
    from plugins.blockdrop.demo import _stats_markdown

    demo.models("policy-g1").pop("reference_latency", None)
    measured = []
    real = analysis.interleaved_latency_ms
    monkeypatch.setattr(analysis, "interleaved_latency_ms", lambda *a, **k: measured.append(k) or real(*a, **k))
    image = _images()["rgba"]
    first = demo.predict(image, "policy-g1", latency_repeats=3)
    second = demo.predict(image, "policy-g1", latency_repeats=3)
    assert len(measured) == 1 and measured[0]["repeats"] == 3  # not re-timed on every request
    assert first["latency_full_ms"] == second["latency_full_ms"] > 0
    assert second["request_full_ms"] > 0 and second["request_blockdrop_ms"] > 0
    stats = _stats_markdown(second)
    assert "median of 3 runs" in stats and "measured once when this server first used the model" in stats
    # on which image: BlockDrop's time depends on the blocks it runs
    assert second["latency_blocks"] == first["blocks_used"]
    assert f"on the image it answered then ({first['blocks_used']} of {first['num_blocks']} blocks)" in stats
    assert "this request" in stats and f"{second['request_blockdrop_ms']:.2f} ms" in stats
    # short column headers (the table fits a phone), their meaning below the table
    assert "| | FLOPs | latency | this request |" in stats and "1 multiply-add = 2 FLOPs" in stats
    assert f"policy network ({second['flops_policy_net'] / 1e6:.1f} M)" in stats
