"""S3Pool demo handlers: pixel-space draws, feature maps, predictions, benchmark plot data, the wiring."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from app.api import UserError
from app.api.training import module_tensors, save_checkpoint
from plugins.s3pool.demo import MAX_NET, S3POOL_NET, S3PoolDemo
from plugins.s3pool.model import NetConfig, build_net
from plugins.s3pool.report import NO_REPORT, benchmark_data, load_report
from plugins.s3pool.tab import build_demo
from tests.demo_helpers import (
    S3POOL_LABELS,
    S3POOL_REPORT,
    FakeDemoContext,
    built_tab,
    example_file,
    noise_image,
    save_s3pool_assets,
)


@pytest.fixture
def assets(tmp_path):
    return save_s3pool_assets(tmp_path / "assets")


@pytest.fixture
def demo(assets):
    return S3PoolDemo(FakeDemoContext("s3pool", assets))


# -- pixel space ---------------------------------------------------------------------------------


def test_pixel_space_draws_differ_and_the_deterministic_path_does_not(demo):
    a = demo.augment(noise_image(), grid_size=16, layers=1, draws=4)
    b = demo.augment(noise_image(), grid_size=16, layers=1, draws=4)
    assert a["input_resolution"] == (32, 32) and a["output_resolution"] == (16, 16)
    assert a["model_input"].shape == (32, 32, 3) and a["model_input"].dtype == np.uint8
    assert len(a["draws"]) == 4
    for d in a["draws"]:
        assert d.shape == (16, 16, 3) and d.dtype == np.uint8
    assert all(not np.array_equal(a["draws"][i], a["draws"][j]) for i in range(4) for j in range(i + 1, 4))
    assert np.array_equal(a["deterministic"], b["deterministic"]) and a["deterministic"].shape == (16, 16, 3)
    assert a["max_pool"].shape == (16, 16, 3)
    # every draw keeps g/2 = 8 sorted rows per strip of 16 rows
    rows = a["rows"][0][0]
    assert len(rows) == 16 and rows == sorted(rows) and sum(r < 16 for r in rows) == 8
    # sent as one picture at its real size: the draws, the deterministic path, max pool, 1-pixel white gaps
    strip = a["strip"]
    assert strip.shape == (16, 6 * 16 + 5, 3) and strip.dtype == np.uint8
    for k, raw in enumerate([*a["draws"], a["deterministic"], a["max_pool"]]):
        assert np.array_equal(strip[:, k * 17: k * 17 + 16], raw)
    assert (strip[:, 16::17] == 255).all()


def test_pixel_space_is_reproducible_with_a_seed_and_two_layers_halve_twice(demo):
    a = demo.augment(noise_image(), grid_size=8, layers=2, draws=3, seed=7)
    b = demo.augment(noise_image(), grid_size=8, layers=2, draws=3, seed=7)
    assert a["grid_sizes"] == [8, 4] and a["output_resolution"] == (8, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a["draws"], b["draws"], strict=True))
    assert a["draws"][0].shape == (8, 8, 3) and a["strip"].shape == (8, 5 * 8 + 4, 3)  # 3 draws, deterministic, max pool
    assert len(a["rows"][0]) == 2  # one set of rows per layer
    assert demo.augment(noise_image(), grid_size=2, layers=2)["grid_sizes"] == [2, 2]
    assert demo.augment(noise_image(), grid_size=32)["output_resolution"] == (16, 16)


@pytest.mark.parametrize("grid", [3, 0, 34, "x", None, 4.5])
def test_bad_grid_sizes_are_clear_user_errors(demo, grid):
    with pytest.raises(UserError, match="even number from 2 to 32"):
        demo.augment(noise_image(), grid_size=grid)


def test_the_pixel_panel_needs_no_checkpoint(tmp_path):
    demo = S3PoolDemo(FakeDemoContext("s3pool", tmp_path))
    assert len(demo.augment(noise_image(), draws=2)["draws"]) == 2


# -- the network's feature maps ------------------------------------------------------------------


def test_feature_maps_of_the_first_s3pool_layer(demo):
    a = demo.features(noise_image(), draws=3, channels=8)
    b = demo.features(noise_image(), draws=3, channels=8)
    assert a["message"] is None and a["grid_size"] == 16 and a["map_resolution"] == (16, 16)
    assert len(a["channels"]) == 4  # the tiny net has 4 stage-1 channels: all of them
    # a row per draw: the 4 channels side by side at their real 16×16, 1-pixel gaps; the rows one under another
    expected = (16, 4 * 16 + 3, 3)
    assert a["deterministic"].shape == expected and a["deterministic"].dtype == np.uint8
    assert [g.shape for g in a["draws"]] == [expected] * 3
    assert a["picture"].shape == (4 * 16 + 3, 4 * 16 + 3, 3)
    assert np.array_equal(a["picture"][-16:], a["deterministic"]) and np.array_equal(a["picture"][:16], a["draws"][0])
    raw = a["maps"]
    assert not any(np.array_equal(raw["draws"][i], raw["draws"][j]) for i in range(3) for j in range(i + 1, 3))
    assert np.array_equal(raw["deterministic"], b["maps"]["deterministic"])
    # the deterministic path is what the eval-mode network computes (BatchNorm stayed in eval mode)
    net = demo.net(S3POOL_NET)
    assert not net.training
    x = torch.from_numpy(np.asarray(noise_image().resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255)
    with torch.no_grad():
        first = net.forward_features(x.permute(2, 0, 1)[None])[0][0].numpy()
    assert np.allclose(raw["deterministic"], first[a["channels"]], atol=1e-5)


def test_feature_grid_of_a_wider_net_shows_eight_channels_in_two_rows(tmp_path):
    config = NetConfig(depth=8, width=12, downsample="s3pool", labels=S3POOL_LABELS)
    save_checkpoint(tmp_path / "resnet-s3pool.safetensors", module_tensors(build_net(config), "net"),
                    {"net": asdict(config)})
    r = S3PoolDemo(FakeDemoContext("s3pool", tmp_path)).features(noise_image(), draws=2, channels=8)
    assert len(r["channels"]) == 8 and r["deterministic"].shape == (16, 8 * 16 + 7, 3)
    assert r["picture"].shape == (3 * 16 + 2, 8 * 16 + 7, 3)  # 2 draws and the deterministic path


# -- predictions ---------------------------------------------------------------------------------


def test_predictions_are_distributions_over_the_labels(demo):
    r = demo.predict(noise_image())
    assert set(r) == {MAX_NET, S3POOL_NET}
    for entry in r.values():
        assert entry["message"] is None
        assert list(entry["probabilities"]) == list(S3POOL_LABELS)
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(entry["top3"]) == 3 and set(entry["top3"]) <= set(S3POOL_LABELS)
        assert max(entry["top3"].values()) == pytest.approx(max(entry["probabilities"].values()), abs=1e-4)
    assert demo.net(MAX_NET) is demo.net(MAX_NET)  # rebuilt only when the checkpoint changes


def test_missing_checkpoints_say_how_to_train_them(assets):
    (assets / "resnet-max.safetensors").unlink()
    demo = S3PoolDemo(FakeDemoContext("s3pool", assets))
    r = demo.predict(noise_image())
    assert r[MAX_NET]["top3"] is None
    assert "avstudio train s3pool classifier --set downsample=max" in r[MAX_NET]["message"]
    assert r[S3POOL_NET]["message"] is None
    empty = S3PoolDemo(FakeDemoContext("s3pool", assets / "nothing"))
    assert "--set downsample=s3pool" in empty.predict(noise_image())[S3POOL_NET]["message"]
    features = empty.features(noise_image())
    assert features["picture"] is None and "avstudio train s3pool classifier" in features["message"]
    whole = empty.analyse(noise_image())
    assert len(whole["augment"]["draws"]) == 4 and whole["features"]["message"]


def test_a_checkpoint_of_another_architecture_is_a_message_not_a_crash(assets):
    save_checkpoint(assets / "resnet-max.safetensors", {"net.x": torch.zeros(1)}, {"net": {"depth": 8}})
    r = S3PoolDemo(FakeDemoContext("s3pool", assets)).predict(noise_image())
    assert "not an S3Pool-plugin network" in r[MAX_NET]["message"]
    assert "avstudio train s3pool classifier" in r[MAX_NET]["message"]


def test_corrupt_upload_is_a_clear_user_error(demo, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    for handler in (demo.augment, demo.features, demo.predict, demo.analyse):
        with pytest.raises(UserError, match="not a readable image"):
            handler(str(bad))
    with pytest.raises(UserError, match="No image"):
        demo.analyse(None)


def test_any_image_kind_runs(demo):
    rgba = noise_image().convert("RGBA")
    sketch = {"composite": np.asarray(rgba), "background": None, "layers": []}
    for image in (rgba, noise_image().convert("L"), np.asarray(noise_image()), sketch):
        r = demo.analyse(image, grid_size=4, layers=2, seed=1)
        assert r["augment"]["output_resolution"] == (8, 8) and r["predict"][MAX_NET]["top3"]


# -- the benchmark report ------------------------------------------------------------------------


def test_plot_data_rows_match_the_report(assets):
    figures = load_report(assets)
    data = benchmark_data(figures)
    rows = data["error_vs_size"]
    assert [(r["pooling"], r["train size"]) for r in rows] == [("max", 250), ("max", 1000), ("s3pool", 250),
                                                               ("s3pool", 1000)]
    for r in rows:
        assert r["test error"] == S3POOL_REPORT["figures"]["test_error"][r["pooling"]][str(r["train size"])]
        assert r["std"] == S3POOL_REPORT["figures"]["test_error_std"][r["pooling"]][str(r["train size"])]
    assert data["grid_sweep"] == [{"grid": "2-2", "train error": 0.0, "test error": 0.45},
                                  {"grid": "16-8", "train error": 0.1, "test error": 0.4}]
    assert "1.30×" in data["summary"] and "ensemble_2 0.410" in data["summary"]


def test_no_report_is_a_note(tmp_path):
    assert load_report(tmp_path) is None
    (tmp_path / "benchmark-report.json").write_text("{not json")
    assert load_report(tmp_path) is None


# -- the built Blocks ----------------------------------------------------------------------------


def _built(assets):
    return built_tab(build_demo, FakeDemoContext("s3pool", assets))


def test_every_event_is_named_and_start_up_loads_no_model(assets, monkeypatch):
    from plugins.s3pool import demo as demo_module

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded at start-up")

    monkeypatch.setattr(demo_module, "net_from_checkpoint", boom)
    example_file(assets)
    blocks, by_elem = _built(assets)
    names = [dep.get("api_name") for dep in blocks.config["dependencies"]]
    assert names and all(isinstance(n, str) and n.startswith("s3pool_") for n in names), names
    assert {"s3pool_run", "s3pool_run_sketch", "s3pool_augment", "s3pool_run_example"} <= set(names)
    grid = by_elem["s3pool-grid"]["props"]
    assert (grid["minimum"], grid["maximum"], grid["step"], grid["value"]) == (2, 32, 2, 16)
    assert by_elem["s3pool-input"]["props"]["height"] >= 128
    assert "s3pool-error-plot" in by_elem and "s3pool-sweep" in by_elem


def test_the_wrappers_turn_user_errors_into_messages_and_redraw_needs_an_image(assets, tmp_path):
    import gradio as gr

    blocks, _ = _built(assets)
    run = next(f for f in blocks.fns.values() if f.api_name == "s3pool_run")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(gr.Error, match="not a readable image"):
        run.fn(str(bad), 16, 1)
    redraw = next(f for f in blocks.fns.values() if f.api_name == "s3pool_augment")
    assert all(isinstance(u, dict) and "value" not in u for u in redraw.fn(None, 16, 1))
    seen, strip, _ = redraw.fn(str(example_file(assets)), 8, 2)
    assert strip.shape == (8, 6 * 8 + 5, 3)


def test_missing_report_and_checkpoints_still_build(tmp_path):
    _, by_elem = _built(tmp_path)
    assert by_elem["s3pool-no-report"]["props"]["value"] == NO_REPORT
    assert "s3pool-error-plot" not in by_elem


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


def test_analyse_predicts_what_the_full_forward_pass_predicts(demo):
    """analyse reuses the S3Pool network's first pooled map for its prediction: same answer as predict."""
    for net_name in (S3POOL_NET, MAX_NET):  # BatchNorm statistics away from their init: a real check
        for module in demo.net(net_name).modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
    image = noise_image()
    together = demo.analyse(image, 16, 1, seed=3)["predict"]
    alone = demo.predict(image)
    for name in (MAX_NET, S3POOL_NET):
        for label, p in alone[name]["probabilities"].items():
            assert together[name]["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_every_draw_of_the_pixel_panel_is_the_max_of_its_windows(demo):
    """The draws are computed together; each must still be the stride-1 max at its own rows and columns."""
    r = demo.augment(noise_image(), grid_size=8, layers=1, draws=4, seed=11)
    x = torch.from_numpy(r["model_input"]).permute(2, 0, 1).float()
    full = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (0, 1, 0, 1), value=-1.0), 2, stride=1)
    distinct = {tuple(rows[0]) for rows in r["rows"]}
    assert len(distinct) > 1  # the draws differ
    for draw, rows, cols in zip(r["draws"], r["rows"], r["cols"], strict=True):
        expected = full[:, rows[0]][:, :, cols[0]].permute(1, 2, 0).round().to(torch.uint8).numpy()
        assert np.array_equal(draw, expected)


