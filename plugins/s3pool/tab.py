"""The S3Pool tab's Gradio wiring: the layout and events over :class:`plugins.s3pool.demo.S3PoolDemo`'s
handlers, and the committed benchmark report's plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.api import DemoContext
from app.api.demo import add_css, image_input, model_input_update, pixelated_css, user_errors
from plugins.s3pool.demo import (
    DRAWS_PX,
    FEATURES_PX,
    GRID_CHOICES,
    INPUT_SIZE,
    MAX_NET,
    RECOMMENDED_GRID,
    S3POOL_NET,
    S3PoolDemo,
)
from plugins.s3pool.report import NO_REPORT, benchmark_data, load_report

# --------------------------------------------------------------------------------------------
# Gradio wiring
# --------------------------------------------------------------------------------------------

READABLE_PX = 192  # small images are shown enlarged (nearest neighbour) to about this many pixels
# Small images (32×32 inputs, 16×16 maps) are drawn enlarged with crisp pixels, not as a blurred speck.
PIXELATED_CSS = pixelated_css("s3pool-input", "s3pool-model-input", "s3pool-draws", "s3pool-features",
                              examples="s3pool-examples")
INTRO = ("S3Pool first max-pools with stride 1, then keeps **g/2 random rows and columns in every strip "
         "of g** instead of every other one. Upload, draw or click an example: see that distortion on "
         "the image itself and on the network's feature maps, and what the max-pool and S3Pool networks "
         "predict.")


def augment_markdown(r: dict[str, Any]) -> str:
    (h, w), (oh, ow) = r["input_resolution"], r["output_resolution"]
    layers = len(r["grid_sizes"])
    draws = len(r["draws"])
    return (f"Left to right: {draws} random draws, the deterministic (test) path, 2×2 max pool. "
            f"{w}×{h} → {ow}×{oh} through {layers} S3Pool layer{'s' if layers > 1 else ''} "
            f"(grid {'-'.join(map(str, r['grid_sizes']))}; seed {r['seed']}). Each draw keeps, in every strip of "
            "g rows, g/2 rows at random (and the same for columns) after a stride-1 2×2 max pool: the random "
            "stretching and squeezing the paper calls implicit data augmentation. The deterministic path "
            "averages the candidate positions; 2×2 max pool keeps every other row and column.")


def features_markdown(r: dict[str, Any]) -> str:
    if r["message"]:
        return r["message"]
    (mh, mw) = r["map_resolution"]
    return (f"`{S3POOL_NET}` after its first S3Pool layer (grid {r['grid_size']}). Rows: {len(r['draws'])} "
            f"random draws, then the deterministic (test) path. Columns: channels "
            f"{', '.join(map(str, r['channels']))} (most active first), {mw}×{mh} each, every channel "
            "normalised over the draws (viridis: dark = low). Only the pooling layer draws at random; "
            "BatchNorm uses its running statistics.")


def predict_markdown(r: dict[str, Any]) -> str:
    return "\n\n".join(f"**{name}:** {entry['message']}" for name, entry in r.items() if entry["message"])


def _frames(data: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    return {key: pd.DataFrame(data[key]) for key in ("error_vs_size", "grid_sweep", "curves")}


class S3PoolEvents:
    """The tab's event functions: :class:`S3PoolDemo`'s handlers with Gradio's inputs and outputs (a
    UserError reaches the user as its message)."""

    def __init__(self, demo: S3PoolDemo) -> None:
        self.demo = demo

    @staticmethod
    def pixel_outputs(r: dict[str, Any]) -> tuple:
        return model_input_update(r, "S3Pool", READABLE_PX), r["strip"], augment_markdown(r)

    @user_errors
    def run(self, image: Any, grid_size: int, layers: int) -> tuple:
        """Show what S3Pool does to an image: random S3Pool draws in pixel space next to the deterministic path
        and a max pool, the first pooled feature maps of the S3Pool network, and the top-3 classes of the
        max-pool and S3Pool ResNets.

        Args:
            image: the image to analyse (any size; it is resized to 32×32).
            grid_size: S3Pool's grid size g in pixel space (2 to 32, even; larger distorts more).
            layers: S3Pool layers applied in pixel space (1, or 2: grid g, then g/2).
        """
        r = self.demo.analyse(image, grid_size, layers)
        f, p = r["features"], r["predict"]
        return (*self.pixel_outputs(r["augment"]), f["picture"], features_markdown(f),
                p[MAX_NET]["top3"], p[S3POOL_NET]["top3"], predict_markdown(p), image)

    @user_errors
    def redraw(self, image: Any, grid_size: int, layers: int) -> tuple:
        """New random S3Pool draws in pixel space for an image, with another grid size or number of layers.

        Args:
            image: the image to draw from (nothing is drawn without one).
            grid_size: S3Pool's grid size g in pixel space (2 to 32, even; larger distorts more).
            layers: S3Pool layers applied in pixel space (1, or 2: grid g, then g/2).
        """
        if image is None:  # nothing analysed yet: the controls just keep their values
            return gr.update(), gr.update(), gr.update()
        return self.pixel_outputs(self.demo.augment(image, grid_size, layers))


def build_demo(ctx: DemoContext) -> None:
    """Add the S3Pool components and events (inside the caller's gr.Tab). Loads no model."""
    events = S3PoolEvents(S3PoolDemo(ctx))

    add_css(PIXELATED_CSS)
    gr.Markdown(INTRO)
    last_image = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            images = image_input("s3pool", height=READABLE_PX)
            grid = gr.Slider(GRID_CHOICES[0], GRID_CHOICES[-1], value=RECOMMENDED_GRID, step=2,
                             label="grid size g (larger = more distortion; the benchmark's first layer: 16)",
                             elem_id="s3pool-grid")
            layers = gr.Radio([1, 2], value=1, label="S3Pool layers in pixel space (2: grid g, then g/2)",
                              elem_id="s3pool-layers")
            resample = gr.Button("New random draws")
            # the outputs exist before the examples that fill them; they are drawn in the right column
            seen = gr.Image(label=f"what S3Pool sees: {INPUT_SIZE[1]}×{INPUT_SIZE[0]}", type="numpy",
                            format="png", interactive=False, height=READABLE_PX, elem_id="s3pool-model-input",
                            render=False)
            draws = gr.Image(label="S3Pool in pixel space: random draws, deterministic path, max pool", type="numpy",
                             format="png", interactive=False, height=DRAWS_PX, elem_id="s3pool-draws", render=False)
            draws_text = gr.Markdown(elem_id="s3pool-draws-text", render=False)
            feature_maps = gr.Image(label=f"first pooled feature maps of {S3POOL_NET}", type="numpy", format="png",
                                    interactive=False, height=FEATURES_PX, elem_id="s3pool-features", render=False)
            features_text = gr.Markdown(elem_id="s3pool-features-text", render=False)
            max_label = gr.Label(num_top_classes=3, label=f"{MAX_NET} (max pooling)", elem_id="s3pool-max",
                                 render=False)
            s3_label = gr.Label(num_top_classes=3, label=f"{S3POOL_NET} (S3Pool)", elem_id="s3pool-s3pool",
                                render=False)
            predict_text = gr.Markdown(elem_id="s3pool-predict-text", render=False)
            images.examples(ctx.assets_dir)
        with gr.Column(scale=2):
            seen.render()
            draws.render()
            draws_text.render()
            feature_maps.render()
            features_text.render()
            with gr.Row():
                max_label.render()
                s3_label.render()
            predict_text.render()
    benchmark_report(ctx.assets_dir)

    pixel = [seen, draws, draws_text]
    outputs = [*pixel, feature_maps, features_text, max_label, s3_label, predict_text, last_image]
    images.wire(events.run, [grid, layers], outputs, api_name="s3pool_run")
    resample.click(events.redraw, [last_image, grid, layers], pixel, api_name="s3pool_augment")
    grid.release(events.redraw, [last_image, grid, layers], pixel, api_name="s3pool_augment_grid")
    layers.change(events.redraw, [last_image, grid, layers], pixel, api_name="s3pool_augment_layers")


def benchmark_report(assets_dir: Path) -> None:
    """The committed benchmark's plots and table, in an accordion (a note when there is no report)."""
    with gr.Accordion("Benchmark: test error vs training-set size, grid-size sweep", open=True):
        figures = load_report(assets_dir)
        if figures is None:
            gr.Markdown(NO_REPORT, elem_id="s3pool-no-report")
            return
        data = benchmark_data(figures)
        frames = _frames(data)
        with gr.Row():
            gr.LinePlot(frames["error_vs_size"], x="train size", y="test error", color="pooling",
                        title="test error vs training-set size (mean over seeds)", elem_id="s3pool-error-plot")
            gr.BarPlot(frames["grid_sweep"], x="grid", y="test error", sort=None,
                       title="S3Pool test error by grid size (smallest training set)", elem_id="s3pool-sweep-plot")
        if data["curves"]:
            gr.LinePlot(frames["curves"], x="step", y="error", color="curve",
                        title=f"error against steps at {data['curves_size']:,} training images (mean over seeds): "
                              "training error falls slower with S3Pool", elem_id="s3pool-curves-plot")
        gr.Dataframe(frames["grid_sweep"], label="grid-size sweep", interactive=False, elem_id="s3pool-sweep")
        if data["summary"]:
            gr.Markdown(data["summary"], elem_id="s3pool-report-summary")
