"""The VGAN tab's Gradio wiring: the components and events that put :class:`plugins.vgan.demo.VganDemo`'s
handlers on the page (sample grids with the VGAN ↔ GAN toggle, interpolation, VCD chains, the energy plot).
Building it loads no model."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.api import DemoContext, UserError
from app.api.demo import add_css, image_input, model_input_update, pixelated_css, user_errors
from plugins.vgan.demo import (
    DEFAULT_CHAIN,
    DEFAULT_COUNT,
    DEFAULT_STEPS,
    GENERATED,
    MARKER,
    MAX_CHAIN,
    MAX_COUNT,
    MAX_SEED,
    MAX_STEPS,
    MIN_STEPS,
    MODELS,
    PATHS,
    REAL,
    RECOMMENDED_MODEL,
    TITLES,
    VganDemo,
)

READABLE_PX = 256  # the model input is shown enlarged (nearest neighbour) to about this many pixels
# Grids and strips are sent at their real size (a PNG of 274×274 pixels for 64 samples encodes in
# ~15 ms, ×2 enlarged ~4× that) and drawn enlarged by the browser, with crisp pixels, at these heights.
GRID_PX = 560
STRIP_PX = 150
COLORS = {REAL: "#2563eb", GENERATED: "#f97316", MARKER: "#dc2626"}


INTRO = (
    "**VGAN** trains a generator from noise against a *bounded energy* of K binary experts (low energy = "
    "data-like), and also maximises an entropy proxy so that its samples spread over the energy's many "
    "minima. The **GAN** is the same networks trained as a plain GAN (its energy is −log D). **VCD** "
    "learns a *transition* instead: encode a real image, replace half of its code by noise, decode.\n\n"
    "What to look at: toggle **VGAN ↔ GAN** and compare the sample grids (a collapsed generator repeats a "
    "few images); interpolate between two codes to see how smoothly the generator maps codes to images; "
    "chain VCD transitions of an image (the paper's Fig. 5) to see how far the chain wanders while staying "
    "image-like; and see where an image's energy falls among the energies of real and generated images.")

# Small images (32×32 samples) are drawn enlarged with crisp pixels, not as a blurred speck.
PIXELATED_CSS = pixelated_css("vgan-input", "vgan-model-input", "vgan-samples", "vgan-interpolation", "vgan-chain",
                              examples="vgan-examples")


def energy_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=["energy", "share of images", "images"])


class VganEvents:
    """The tab's event functions: :class:`VganDemo`'s handlers with Gradio's inputs and outputs (a UserError
    reaches the user as its message)."""

    def __init__(self, demo: VganDemo) -> None:
        self.demo = demo

    def vgan_checkpoints(self) -> str:
        """Which models there are (re-read on every page load: a promoted one shows up); the page-load event
        takes its API name from this method's name."""
        return self.demo.checkpoints_markdown()

    @user_errors
    def samples(self, model: str, seed: Any, count: Any) -> tuple:
        """Draw images from a generator: its samples from the uniform codes of a seed, as one grid, with how long
        they took.

        Args:
            model: the model whose generator draws them: vgan, gan or vcd.
            seed: the random seed of the codes (the same seed draws the same images).
            count: how many samples (1 to 100).
        """
        r = self.demo.samples(model, seed, count)
        return r["grid"], r["text"]

    @user_errors
    def interpolate(self, model: str, seed_a: Any, seed_b: Any, steps: Any, path: str) -> tuple:
        """Walk a generator's code space: the images decoded on the way from the code of one seed to another's,
        as one strip.

        Args:
            model: the model whose generator decodes them: vgan, gan or vcd.
            seed_a: the seed of the first code.
            seed_b: the seed of the last code.
            steps: how many images, both ends included (2 to 16).
            path: linear, or spherical (along the great circle, keeping the code's norm).
        """
        r = self.demo.interpolate(model, seed_a, seed_b, steps, path)
        return r["strip"], r["text"]

    @staticmethod
    def analysis_outputs(r: dict[str, Any]) -> tuple:
        t, e = r["transitions"], r["energy"]
        shown = t if t["message"] is None else e
        seen = model_input_update(shown, "the model", READABLE_PX)
        if t["message"] is None:
            chain, chain_text = t["strip"], t["text"]
        else:
            chain, chain_text = None, t["message"]
        if e["message"] is None:
            plot, energy_text = energy_frame(e["rows"]), e["text"]
        else:
            plot, energy_text = energy_frame([]), e["message"]
        return seen, chain, chain_text, plot, energy_text

    @user_errors
    def analyse(self, image: Any, model: str, steps: Any, seed: Any) -> tuple:
        """Analyse an image with the energy-based models: the chain of VCD transitions that starts from it, and
        its energy under the chosen model next to the energies of real and generated images.

        Args:
            image: the image to analyse (any size; it is resized to the models' input).
            model: the model whose energy is shown: vgan, gan or vcd.
            steps: VCD transition steps in the chain (1 to 20).
            seed: the random seed of the chain's transitions.
        """
        return (*self.analysis_outputs(self.demo.analyse(image, model, steps, seed)), image)

    def model_panels(self, model: str, seed: Any, count: Any, seed_a: Any, seed_b: Any, steps: Any,
                     path: str) -> list:
        """Samples and interpolation of ``model``; a missing model's panels say how to train it."""
        out: list[Any] = []
        for run in (lambda: self.samples(model, seed, count),
                    lambda: self.interpolate(model, seed_a, seed_b, steps, path)):
            try:
                out += list(run())
            except gr.Error as exc:
                out += [None, str(exc.message)]
        return out

    def panels_on_load(self, model: str, seed: Any, count: Any, seed_a: Any, seed_b: Any, steps: Any,
                       path: str) -> tuple:
        """The samples and the interpolation drawn when the page opens, so the tab never opens empty."""
        return tuple(self.model_panels(model, seed, count, seed_a, seed_b, steps, path))

    def switch(self, model: str, seed: Any, count: Any, seed_a: Any, seed_b: Any, steps: Any, path: str,
               last_image: Any) -> tuple:
        """The toggle redraws what depends on the model: samples, interpolation, the last image's energy.
        A missing model's panels say how to train it."""
        out = self.model_panels(model, seed, count, seed_a, seed_b, steps, path)
        if last_image is None:
            out += [gr.update(), gr.update()]
        else:
            try:
                e = self.demo.energy(last_image, model)
                out += [energy_frame(e["rows"]), e["text"]]
            except UserError as exc:
                out += [energy_frame([]), str(exc)]
        return (*out, self.demo.checkpoints_markdown())


