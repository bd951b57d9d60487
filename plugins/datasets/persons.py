"""``persons``: synthetic person figures with 14 binary attributes (7 of the head, 7 of the body).

Generator (numpy only, vectorised over images): each figure is built from signed-distance parts
(head, hair, hat, face details; torso, sleeves, arms, skirt or trousers, legs, shoes, bag, belt) in a
person-local frame, then placed with a random scale, position and lean on a flat, gradient or
textured background with clutter, and lightly blurred and noised. Head attributes are drawn only in
the head region and body attributes only in the body region, so head tasks and body tasks need
different features. A latent ``feminine`` flag (not a label) couples a few attributes (see
docs/datasets.md); all others are independent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.api import Arrays, ImageTensorDataset
from plugins.datasets.procedural import load_generated, render_chunks, split_rng
from plugins.datasets.raster import (
    as_float32,
    blur,
    coverage,
    local_coords,
    paint,
    pixel_grid,
    sd_box,
    sd_polygon,
    window,
)

HEAD_ATTRIBUTES = ["hat", "glasses", "beard", "smiling", "long_hair", "blond_hair", "earrings"]
BODY_ATTRIBUTES = ["long_sleeves", "striped_shirt", "red_shirt", "skirt", "bag", "dark_shoes", "belt"]
PERSON_ATTRIBUTES = HEAD_ATTRIBUTES + BODY_ATTRIBUTES
GENERATOR_VERSION = 2
SEED_SALT = 7  # part of every persons split seed stream (changing it changes every image)
CHUNK = 500

# P(attribute) given the latent flag: (if feminine, if not). Marginals are the means (flag ~ 50%).
ATTRIBUTE_PROBABILITY = {
    "hat": (0.35, 0.35), "glasses": (0.35, 0.35), "beard": (0.0, 0.55), "smiling": (0.5, 0.5),
    "long_hair": (0.75, 0.2), "blond_hair": (0.35, 0.3), "earrings": (0.6, 0.1),
    "long_sleeves": (0.5, 0.5), "striped_shirt": (0.4, 0.4), "red_shirt": (0.35, 0.3),
    "skirt": (0.65, 0.0), "bag": (0.45, 0.3), "dark_shoes": (0.4, 0.6), "belt": (0.3, 0.5),
}

_SKIN = np.array([[0.96, 0.80, 0.69], [0.88, 0.67, 0.52], [0.76, 0.55, 0.38], [0.55, 0.37, 0.24],
                  [0.36, 0.24, 0.16]])
_BLOND = np.array([[0.95, 0.85, 0.45], [0.88, 0.75, 0.35], [0.98, 0.92, 0.60]])
_DARK_HAIR = np.array([[0.10, 0.07, 0.05], [0.30, 0.18, 0.08], [0.45, 0.25, 0.12], [0.5, 0.5, 0.5]])
_RED = np.array([[0.85, 0.10, 0.10], [0.70, 0.05, 0.10], [0.95, 0.25, 0.20]])
_NOT_RED = np.array([[0.15, 0.35, 0.80], [0.20, 0.65, 0.30], [0.95, 0.95, 0.95], [0.55, 0.55, 0.60],
                     [0.90, 0.80, 0.20], [0.50, 0.25, 0.65], [0.10, 0.60, 0.65]])
_TROUSERS = np.array([[0.15, 0.20, 0.45], [0.10, 0.10, 0.12], [0.45, 0.45, 0.48], [0.65, 0.55, 0.38]])
_DARK_SHOES = np.array([[0.05, 0.05, 0.05], [0.25, 0.15, 0.08]])
_LIGHT_SHOES = np.array([[0.95, 0.95, 0.95], [0.85, 0.2, 0.2], [0.85, 0.75, 0.55]])


def _pick(rng: np.random.Generator, palette: np.ndarray, n: int, jitter: float = 0.04) -> np.ndarray:
    return np.clip(palette[rng.integers(0, len(palette), n)] + jitter * rng.standard_normal((n, 3)), 0, 1)


def sample_params(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw every per-sample value: attributes (with the documented correlations), pose and colours."""
    p: dict[str, np.ndarray] = {}
    feminine = rng.random(n) < 0.5
    attrs = np.stack([rng.random(n) < np.where(feminine, *ATTRIBUTE_PROBABILITY[a]) for a in PERSON_ATTRIBUTES], 1)
    p["attributes"] = attrs.astype(np.float32)
    # Pose and placement: unit = half the figure's height in image units (image half-side = 1).
    p["unit"] = rng.uniform(0.62, 0.92, n)
    p["cx"] = rng.uniform(-1, 1, n) * (0.95 - 0.45 * p["unit"])
    p["cy"] = rng.uniform(-1, 1, n) * np.maximum(0.98 - p["unit"], 0.01)
    p["lean"] = rng.uniform(-0.2, 0.2, n)
    p["arm_angle"] = rng.uniform(0.15, 1.1, (n, 2))  # radians away from hanging straight down
    p["leg_spread"] = rng.uniform(0.0, 0.12, n)
    # Colours.
    p["skin"] = _pick(rng, _SKIN, n)
    blond = attrs[:, PERSON_ATTRIBUTES.index("blond_hair")]
    p["hair"] = np.where(blond[:, None], _pick(rng, _BLOND, n), _pick(rng, _DARK_HAIR, n))
    red = attrs[:, PERSON_ATTRIBUTES.index("red_shirt")]
    p["shirt"] = np.where(red[:, None], _pick(rng, _RED, n), _pick(rng, _NOT_RED, n))
    p["stripe"] = np.where((p["shirt"].mean(1) > 0.5)[:, None], 0.15, 0.9) + 0.05 * rng.standard_normal((n, 3))
    p["stripe_phase"] = rng.uniform(0, 2 * np.pi, n)
    p["lower"] = np.where(attrs[:, PERSON_ATTRIBUTES.index("skirt")][:, None], rng.random((n, 3)),
                          _pick(rng, _TROUSERS, n))
    dark = attrs[:, PERSON_ATTRIBUTES.index("dark_shoes")]
    p["shoes"] = np.where(dark[:, None], _pick(rng, _DARK_SHOES, n), _pick(rng, _LIGHT_SHOES, n))
    p["hat"] = rng.random((n, 3))
    p["bag"] = rng.random((n, 3)) * 0.8 + 0.1
    p["belt"] = rng.random((n, 3)) * 0.3
    # Scene: background kind, colours, texture, clutter blobs, noise.
    p["bg_kind"] = rng.integers(0, 3, n)
    p["bg_color"] = rng.random((n, 3))
    p["bg_color2"] = rng.random((n, 3))
    p["bg_angle"] = rng.uniform(0, 2 * np.pi, n)
    p["tex_freq"] = rng.uniform(3, 9, n)
    p["n_clutter"] = rng.integers(0, 5, n)
    p["clutter_xy"] = rng.uniform(-1, 1, (n, 4, 2))
    p["clutter_size"] = rng.uniform(0.06, 0.2, (n, 4, 2))
    p["clutter_color"] = rng.random((n, 4, 3))
    p["blur"] = rng.uniform(0, 0.7, n)
    p["noise"] = rng.uniform(0, 0.06, n)
    p["noise_seed"] = rng.integers(0, 2**31, n)
    return p


