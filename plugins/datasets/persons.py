"""``persons``: synthetic person figures with 14 binary attributes (7 of the head, 7 of the body).

Generator (numpy only, vectorised over images): each figure is built from signed-distance parts
(head, hair, hat, face details; torso, sleeves, arms, skirt or trousers, legs, shoes, bag, belt) in a
person-local frame, then placed with a random scale, position and lean on a flat, gradient or
textured background with a little clutter, and lightly blurred and noised. Head attributes are drawn
only in the head region and body attributes only in the body region, so head tasks and body tasks
need different features.

Difficulty is region-level: every sample draws a head level and, independently, a body level; each
sets the strengths of that region's nuisances (head: an object in front of the face, a turned head,
the head partly out of the frame, the head blurred; body: a foreground object hiding part of the
body, the figure cropped at the bottom, clothes faded towards the background, the body blurred).
Hard heads make every head attribute hard at once and hard bodies every body attribute, so head
tasks share their hard examples with each other and body tasks with each other. The ground truth is
kept per sample: ``head_difficulty`` and ``body_difficulty`` in [0, 1], weighted sums of the region's
nuisance terms (:data:`HEAD_WEIGHTS`, :data:`BODY_WEIGHTS`). A latent ``feminine`` flag (not a
label) couples a few attributes (see docs/datasets.md); all others are independent.
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
GENERATOR_VERSION = 4  # bump when the images change, so old caches are not reused
SEED_SALT = 7  # part of every persons split seed stream (changing it changes every image)
CHUNK = 500

# P(attribute) given the latent flag: (if feminine, if not). Marginals are the means (flag ~ 50%).
ATTRIBUTE_PROBABILITY = {
    "hat": (0.35, 0.35), "glasses": (0.35, 0.35), "beard": (0.0, 0.55), "smiling": (0.5, 0.5),
    "long_hair": (0.75, 0.2), "blond_hair": (0.35, 0.3), "earrings": (0.6, 0.1),
    "long_sleeves": (0.5, 0.5), "striped_shirt": (0.4, 0.4), "red_shirt": (0.35, 0.3),
    "skirt": (0.65, 0.0), "bag": (0.45, 0.3), "dark_shoes": (0.4, 0.6), "belt": (0.3, 0.5),
}

# Region nuisances and the weight of each one's term (in [0, 1]) in the region's difficulty.
HEAD_WEIGHTS = {
    "occlusion": 0.35,  # fraction of the face disc covered by an object in front of it (×1.5, capped)
    "turn": 0.20,       # head turned towards a profile: |yaw| / MAX_TURN
    "frame": 0.15,      # fraction of the head (chin to hat top) above the top of the image / MAX_HEAD_OUT
    "blur": 0.30,       # blur sigma of the head region / MAX_REGION_BLUR
}
BODY_WEIGHTS = {
    "occlusion": 0.30,  # fraction of the body silhouette hidden by a foreground object (×1.5, capped)
    "crop": 0.25,       # fraction of the legs below the bottom of the image / MAX_CROP
    "contrast": 0.25,   # how far the clothes' colours are faded towards the background / MAX_FADE
    "blur": 0.20,       # blur sigma of the body region / MAX_REGION_BLUR
}
NUISANCE_ONSET = 0.6  # a nuisance's strength t (level + noise) acts only above this
MAX_TURN = 1.2  # radians of yaw
MAX_HEAD_OUT = 0.35  # of the head's height (chin to the top of a hat)
MAX_CROP = 0.55  # of the legs' length (hips to soles)
MAX_FADE = 0.8
MAX_REGION_BLUR = 2.4  # pixels at 64×64 (scaled with size)
MAX_UNIT = 1.4  # the largest figure scale (a head out of the frame and a crop at once zoom in)
# Person-local geometry (origin at the hips, y up, unit = figure scale).
HEAD_Y, HEAD_R = 0.78, 0.2  # head centre and radius
FACE_Y, FACE_OCC_TOP = 0.76, 0.9  # the face occluder's centre is drawn around FACE_Y; it stays below the hat
CROWN, CHIN, SOLES, HAT_TOP = 1.0, 0.58, 0.965, 1.1  # heights of the hair top, chin, soles (below), hat top
HEAD_REGION_Y = 0.5  # head nuisances act only above this height, body nuisances only below it
HEAD_BLUR_RADIUS = 0.36  # the head blur fades out at this distance from the head (inside its window)
BODY_REGION_TOP = 0.45  # ... and the body's blur and occluder below this one

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


def _strengths(rng: np.random.Generator, n: int, kinds) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A region's level ``u ~ U(0, 1)`` and, per nuisance, its strength in [0, 1] (0 = absent).

    ``t = clip(u + 0.25·N(0, 1), 0, 1)``; the nuisance acts above :data:`NUISANCE_ONSET`, with strength
    ``(t − onset) / (1 − onset)``. So the nuisances of one region go together, those of two regions don't.
    """
    level = rng.random(n)
    t = {k: np.clip(level + 0.25 * rng.standard_normal(n), 0, 1) for k in kinds}
    return level, {k: np.clip((v - NUISANCE_ONSET) / (1 - NUISANCE_ONSET), 0, 1) for k, v in t.items()}


