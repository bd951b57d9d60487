"""The multi-task widening tab (issue 12): every attribute's probability grouped by the branch that
predicts it, the branching tree as a figure, the task-affinity matrix as a heatmap ordered by the tree,
and a table comparing the wide, thin and branched models (accuracy, parameters, FLOPs, CPU latency);
a λ selector switches between the branched models.

The handlers (:meth:`MultitaskDemo.predict`, :meth:`MultitaskDemo.overview`,
:meth:`MultitaskDemo.comparison`) are plain functions returning dicts (images as H×W×3 uint8 arrays),
so tests and scripts use them directly; :func:`build_demo` wraps them for Gradio. The tree, the
heatmap and the table come from the checkpoints' cards (no model is loaded for them; the drawings are
in :mod:`plugins.multitask.drawings`); networks are loaded inside the handlers that run them and kept
in a ``ModelCache`` until their file changes.

The examples in ``assets/multitask/examples`` are six images of the ``persons`` test split; the
README beside them has the command that picked them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.api import ModelCache, UserError, image_to_tensor, lenient_upload, load_rgb_image, refreshed_choices
from plugins.multitask.drawings import (
    PALETTE,
    TRUNK_COLOUR,
    affinity_heatmap,
    affinity_of,
    first_split,
    own_layers,
    probabilities_html,
    split_group_of,
    top_groups,
    tree_figure,
    tree_markdown,
    tree_order,
)
from plugins.multitask.latency import LATENCY_CAPTION, latency_ms
from plugins.multitask.model import BranchedNet, TreeConfig, net_from_checkpoint
from plugins.multitask.names import (
    BASELINES,
    BRANCHED_PREFIX,
    how_to_train,
    is_model_name,
    lam_of,
    mean_accuracy,
    model_label,
    train_command,
)
from plugins.multitask.recipes import tree_from_card

READABLE_PX = 192  # the 64×64 model input is shown enlarged (nearest neighbour) to about this many pixels


# --------------------------------------------------------------------------------------------
# The model input, enlarged
# --------------------------------------------------------------------------------------------


def enlarge(image: Any, target: int = READABLE_PX) -> np.ndarray:
    """An H×W×3 uint8 array scaled by an integer factor (nearest neighbour: crisp pixels) so that its
    longer side is about ``target`` pixels; large images are left as they are."""
    array = np.asarray(image)
    factor = max(1, target // max(array.shape[0], array.shape[1], 1))
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """One checkpoint's network (eval mode, on the demo device) and its card's metadata."""

    name: str
    net: BranchedNet
    metadata: dict[str, Any]

    @property
    def config(self) -> TreeConfig:
        return self.net.config


TRADE_OFF_POINTS = 1.0  # a branched model this close to wide (points of mean accuracy) is a trade-off


class MultitaskDemo:
    """Answers the tab's requests; networks are loaded in the handlers and kept until their file changes."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._nets: ModelCache[Loaded] = ModelCache(ctx, missing=how_to_train)
        self._latency: dict[str, tuple[Any, float]] = {}  # name → (the file's stamp, ms)

    # -- checkpoints (cards only) --------------------------------------------------------------

    def cards(self) -> dict[str, dict[str, Any]]:
        """The metadata of every checkpoint the demo may use (shipped and promoted), by name."""
        return {info.name: info.metadata for info in self.ctx.checkpoints() if is_model_name(info.name)}

    def branched_names(self, cards: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """The branched models present, by λ (then name)."""
        cards = self.cards() if cards is None else cards
        names = [n for n in cards if n.startswith(BRANCHED_PREFIX)]
        return sorted(names, key=lambda n: (lam_of(n, cards[n]) is None, lam_of(n, cards[n]) or 0.0, n))

    def model_choices(self, cards: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str]]:
        """The λ selector's entries: (label, checkpoint name) of each branched model present."""
        cards = self.cards() if cards is None else cards
        return [(model_label(n, cards[n]), n) for n in self.branched_names(cards)]

    def default_model(self, cards: dict[str, dict[str, Any]] | None = None) -> str | None:
        """The model the tab opens on: the best trade-off, the cheapest branched model (fewest parameters,
        then FLOPs) whose validation mean accuracy is within ``TRADE_OFF_POINTS`` of the wide network's (the
        cards'); when none is that close, or there is no wide card, the branched model with the best
        validation accuracy (ties and unknown accuracies go to the smaller λ); without branched models the
        wide, then the thin one; None when there is no model at all."""
        cards = self.cards() if cards is None else cards
        branched = self.branched_names(cards)
        if not branched:
            return next((n for n in BASELINES if n in cards), None)
        wide = mean_accuracy(cards["wide"]) if "wide" in cards else None
        if wide is not None:
            close = [n for n in branched
                     if (mean_accuracy(cards[n]) or -1.0) >= wide - TRADE_OFF_POINTS / 100 - 1e-9]
            if close:
                def cost(n: str) -> tuple[float, float, int]:
                    return (float(cards[n].get("params") or float("inf")),
                            float(cards[n].get("flops") or float("inf")), branched.index(n))

                return min(close, key=cost)

        def score(n: str) -> tuple[float, int]:
            accuracy = mean_accuracy(cards[n])
            return (-1.0 if accuracy is None else accuracy, -branched.index(n))

        return max(branched, key=score)

    def resolve(self, model: str | None, cards: dict[str, dict[str, Any]] | None = None) -> str:
        """``model`` when it is present (any slot's name), the default model when it is empty; a UserError
        naming what there is otherwise."""
        cards = self.cards() if cards is None else cards
        if model:
            if not is_model_name(str(model)):
                raise UserError(f"{model!r} is not a multitask model: choose wide, thin, thin-random or a "
                                "branched-l<λ> model.")
            if model not in cards:
                present = ", ".join(sorted(cards)) or "none yet"
                raise UserError(how_to_train(str(model)) + f"\n\nPresent: {present}.")
            return str(model)
        default = self.default_model(cards)
        if default is None:
            raise UserError(how_to_train("branched-l10"))
        return default

    def status_markdown(self) -> str:
        """One line: which models are present (cards only) and how to train a missing one."""
        cards = self.cards()
        parts = []
        for name in BASELINES:
            parts.append(f"`{name}` ({'present' if name in cards else 'missing'})")
        branched = self.branched_names(cards)
        parts.append("branched: " + (", ".join(f"`{n}`" for n in branched) if branched else "none yet"))
        line = "**Models:** " + " · ".join(parts)
        if not cards:
            return line + (f"\n\nNo model yet. Train the wide one (`{train_command('wide')}`), then a branched one "
                       f"(`{train_command('branched-l10')}`) and the thin baselines (`{train_command('thin')}`, "
                       f"`{train_command('thin-random')}`); promote each run's checkpoint in the Runs tab "
                       "(`avstudio runs promote RUN_ID`) or place them in assets/multitask/.")
        missing = [n for n in BASELINES if n not in cards] + ([] if branched else ["branched-l10"])
        if missing:
            line += " — train a missing one: " + "; ".join(f"`{train_command(n)}`" for n in missing)
        return line

    # -- networks ------------------------------------------------------------------------------

    def model(self, name: str) -> Loaded:
        """The network of checkpoint ``name`` in eval mode, or a UserError saying how to train it."""

        def build(checkpoint: Any) -> Loaded:
            try:
                net = net_from_checkpoint(checkpoint, self.ctx.device)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                first = (str(exc).splitlines() or [""])[0]
                raise UserError(f"Checkpoint `{name}` is not a multitask-plugin network ({type(exc).__name__}: "
                                f"{first}). " + how_to_train(name).split("\n\n", 1)[1].strip()) from None
            return Loaded(name, net, dict(checkpoint.metadata))

        return self._nets.get(name, build=build)

    # -- handlers ------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, image: Any, model: str | None = None) -> dict[str, Any]:
        """Every attribute's probability under ``model`` (default: :meth:`default_model`), grouped by the
        top-layer branch that predicts it (groups and tasks in tree order)."""
        pil = load_rgb_image(image)
        m = self.model(self.resolve(model))
        c = m.config
        x = image_to_tensor(pil, (c.input_size, c.input_size)).to(self.ctx.device)
        probs = torch.sigmoid(m.net(x))[0].float().cpu().tolist()
        owner = split_group_of(c)
        split_layer = first_split(c)
        groups = []
        for k, group in enumerate(top_groups(c)):
            layers = own_layers(c, group)
            if layers is None:
                title = f"One shared trunk: all {c.num_tasks} attributes"
            else:
                title = (f"Branch {k + 1} of {len(c.branches[-1])}: its own layers {layers[0]}–{layers[1]}"
                         if layers[0] != layers[1] else f"Branch {k + 1} of {len(c.branches[-1])}: its own layer "
                         f"{layers[0]}")
            colour = PALETTE[owner[group[0]] % len(PALETTE)] if split_layer is not None else TRUNK_COLOUR
            groups.append({"branch": k, "tasks": [c.tasks[t] for t in group], "own_layers": layers,
                           "split_group": owner[group[0]], "colour": colour, "title": title,
                           "probabilities": {c.tasks[t]: round(probs[t], 4) for t in group}})
        seen = (x[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
        yes = [c.tasks[t] for t in tree_order(c) if probs[t] >= 0.5]
        note = "" if m.name.startswith(BRANCHED_PREFIX) else " (no branched model yet: this is a baseline)"
        text = (f"**{model_label(m.name, m.metadata)}**{note}: {len(groups)} branch"
                f"{'es' if len(groups) > 1 else ''} at the top layer; predicted present (p ≥ 0.5): "
                + (", ".join(yes) if yes else "none") + ".")
        return {"model": m.name, "lam": lam_of(m.name, m.metadata), "tasks": list(c.tasks),
                "probabilities": {t: round(p, 4) for t, p in zip(c.tasks, probs, strict=True)},
                "groups": groups, "html": probabilities_html(groups), "model_input": seen,
                "input_resolution": (c.input_size, c.input_size), "text": text}

    def overview(self, model: str | None = None) -> dict[str, Any]:
        """The tree figure and the affinity heatmap of ``model`` (default: :meth:`default_model`), from its
        card alone (no network is loaded)."""
        cards = self.cards()
        name = self.resolve(model, cards)
        metadata = cards[name]
        try:
            config = tree_from_card(metadata)
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"Checkpoint `{name}`'s card has no valid tree ({type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0]}). Retrain it.") from None
        tree = tree_figure(config)
        matrix, source = affinity_of(metadata)
        heatmap = None if matrix is None else affinity_heatmap(matrix, config)
        if heatmap is None:
            heat_text = source
        else:
            heat_text = (f"Task affinity of `{name}`: {source}. A(i, j) = P(both find an example hard) + P(both "
                         "find it easy); tasks in the tree's order, each top-layer branch's block outlined in "
                         f"white; colours from {heatmap['vmin']:.2f} to {heatmap['vmax']:.2f} (the diagonal is 1).")
        return {"model": name, "lam": lam_of(name, metadata), "config": config, "tree": tree,
                "tree_text": tree_markdown(name, config, metadata), "heatmap": heatmap, "affinity_text": heat_text}

    def comparison(self, measure: bool = False, cards: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """One row per model present (wide, thin, thin-random, then the branched ones by λ): mean validation
        accuracy, parameters and FLOPs from the cards, and the CPU latency at batch 1 when ``measure`` (this
        loads every model) or when measured before for the same file."""
        cards = self.cards() if cards is None else cards
        names = [n for n in BASELINES if n in cards] + self.branched_names(cards)
        if measure and names:
            loaded = {n: self.model(n) for n in names}
            measured = latency_ms({n: m.net for n, m in loaded.items()})
            for n in names:
                self._latency[n] = (self._nets.stamp(n), measured[n])
        rows = []
        for n in names:
            meta = cards[n]
            cached = self._latency.get(n)
            latency = cached[1] if cached is not None and cached[0] == self._nets.stamp(n) else None
            try:
                config = tree_from_card(meta)
                top, split = len(config.branches[-1]), first_split(config)
            except (KeyError, ValueError, TypeError):
                top, split = None, None
            rows.append({"model": n, "lam": lam_of(n, meta), "top_branches": top, "first_split": split,
                         "mean_accuracy": mean_accuracy(meta), "params": meta.get("params"),
                         "flops": meta.get("flops"), "latency_ms": latency})
        return {"rows": rows, "caption": LATENCY_CAPTION, "measured": any(r["latency_ms"] is not None for r in rows)}


# --------------------------------------------------------------------------------------------
# Gradio wiring
# --------------------------------------------------------------------------------------------

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