def build_demo(ctx: DemoContext) -> None:
    """Add the VGAN components and events (inside the caller's gr.Tab). Loads no model."""
    events = VganEvents(VganDemo(ctx))

    add_css(PIXELATED_CSS)
    gr.Markdown(INTRO, elem_id="vgan-intro")
    with gr.Row(equal_height=True):
        model = gr.Radio([(TITLES[m], m) for m in MODELS], value=RECOMMENDED_MODEL, scale=1,
                         label="model (samples, interpolation, energy)", elem_id="vgan-model")
        status = gr.Markdown(events.vgan_checkpoints, elem_id="vgan-checkpoints")

    gr.Markdown("### Samples")
    with gr.Row():
        with gr.Column(scale=1):
            seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed", elem_id="vgan-seed")
            count = gr.Slider(1, MAX_COUNT, value=DEFAULT_COUNT, step=1, label="samples", elem_id="vgan-count")
            sample_button = gr.Button("Generate samples", variant="primary", elem_id="vgan-sample")
        with gr.Column(scale=2):
            grid = gr.Image(label="samples", type="numpy", format="png", interactive=False, height=GRID_PX,
                            elem_id="vgan-samples")
            grid_text = gr.Markdown(elem_id="vgan-samples-text")

    gr.Markdown("### Interpolation between two codes")
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                seed_a = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="from seed",
                                   elem_id="vgan-seed-a")
                seed_b = gr.Number(1, precision=0, minimum=0, maximum=MAX_SEED, label="to seed",
                                   elem_id="vgan-seed-b")
            steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="images (both ends included)",
                              elem_id="vgan-steps")
            path = gr.Radio(list(PATHS), value="linear", label="path", elem_id="vgan-path")
            interp_button = gr.Button("Interpolate", variant="primary", elem_id="vgan-interpolate")
        with gr.Column(scale=2):
            strip = gr.Image(label="interpolation", type="numpy", format="png", interactive=False,
                             height=STRIP_PX, elem_id="vgan-interpolation")
            strip_text = gr.Markdown(elem_id="vgan-interpolation-text")

    gr.Markdown("### An image: its VCD transitions and its energy")
    last_image = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            images = image_input("vgan", height=READABLE_PX, draw=None)
            chain_steps = gr.Slider(1, MAX_CHAIN, value=DEFAULT_CHAIN, step=1,
                                    label="VCD transition steps (the paper's Fig. 5: 9)", elem_id="vgan-chain-steps")
            chain_seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="noise seed",
                                   elem_id="vgan-chain-seed")
            # the outputs exist before the examples that fill them; they are drawn in the right column
            seen = gr.Image(label="what the model sees", type="numpy", format="png", interactive=False,
                            height=READABLE_PX, elem_id="vgan-model-input", render=False)
            chain = gr.Image(label="VCD transitions (left: the image)", type="numpy", format="png",
                             interactive=False, height=STRIP_PX, elem_id="vgan-chain", render=False)
            chain_text = gr.Markdown(elem_id="vgan-chain-text", render=False)
            plot = gr.LinePlot(energy_frame([]), x="energy", y="share of images", color="images",
                               color_map=COLORS, title="energy: this image among real and generated images",
                               elem_id="vgan-energy-plot", render=False)
            energy_text = gr.Markdown(elem_id="vgan-energy-text", render=False)
            images.examples(ctx.assets_dir)
        with gr.Column(scale=2):
            seen.render()
            chain.render()
            chain_text.render()
            plot.render()
            energy_text.render()

    panels = [model, seed, count, seed_a, seed_b, steps, path]
    sample_button.click(events.samples, [model, seed, count], [grid, grid_text], api_name="vgan_samples")
    interp_button.click(events.interpolate, [model, seed_a, seed_b, steps, path], [strip, strip_text],
                        api_name="vgan_interpolate")
    images.wire(events.analyse, [model, chain_steps, chain_seed],
                [seen, chain, chain_text, plot, energy_text, last_image], api_name="vgan_analyse")
    model.change(events.switch, [*panels, last_image], [grid, grid_text, strip, strip_text, plot, energy_text, status],
                 api_name="vgan_switch_model")
    # Samples and interpolation are drawn when the page loads (a small generator pass), not while the app
    # is built: start-up loads no model.
    root = gr.context.Context.root_block
    if root is not None:
        root.load(events.panels_on_load, panels, [grid, grid_text, strip, strip_text],
                  api_name="vgan_panels_on_load", api_visibility="undocumented")