def _contrasting(rng: np.random.Generator, avoid: list[np.ndarray], n: int, candidates: int = 6) -> np.ndarray:
    """Per sample, among random colours the one farthest (the nearest of ``avoid`` counted) from ``avoid``."""
    options = rng.random((n, candidates, 3))
    distance = np.min([np.linalg.norm(options - a[:, None, :], axis=2) for a in avoid], axis=0)
    return options[np.arange(n), distance.argmax(1)]


def sample_params(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw every per-sample value: attributes (with the documented correlations), pose, colours, nuisances."""
    p: dict[str, np.ndarray] = {}
    feminine = rng.random(n) < 0.5
    attrs = np.stack([rng.random(n) < np.where(feminine, *ATTRIBUTE_PROBABILITY[a]) for a in PERSON_ATTRIBUTES], 1)
    p["attributes"] = attrs.astype(np.float32)
    # Region levels and nuisance strengths, head and body drawn independently.
    p["head_level"], head = _strengths(rng, n, HEAD_WEIGHTS)
    p["body_level"], body = _strengths(rng, n, BODY_WEIGHTS)
    # Pose and placement: unit = the figure's scale (hips to crown ≈ 1) in image units (image half-side = 1).
    unit = rng.uniform(0.72, 0.92, n)
    low, high = -0.99 + SOLES * unit, 0.99 - HAT_TOP * unit  # the whole figure (with a hat) in the frame
    cy = low + (high - low) * rng.random(n)
    # Head partly above the frame (a fraction of chin to hat top), legs partly below it; both → zoom in.
    head_out = MAX_HEAD_OUT * head["frame"]
    crop = MAX_CROP * body["crop"]
    both = (head_out > 0) & (crop > 0)
    overflow = (HAT_TOP - CHIN) * head_out + SOLES * crop
    most = HAT_TOP + SOLES - 2 / MAX_UNIT
    shrink = np.where(both & (overflow > most), most / np.maximum(overflow, 1e-9), 1.0)
    head_out, crop = head_out * shrink, crop * shrink
    unit = np.where(both, 2 / (HAT_TOP + SOLES - (HAT_TOP - CHIN) * head_out - SOLES * crop), unit)
    cy = np.where(head_out > 0, 1 - unit * (HAT_TOP - (HAT_TOP - CHIN) * head_out), cy)
    cy = np.where(crop > 0, -1 + unit * SOLES * (1 - crop), cy)  # (both: the same cy as the line above)
    p["unit"], p["cy"], p["head_out"], p["crop"] = unit, cy, head_out, crop
    p["cx"] = rng.uniform(-1, 1, n) * np.maximum(0.95 - 0.45 * unit, 0)
    p["lean"] = rng.uniform(-0.15, 0.15, n)
    p["arm_angle"] = rng.uniform(0.3, 1.1, (n, 2))  # radians away from hanging straight down
    p["leg_spread"] = rng.uniform(0.0, 0.12, n)
    # Colours.
    p["skin"] = _pick(rng, _SKIN, n)
    light_skin = p["skin"] @ np.array([0.3, 0.59, 0.11]) > 0.45
    p["beard"] = np.where(light_skin[:, None], 0.08, 0.8) * np.ones((n, 3))  # dark on light skin, grey on dark
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
    p["bag"] = rng.random((n, 3)) * 0.8 + 0.1
    p["belt"] = rng.random((n, 3)) * 0.3
    # Scene: background kind, colours, texture, clutter blobs, noise.
    p["bg_kind"] = rng.integers(0, 3, n)
    p["bg_color"] = rng.random((n, 3))
    p["bg_color2"] = rng.random((n, 3))
    p["bg_angle"] = rng.uniform(0, 2 * np.pi, n)
    p["tex_freq"] = rng.uniform(3, 9, n)
    p["n_clutter"] = rng.integers(0, 4, n)
    p["clutter_xy"] = rng.uniform(-1, 1, (n, 3, 2))
    p["clutter_size"] = rng.uniform(0.05, 0.15, (n, 3, 2))
    p["clutter_color"] = rng.random((n, 3, 3))
    p["hat"] = _contrasting(rng, [p["hair"], p["bg_color"]], n)
    p["blur"] = rng.uniform(0, 0.5, n)
    p["noise"] = rng.uniform(0, 0.04, n)
    p["noise_seed"] = rng.integers(0, 2**31, n)
    # Head nuisances: an object in front of the face, yaw, (out of frame: placement above), blur.
    # Occluder size, blur and fading grow with the square of the strength: most nuisances are mild, and
    # the strongest (high levels) wipe their region out, so that every task of the region fails at once.
    p["face_occ_size"] = np.where(head["occlusion"] > 0, 0.06 + 0.16 * head["occlusion"], 0.0)
    angle, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.12, n) * (1 - head["occlusion"])
    p["face_occ_xy"] = np.stack([dist * np.cos(angle), FACE_Y + dist * np.sin(angle)], 1)
    p["face_occ_aspect"] = rng.uniform(0.6, 1.3, n)
    p["face_occ_color"] = rng.random((n, 3))
    p["turn"] = MAX_TURN * head["turn"] * rng.choice([-1.0, 1.0], n)
    p["head_blur"] = MAX_REGION_BLUR * head["blur"]
    # Body nuisances: a foreground object, (crop: placement above), faded clothes, blur.
    p["body_occ_size"] = np.where(body["occlusion"] > 0, 0.14 + 0.3 * body["occlusion"], 0.0)
    p["body_occ_xy"] = np.stack([rng.uniform(-0.2, 0.2, n), rng.uniform(-0.6, 0.1, n)], 1)
    p["body_occ_aspect"] = rng.uniform(0.7, 1.5, n)
    p["body_occ_color"] = rng.random((n, 3))
    p["fade"] = MAX_FADE * body["contrast"]
    p["body_blur"] = MAX_REGION_BLUR * body["blur"]
    return p


def _capsule(x, y, ax, ay, bx, by, r):
    """Signed distance to the segment a→b thickened by r (a, b: per-sample N arrays)."""
    ax, ay, bx, by = (v[:, None, None] for v in (ax, ay, bx, by))
    px, py, ex, ey = x - ax, y - ay, bx - ax, by - ay
    h = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0, 1)
    return np.hypot(px - ex * h, py - ey * h) - r


def _circle(x, y, cx, cy, r):
    return np.hypot(x - cx, y - cy) - r


def _col(v):
    """A per-sample N array as N×1×1, to broadcast against N×H×W."""
    return np.asarray(v)[:, None, None]


def _blur_region(canvas, sigma_px, mask):
    """Blur the samples with ``sigma_px > 0`` and blend the blurred pixels in where ``mask`` (N×H×W) is set."""
    idx = np.flatnonzero(sigma_px > 0)
    if len(idx):
        blurred = blur(canvas[idx], sigma_px[idx])
        canvas[idx] += mask[idx][..., None] * (blurred - canvas[idx])


def _draw_head(p, canvas, size, idx, side_px):
    """Draw the heads of samples ``idx`` into ``canvas`` (in place), in a side_px window around each head.

    Returns the fraction of each face disc covered by the object in front of it.
    """
    q = {k: v[idx] for k, v in p.items()}
    n, half_px, unit = len(idx), size / 2, q["unit"]
    attr = {a: q["attributes"][:, i].astype(bool) for i, a in enumerate(PERSON_ATTRIBUTES)}
    lean_cos, lean_sin = np.cos(q["lean"]), np.sin(q["lean"])
    centre_x, centre_y = q["cx"] - unit * 0.8 * lean_sin, q["cy"] + unit * 0.8 * lean_cos
    index, wx, wy = window(size, (centre_x + 1) * half_px - 0.5, (1 - centre_y) * half_px - 0.5, side_px, side_px)
    index = (idx[index[0]], index[1], index[2])
    target = canvas[index]
    x, y = local_coords(wx, wy, q["cx"], q["cy"], q["lean"], unit)

    def alpha(sdf, mask=None):
        a = coverage(sdf * _col(unit), half_px)
        return a if mask is None else a * _col(mask)

    def draw(sdf, color, mask=None):
        paint(target, alpha(sdf, mask), color)

    dark = np.zeros((n, 3), np.float32) + 0.03
    # Long hair falls on the shoulders on both sides of the neck (behind neck and face).
    draw(sd_box(x, y - 0.69, 0.23, 0.19) - 0.03, q["hair"], attr["long_hair"])
    draw(sd_box(x, y - 0.56, 0.06, 0.06), q["skin"])
    head = _circle(x, y, 0.0, HEAD_Y, HEAD_R)
    face = alpha(head)
    paint(target, face, q["skin"])
    draw(np.maximum(head, y - 0.72), q["beard"], attr["beard"])
    draw(np.maximum(_circle(x, y, 0.0, HEAD_Y, HEAD_R + 0.015), 0.85 - y), q["hair"])
    # A turned head (yaw θ): a feature at azimuth φ on the head sphere shows at x = R·sin(φ + θ), narrowed
    # by cos(φ + θ) and hidden when that is negative; the back of the head (|φ| > 1.3) shows hair.
    turn = _col(q["turn"])
    back = np.where(turn > 0, x < HEAD_R * np.sin(turn - 1.3), x > HEAD_R * np.sin(turn + 1.3))
    draw(np.maximum(head, 0.64 - y) + 1.0 * (~back), q["hair"], np.abs(q["turn"]) > 0.3)

    def feature(phi):
        facing = np.cos(phi + q["turn"])
        return HEAD_R * np.sin(phi + q["turn"]), np.maximum(facing / np.cos(phi), 0.2), facing

    mouth_color = np.zeros((n, 3), np.float32) + np.array([0.45, 0.03, 0.05], np.float32)
    teeth = np.zeros((n, 3), np.float32) + 0.97
    lens_color = np.zeros((n, 3), np.float32) + np.array([0.05, 0.05, 0.12], np.float32)
    for side in (-1, 1):
        fx, fw, facing = feature(side * np.arcsin(0.075 / HEAD_R))
        ex = (x - _col(fx)) / _col(fw)
        draw(_circle(ex, y, 0.0, 0.80, 0.028), dark, facing > 0.1)
        lens = _circle(ex, y, 0.0, 0.80, 0.062)  # dark sunglasses: filled lenses, much larger than the eyes
        draw(lens, lens_color, attr["glasses"] & (facing > 0.1))
        ear_x, _, ear_facing = feature(side * np.pi / 2)
        draw(_circle(x, y, _col(1.05 * ear_x), 0.64, 0.06), np.zeros((n, 3), np.float32)
             + np.array([1.0, 0.85, 0.05], np.float32), attr["earrings"] & (ear_facing > -0.35))
    fx, fw, _ = feature(0.0)
    mx = (x - _col(fx)) / _col(fw)
    # ... joined by a thick band across the face at eye height, from temple to temple
    draw(sd_box(mx, y - 0.80, 0.15, 0.028), lens_color, attr["glasses"])
    smile = np.maximum(_circle(mx, y, 0.0, 0.72, 0.125), y - 0.72)  # an open "D" mouth ...
    draw(smile, mouth_color, attr["smiling"])
    draw(np.maximum(smile, 0.67 - y), teeth, attr["smiling"])  # ... showing the teeth
    draw(sd_box(mx, y - 0.665, 0.055, 0.014), mouth_color, ~attr["smiling"])  # closed and straight
    # A hat: a dome with a wide, thick black brim (no other part of the scene has this outline).
    draw(np.maximum(_circle(x, y, 0.0, 0.93, 0.17), 0.93 - y), q["hat"], attr["hat"])
    draw(sd_box(x, y - 0.935, 0.29, 0.045), dark + 0.05, attr["hat"])
    # An object in front of the face (an ellipse), kept between the chin and the hat's brim.
    ox, oy = q["face_occ_xy"][:, 0], q["face_occ_xy"][:, 1]
    size_x, size_y = _col(np.maximum(q["face_occ_size"], 1e-3)), _col(q["face_occ_size"] * q["face_occ_aspect"])
    occ = (np.hypot((x - _col(ox)) / size_x, (y - _col(oy)) / np.maximum(size_y, 1e-3)) - 1) * np.minimum(size_x, size_y)
    occ = np.maximum(occ, np.maximum(np.abs(x) - 0.3, np.maximum(0.58 - y, y - FACE_OCC_TOP)))
    occ_alpha = alpha(occ, q["face_occ_size"] > 0)
    paint(target, occ_alpha, q["face_occ_color"])
    # Head blur, in the window: a disc around the head fading out before the window's edge, never
    # below HEAD_REGION_Y.
    mask = np.clip((HEAD_BLUR_RADIUS - np.hypot(x, y - 0.8)) / 0.05, 0, 1) * np.clip((y - HEAD_REGION_Y) / 0.05, 0, 1)
    _blur_region(target, q["head_blur"] * size / 64, mask)
    canvas[index] = target
    return (face * occ_alpha).sum((1, 2)) / np.maximum(face.sum((1, 2)), 1e-6)


def render(p: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Render the figures described by ``p`` at ``size``×``size``.

    Returns ``images`` (uint8 N×3×H×W) and the measured ``head_occluded`` and ``body_occluded`` fractions.
    """
    p = as_float32(p)
    n = len(p["unit"])
    half_px = size / 2
    gx, gy = pixel_grid(n, size)
    attr = {a: p["attributes"][:, i].astype(bool) for i, a in enumerate(PERSON_ATTRIBUTES)}
    unit = p["unit"]

    def alpha(sdf, mask=None):
        a = coverage(sdf * unit[:, None, None], half_px)
        return a if mask is None else a * mask[:, None, None]

    def draw(target, sdf, color, mask=None):
        """Paint a part given its sdf in person units; ``mask`` (N bool) limits it to some samples."""
        paint(target, alpha(sdf, mask), color)

    def alpha_some(mask, make_sdf):
        """Coverage of a part only some samples (``mask``) have; ``make_sdf(x, y, index)`` sees only those."""
        out = np.zeros((n, size, size), np.float32)
        index = np.flatnonzero(mask)
        if len(index):
            out[index] = coverage(make_sdf(x[index], y[index], index) * unit[index, None, None], half_px)
        return out

    # Background: flat, vertical-ish gradient between two colours, or stripes texture; then clutter.
    t = (np.cos(p["bg_angle"])[:, None, None] * gx + np.sin(p["bg_angle"])[:, None, None] * gy + 1.4) / 2.8
    wave = 0.5 + 0.5 * np.sin(np.pi * p["tex_freq"][:, None, None] * (gx + 0.5 * gy))
    mix = np.select([p["bg_kind"][:, None, None] == 0, p["bg_kind"][:, None, None] == 1], [0.0, t], 0.35 * wave)
    canvas = p["bg_color"][:, None, None, :] * (1 - mix[..., None]) + p["bg_color2"][:, None, None, :] * mix[..., None]
    for k in range(p["clutter_xy"].shape[1]):
        cx, cy = p["clutter_xy"][:, k, 0][:, None, None], p["clutter_xy"][:, k, 1][:, None, None]
        hw, hh = p["clutter_size"][:, k, 0][:, None, None], p["clutter_size"][:, k, 1][:, None, None]
        blob = (np.hypot((gx - cx) / hw, (gy - cy) / hh) - 1) * np.minimum(hw, hh)  # an ellipse
        a = coverage(blob, half_px) * (k < p["n_clutter"])[:, None, None]
        paint(canvas, a, p["clutter_color"][:, k])

    # Person-local coordinates: origin at the hips, y up, unit = the figure's scale.
    x, y = local_coords(gx, gy, p["cx"], p["cy"], p["lean"], unit)
    ones = np.ones(n, np.float32)
    # The clothes, faded towards the background colour by the body's contrast nuisance.
    fade = p["fade"][:, None]

    def cloth(color):
        return color + fade * (p["bg_color"] - color)

    shirt, lower, shoes = cloth(p["shirt"]), cloth(p["lower"]), cloth(p["shoes"])
    # Legs (trousers or skin), shoes.
    legs_color = np.where(attr["skirt"][:, None], p["skin"], lower)
    torso = sd_box(x, y - 0.25, 0.2, 0.28)
    silhouette = torso  # torso, legs and upper arms: what the body occluder hides
    for side in (-1, 1):
        foot_x = side * (0.09 + p["leg_spread"])
        leg = _capsule(x, y, side * 0.09 * ones, -0.05 * ones, foot_x, -0.86 * ones, 0.08)
        silhouette = np.minimum(silhouette, leg)
        draw(canvas, leg, legs_color)
        draw(canvas, sd_box(x - foot_x[:, None, None] - side * 0.04, y + 0.91, 0.1, 0.06), shoes)
    # Arms: the sleeve covers the upper arm's upper half (short) or the whole arm down to the wrist (long).
    for side, k in ((-1, 0), (1, 1)):
        sx, sy = side * 0.2 * ones, 0.48 * ones
        angle = p["arm_angle"][:, k]
        ex, ey = sx + side * 0.26 * np.sin(angle), sy - 0.26 * np.cos(angle)
        hx, hy = ex + side * 0.24 * np.sin(angle * 1.1), ey - 0.24 * np.cos(angle * 1.1)
        mx, my = (sx + ex) / 2, (sy + ey) / 2
        long_sleeve = attr["long_sleeves"][:, None]
        upper = _capsule(x, y, sx, sy, ex, ey, 0.08)
        silhouette = np.minimum(silhouette, upper)
        draw(canvas, upper, np.where(long_sleeve, shirt, p["skin"]))
        draw(canvas, _capsule(x, y, ex, ey, hx, hy, 0.07), np.where(long_sleeve, shirt, p["skin"]))
        cuff_x, cuff_y = ex + 0.75 * (hx - ex), ey + 0.75 * (hy - ey)  # long sleeves end in a dark cuff
        draw(canvas, _capsule(x, y, cuff_x, cuff_y, ex + 0.92 * (hx - ex), ey + 0.92 * (hy - ey), 0.075),
             cloth(np.zeros((n, 3), np.float32) + 0.08), attr["long_sleeves"])
        draw(canvas, _circle(x, y, hx[:, None, None], hy[:, None, None], 0.07), p["skin"])
        draw(canvas, _capsule(x, y, sx, sy, mx, my, 0.085), shirt)
    # Torso, stripes, skirt, belt, bag.
    draw(canvas, torso, shirt)
    # (Parts only some samples have are computed for those samples only: see alpha_some.)
    def striped(x, y, i):
        waves = np.sin(2 * np.pi * (y - 0.25) / 0.11 + p["stripe_phase"][i, None, None])
        return np.maximum(torso[i], (np.abs(waves) - 0.45) * 0.03)

    skirt = np.array([[-0.21, -0.0], [0.21, -0.0], [0.42, -0.5], [-0.42, -0.5]], np.float32)
    paint(canvas, alpha_some(attr["striped_shirt"], striped), cloth(p["stripe"]))
    paint(canvas, alpha_some(attr["skirt"], lambda x, y, i: sd_polygon(x, y, skirt)), lower)
    paint(canvas, alpha_some(attr["belt"], lambda x, y, i: sd_box(x, y + 0.0, 0.21, 0.06)), cloth(p["belt"]))
    paint(canvas, alpha_some(attr["belt"], lambda x, y, i: sd_box(x, y + 0.0, 0.06, 0.05)),
          cloth(np.zeros((n, 3), np.float32) + np.array([1.0, 0.85, 0.05], np.float32)))  # a gold buckle
    def strap(x, y, i):
        return _capsule(x, y, -0.17 * ones[i], 0.45 * ones[i], 0.28 * ones[i], 0.0 * ones[i], 0.03)

    paint(canvas, alpha_some(attr["bag"], strap), cloth(p["bag"] * 0.5))
    paint(canvas, alpha_some(attr["bag"], lambda x, y, i: sd_box(x - 0.33, y + 0.07, 0.15, 0.13)), cloth(p["bag"]))

    # A foreground object hiding part of the body (a rounded box), kept below the head region.
    def body_occluder(x, y, i):
        ox, oy, half = p["body_occ_xy"][i, 0], p["body_occ_xy"][i, 1], p["body_occ_size"][i]
        box = sd_box(x - _col(ox), y - _col(oy), _col(half), _col(half * p["body_occ_aspect"][i])) - 0.03
        return np.maximum(box, y - BODY_REGION_TOP + 0.03)

    occ_alpha = alpha_some(p["body_occ_size"] > 0, body_occluder)
    paint(canvas, occ_alpha, p["body_occ_color"])
    body = alpha(silhouette)
    body_occluded = (body * occ_alpha).sum((1, 2)) / np.maximum(body.sum((1, 2)), 1e-6)
    # Body blur: the region below BODY_REGION_TOP (soft edge), before the head is drawn over it.
    scale = size / 64
    _blur_region(canvas, p["body_blur"] * scale, np.clip((BODY_REGION_TOP - y) / 0.05, 0, 1))
    # Heads, each drawn (and blurred) in a window around it (about a sixth of the pixels); zoomed-in
    # figures need a larger window, so they are drawn apart (the window depends only on the sample).
    head_occluded = np.zeros(n, np.float32)
    zoomed = unit > 0.92 + 1e-6
    for group, largest in ((~zoomed, 0.92), (zoomed, MAX_UNIT)):
        idx = np.flatnonzero(group)
        if len(idx):
            side_px = int(np.ceil(2 * 0.36 * largest * (np.cos(0.15) + np.sin(0.15)) * half_px)) + 2
            head_occluded[idx] = _draw_head(p, canvas, size, idx, side_px)
    # Camera: blur, noise.
    canvas = blur(canvas, p["blur"] * scale)
    for i in range(n):
        canvas[i] += p["noise"][i] * np.random.default_rng(int(p["noise_seed"][i])).standard_normal((size, size, 3))
    images = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    return {"images": np.ascontiguousarray(images), "head_occluded": head_occluded,
            "body_occluded": body_occluded.astype(np.float32)}


def difficulty_terms(p: Arrays, head_occluded: np.ndarray, body_occluded: np.ndarray) -> tuple[Arrays, Arrays]:
    """Each region's nuisances as terms in [0, 1] (0 = absent), from the drawn and measured values."""
    head = {"occlusion": 1.5 * head_occluded, "turn": np.abs(p["turn"]) / MAX_TURN,
            "frame": p["head_out"] / MAX_HEAD_OUT, "blur": p["head_blur"] / MAX_REGION_BLUR}
    body = {"occlusion": 1.5 * body_occluded, "crop": p["crop"] / MAX_CROP, "contrast": p["fade"] / MAX_FADE,
            "blur": p["body_blur"] / MAX_REGION_BLUR}
    clip = lambda terms: {k: np.clip(v, 0, 1).astype(np.float32) for k, v in terms.items()}  # noqa: E731
    return clip(head), clip(body)


def region_difficulty(terms: Arrays, weights: dict[str, float]) -> np.ndarray:
    """A region's ground-truth difficulty: the weighted sum of its nuisance terms, in [0, 1]."""
    return np.clip(sum(weights[k] * terms[k] for k in weights), 0, 1).astype(np.float32)


def generate(split: str, n: int, size: int = 64, seed: int = 0, workers: int | None = None) -> Arrays:
    """Generate ``n`` figures of ``split`` (deterministic in split, n, size, seed; not in workers).

    Arrays: ``images``, ``targets``, ``head_difficulty``, ``body_difficulty`` and each nuisance's term
    (``head_<name>``, ``body_<name>``).
    """
    p = sample_params(n, split_rng(seed, split, GENERATOR_VERSION, SEED_SALT))
    parts = render_chunks(render, p, n, size, CHUNK, workers)
    if parts:
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    else:
        out = {"images": np.zeros((0, 3, size, size), np.uint8), "head_occluded": np.zeros(0, np.float32),
               "body_occluded": np.zeros(0, np.float32)}
    head, body = difficulty_terms(p, out["head_occluded"], out["body_occluded"])
    arrays = {"images": out["images"], "targets": p["attributes"],
              "head_difficulty": region_difficulty(head, HEAD_WEIGHTS),
              "body_difficulty": region_difficulty(body, BODY_WEIGHTS)}
    arrays.update({f"head_{k}": v for k, v in head.items()})
    arrays.update({f"body_{k}": v for k, v in body.items()})
    return arrays


def load_persons(split: str, root: Path, *, size: int = 64, num_train: int = 20000, num_val: int = 2000,
                 num_test: int = 5000, seed: int = 0) -> ImageTensorDataset:
    """The ``split`` of ``persons`` (multi-label, :data:`PERSON_ATTRIBUTES`), cached under ``root/persons``.

    Same arguments → identical bytes; splits come from different seed streams. The first call
    generates every split. ``meta`` holds ``head_difficulty`` and ``body_difficulty`` (float N in
    [0, 1]) and each nuisance's term (``head_<name>``, ``body_<name>``); ``difficulty`` is the mean of
    the two regions' difficulties.
    """
    arrays = load_generated("persons", GENERATOR_VERSION, generate, split, root, size=size, num_train=num_train,
                            num_val=num_val, num_test=num_test, seed=seed)
    meta = {k: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(("head_", "body_"))}
    difficulty = (meta["head_difficulty"] + meta["body_difficulty"]) / 2
    return ImageTensorDataset(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["targets"]),
                              PERSON_ATTRIBUTES, "multilabel", difficulty=difficulty, meta=meta,
                              name=f"persons/{split}")
