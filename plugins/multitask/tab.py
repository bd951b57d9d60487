"""The multi-task widening tab's Gradio wiring: the components and events that put
:class:`plugins.multitask.demo.MultitaskDemo`'s handlers on the page (the λ selector, the probabilities by
branch, the tree and the heatmap, the cost table). Building it loads no model."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.api import DemoContext, UserError
from app.api.demo import (
    add_css,
    image_input,
    model_input_update,
    pixelated_css,
    refreshed_choices,
    user_errors,
)
from plugins.multitask.demo import MultitaskDemo
from plugins.multitask.latency import LATENCY_CAPTION

READABLE_PX = 192  # the 64×64 model input is shown enlarged (nearest neighbour) to about this many pixels

TABLE_COLUMNS = ["model", "λ", "branches at the top", "first split (layer)", "mean val accuracy", "parameters",
                 "FLOPs (M)", "CPU latency, batch 1 (ms)"]

# Small images (64×64 inputs) are drawn enlarged with crisp pixels, not as a blurred speck.
PIXELATED_CSS = pixelated_css("multitask-input", "multitask-model-input", examples="multitask-examples")

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


class MultitaskEvents:
    """The tab's event functions: :class:`MultitaskDemo`'s handlers with Gradio's inputs and outputs (a
    UserError reaches the user as its message)."""

    def __init__(self, demo: MultitaskDemo) -> None:
        self.demo = demo

    @staticmethod
    def prediction_outputs(r: dict[str, Any]) -> tuple:
        return r["html"], r["text"], model_input_update(r, size=READABLE_PX)

    def overview_outputs(self, model: str | None) -> tuple:
        """Tree figure, its text, heatmap, its text: a message instead when there is no model."""
        try:
            o = self.demo.overview(model)
        except UserError as exc:
            return None, str(exc), None, ""
        heat = None if o["heatmap"] is None else o["heatmap"]["image"]
        return o["tree"]["image"], o["tree_text"], heat, o["affinity_text"]

    @user_errors
    def run(self, image: Any, model: str | None) -> tuple:
        """Predict the 14 person attributes of an image with one multi-task network: the probability of each
        attribute, grouped by the branch of the network's tree that predicts it.

        Args:
            image: a picture of a person (any size; it is resized to the network's input).
            model: the network to use: wide, thin, thin-random or a shipped branched one (branched-l10, -l20).
        """
        return (*self.prediction_outputs(self.demo.predict(image, model)), image)

    def switch(self, model: str | None, last_image: Any) -> tuple:
        """The λ selector redraws the tree and the heatmap and re-predicts the last image with that model."""
        predictions: tuple = (gr.update(), gr.update(), gr.update())
        if last_image is not None:
            try:
                predictions = self.prediction_outputs(self.demo.predict(last_image, model))
            except UserError as exc:
                predictions = ("", str(exc), gr.update())
        return (*self.overview_outputs(model), *predictions)

    def on_load(self, model: str | None) -> tuple:
        """On page load: the selector's choices, tree, heatmap, table and status as they are now (cards only)."""
        cards = self.demo.cards()
        choices = self.demo.model_choices(cards)
        names = [n for _, n in choices]
        value = model if model in names else self.demo.default_model(cards)
        table = self.demo.comparison(measure=False)
        return (gr.update(choices=choices, value=value if value in names else None), *self.overview_outputs(value),
                table_frame(table["rows"]), self.demo.status_markdown())

    def refresh_choices(self, model: str | None) -> tuple:
        """What is available now, in the selector and the table (a model promoted since start-up shows up);
        the selector keeps what it holds unless that is gone (``refreshed_choices``)."""
        cards = self.demo.cards()
        selector = refreshed_choices(self.demo.model_choices(cards), model, self.demo.default_model(cards))
        return selector, table_frame(self.demo.comparison(cards=cards)["rows"])

    @user_errors
    def measure(self) -> tuple:
        """Measure the CPU latency (batch 1, median of several runs) of every available network and return
        the comparison table: mean validation accuracy, parameters, FLOPs and latency per network."""
        table = self.demo.comparison(measure=True)
        return table_frame(table["rows"]), self.demo.status_markdown()


def build_demo(ctx: DemoContext) -> None:
    """Add the multi-task widening components and events (inside the caller's gr.Tab). Loads no model."""
    demo = MultitaskDemo(ctx)
    events = MultitaskEvents(demo)
    cards = demo.cards()
    choices = demo.model_choices(cards)
    opening = demo.default_model(cards)

    add_css(PIXELATED_CSS)
    gr.Markdown(INTRO, elem_id="multitask-intro")
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices, value=opening if opening in [n for _, n in choices] else None, scale=1,
                            label="branched model (λ: larger = more branches)", elem_id="multitask-model")
        status = gr.Markdown(demo.status_markdown(), elem_id="multitask-checkpoints")
    last_image = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            images = image_input("multitask", height=READABLE_PX, draw="Draw a person")
            # the outputs exist before the examples that fill them; they are drawn in the right column
            probabilities = gr.HTML(label="attribute probabilities by branch", elem_id="multitask-probabilities",
                                    render=False)
            predict_text = gr.Markdown(elem_id="multitask-predict-text", render=False)
            seen = gr.Image(label="what the network sees: 64×64", type="numpy", format="png", interactive=False,
                            height=READABLE_PX, elem_id="multitask-model-input", render=False)
            images.examples(ctx.assets_dir, label="Examples (persons test split; click one to run it)")
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
    images.wire(events.run, [model], [probabilities, predict_text, seen, last_image], api_name="multitask_predict")
    # opening the selector lists what is available now: a model promoted since start-up shows up
    model.focus(events.refresh_choices, model, [model, table], api_name="multitask_models", show_progress="hidden")
    model.change(events.switch, [model, last_image], [*figures, probabilities, predict_text, seen],
                 api_name="multitask_switch_model")
    measure_button.click(events.measure, None, [table, status], api_name="multitask_measure_latency")
    # The figures are drawn when the page loads (from the cards, no model), not while the app is built.
    root = gr.context.Context.root_block
    if root is not None:
        root.load(events.on_load, model, [model, *figures, table, status],
                  api_name="multitask_overview_on_load", api_visibility="undocumented")