def _capsule(x, y, ax, ay, bx, by, r):
    """Signed distance to the segment a→b thickened by r (a, b: per-sample N arrays)."""
    ax, ay, bx, by = (v[:, None, None] for v in (ax, ay, bx, by))
    px, py, ex, ey = x - ax, y - ay, bx - ax, by - ay
    h = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0, 1)
    return np.hypot(px - ex * h, py - ey * h) - r


def _circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


def render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Render the figures described by ``p`` at ``size``×``size``; uint8 N×3×H×W."""
    p = as_float32(p)
    n = len(p["unit"])
    half_px = size / 2
    gx, gy = pixel_grid(n, size)
    attr = {a: p["attributes"][:, i].astype(bool) for i, a in enumerate(PERSON_ATTRIBUTES)}
    unit = p["unit"]

    def draw(target, sdf, color, mask=None):
        """Paint a part given its sdf in person units; ``mask`` (N bool) limits it to some samples."""
        alpha = coverage(sdf * unit[:, None, None], half_px)
        if mask is not None:
            alpha = alpha * mask[:, None, None]
        paint(target, alpha, color)

    # Background: flat, vertical-ish gradient between two colours, or stripes texture; then clutter.
    t = (np.cos(p["bg_angle"])[:, None, None] * gx + np.sin(p["bg_angle"])[:, None, None] * gy + 1.4) / 2.8
    wave = 0.5 + 0.5 * np.sin(np.pi * p["tex_freq"][:, None, None] * (gx + 0.5 * gy))
    mix = np.select([p["bg_kind"][:, None, None] == 0, p["bg_kind"][:, None, None] == 1], [0.0, t], 0.35 * wave)
    canvas = p["bg_color"][:, None, None, :] * (1 - mix[..., None]) + p["bg_color2"][:, None, None, :] * mix[..., None]
    for k in range(4):
        cx, cy = p["clutter_xy"][:, k, 0][:, None, None], p["clutter_xy"][:, k, 1][:, None, None]
        hw, hh = p["clutter_size"][:, k, 0][:, None, None], p["clutter_size"][:, k, 1][:, None, None]
        alpha = coverage(sd_box(gx - cx, gy - cy, hw, hh), half_px) * (k < p["n_clutter"])[:, None, None]
        paint(canvas, alpha, p["clutter_color"][:, k])

    # Person-local coordinates: origin at the hips, y up, unit = half the figure height.
    x, y = local_coords(gx, gy, p["cx"], p["cy"], p["lean"], unit)
    ones = np.ones(n, np.float32)
    # Long hair behind the head and shoulders.
    draw(canvas, sd_box(x, y - 0.58, 0.2, 0.17) - 0.02, p["hair"], attr["long_hair"])
    # Legs (trousers or skin), shoes.
    legs_color = np.where(attr["skirt"][:, None], p["skin"], p["lower"])
    for side in (-1, 1):
        foot_x = side * (0.09 + p["leg_spread"])
        draw(canvas, _capsule(x, y, side * 0.09 * ones, -0.05 * ones, foot_x, -0.86 * ones, 0.075), legs_color)
        draw(canvas, sd_box(x - foot_x[:, None, None] - side * 0.03, y + 0.92, 0.08, 0.045), p["shoes"])
    # Arms: sleeve colour on the upper arm (and the forearm with long sleeves), skin on the hands.
    for side, k in ((-1, 0), (1, 1)):
        sx, sy = side * 0.2 * ones, 0.48 * ones
        angle = p["arm_angle"][:, k]
        ex, ey = sx + side * 0.24 * np.sin(angle), sy - 0.24 * np.cos(angle)
        hx, hy = ex + side * 0.24 * np.sin(angle * 1.1), ey - 0.24 * np.cos(angle * 1.1)
        forearm = np.where(attr["long_sleeves"][:, None], p["shirt"], p["skin"])
        draw(canvas, _capsule(x, y, ex, ey, hx, hy, 0.06), forearm)
        draw(canvas, _circle(x, y, hx[:, None, None], hy[:, None, None], 0.065), p["skin"])
        draw(canvas, _capsule(x, y, sx, sy, ex, ey, 0.07), p["shirt"])
    # Torso, stripes, skirt, belt, bag.
    torso = sd_box(x, y - 0.25, 0.2, 0.28)
    draw(canvas, torso, p["shirt"])
    stripes = np.sin(2 * np.pi * (y - 0.25) / 0.11 + p["stripe_phase"][:, None, None])
    draw(canvas, np.maximum(torso, (np.abs(stripes) - 0.45) * 0.03), p["stripe"], attr["striped_shirt"])
    skirt = sd_polygon(x, y, np.array([[-0.21, -0.0], [0.21, -0.0], [0.33, -0.5], [-0.33, -0.5]], np.float32))
    draw(canvas, skirt, p["lower"], attr["skirt"])
    draw(canvas, sd_box(x, y + 0.0, 0.21, 0.03), p["belt"], attr["belt"])
    draw(canvas, _capsule(x, y, -0.17 * ones, 0.5 * ones, 0.27 * ones, 0.0 * ones, 0.022), p["bag"] * 0.7,
         attr["bag"])
    draw(canvas, sd_box(x - 0.3, y + 0.06, 0.11, 0.09), p["bag"], attr["bag"])
    # Head, drawn in a small window around it (about a tenth of the pixels): neck, face, beard,
    # hair, eyes, mouth, glasses, earrings, hat.
    lean_cos, lean_sin = np.cos(p["lean"]), np.sin(p["lean"])
    head_x = p["cx"] - unit * 0.76 * lean_sin
    head_y = p["cy"] + unit * 0.76 * lean_cos
    side_px = int(np.ceil(2 * 0.92 * 0.26 * (np.cos(0.2) + np.sin(0.2)) * half_px)) + 2
    index, wx, wy = window(size, (head_x + 1) * half_px - 0.5, (1 - head_y) * half_px - 0.5, side_px, side_px)
    head_canvas = canvas[index]
    x, y = local_coords(wx, wy, p["cx"], p["cy"], p["lean"], unit)
    dark = np.zeros((n, 3), np.float32) + 0.03
    draw(head_canvas, sd_box(x, y - 0.56, 0.05, 0.05), p["skin"])
    head = _circle(x, y, 0.0, 0.72, 0.16)
    draw(head_canvas, head, p["skin"])
    draw(head_canvas, np.maximum(head, y - 0.66), p["hair"] * 0.8, attr["beard"])
    draw(head_canvas, np.maximum(_circle(x, y, 0.0, 0.72, 0.175), 0.77 - y), p["hair"])
    gold = np.zeros((n, 3), np.float32) + np.array([0.95, 0.8, 0.1], np.float32)
    for side in (-1, 1):
        draw(head_canvas, _circle(x, y, side * 0.06, 0.73, 0.022), dark)
        draw(head_canvas, np.abs(_circle(x, y, side * 0.065, 0.73, 0.05)) - 0.02, dark, attr["glasses"])
        draw(head_canvas, _circle(x, y, side * 0.165, 0.655, 0.035), gold, attr["earrings"])
    draw(head_canvas, sd_box(x, y - 0.74, 0.03, 0.015), dark, attr["glasses"])
    smile = np.maximum(np.abs(_circle(x, y, 0.0, 0.685, 0.075)) - 0.02, y - 0.65)
    straight = sd_box(x, y - 0.63, 0.06, 0.018)
    mouth = np.zeros((n, 3), np.float32) + np.array([0.45, 0.05, 0.05], np.float32)
    draw(head_canvas, np.where(attr["smiling"][:, None, None], smile, straight), mouth)
    draw(head_canvas, sd_box(x, y - 0.92, 0.13, 0.08), p["hat"], attr["hat"])
    draw(head_canvas, sd_box(x, y - 0.84, 0.23, 0.022), p["hat"] * 0.8, attr["hat"])
    canvas[index] = head_canvas
    # Camera: blur, noise.
    canvas = blur(canvas, p["blur"] * size / 64)
    for i in range(n):
        canvas[i] += p["noise"][i] * np.random.default_rng(int(p["noise_seed"][i])).standard_normal((size, size, 3))
    return np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).copy()


def generate(split: str, n: int, size: int = 64, seed: int = 0, workers: int | None = None) -> Arrays:
    """Generate ``n`` figures of ``split`` (deterministic in split, n, size, seed; not in workers)."""
    p = sample_params(n, split_rng(seed, split, GENERATOR_VERSION, SEED_SALT))
    parts = render_chunks(render, p, n, size, CHUNK, workers)
    images = np.concatenate(parts) if parts else np.zeros((0, 3, size, size), np.uint8)
    return {"images": images, "targets": p["attributes"]}


def load_persons(split: str, root: Path, *, size: int = 64, num_train: int = 20000, num_val: int = 2000,
                 num_test: int = 5000, seed: int = 0) -> ImageTensorDataset:
    """The ``split`` of ``persons`` (multi-label, :data:`PERSON_ATTRIBUTES`), cached under ``root/persons``.

    Same arguments → identical bytes; splits come from different seed streams. The first call
    generates every split.
    """
    arrays = load_generated("persons", GENERATOR_VERSION, generate, split, root, size=size, num_train=num_train,
                            num_val=num_val, num_test=num_test, seed=seed)
    return ImageTensorDataset(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["targets"]),
                              PERSON_ATTRIBUTES, "multilabel", name=f"persons/{split}")