def test_the_curves_are_the_seed_means_of_max_pooling_and_s3pool_at_the_smallest_size():
    from plugins.s3pool.report import mean_curves

    def run(pooling, size, seed, train, val, grid=(16, 8), augment=False):
        return {"downsample": pooling, "train_size": size, "seed": seed, "grid_sizes": list(grid), "augment": augment,
                "curves": {"train_error": [[100, train], [200, train / 2]], "val_error": [[100, val], [200, val]]}}

    runs = [run("max", 250, 0, 0.4, 0.5), run("max", 250, 1, 0.2, 0.7), run("s3pool", 250, 0, 0.6, 0.4),
            run("s3pool", 250, 0, 0.9, 0.9, grid=(2, 2)),  # the grid sweep: not the comparison's grid
            run("max", 1000, 0, 0.9, 0.9), run("max", 250, 2, 0.9, 0.9, augment=True),
            run("s3pool", 250, 1, 0.8, 0.2), run("stochastic", 250, 0, 0.9, 0.9)]
    rows = {(r["curve"], r["step"]): r["error"] for r in mean_curves(runs, 250)}
    assert rows[("max training", 100)] == pytest.approx(0.3) and rows[("max training", 200)] == pytest.approx(0.15)
    assert rows[("max held-out (val)", 200)] == pytest.approx(0.6)
    assert rows[("s3pool training", 100)] == pytest.approx(0.7) and rows[("s3pool held-out (val)", 100)] == pytest.approx(0.3)
    assert {curve for curve, _ in rows} == {"max training", "max held-out (val)", "s3pool training",
                                            "s3pool held-out (val)"}
    assert benchmark_data({"test_error": {"max": {"250": 0.5}}, "runs": runs})["curves_size"] == 250
