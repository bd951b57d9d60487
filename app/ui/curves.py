"""Metric curves drawn on the server as one picture: a panel per metric, each with its own y-axis.

Gradio 6's LinePlot drew axes but no lines once its data changed to other series (another run, another
metric: Vega keeps the first colour domain), and one shared axis flattened an accuracy beside a parameter
count. A small multiple per metric, as TensorBoard draws them, has neither problem.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

from app.images import figure_font

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
PANEL_W, PANEL_H = 420, 230
TOP = 30  # a blank band above the panels: Gradio draws the image's label over its top-left corner
MAX_PANELS = 12

Series = Sequence[tuple[float, float]]  # (step, value) points, in step order


def _ticks(low: float, high: float) -> list[float]:
    if low == high:
        return [low]
    return [low, (low + high) / 2, high]


def _label(value: float) -> str:
    """4 significant digits; thousands and millions as k and M (a tick label has ~60 px)."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= 10 * scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def curves_image(panels: Mapping[str, Mapping[str, Series]], columns: int = 2) -> Image.Image | None:
    """One panel per entry of ``panels`` (title → series name → points), at most :data:`MAX_PANELS`;
    lines break at non-finite values. None when there is nothing to draw."""
    panels = {t: s for t, s in panels.items() if any(points for points in s.values())}
    if not panels:
        return None
    titles = list(panels)[:MAX_PANELS]
    columns = max(1, min(columns, len(titles)))
    rows = math.ceil(len(titles) / columns)
    image = Image.new("RGB", (columns * PANEL_W, TOP + rows * PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    title_font, small = figure_font(15), figure_font(12)
    for index, title in enumerate(titles):
        _draw_panel(draw, (index % columns) * PANEL_W, TOP + (index // columns) * PANEL_H, title, panels[title],
                    title_font, small)
    return image


def _draw_panel(draw: ImageDraw.ImageDraw, left: int, top: int, title: str, series: Mapping[str, Series],
                title_font: object, small: object) -> None:
    names = list(series)
    draw.text((left + 12, top + 6), title, font=title_font, fill="#222222")
    legend_h = 0
    if len(names) > 1:  # which colour is which series, under the title
        x = left + 12
        for n, name in enumerate(names):
            width = int(draw.textlength(name, font=small)) + 26
            if x + width > left + PANEL_W - 8:
                break
            colour = PALETTE[n % len(PALETTE)]
            draw.line([(x, top + 33), (x + 14, top + 33)], fill=colour, width=3)
            draw.text((x + 18, top + 26), name, font=small, fill="#333333")
            x += width
        legend_h = 18
    finite = [(s, v) for points in series.values() for s, v in points if math.isfinite(v)]
    plot_l, plot_r = left + 64, left + PANEL_W - 14
    plot_t, plot_b = top + 32 + legend_h, top + PANEL_H - 34
    draw.rectangle([plot_l, plot_t, plot_r, plot_b], outline="#cccccc")
    if not finite:
        draw.text((plot_l + 10, plot_t + 10), "no finite values", font=small, fill="#888888")
        return
    steps = [s for s, _ in finite]
    x_lo, x_hi = min(steps), max(steps)
    y_lo, y_hi = min(v for _, v in finite), max(v for _, v in finite)
    pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 1.0
    y_min, y_max = y_lo - pad, y_hi + pad

    def to_xy(step: float, value: float) -> tuple[float, float]:
        x = plot_l + (plot_r - plot_l) * (0.5 if x_hi == x_lo else (step - x_lo) / (x_hi - x_lo))
        return x, plot_b - (plot_b - plot_t) * (value - y_min) / (y_max - y_min)

    for tick in _ticks(y_lo, y_hi):
        _, y = to_xy(x_lo, tick)
        draw.line([(plot_l, y), (plot_r, y)], fill="#eeeeee")
        text = _label(tick)
        draw.text((plot_l - 6 - draw.textlength(text, font=small), y - 7), text, font=small, fill="#555555")
    for tick in sorted({x_lo, x_hi}):
        x, _ = to_xy(tick, y_lo)
        text = _label(tick)
        width = draw.textlength(text, font=small)
        x = min(max(x - width / 2, plot_l), plot_r - width)  # the end labels stay inside the panel
        draw.text((x, plot_b + 4), text, font=small, fill="#555555")
    draw.text(((plot_l + plot_r) / 2 - 12, plot_b + 17), "step", font=small, fill="#777777")
    for n, name in enumerate(names):
        colour, run = PALETTE[n % len(PALETTE)], []
        for step, value in list(series[name]) + [(math.nan, math.nan)]:  # a sentinel ends the last line
            if math.isfinite(value) and math.isfinite(step):
                run.append(to_xy(step, value))
                continue
            if len(run) > 1:
                draw.line(run, fill=colour, width=2, joint="curve")
            for x, y in run if len(run) <= 3 else ():  # a few points: marked, or one would not show
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            run = []
