"""VGAN demo handlers on tiny checkpoints: samples, interpolation, VCD chains, the energy on the card's
histograms, the VGAN/GAN toggle, clear errors, missing checkpoints, and the Gradio wiring."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.api import UserError
from app.api.training import module_tensors, save_checkpoint
from plugins.vgan.demo import (
    GENERATED,
    MARKER,
    MAX_COUNT,
    REAL,
    RECOMMENDED_MODEL,
    VganDemo,
    histogram,
    slerp,
)
from plugins.vgan.model import GanConfig, build_models
from plugins.vgan.recipes import energies
from plugins.vgan.tab import PIXELATED_CSS, build_demo
from tests.demo_helpers import (
    FakeDemoContext,
    built_tab,
    event_fn,
    example_file,
    noise_image,
    save_vgan_assets,
    save_vgan_model,
)

ROOT = Path(__file__).resolve().parent.parent
@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def assets(tmp_path):
    return save_vgan_assets(tmp_path / "assets")


@pytest.fixture
def demo(assets):
    return VganDemo(FakeDemoContext("vgan", assets))


# -- samples ----------------------------------------------------------------------------------------


def test_samples_are_a_grid_of_count_images_and_deterministic_per_seed(demo):
    a = demo.samples("vgan", seed=3, count=64)
    b = demo.samples("vgan", seed=3, count=64)
    c = demo.samples("vgan", seed=4, count=64)
    assert a["images"].shape == (64, 32, 32, 3) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["grid"], b["grid"])
    assert not np.array_equal(a["images"], c["images"])
    # 8 × 8 images of 32 px with 2 px gaps as one RGB picture at its real size (the browser enlarges it)
    assert a["grid"].shape == (8 * 34 + 2, 8 * 34 + 2, 3) and a["grid"].dtype == np.uint8
    assert np.array_equal(a["grid"][2:34, 2:34], a["images"][0])
    assert np.array_equal(a["grid"][-34:-2, -34:-2], a["images"][63])
    assert a["resolution"] == (32, 32) and a["count"] == 64 and a["seed"] == 3
    assert "64 samples of `vgan` (VGAN, shapes, 10 steps)" in a["text"] and "seed 3" in a["text"]
    assert a["elapsed_ms"] > 0 and "ms" in a["text"]
    # the model is in eval mode: a sample does not depend on the others in its batch (BatchNorm)
    assert np.array_equal(demo.samples("vgan", seed=3, count=1)["images"][0], a["images"][0])


def test_sample_counts_and_seeds_are_checked(demo):
    assert demo.samples("gan", seed=0, count=MAX_COUNT)["images"].shape[0] == MAX_COUNT
    assert demo.samples("gan", seed=2.0, count="5")["images"].shape[0] == 5  # what Gradio's widgets send
    assert demo.samples("gan", count=5)["grid"].shape[1] == demo.samples("gan", count=6)["grid"].shape[1]  # 3 a row
    for bad in (0, MAX_COUNT + 1, 2.5, "many", None):
        with pytest.raises(UserError, match=f"number of samples must be a whole number from 1 to {MAX_COUNT}"):
            demo.samples("vgan", 0, bad)
    for bad in (-1, 2**31, 0.5, "x"):
        with pytest.raises(UserError, match="seed must be a whole number"):
            demo.samples("vgan", bad, 4)
    with pytest.raises(UserError, match="Choose a model"):
        demo.samples("wgan", 0, 4)


def test_the_toggle_uses_a_different_checkpoint_for_each_model(demo, assets):
    vgan, gan, vcd = (demo.samples(m, seed=0, count=8) for m in ("vgan", "gan", "vcd"))
    assert not np.array_equal(vgan["images"], gan["images"])
    assert not np.array_equal(vgan["images"], vcd["images"])
    assert demo.model("vgan").cfg.experts == 8 and demo.model("gan").cfg.experts == 1
    assert demo.model("vcd").generator.encoder is not None and demo.model("vgan").generator.encoder is None
    assert "`gan` (GAN" in gan["text"] and "`vcd` (VCD" in vcd["text"] and "transition" in vcd["text"]
    assert sorted(demo.ctx.loads) == ["gan", "vcd", "vgan"]  # each file loaded once
    assert RECOMMENDED_MODEL == "vgan"


def test_models_are_built_lazily_cached_and_rebuilt_when_the_file_changes(assets):
    ctx = FakeDemoContext("vgan", assets)
    demo = VganDemo(ctx)
    assert ctx.loads == []  # constructing the demo loads nothing
    first = demo.model("vgan")
    assert demo.model("vgan") is first and not first.generator.training and not first.energy_net.training
    before = demo.samples("vgan", seed=0, count=4)["images"]
    save_vgan_model(assets, "vgan", seed=11)
    path = assets / "vgan.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert demo.model("vgan") is not first
    assert not np.array_equal(demo.samples("vgan", seed=0, count=4)["images"], before)


# -- interpolation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["linear", "spherical"])
def test_interpolation_runs_from_one_seed_to_the_other(demo, path):
    r = demo.interpolate("vgan", seed_a=5, seed_b=9, steps=6, path=path)
    assert r["images"].shape == (6, 32, 32, 3) and r["alphas"][0] == 0 and r["alphas"][-1] == 1
    assert r["strip"].shape == (36, 6 * 34 + 2, 3)  # one row
    assert np.array_equal(r["strip"][2:34, -34:-2], r["images"][-1])
    # the ends are the first samples of the two seeds
    assert np.array_equal(r["images"][0], demo.samples("vgan", seed=5, count=1)["images"][0])
    assert np.array_equal(r["images"][-1], demo.samples("vgan", seed=9, count=1)["images"][0])
    assert not np.array_equal(r["images"][2], r["images"][0])
    again = demo.interpolate("vgan", 5, 9, 6, path)
    assert np.array_equal(again["images"], r["images"])
    assert "from seed 5 (left) to seed 9 (right)" in r["text"] and path in r["text"]


def test_slerp_keeps_the_ends_and_interpolates_the_norm():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    codes = slerp(a, b, torch.linspace(0, 1, 3))
    assert torch.allclose(codes[0], a) and torch.allclose(codes[-1], b, atol=1e-6)
    assert codes[1].norm() == pytest.approx(2.0) and codes[1][0] == pytest.approx(codes[1][1] / 1.0)
    assert torch.allclose(slerp(a, 2 * a, torch.tensor([0.5])), torch.tensor([[1.5, 0.0]]))  # parallel: linear


def test_interpolation_inputs_are_checked(demo):
    with pytest.raises(UserError, match="interpolation steps must be a whole number from 2 to 16"):
        demo.interpolate("vgan", 0, 1, 1)
    with pytest.raises(UserError, match="linear or spherical"):
        demo.interpolate("vgan", 0, 1, 4, "cubic")
    with pytest.raises(UserError, match="second seed"):
        demo.interpolate("vgan", 0, -3, 4)


# -- VCD transitions --------------------------------------------------------------------------------


def test_vcd_transitions_are_a_chain_of_steps_from_the_image(demo):
    r = demo.transitions(noise_image(), steps=5, seed=2)
    assert r["model"] == "vcd" and r["steps"] == 5 and r["input_resolution"] == (32, 32)
    assert len(r["chain"]) == 6 and all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in r["chain"])
    expected = np.asarray(noise_image().resize((32, 32), Image.Resampling.BILINEAR))
    assert np.abs(r["model_input"].astype(int) - expected.astype(int)).max() <= 1  # the resized upload
    assert np.array_equal(r["chain"][0], r["model_input"])
    assert len(r["energies"]) == 6 and all(0 <= e <= 8 * math.log(2) + 1e-4 for e in r["energies"])
    assert r["strip"].shape == (36, 6 * 34 + 2, 3)  # one row of 6 frames
    assert np.array_equal(r["strip"][2:34, 2:34], r["model_input"])
    same = demo.transitions(noise_image(), steps=5, seed=2)
    other = demo.transitions(noise_image(), steps=5, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(r["chain"], same["chain"], strict=True))
    assert not np.array_equal(r["chain"][1], other["chain"][1])
    # each step is the transition of the previous frame, with the noise of the seed
    m = demo.model("vcd")
    rng = torch.Generator().manual_seed(2)
    x = torch.from_numpy(r["model_input"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        step1 = m.generator.decode(m.generator.mix(m.generator.encode(x), rng))
    assert np.abs((step1[0].permute(1, 2, 0) * 255).round().numpy() - r["chain"][1]).max() <= 1.5
    assert "5 transition steps" in r["text"] and "noise seed 2" in r["text"] and "→" in r["text"]
    assert len(demo.transitions(noise_image(), steps=1)["chain"]) == 2
    with pytest.raises(UserError, match="transition steps must be a whole number from 1 to 20"):
        demo.transitions(noise_image(), steps=21)


def test_transitions_do_not_depend_on_the_toggle_and_need_vcd(assets):
    (assets / "vcd.safetensors").unlink()
    demo = VganDemo(FakeDemoContext("vgan", assets))
    with pytest.raises(UserError, match="No `vcd` checkpoint yet(.|\n)*avstudio train vgan vcd"):
        demo.transitions(noise_image())
    r = demo.analyse(noise_image(), "gan", steps=3, seed=0)  # the energy still works
    assert "avstudio train vgan vcd" in r["transitions"]["message"]
    assert r["energy"]["message"] is None and r["energy"]["model"] == "gan"


# -- the energy on the histograms -------------------------------------------------------------------


def test_the_energy_is_placed_on_the_cards_histograms(demo, assets):
    r = demo.energy(noise_image(), "vgan")
    m = demo.model("vgan")
    x = torch.from_numpy(np.asarray(noise_image().resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255)
    assert r["energy"] == pytest.approx(float(energies(m.cfg, m.energy_net, x.permute(2, 0, 1)[None])[0]), abs=1e-4)
    assert 0 <= r["energy"] <= 8 * math.log(2)
    card = json.loads((assets / "vgan.json").read_text())
    real = np.asarray(card["energies"]["real"])
    assert r["percentile_real"] == pytest.approx(100 * (real < r["energy"]).mean(), abs=0.2)
    hist = r["histogram"]
    assert len(hist["edges"]) == 31 and len(hist["real"]) == 30 and sum(hist["real"]) == pytest.approx(1.0)
    assert sum(hist["generated"]) == pytest.approx(1.0) and hist["marker"] == r["energy"]
    assert hist["edges"][0] <= r["energy"] <= hist["edges"][-1]
    marker = [row for row in r["rows"] if row["images"] == MARKER]
    assert [row["energy"] for row in marker] == [r["energy"]] * 2
    assert {row["share of images"] for row in marker} == {0.0, max(hist["real"] + hist["generated"])}
    assert {row["images"] for row in r["rows"]} == {REAL, GENERATED, MARKER}
    assert "E(x) =" in r["text"] and f"percentile {r['percentile_real']:.0f} among real images" in r["text"]
    assert "Eq. 8" in r["text"] and r["model_input"].shape == (32, 32, 3)


def test_the_gan_energy_is_minus_log_d_and_differs_from_vgan(demo):
    gan, vgan = demo.energy(noise_image(), "gan"), demo.energy(noise_image(), "vgan")
    m = demo.model("gan")
    x = torch.from_numpy(gan["model_input"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        d = torch.sigmoid(m.energy_net(x))[0, 0]
    assert gan["energy"] == pytest.approx(-math.log(float(d)), abs=1e-4)
    assert "−log D(x)" in gan["text"] and "−log D" not in vgan["text"]
    assert gan["energy"] != vgan["energy"]


def test_a_card_without_energies_still_gives_the_energy(tmp_path):
    save_vgan_model(tmp_path, "vgan", 0, with_energies=False)
    r = VganDemo(FakeDemoContext("vgan", tmp_path)).energy(noise_image(), "vgan")
    assert r["percentile_real"] is None and "keeps no energies" in r["text"]
    assert [row["images"] for row in r["rows"]] == [MARKER, MARKER]


def test_histogram_of_equal_values_has_a_width():
    h = histogram(np.array([1.0, 1.0]), np.array([1.0]), 1.0, bins=4)
    assert h["edges"][0] < 1.0 < h["edges"][-1] and h["real"][1] + h["real"][2] == 1.0


# -- bad input and missing checkpoints --------------------------------------------------------------


def test_bad_uploads_are_clear_user_errors(demo, tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    for handler in (demo.transitions, lambda image: demo.energy(image, "vgan"), demo.analyse):
        for bad in (not_image, empty, corrupt):
            with pytest.raises(UserError, match="not a readable image"):
                handler(str(bad))
        with pytest.raises(UserError, match="No image given"):
            handler(None)
        with pytest.raises(UserError, match="No image file at"):
            handler(str(tmp_path / "missing.png"))


def test_any_image_kind_runs(demo):
    rgba = noise_image().convert("RGBA")
    sketch = {"composite": np.asarray(rgba), "background": None, "layers": []}
    for image in (rgba, noise_image().convert("L"), np.asarray(noise_image()), sketch, noise_image(size=(300, 200))):
        r = demo.analyse(image, "vgan", steps=2, seed=1)
        assert len(r["transitions"]["chain"]) == 3 and np.isfinite(r["energy"]["energy"])


def test_grey_models_see_the_luminance(tmp_path):
    torch.manual_seed(0)
    cfg = GanConfig(kind="vcd", channels=1, image_size=16, width=4, hidden=8, experts=4, latent_dim=4, gen_width=4)
    energy_net, generator = build_models(cfg)
    save_checkpoint(tmp_path / "vcd.safetensors",
                    {**module_tensors(energy_net, "energy"), **module_tensors(generator, "generator")},
                    {"net": asdict(cfg), "kind": "vcd"})
    r = VganDemo(FakeDemoContext("vgan", tmp_path)).transitions(noise_image(), steps=2)
    assert r["input_resolution"] == (16, 16) and r["model_input"].shape == (16, 16, 3)
    assert np.array_equal(r["model_input"][..., 0], r["model_input"][..., 2])  # grey shown as RGB


def test_missing_checkpoints_say_which_and_how_to_train_them(tmp_path):
    demo = VganDemo(FakeDemoContext("vgan", tmp_path / "nothing"))
    for name, call in (("vgan", lambda: demo.samples("vgan")), ("gan", lambda: demo.samples("gan")),
                       ("gan", lambda: demo.interpolate("gan")), ("vcd", lambda: demo.transitions(noise_image())),
                       ("gan", lambda: demo.energy(noise_image(), "gan"))):
        with pytest.raises(UserError) as info:
            call()
        message = str(info.value)
        assert f"No `{name}` checkpoint yet" in message and f"avstudio train vgan {name}" in message
        assert "avstudio runs promote" in message
    with pytest.raises(UserError, match="No `vcd` checkpoint yet(.|\n)*No `vgan` checkpoint yet"):
        demo.analyse(noise_image(), "vgan")
    status = demo.checkpoints_markdown()
    assert all(f"`avstudio train vgan {m}`" in status for m in ("vgan", "gan", "vcd"))


def test_a_checkpoint_of_another_kind_or_architecture_is_a_message_not_a_crash(assets):
    import shutil

    shutil.copy(assets / "gan.safetensors", assets / "vgan.safetensors")
    shutil.copy(assets / "gan.json", assets / "vgan.json")
    with pytest.raises(UserError, match="holds a gan model, not a vgan model"):
        VganDemo(FakeDemoContext("vgan", assets)).samples("vgan")
    save_checkpoint(assets / "gan.safetensors", {"energy.x": torch.zeros(1)}, {"net": {"kind": "gan", "experts": 1}})
    with pytest.raises(UserError, match="not a VGAN-plugin model(.|\n)*avstudio train vgan gan"):
        VganDemo(FakeDemoContext("vgan", assets)).samples("gan")


def test_the_status_line_lists_what_is_there(assets):
    (assets / "vcd.safetensors").unlink()
    status = VganDemo(FakeDemoContext("vgan", assets)).checkpoints_markdown()
    assert "VGAN: `vgan` (shipped, shapes, 10 steps)" in status and "GAN: `gan` (shipped" in status
    assert "VCD: not trained yet (`avstudio train vgan vcd`)" in status


# -- the built Blocks -------------------------------------------------------------------------------


def _built(assets):
    return built_tab(build_demo, FakeDemoContext("vgan", assets))


def test_every_event_is_named_and_start_up_loads_no_model(assets, monkeypatch):
    from plugins.vgan import demo as demo_module

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded at start-up")

    monkeypatch.setattr(demo_module, "models_from_checkpoint", boom)
    monkeypatch.setattr(FakeDemoContext, "load_checkpoint", boom)
    example_file(assets)
    blocks, by_elem = _built(assets)
    names = [dep.get("api_name") for dep in blocks.config["dependencies"]]
    assert names and all(isinstance(n, str) and n.startswith("vgan_") for n in names), names
    assert {"vgan_samples", "vgan_interpolate", "vgan_analyse", "vgan_analyse_example", "vgan_load_example",
            "vgan_switch_model", "vgan_checkpoints"} <= set(names)
    model = by_elem["vgan-model"]["props"]
    assert [c[1] for c in model["choices"]] == ["vgan", "gan", "vcd"] and model["value"] == RECOMMENDED_MODEL
    assert [c[0] for c in model["choices"]] == ["VGAN", "GAN", "VCD"]
    count = by_elem["vgan-count"]["props"]
    assert (count["minimum"], count["maximum"], count["value"]) == (1, MAX_COUNT, 64)
    assert by_elem["vgan-input"]["props"]["height"] >= 128
    # grids and strips are sent at their real size and drawn enlarged with crisp pixels
    assert by_elem["vgan-samples"]["props"]["height"] >= 400 and by_elem["vgan-chain"]["props"]["height"] >= 100
    assert "#vgan-samples img" in PIXELATED_CSS and "image-rendering: pixelated" in PIXELATED_CSS
    assert "VGAN: `vgan` (shipped" in by_elem["vgan-checkpoints"]["props"]["value"]  # cards only
    assert "vgan-energy-plot" in by_elem and "vgan-examples" in by_elem


def test_the_sample_button_and_the_toggle(assets):
    blocks, by_elem = _built(assets)
    deps = blocks.config["dependencies"]
    samples = next(d for d in deps if d["api_name"] == "vgan_samples")
    assert samples["inputs"] == [by_elem[k]["id"] for k in ("vgan-model", "vgan-seed", "vgan-count")]
    assert samples["outputs"] == [by_elem["vgan-samples"]["id"], by_elem["vgan-samples-text"]["id"]]
    grid, text = event_fn(blocks, "vgan_samples").fn("gan", 0, 64)
    assert grid.shape == (274, 274, 3) and "`gan`" in text
    strip, text = event_fn(blocks, "vgan_interpolate").fn("vgan", 1, 2, 8, "spherical")
    assert strip.shape[1] > 4 * strip.shape[0] and "spherical" in text
    switch = next(d for d in deps if d["api_name"] == "vgan_switch_model")
    assert [tuple(t) for t in switch["targets"]] == [(by_elem["vgan-model"]["id"], "change")]
    assert by_elem["vgan-checkpoints"]["id"] in switch["outputs"]
    grid, grid_text, strip, strip_text, plot, energy_text, status = event_fn(blocks, "vgan_switch_model").fn(
        "gan", 0, 16, 0, 1, 4, "linear", None)
    assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3) and "`gan`" in grid_text and "`gan`" in strip_text
    assert isinstance(plot, dict) and isinstance(energy_text, dict)  # no image yet: left as they are
    assert "Models:" in status
    *_, plot, energy_text, _ = event_fn(blocks, "vgan_switch_model").fn(
        "vgan", 0, 16, 0, 1, 4, "linear", str(example_file(assets)))
    assert set(plot["images"]) == {REAL, GENERATED, MARKER} and "Eq. 8" in energy_text


def test_the_toggle_to_a_missing_model_says_how_to_train_it(assets):
    (assets / "gan.safetensors").unlink()
    blocks, _ = _built(assets)
    grid, grid_text, strip, strip_text, plot, energy_text, status = event_fn(blocks, "vgan_switch_model").fn(
        "gan", 0, 16, 0, 1, 4, "linear", str(example_file(assets)))
    assert grid is None and strip is None and plot.empty
    assert all("avstudio train vgan gan" in t for t in (grid_text, strip_text, energy_text, status))


def test_the_wrappers_turn_user_errors_into_messages(assets, tmp_path):
    import gradio as gr

    blocks, _ = _built(assets)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(gr.Error, match="not a readable image"):
        event_fn(blocks, "vgan_analyse").fn(str(bad), "vgan", 3, 0)
    with pytest.raises(gr.Error, match="number of samples"):
        event_fn(blocks, "vgan_samples").fn("vgan", 0, 0)


def test_missing_checkpoints_still_build(tmp_path):
    import gradio as gr

    blocks, by_elem = _built(tmp_path)
    assert "not trained yet" in by_elem["vgan-checkpoints"]["props"]["value"]
    with pytest.raises(gr.Error, match="No `vgan` checkpoint yet"):
        event_fn(blocks, "vgan_samples").fn("vgan", 0, 8)


def test_upload_component_passes_corrupt_files_to_the_handler(demo, tmp_path):
    import gradio as gr
    from gradio.data_classes import ImageData

    from app.api.demo import lenient_upload

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    passed = lenient_upload(gr.Image(type="filepath")).preprocess(ImageData(path=str(bad)))
    assert passed == str(bad)
    with pytest.raises(UserError, match="not a readable image"):
        demo.analyse(passed)


def test_the_shipped_examples_are_small_shapes_images():
    examples = sorted((ROOT / "assets" / "vgan" / "examples").glob("*.png"))
    assert 4 <= len(examples) <= 6
    for path in examples:
        assert path.stat().st_size < 8_000
        with Image.open(path) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


def test_the_tab_opens_with_samples_and_an_interpolation(assets):
    """On page load (not at start-up) the samples grid and the interpolation strip are drawn."""
    blocks, by_elem = _built(assets)
    load = next(d for d in blocks.config["dependencies"] if d["api_name"] == "vgan_panels_on_load")
    assert [t[1] for t in load["targets"]] == ["load"]
    assert load["outputs"] == [by_elem[k]["id"] for k in ("vgan-samples", "vgan-samples-text", "vgan-interpolation",
                                                          "vgan-interpolation-text")]
    assert load["inputs"][0] == by_elem["vgan-model"]["id"]
    grid, grid_text, strip, strip_text = event_fn(blocks, "vgan_panels_on_load").fn(RECOMMENDED_MODEL, 0, 16, 0, 1, 4,
                                                                              "linear")
    assert grid.shape == (4 * 34 + 2, 4 * 34 + 2, 3) and strip.shape[1] > 3 * strip.shape[0]
    assert f"`{RECOMMENDED_MODEL}`" in grid_text
    (assets / f"{RECOMMENDED_MODEL}.safetensors").unlink()  # a missing model: the panels say how to train it
    grid, grid_text, strip, strip_text = event_fn(blocks, "vgan_panels_on_load").fn(RECOMMENDED_MODEL, 0, 16, 0, 1, 4,
                                                                              "linear")
    assert grid is None and strip is None and "avstudio train vgan" in grid_text
