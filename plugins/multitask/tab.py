"""The multi-task widening tab's Gradio wiring: the components and events that put
:class:`plugins.multitask.demo.MultitaskDemo`'s handlers on the page (the λ selector, the probabilities by
branch, the tree and the heatmap, the cost table). Building it loads no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.api import UserError
from app.demo_kit import lenient_upload, refreshed_choices
from plugins.multitask.demo import MultitaskDemo
from plugins.multitask.latency import LATENCY_CAPTION

READABLE_PX = 192  # the 64×64 model input is shown enlarged (nearest neighbour) to about this many pixels


def enlarge(image: Any, target: int = READABLE_PX) -> np.ndarray:
    """An H×W×3 uint8 array scaled by an integer factor (nearest neighbour: crisp pixels) so that its
    longer side is about ``target`` pixels; large images are left as they are."""
    array = np.asarray(image)
    factor = max(1, target // max(array.shape[0], array.shape[1], 1))
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


TABLE_COLUMNS = ["model", "λ", "branches at the top", "first split (layer)", "mean val accuracy", "parameters",
                 "FLOPs (M)", "CPU latency, batch 1 (ms)"]

# Small images (64×64 inputs) are drawn enlarged with crisp pixels, not as a blurred speck.
PIXELATED_CSS = """<style>
#multitask-input img, #multitask-model-input img, #multitask-examples img { image-rendering: pixelated; }
#multitask-input img, #multitask-model-input img { object-fit: contain; }
</style>"""

INTRO = (
    "Upload a person, draw one or click an example: every attribute's probability, grouped by the branch that "
    "predicts it (one colour per branch at the first split). λ weighs separating tasks that do not find the same "
    "images hard against the cost of a new branch (larger λ: more branches); the selector switches the branched "
    "model, and the tree, the task affinity that grew it and the cost table below follow.")


def table_frame(rows: list[dict[str, Any]]) -> Any:
    """The comparison rows as the table shows them (numbers rounded, missing ones as —)."""
    import pandas as pd

    def fmt(value: Any, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    data = [[r["model"], fmt(r["lam"], "g"), fmt(r["top_branches"], "d"), fmt(r["first_split"], "d"),
             fmt(r["mean_accuracy"], ".3f"), fmt(r["params"], ",d"),
             fmt(None if r["flops"] is None else r["flops"] / 1e6, ".2f"), fmt(r["latency_ms"], ".2f")]
            for r in rows]
    return pd.DataFrame(data, columns=TABLE_COLUMNS)


def build_demo(ctx: Any) -> None:
    """Add the multi-task widening components and events (inside the caller's gr.Tab). Loads no model."""
    import gradio as gr

    demo = MultitaskDemo(ctx)

    def _user(fn):
        try:
            return fn()
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    def prediction_outputs(r: dict[str, Any]) -> tuple:
        h, w = r["input_resolution"]
        seen = gr.update(value=enlarge(r["model_input"]), label=f"what the network sees: {w}×{h}")
        return r["html"], r["text"], seen

    def overview_outputs(model: str | None) -> tuple:
        """Tree figure, its text, heatmap, its text: a message instead when there is no model."""
        try:
            o = demo.overview(model)
        except UserError as exc:
            return None, str(exc), None, ""
        heat = None if o["heatmap"] is None else o["heatmap"]["image"]
        return o["tree"]["image"], o["tree_text"], heat, o["affinity_text"]

    def run(image: Any, model: str | None):
        """Predict the 14 person attributes of an image with one multi-task network: the probability of each
        attribute, grouped by the branch of the network's tree that predicts it.

        Args:
            image: a picture of a person (any size; it is resized to the network's input).
            model: the network to use: wide, thin, thin-random or a branched one (branched-l10, -l20, -l30).
        """
        return (*prediction_outputs(_user(lambda: demo.predict(image, model))), image)

    def multitask_predict_example(image: Any, model: str | None):
        """Clicking an example runs the prediction (its event's api_name comes from this name)."""
        return run(image, model)

    def switch(model: str | None, last_image: Any):
        """The λ selector redraws the tree and the heatmap and re-predicts the last image with that model."""
        predictions: tuple = (gr.update(), gr.update(), gr.update())
        if last_image is not None:
            try:
                predictions = prediction_outputs(demo.predict(last_image, model))
            except UserError as exc:
                predictions = ("", str(exc), gr.update())
        return (*overview_outputs(model), *predictions)

    def multitask_overview_on_load(model: str | None):
        """On page load: the selector's choices, tree, heatmap, table and status as they are now (cards only)."""
        cards = demo.cards()
        choices = demo.model_choices(cards)
        names = [n for _, n in choices]
        value = model if model in names else demo.default_model(cards)
        table = demo.comparison(measure=False)
        return (gr.update(choices=choices, value=value if value in names else None), *overview_outputs(value),
                table_frame(table["rows"]), demo.status_markdown())

    def refresh_choices(model: str | None):
        """What is available now, in the selector and the table (a model promoted since start-up shows up);
        the selector keeps what it holds unless that is gone (``refreshed_choices``)."""
        cards = demo.cards()
        selector = refreshed_choices(demo.model_choices(cards), model, demo.default_model(cards))
        return selector, table_frame(demo.comparison(cards=cards)["rows"])

    def measure():
        """Measure the CPU latency (batch 1, median of several runs) of every available network and return
        the comparison table: mean validation accuracy, parameters, FLOPs and latency per network."""
        table = _user(lambda: demo.comparison(measure=True))
        return table_frame(table["rows"]), demo.status_markdown()

    cards = demo.cards()
    choices = demo.model_choices(cards)
    opening = demo.default_model(cards)

    gr.HTML(head=PIXELATED_CSS, container=False, padding=False)
    gr.Markdown(INTRO, elem_id="multitask-intro")
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices, value=opening if opening in [n for _, n in choices] else None, scale=1,
                            label="branched model (λ: larger = more branches)", elem_id="multitask-model")
        status = gr.Markdown(demo.status_markdown(), elem_id="multitask-checkpoints")
    last_image = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tab("Upload"):
                upload = lenient_upload(gr.Image(type="filepath", label="Image", height=READABLE_PX,
                                                 elem_id="multitask-input"))
                run_upload = gr.Button("Run", variant="primary", elem_id="multitask-run")
            with gr.Tab("Draw"):
                sketch = lenient_upload(gr.Sketchpad(label="Draw a person", type="numpy", elem_id="multitask-sketch"))
                run_sketch = gr.Button("Run on drawing", variant="primary")
            # the outputs exist before the examples that fill them; they are drawn in the right column
            probabilities = gr.HTML(label="attribute probabilities by branch", elem_id="multitask-probabilities",
                                    render=False)
            predict_text = gr.Markdown(elem_id="multitask-predict-text", render=False)
            seen = gr.Image(label="what the network sees: 64×64", type="numpy", format="png", interactive=False,
                            height=READABLE_PX, elem_id="multitask-model-input", render=False)
            outputs = [probabilities, predict_text, seen, last_image]
            examples = sorted(str(p) for p in (Path(ctx.assets_dir) / "examples").glob("*.png"))
            if examples:
                # A click fills the upload and runs the prediction with the chosen model (the model column is
                # None: left as the user set it). Never cached: start-up must not run models.
                gr.Examples(examples=[[p, None] for p in examples], inputs=[upload, model], outputs=outputs,
                            fn=multitask_predict_example, run_on_click=True, cache_examples=False,
                            label="Examples (persons test split; click one to run it)",
                            elem_id="multitask-examples", api_name="multitask_load_example")
            seen.render()
        with gr.Column(scale=2):
            predict_text.render()
            probabilities.render()

    gr.Markdown("### The tree and the affinity that grew it")
    with gr.Row():
        with gr.Column(scale=3):
            tree = gr.Image(label="branching tree (leaves: attributes; levels: layers; ◆ split points)",
                            type="numpy", format="png", interactive=False, elem_id="multitask-tree")
            tree_text = gr.Markdown(elem_id="multitask-tree-text")
        with gr.Column(scale=2):
            heatmap = gr.Image(label="task affinity (tasks in the tree's order)", type="numpy", format="png",
                               interactive=False, elem_id="multitask-affinity")
            heat_text = gr.Markdown(elem_id="multitask-affinity-text")

    gr.Markdown("### Wide, thin and branched: accuracy and cost")
    table = gr.Dataframe(table_frame(demo.comparison()["rows"]), interactive=False, elem_id="multitask-table",
                         label="models present")
    gr.Markdown(LATENCY_CAPTION, elem_id="multitask-table-caption")
    measure_button = gr.Button("Measure CPU latency (loads every model)", elem_id="multitask-measure")

    figures = [tree, tree_text, heatmap, heat_text]
    run_upload.click(run, [upload, model], outputs, api_name="multitask_predict", concurrency_id="multitask_predict")
    run_sketch.click(run, [sketch, model], outputs, api_name="multitask_predict_sketch", concurrency_id="multitask_predict")
    # opening the selector lists what is available now: a model promoted since start-up shows up
    model.focus(refresh_choices, model, [model, table], api_name="multitask_models", show_progress="hidden")
    model.change(switch, [model, last_image], [*figures, probabilities, predict_text, seen],
                 api_name="multitask_switch_model")
    measure_button.click(measure, None, [table, status], api_name="multitask_measure_latency")
    # The figures are drawn when the page loads (from the cards, no model), not while the app is built.
    root = gr.context.Context.root_block
    if root is not None:
        root.load(multitask_overview_on_load, model, [model, *figures, table, status],
                  api_name="multitask_overview_on_load", api_visibility="undocumented")
