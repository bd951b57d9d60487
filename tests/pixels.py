"""Counting coloured pixels in drawn images (not a test module): the Runs tab's curves in test_curves.py
and test_ui.py."""

from __future__ import annotations

import numpy as np
from PIL import ImageColor

from app.ui.curves import PALETTE


def colour_mask(image, colour: str, box=None) -> np.ndarray:
    """Which pixels of ``image`` (or of its ``box``) have ``colour``, a series' line or points."""
    part = image.crop(box) if box else image
    want = np.array(ImageColor.getrgb(colour))
    return np.abs(np.asarray(part.convert("RGB")).astype(int) - want).sum(axis=2) < 30


def colour_pixels(image, colour: str = PALETTE[0], box=None) -> int:
    """How many pixels of ``image`` (or of its ``box``) have ``colour`` (by default the first series')."""
    return int(colour_mask(image, colour, box).sum())
