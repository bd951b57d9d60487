"""The multi-task widening tab (issue 12): every attribute's probability grouped by the branch that
predicts it, the branching tree as a figure, the task-affinity matrix as a heatmap ordered by the tree,
and a table comparing the wide, thin and branched models (accuracy, parameters, FLOPs, CPU latency);
a λ selector switches between the branched models.

The handlers (:meth:`MultitaskDemo.predict`, :meth:`MultitaskDemo.overview`,
:meth:`MultitaskDemo.comparison`) are plain functions returning dicts (images as H×W×3 uint8 arrays),
so tests and scripts use them directly; :func:`build_demo` wraps them for Gradio. The tree, the
heatmap and the table come from the checkpoints' cards (no model is loaded for them); networks are
loaded inside the handlers that run them and kept in a ``ModelCache`` until their file changes.

The examples in ``assets/multitask/examples`` are six images of the ``persons`` test split; the
README beside them has the command that picked them.
"""

from __future__ import annotations

import copy
import html
import re
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from app.api import (
    ModelCache,
    UserError,
    figure_font,
    image_to_tensor,
    lenient_upload,
    load_rgb_image,
    refreshed_choices,
)
from plugins.multitask.model import BranchedNet, TreeConfig, net_from_checkpoint
from plugins.multitask.recipes import tree_from_card

BASELINES = ("wide", "thin", "thin-random")  # the table's first rows, in this order
BRANCHED_PREFIX = "branched-"
TITLES = {"wide": "wide: one trunk at full width (the reference, SOMP's source)",
          "thin": "thin: SOMP start, never widened", "thin-random": "thin-random: random start, never widened"}
READABLE_PX = 192  # the 64×64 model input is shown enlarged (nearest neighbour) to about this many pixels
LATENCY_REPEATS, LATENCY_WARMUP = 15, 3  # timed and untimed batch-1 forwards per model
LATENCY_CAPTION = (
    "**How measured.** Mean accuracy: the card's mean attribute accuracy on the validation images of its "
    "run (the epoch the checkpoint was saved at). Parameters: trainable ones. FLOPs: one 64×64 image, "
    "1 multiply-add = 2 FLOPs (`torch.utils.flop_counter`, convolutions and linear layers). Latency: the "
    f"median of {LATENCY_REPEATS} forward passes of one image (batch 1) on one CPU thread "
    f"(`torch.set_num_threads(1)`), after {LATENCY_WARMUP} warm-up passes, the models timed in turns so that "
    "the machine's noise hits them alike, on this server; press *Measure CPU latency* to (re)measure.")
# Colours of the first-split groups in the tree, the heatmap's boxes and the probability panels.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39")
TRUNK_COLOUR = "#6b7280"
SPLIT_COLOUR = "#dc2626"
# a few colours of the viridis colour map (dark = low, yellow = high), interpolated linearly
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)

# Tree figure geometry (pixels): a column per task, a row per hidden layer, the task names on top.
TREE_LEFT, TREE_RIGHT, TREE_COLUMN = 150, 16, 56
TREE_NAMES, TREE_HEADS, TREE_ROW, TREE_BOTTOM = 112, 28, 52, 44
# Heatmap geometry: a square cell per pair of tasks, names on the left and on top, a colour bar on the right.
HEAT_LABELS, HEAT_CELL, HEAT_BAR, HEAT_MARGIN = 112, 30, 84, 8


def train_command(name: str) -> str:
    """The command that trains checkpoint ``name`` (the thin and branched ones start from ``wide``)."""
    if name == "wide":
        return "avstudio train multitask wide"
    if name == "thin":
        return "avstudio train multitask tree --set lam=0"
    if name == "thin-random":
        return "avstudio train multitask tree --set lam=0 --set init=random"
    lam = lam_from_name(name)
    random = " --set init=random" if name.endswith("-random") else ""
    return f"avstudio train multitask tree --set lam={'10' if lam is None else f'{lam:g}'}{random}"


def how_to_train(name: str) -> str:
    """The message shown instead of a missing model: the command that trains it and where it goes."""
    after = "" if name == "wide" else " (after the wide one, which it starts from)"
    return (f"No `{name}` checkpoint yet. Train it{after} with:\n\n"
            f"    {train_command(name)}\n\n"
            f"then promote the run's `{name}` checkpoint in the Runs tab (`avstudio runs promote RUN_ID`) "
            f"or place `{name}.safetensors` and its `{name}.json` card in assets/multitask/.")


