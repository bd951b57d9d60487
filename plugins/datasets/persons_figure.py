"""How a ``persons`` figure is drawn: its attributes (the labels, in target order), the person-local geometry
(origin at the hips, y up, unit = figure scale) and the renderer, vectorised over figures with signed
distances. What each figure looks like is drawn in :mod:`plugins.datasets.persons` (``sample_params``);
this module only draws it."""

from __future__ import annotations

import numpy as np

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
MAX_UNIT = 1.4  # the largest figure scale (a head out of the frame and a crop at once zoom in)
# Person-local geometry (origin at the hips, y up, unit = figure scale).
HEAD_Y, HEAD_R = 0.78, 0.2  # head centre and radius
FACE_Y, FACE_OCC_TOP = 0.76, 0.9  # the face occluder's centre is drawn around FACE_Y; it stays below the hat
CROWN, CHIN, SOLES, HAT_TOP = 1.0, 0.58, 0.965, 1.1  # heights of the hair top, chin, soles (below), hat top
HEAD_REGION_Y = 0.5  # head nuisances act only above this height, body nuisances only below it
HEAD_BLUR_RADIUS = 0.36  # the head blur fades out at this distance from the head (inside its window)
BODY_REGION_TOP = 0.45  # ... and the body's blur and occluder below this one


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
