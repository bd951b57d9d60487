"""app/ui/curves.py: the Runs tab's metric curves, drawn on the server, a panel per metric."""

from __future__ import annotations

import math

import numpy as np

from app.ui.curves import MAX_PANELS, PALETTE, PANEL_H, PANEL_W, TOP, curves_image
from tests.pixels import colour_mask, colour_pixels


def test_each_metric_gets_its_own_panel_and_scale():
    """A parameter count beside an accuracy: both curves span their panel's height (one shared axis
    flattened the accuracy into a line at 0)."""
    image = curves_image({"accuracy": {"#1": [(s, 0.5 + 0.01 * s) for s in range(10)]},
                          "params": {"#1": [(s, 5e4 + 1e3 * s) for s in range(10)]}})
    assert image.size == (2 * PANEL_W, TOP + PANEL_H)
    for left in (0, PANEL_W):
        rows = np.nonzero(colour_mask(image, PALETTE[0], (left, TOP, left + PANEL_W, TOP + PANEL_H)).any(axis=1))[0]
        assert rows.max() - rows.min() > PANEL_H / 2  # the line climbs over most of the panel


def test_series_get_colours_a_lone_point_shows_and_nothing_drawn_is_none():
    image = curves_image({"loss": {"#1": [(0, 1.0), (1, 0.5), (2, 0.2)], "#2": [(0, 0.9), (2, 0.4)]},
                          "once": {"#1": [(5, 3.0)]}})
    assert colour_pixels(image, PALETTE[0], (0, 0, PANEL_W, image.height)) > 50
    assert colour_pixels(image, PALETTE[1], (0, 0, PANEL_W, image.height)) > 50  # the second run, and its legend
    assert colour_pixels(image, PALETTE[0], (PANEL_W, 0, 2 * PANEL_W, image.height)) > 20  # one point: a dot
    assert curves_image({}) is None and curves_image({"loss": {"#1": []}}) is None


def test_a_non_finite_value_breaks_the_line_and_panels_are_capped():
    points = [(0, 1.0), (1, math.nan), (2, math.inf), (3, 1.0), (4, 0.0)]
    image = curves_image({"loss": {"#1": points}})
    line = colour_mask(image, PALETTE[0], (0, TOP, PANEL_W, TOP + PANEL_H))
    columns = np.nonzero(line.any(axis=0))[0]
    gap = (columns[0] + columns[-1]) // 2 - (columns[-1] - columns[0]) // 8  # steps 1 and 2: no value
    assert not line[:, gap - 10:gap + 10].any()  # no line drawn across the steps without a value
    assert line[:, columns[-1] - 20:columns[-1]].any()  # the finite steps 3 and 4 are joined
    assert curves_image({"loss": {"#1": [(0, math.nan)]}}) is not None  # says "no finite values"
    many = curves_image({f"m{i}": {"#1": [(0, 1.0), (1, 2.0)]} for i in range(MAX_PANELS + 5)})
    assert many.size == (2 * PANEL_W, TOP + math.ceil(MAX_PANELS / 2) * PANEL_H)
