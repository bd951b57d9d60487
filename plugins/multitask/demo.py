"""The multi-task widening tab: every attribute's probability grouped by the branch that
predicts it, the branching tree as a figure, the task-affinity matrix as a heatmap ordered by the tree,
and a table comparing the wide, thin and branched models (accuracy, parameters, FLOPs, CPU latency);
a λ selector switches between the branched models.

The handlers (:meth:`MultitaskDemo.predict`, :meth:`MultitaskDemo.overview`,
:meth:`MultitaskDemo.comparison`) are plain functions returning dicts (images as H×W×3 uint8 arrays),
so tests and scripts use them directly; :func:`plugins.multitask.tab.build_demo` wraps them for
Gradio. The tree, the heatmap and the table come from the checkpoints' cards (no model is loaded for
them; the drawings are in :mod:`plugins.multitask.drawings`); networks are loaded inside the handlers
that run them and kept in a ``ModelCache`` until their file changes.

The examples in ``assets/multitask/examples`` are six images of the ``persons`` test split; the
README beside them has the command that picked them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.api import DemoContext, UserError
from app.api.demo import ModelCache, image_to_tensor, load_rgb_image
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

    def __init__(self, ctx: DemoContext) -> None:
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
