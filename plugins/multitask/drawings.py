"""The multitask demo's drawings, from a tree's configuration alone (no network): the branching tree as a
figure (and in words), the task-affinity matrix as a heatmap ordered by the tree, the probability panels
grouped by branch. Images are H×W×3 uint8 arrays."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from app.api import UserError
from app.api.demo import figure_font, viridis
from plugins.multitask.model import TreeConfig
from plugins.multitask.names import model_label

# Colours of the first-split groups in the tree, the heatmap's boxes and the probability panels.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39")
TRUNK_COLOUR = "#6b7280"
SPLIT_COLOUR = "#dc2626"

# Tree figure geometry (pixels): a column per task, a row per hidden layer, the task names on top.
TREE_LEFT, TREE_RIGHT, TREE_COLUMN = 150, 16, 56
TREE_NAMES, TREE_HEADS, TREE_ROW, TREE_BOTTOM = 112, 28, 52, 44
# Heatmap geometry: a square cell per pair of tasks, names on the left and on top, a colour bar on the right.
HEAT_LABELS, HEAT_CELL, HEAT_BAR, HEAT_MARGIN = 112, 30, 84, 8


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
    label = Image.new("RGBA", (int(right - left) + 2, int(low - top) + 2), (255, 255, 255, 0))
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

    nodes: list[dict[str, Any]] = []
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
    colours = viridis((ordered - vmin) / (vmax - vmin))
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
        draw.line([(bar_x, y0 + k), (bar_x + bar_w, y0 + k)], fill=tuple(int(c) for c in viridis(value)))
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