def lam_from_name(name: str) -> float | None:
    """λ written in a branched checkpoint's name (``branched-l10``, ``branched-l0.5-random``), else None."""
    match = re.fullmatch(r"branched-l([0-9.eE+]+)(-random)?", name)
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def is_model_name(name: str) -> bool:
    """Whether ``name`` fills one of the plugin's slots (wide, thin, thin-random, branched-*)."""
    return name in BASELINES or name.startswith(BRANCHED_PREFIX)


def lam_of(name: str, metadata: dict[str, Any]) -> float | None:
    """λ of a checkpoint: its card's recipe config, else its name; None for the baselines."""
    if not name.startswith(BRANCHED_PREFIX):
        return None
    lam = (metadata.get("config") or {}).get("lam")
    return float(lam) if isinstance(lam, (int, float)) else lam_from_name(name)


def mean_accuracy(metadata: dict[str, Any]) -> float | None:
    """The card's validation mean attribute accuracy (its metrics, else the mean of the per-attribute ones)."""
    value = (metadata.get("metrics") or {}).get("val_mean_accuracy")
    if isinstance(value, (int, float)):
        return float(value)
    per_attribute = metadata.get("val_attribute_accuracy") or {}
    return float(np.mean(list(per_attribute.values()))) if per_attribute else None


def model_label(name: str, metadata: dict[str, Any]) -> str:
    """``λ = 10 · branched-l10`` (the selector's entries)."""
    lam = lam_of(name, metadata)
    start = " (random start)" if (metadata.get("config") or {}).get("init") == "random" else ""
    return f"λ = {lam:g} · {name}{start}" if lam is not None else name


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------


def tree_order(config: TreeConfig) -> list[int]:
    """The tasks in the order of the tree's leaves (depth first from layer 0): every branch's tasks are
    contiguous, so the heatmap's blocks and the figure's subtrees line up."""
    children = [[[c for c, p in enumerate(config.parents(layer + 1)) if p == b]
                 for b in range(len(config.branches[layer]))] for layer in range(config.num_layers - 1)]

    def leaves(layer: int, branch: int) -> list[int]:
        if layer == config.num_layers - 1:
            return list(config.branches[layer][branch])
        return [t for child in children[layer][branch] for t in leaves(layer + 1, child)]

    return [t for b in range(len(config.branches[0])) for t in leaves(0, b)]


def first_split(config: TreeConfig) -> int | None:
    """The lowest hidden layer that has more than one branch (None for a single trunk)."""
    return next((layer for layer, groups in enumerate(config.branches) if len(groups) > 1), None)


def top_groups(config: TreeConfig) -> list[tuple[int, ...]]:
    """The top layer's branches (each predicts its tasks), in tree order, each group's tasks in tree order."""
    order = tree_order(config)
    groups = [tuple(sorted(g, key=order.index)) for g in config.branches[-1]]
    return sorted(groups, key=lambda g: order.index(g[0]))


def split_group_of(config: TreeConfig) -> list[int]:
    """For each task, the index of its group at the first split (in tree order); all 0 for one trunk."""
    layer = first_split(config)
    if layer is None:
        return [0] * config.num_tasks
    order = tree_order(config)
    groups = sorted(config.branches[layer], key=lambda g: min(order.index(t) for t in g))
    owner = [0] * config.num_tasks
    for k, group in enumerate(groups):
        for t in group:
            owner[t] = k
    return owner


