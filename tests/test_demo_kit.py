"""The demo kit (app.api.demo): the pieces the method tabs share, each on its own, by what it does."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.api import Checkpoint, UserError
from app.api.demo import (
    ImageInput,
    add_css,
    enlarge,
    example_paths,
    image_input,
    interleaved_latency_ms,
    pixelated_css,
    rebuild_check,
    refreshed_choices,
    user_errors,
    viridis,
)

# -- showing small images ------------------------------------------------------------------------------


def test_the_model_input_update_shows_the_input_enlarged_with_the_resolution_the_model_sees():
    from app.api.demo import model_input_update

    r = {"model_input": np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3), "input_resolution": (4, 6)}
    update = model_input_update(r, "S3Pool", size=12)
    assert update["label"] == "what S3Pool sees: 6×4"  # width × height
    assert update["value"].shape == (8, 12, 3) and (update["value"][::2, ::2] == r["model_input"]).all()
    assert model_input_update(r)["label"] == "what the network sees: 6×4"
    assert model_input_update(r)["value"].shape == (168, 252, 3)  # the kit's READABLE_PX, 256: factor 42


def test_enlarge_repeats_every_pixel_into_a_crisp_square_up_to_the_target():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = enlarge(image, target=12)  # longer side 3 → factor 4
    assert big.shape == (8, 12, 3)
    assert (big[::4, ::4] == image).all() and (big[3::4, 3::4] == image).all()
    assert enlarge(np.zeros((32, 32, 3), np.uint8)).shape == (256, 256, 3)  # the default: about 256 px
    assert enlarge(np.zeros((300, 512)), target=256).shape == (300, 512)  # large (or grey) images left alone


def test_pixelated_css_draws_the_named_images_crisp_and_whole_and_the_thumbnails_crisp():
    css = pixelated_css("m-input", "m-seen", examples="m-examples", extra="#m-stats td { padding: 0; }")
    assert css.startswith("<style>") and css.endswith("</style>")
    assert "#m-input img, #m-seen img { object-fit: contain; image-rendering: pixelated; }" in css
    assert "#m-examples img { image-rendering: pixelated; }" in css and "#m-examples img { object-fit" not in css
    assert "#m-stats td { padding: 0; }" in css
    assert pixelated_css() == "<style>\n\n</style>"


def test_add_css_puts_the_style_in_the_page_head():
    with gr.Blocks() as blocks:
        add_css(pixelated_css("x-input"))
    html = next(c for c in blocks.config["components"] if c["type"] == "html")
    assert "#x-input img" in html["props"]["head"]


def test_viridis_runs_from_dark_purple_to_yellow_and_clips():
    colours = viridis(np.array([[0.0, 1.0], [-3.0, 7.0]]))
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    assert colours[0, 0].tolist() == [68, 1, 84] == colours[1, 0].tolist()
    assert colours[0, 1].tolist() == [253, 231, 37] == colours[1, 1].tolist()
    assert viridis(0.5).tolist() == [33, 145, 140]  # a scalar is one colour
    middle = viridis(0.125)  # halfway between the first two stops
    assert middle.tolist() == [round((68 + 59) / 2), round((1 + 82) / 2), round((84 + 139) / 2)]


# -- handlers -----------------------------------------------------------------------------------------


def test_user_errors_turns_a_user_error_into_its_one_line_message_and_keeps_the_rest():
    @user_errors
    def handler(image: str, count: int = 2) -> str:
        """Docs for the API page.

        Args:
            image: an image.
        """
        if image == "bad":
            raise UserError("That is not an image.")
        if image == "bug":
            raise KeyError("b")
        return image * count

    assert handler("ab") == "abab" and handler("a", count=3) == "aaa"
    with pytest.raises(gr.Error) as info:
        handler("bad")
    assert info.value.message == "That is not an image." and info.value.__cause__ is None
    with pytest.raises(KeyError):  # a bug stays a bug (Gradio logs its traceback)
        handler("bug")
    assert handler.__name__ == "handler" and "Docs for the API page" in handler.__doc__
    import inspect

    assert list(inspect.signature(handler).parameters) == ["image", "count"]


def test_user_errors_works_on_methods():
    class Events:
        @user_errors
        def run(self, value: int) -> int:
            if value < 0:
                raise UserError("negative")
            return value + 1

    assert Events().run(1) == 2
    with pytest.raises(gr.Error, match="negative"):
        Events().run(-1)


@pytest.mark.parametrize("held, expected_value", [("b", None), ("gone", "a")])
def test_refreshed_choices_keeps_a_held_choice_and_falls_back_when_it_is_gone(held, expected_value):
    update = refreshed_choices([("A", "a"), ("B", "b")], held, "a")
    assert update["choices"] == [("A", "a"), ("B", "b")]
    assert update.get("value") == expected_value  # no value: the selector keeps what the user picked


def test_interleaved_latency_times_each_function_in_turns():
    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.004)

    def fast() -> None:
        calls.append("fast")

    times = interleaved_latency_ms({"slow": slow, "fast": fast}, repeats=5, warmup=2)
    assert set(times) == {"slow", "fast"}
    assert times["slow"] >= 3.5 and times["fast"] < times["slow"]
    assert calls == ["slow", "fast"] * 7  # warm-up turns, then timed turns, A B A B


# -- checkpoint slots -----------------------------------------------------------------------------------


def _checkpoint(tensors: dict) -> Checkpoint:
    return Checkpoint(path=Path("x.safetensors"), tensors=tensors, card={})


def test_rebuild_check_accepts_what_rebuilds_and_rewords_what_does_not():
    def rebuild(checkpoint: Checkpoint) -> None:
        if "weight" not in checkpoint.tensors:
            raise KeyError("weight")
        if checkpoint.tensors["weight"] != 1:
            raise RuntimeError("size mismatch for weight\nsecond line")
        if checkpoint.tensors.get("kind") == "gan":
            raise UserError("this is a gan model; the slot takes a vgan model")

    check = rebuild_check(rebuild, "a Toy network")
    assert check(_checkpoint({"weight": 1})) is None
    with pytest.raises(UserError) as missing:
        check(_checkpoint({}))
    assert str(missing.value) == "not a Toy network: KeyError: 'weight'"
    with pytest.raises(UserError) as mismatch:
        check(_checkpoint({"weight": 2}))
    assert str(mismatch.value) == "not a Toy network: RuntimeError: size mismatch for weight"  # one line
    with pytest.raises(UserError) as kind:
        check(_checkpoint({"weight": 1, "kind": "gan"}))
    assert str(kind.value) == "this is a gan model; the slot takes a vgan model"  # the rebuild's own words
    with pytest.raises(ZeroDivisionError):  # not a rebuild error: a bug, left alone
        rebuild_check(lambda c: 1 / 0, "x")(_checkpoint({}))


# -- the image panel -------------------------------------------------------------------------------------


def _examples_dir(tmp_path: Path, names: tuple[str, ...] = ("b.png", "a.png")) -> Path:
    (tmp_path / "examples").mkdir()
    for name in names:
        Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / "examples" / name)
    (tmp_path / "examples" / "notes.txt").write_text("not an example")
    return tmp_path


def test_example_paths_are_the_sorted_pngs_of_the_examples_folder(tmp_path):
    assets = _examples_dir(tmp_path)
    assert example_paths(assets) == [str(assets / "examples" / "a.png"), str(assets / "examples" / "b.png")]
    assert example_paths(tmp_path / "nowhere") == [] and example_paths(None) == []


def _panel(tmp_path: Path, *, draw: str | None = "Draw something", examples_first: bool = True):
    def run(image, level):
        """Echo."""
        return f"{Path(image).name if isinstance(image, str) else 'drawing'} at {level}"

    with gr.Blocks() as blocks:
        images = image_input("toy", height=128, draw=draw)
        level = gr.Slider(0, 10, value=3, elem_id="toy-level")
        out = gr.Textbox(elem_id="toy-out")
        if examples_first:
            images.examples(_examples_dir(tmp_path))
            images.wire(run, [level], [out], api_name="toy_run")
        else:
            images.wire(run, [level], [out], api_name="toy_run")
            images.examples(_examples_dir(tmp_path))
    by_elem = {c["props"].get("elem_id"): c for c in blocks.config["components"] if c["props"].get("elem_id")}
    return blocks, by_elem, images


@pytest.mark.parametrize("examples_first", [True, False])
def test_the_image_panel_runs_the_demo_from_either_button_and_from_an_example(tmp_path, examples_first):
    blocks, by_elem, images = _panel(tmp_path, examples_first=examples_first)
    assert isinstance(images, ImageInput)
    assert by_elem["toy-input"]["props"]["height"] == 128 and by_elem["toy-sketch"]["type"] == "imageeditor"
    assert {"toy-run", "toy-run-sketch", "toy-examples"} <= set(by_elem)
    deps = {d["api_name"]: d for d in blocks.config["dependencies"] if d.get("api_name")}
    level, out = by_elem["toy-level"]["id"], by_elem["toy-out"]["id"]
    assert deps["toy_run"]["inputs"] == [by_elem["toy-input"]["id"], level]
    assert deps["toy_run_sketch"]["inputs"] == [by_elem["toy-sketch"]["id"], level]
    assert deps["toy_run"]["outputs"] == deps["toy_run_sketch"]["outputs"] == deps["toy_run_example"]["outputs"]
    # a click on an example fills the upload only (the slider keeps what the user set), then runs the demo
    load = deps["toy_load_example"]
    assert load["outputs"] == [by_elem["toy-input"]["id"]]
    assert deps["toy_run_example"]["trigger_after"] == load["id"]
    assert deps["toy_run_example"]["inputs"] == [by_elem["toy-input"]["id"], level]
    assert out in deps["toy_run_example"]["outputs"]
    samples = next(c for c in blocks.config["components"] if c["type"] == "dataset")["props"]["samples"]
    assert len(samples) == 2  # the two PNGs, not the text file


def test_without_a_drawing_the_panel_is_one_upload_and_without_examples_no_example_event(tmp_path):
    def run(image):
        return image

    with gr.Blocks() as blocks:
        images = image_input("solo", draw=None)
        out = gr.Textbox()
        assert images.examples(tmp_path / "no-assets") is None
        images.wire(run, [], [out], api_name="solo_run")
    assert images.sketch is None and images.run_sketch is None
    assert not [c for c in blocks.config["components"] if c["type"] in ("tab", "tabitem", "imageeditor", "dataset")]
    names = [d.get("api_name") for d in blocks.config["dependencies"]]
    assert names == ["solo_run"]