def own_layers(config: TreeConfig, group: tuple[int, ...]) -> tuple[int, int] | None:
    """The layers whose branch serves exactly ``group`` (lowest, highest); None for the whole-task trunk."""
    if len(group) == config.num_tasks:
        return None
    layers = [layer for layer, groups in enumerate(config.branches) if set(group) in [set(g) for g in groups]]
    return (min(layers), max(layers)) if layers else None


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def _vertical_text(image: Image.Image, text: str, x_centre: int, bottom: int, font: Any, fill: str) -> None:
    """``text`` written bottom-up (rotated 90°), its baseline centred on ``x_centre``, ending at ``bottom``."""
    probe = ImageDraw.Draw(image)
    left, top, right, low = probe.textbbox((0, 0), text, font=font)
    label = Image.new("RGBA", (right - left + 2, low - top + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((-left + 1, -top + 1), text, font=font, fill=fill)
    label = label.rotate(90, expand=True)
    image.paste(label, (int(x_centre - label.width / 2), int(bottom - label.height)), label)


def _node(draw: ImageDraw.ImageDraw, x: float, y: float, split: bool, colour: str) -> None:
    """A branch: a dot in its colour, or a red diamond where it splits."""
    if split:
        draw.polygon([(x, y - 10), (x + 10, y), (x, y + 10), (x - 10, y)], fill=SPLIT_COLOUR, outline="black")
    else:
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline="black")


def tree_figure(config: TreeConfig) -> dict[str, Any]:
    """The branching tree drawn as an image: the tasks at the leaves (top, in :func:`tree_order`), one level
    per hidden layer (the top layer just below the names, layer 0 at the bottom above the input), one node
    per branch at the mean column of its tasks, coloured by its group at the first split (grey: shared
    trunk), each joined to its parent below; a red diamond marks a split point (a branch whose layer above
    has several branches hanging on it). Returns the image and where everything was drawn."""
    order = tree_order(config)
    tasks, layers = config.num_tasks, config.num_layers
    width = TREE_LEFT + tasks * TREE_COLUMN + TREE_RIGHT
    height = TREE_NAMES + TREE_HEADS + layers * TREE_ROW + TREE_BOTTOM
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = figure_font(13), figure_font(11)
    column = {t: TREE_LEFT + (k + 0.5) * TREE_COLUMN for k, t in enumerate(order)}
    owner = split_group_of(config)
    split_layer = first_split(config)

    def level_y(layer: int) -> int:
        return TREE_NAMES + TREE_HEADS + (layers - 1 - layer) * TREE_ROW + TREE_ROW // 2

    def colour(layer: int, group: tuple[int, ...]) -> str:
        if split_layer is None or layer < split_layer:
            return TRUNK_COLOUR
        return PALETTE[owner[group[0]] % len(PALETTE)]

    nodes = []
    for layer in range(layers):
        above = config.junction_branches(layer) if layer < layers - 1 else ()
        for branch, group in enumerate(config.branches[layer]):
            children = sum(1 for g in above if set(g) <= set(group))
            nodes.append({"layer": layer, "branch": branch, "tasks": [config.tasks[t] for t in group],
                          "x": float(np.mean([column[t] for t in group])), "y": level_y(layer),
                          "split": layer < layers - 1 and children > 1, "colour": colour(layer, group)})
    at = {(n["layer"], n["branch"]): n for n in nodes}
    for layer in range(layers):  # the levels: a faint line and the layer's kind, width and branches
        kind = "conv" if config.is_conv(layer) else "fc"
        count = len(config.branches[layer])
        label = f"L{layer} {kind}{config.widths[layer]}" + (f" x{count}" if count > 1 else "")
        draw.line([(TREE_LEFT - 6, level_y(layer)), (width - TREE_RIGHT, level_y(layer))], fill="#eef0f3")
        draw.text((8, level_y(layer) - 8), label, font=font, fill="#111827")
    draw.text((8, TREE_NAMES + 6), "output units", font=small, fill="#6b7280")
    input_xy = (TREE_LEFT + tasks * TREE_COLUMN / 2, height - TREE_BOTTOM + 18)
    for n in nodes:  # edges: to the parent branch below (layer 0: to the image), output units up to the names
        if n["layer"] == 0:
            draw.line([(n["x"], n["y"]), input_xy], fill=TRUNK_COLOUR, width=3)
        else:
            parent = at[(n["layer"] - 1, config.parents(n["layer"])[n["branch"]])]
            draw.line([(n["x"], n["y"]), (parent["x"], parent["y"])], fill=n["colour"], width=3)
        if n["layer"] == layers - 1:
            for t in config.branches[-1][n["branch"]]:
                draw.line([(n["x"], n["y"]), (column[t], TREE_NAMES + 4)], fill=n["colour"], width=1)
    for n in nodes:
        _node(draw, n["x"], n["y"], n["split"], n["colour"])
    if len(config.branches[0]) > 1:  # split from the very first layer: the image itself is the split point
        _node(draw, input_xy[0], input_xy[1], True, TRUNK_COLOUR)
    for t in order:
        _vertical_text(image, config.tasks[t] or str(t), int(column[t]), TREE_NAMES, font,
                       PALETTE[owner[t] % len(PALETTE)] if split_layer is not None else "#111827")
    draw.text((input_xy[0] + 8, input_xy[1] - 7), f"image {config.input_size}x{config.input_size}",
              font=small, fill="#111827")
    _node(draw, 20, height - 14, True, TRUNK_COLOUR)
    draw.text((36, height - 21), "split point", font=small, fill="#111827")
    return {"image": np.asarray(image), "order": order, "nodes": nodes,
            "leaves": [{"task": config.tasks[t], "x": column[t]} for t in order], "size": (height, width)}


def tree_markdown(name: str, config: TreeConfig, metadata: dict[str, Any]) -> str:
    """What the figure shows, in words: where the tree splits and into what."""
    layer = first_split(config)
    head = f"**{model_label(name, metadata)}**: "
    if layer is None:
        return head + (f"one shared trunk of {config.num_layers} layers for all {config.num_tasks} attributes "
                       "(never widened).")
    order = tree_order(config)
    groups = sorted(config.branches[layer], key=lambda g: min(order.index(t) for t in g))
    parts = ["[" + ", ".join(config.tasks[t] for t in sorted(g, key=order.index)) + "]" for g in groups]
    shared = (f"Layers 0–{layer - 1} are shared by every attribute." if layer > 0
              else "No layer is shared by every attribute.")
    return head + (f"first split at layer {layer} ({'conv' if config.is_conv(layer) else 'fc'}) into "
                   f"{len(groups)} branches: {' '.join(parts)}; {len(config.branches[-1])} branches at the top "
                   f"layer. {shared}")


# --------------------------------------------------------------------------------------------
# The affinity heatmap
# --------------------------------------------------------------------------------------------


def affinity_of(metadata: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """The task affinity to show and where it comes from: for a branched model the first widening
    decision's (measured at the top layer, before any split), else the card's ``affinity`` (tracked on the
    last epoch's training batches); (None, why) when the card has neither."""
    decisions = metadata.get("decisions") or []
    if decisions and decisions[0].get("task_affinity"):
        first = decisions[0]
        return (np.asarray(first["task_affinity"], np.float64),
                f"the first widening decision's task affinity (layer {first.get('layer')}, before any split)")
    if metadata.get("affinity"):
        return (np.asarray(metadata["affinity"], np.float64),
                "the card's task affinity (tracked on the last epoch's training batches)")
    return None, "This checkpoint's card keeps no task affinity (retrain it with the current recipe)."


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) as viridis RGB uint8 (shape + (3,))."""
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    flat = np.clip(np.asarray(values, np.float64), 0.0, 1.0).ravel()
    rgb = np.stack([np.interp(flat, stops, _VIRIDIS[:, k]) for k in range(3)], axis=-1)
    return rgb.round().astype(np.uint8).reshape(*np.shape(values), 3)


def affinity_heatmap(matrix: np.ndarray, config: TreeConfig) -> dict[str, Any]:
    """The T×T affinity as an image, tasks in :func:`tree_order` on both axes, each top-layer branch's block
    on the diagonal outlined in white, and a colour bar. The colours span the off-diagonal values (the
    diagonal, always 1, is drawn at the top colour). Returns the image, the order, the ordered matrix, the
    colour range and the geometry (``origin`` of cell (0, 0), ``cell`` size)."""
    order = tree_order(config)
    n = len(order)
    if matrix.shape != (n, n):
        raise UserError(f"The card's affinity is {matrix.shape[0]}×{matrix.shape[1]}, the tree has {n} tasks: "
                        "the checkpoint is inconsistent; retrain it.")
    ordered = matrix[np.ix_(order, order)]
    off = ordered[~np.eye(n, dtype=bool)] if n > 1 else ordered.ravel()
    vmin, vmax = float(off.min()), float(off.max())
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    width = HEAT_LABELS + n * HEAT_CELL + HEAT_BAR
    height = HEAT_LABELS + n * HEAT_CELL + HEAT_MARGIN
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = figure_font(12), figure_font(11)
    x0 = y0 = HEAT_LABELS
    colours = colormap((ordered - vmin) / (vmax - vmin))
    for i in range(n):
        for j in range(n):
            draw.rectangle([x0 + j * HEAT_CELL, y0 + i * HEAT_CELL, x0 + (j + 1) * HEAT_CELL - 1,
                            y0 + (i + 1) * HEAT_CELL - 1], fill=tuple(int(c) for c in colours[i, j]))
    owner = split_group_of(config)
    for k, t in enumerate(order):
        name = config.tasks[t] or str(t)
        fill = PALETTE[owner[t] % len(PALETTE)] if first_split(config) is not None else "#111827"
        draw.text((x0 - 6 - _text_width(draw, name, font), y0 + k * HEAT_CELL + HEAT_CELL // 2 - 8), name,
                  font=font, fill=fill)
        _vertical_text(image, name, x0 + k * HEAT_CELL + HEAT_CELL // 2, y0 - 6, font, fill)
    start = 0
    for group in top_groups(config):  # outline each top-layer branch's block (contiguous in tree order)
        a, b = x0 + start * HEAT_CELL, x0 + (start + len(group)) * HEAT_CELL - 1
        c, d = y0 + start * HEAT_CELL, y0 + (start + len(group)) * HEAT_CELL - 1
        draw.rectangle([a, c, b, d], outline="white", width=2)
        start += len(group)
    bar_x, bar_w = x0 + n * HEAT_CELL + 14, 14
    bar_h = n * HEAT_CELL
    for k in range(bar_h):  # top = high
        value = 1.0 - k / max(1, bar_h - 1)
        draw.line([(bar_x, y0 + k), (bar_x + bar_w, y0 + k)], fill=tuple(int(c) for c in colormap(value)))
    draw.text((bar_x + bar_w + 4, y0 - 2), f"{vmax:.2f}", font=small, fill="#111827")
    draw.text((bar_x + bar_w + 4, y0 + bar_h - 12), f"{vmin:.2f}", font=small, fill="#111827")
    return {"image": np.asarray(image), "order": order, "tasks": [config.tasks[t] for t in order],
            "matrix": ordered.tolist(), "vmin": vmin, "vmax": vmax, "origin": (x0, y0), "cell": HEAT_CELL,
            "size": (height, width)}


# --------------------------------------------------------------------------------------------
# Probabilities, grouped by branch
# --------------------------------------------------------------------------------------------


def probabilities_html(groups: list[dict[str, Any]]) -> str:
    """One panel per top-layer branch (its colour: its group at the first split), one bar per attribute."""
    panels = []
    for g in groups:
        rows = "".join(
            f"<tr><td style='padding:2px 8px 2px 0;white-space:nowrap'>{html.escape(task)}</td>"
            f"<td style='width:100%'><div style='background:#e5e7eb;height:14px;border-radius:3px'>"
            f"<div style='width:{100 * p:.1f}%;background:{g['colour']};height:14px;border-radius:3px'></div>"
            f"</div></td><td style='padding-left:8px;text-align:right;font-variant-numeric:tabular-nums'>"
            f"{100 * p:.0f}&nbsp;%</td><td style='padding-left:6px'>{'yes' if p >= 0.5 else 'no'}</td></tr>"
            for task, p in g["probabilities"].items())
        panels.append(f"<div style='border-left:5px solid {g['colour']};padding:4px 10px;margin:6px 0'>"
                      f"<div style='font-weight:600'>{html.escape(g['title'])}</div>"
                      f"<table style='width:100%;border-collapse:collapse'>{rows}</table></div>")
    return "".join(panels)


def enlarge(image: Any, target: int = READABLE_PX) -> np.ndarray:
    """An H×W×3 uint8 array scaled by an integer factor (nearest neighbour: crisp pixels) so that its
    longer side is about ``target`` pixels; large images are left as they are."""
    array = np.asarray(image)
    factor = max(1, target // max(array.shape[0], array.shape[1], 1))
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------

_TIMING_LOCK = threading.Lock()  # one measurement at a time: two would slow each other


@contextmanager
def one_thread():
    """torch on one CPU thread while timing (the table's latency is per thread), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def latency_ms(nets: dict[str, BranchedNet], repeats: int = LATENCY_REPEATS,
               warmup: int = LATENCY_WARMUP) -> dict[str, float]:
    """Median ms of a batch-1 forward of each network on one CPU thread, timed in turns (A, B, A, B, …)."""
    # the table's latency is the CPU's: a network on another demo device is timed as a CPU copy
    nets = {name: net if next(net.parameters()).device.type == "cpu" else copy.deepcopy(net).cpu()
            for name, net in nets.items()}
    inputs = {name: torch.rand(1, net.config.channels, net.config.input_size, net.config.input_size)
              for name, net in nets.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    with _TIMING_LOCK, one_thread(), torch.inference_mode():
        for _ in range(warmup):
            for name, net in nets.items():
                net(inputs[name])
        for _ in range(repeats):
            for name, net in nets.items():
                start = time.perf_counter()
                net(inputs[name])
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


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
        """The model the tab opens on: the branched model with the best validation mean accuracy (its card;
        ties and unknown accuracies go to the smaller λ); without branched models the wide, then the thin
        one; None when there is no model at all."""
        cards = self.cards() if cards is None else cards
        branched = self.branched_names(cards)
        if branched:
            def score(n: str) -> tuple[float, int]:
                accuracy = mean_accuracy(cards[n])
                return (-1.0 if accuracy is None else accuracy, -branched.index(n))

            return max(branched, key=score)
        return next((n for n in BASELINES if n in cards), None)

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
