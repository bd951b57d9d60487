"""``shapes``: ten shape classes under controlled nuisances, each image with a ground-truth difficulty.

Generator (numpy only, vectorised over images): every sample draws a *level* ``u ~ U(0, 1)`` and,
for each nuisance, a strength ``t = clip(u + 0.25·N(0, 1), 0, 1)``; the strengths set colour contrast,
size, rotation range, position offset, background (flat → gradient → texture), clutter fragments,
an occluding bar, blur and noise. Shapes are rasterised from signed-distance functions on the pixel
grid (anti-aliased edges), so any ``size`` works. The difficulty of a sample is a fixed weighted sum of
its *measured* nuisance terms (see :data:`DIFFICULTY_WEIGHTS` and docs/datasets.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.api.training import Arrays, ImageTensorDataset
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
)

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart", "arrow",
                 "crescent"]
GENERATOR_VERSION = 4  # bump when the images change, so old caches are not reused

# Weight of each nuisance term (each in [0, 1]) in the difficulty; they sum to 1.
DIFFICULTY_WEIGHTS = {
    "contrast": 0.20,   # 1 − normalised colour distance between shape and its surroundings
    "size": 0.15,       # smaller shape → harder
    "occlusion": 0.15,  # fraction of the shape hidden by the occluding bar (×2, capped)
    "clutter": 0.12,    # number of distractor fragments / max
    "background": 0.10, # 0 flat, 0.4 gradient, 0.4 + 0.6·amplitude texture
    "blur": 0.10,       # blur sigma / max
    "noise": 0.10,      # noise sigma / max
    "rotation": 0.04,   # |angle| / π
    "position": 0.04,   # offset from centre / max
}
NUISANCES = tuple(DIFFICULTY_WEIGHTS)

MAX_RADIUS, MIN_RADIUS = 0.72, 0.43  # shape radius as a fraction of half the image side
MAX_CONTRAST, MIN_CONTRAST = 0.75, 0.35  # colour distance (RGB, L2 / √3) between shape and background
MAX_FRAGMENTS = 6
MAX_BLUR_PX32 = 0.85  # blur sigma in pixels at 32×32 (scaled with size)
MAX_NOISE = 0.08
MAX_OFFSET = 0.45
CHUNK = 1000


# ------------------------------------------------------------------------------------------------
# Signed distance functions on local coordinates (x, y: arrays of any shape; unit ≈ shape radius)
# ------------------------------------------------------------------------------------------------


def _regular(n: int, radius: float, phase: float = np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1)


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], 1).reshape(10, 2)


_TRIANGLE = _regular(3, 1.0)
_HEXAGON = _regular(6, 0.92, 0.0)
_STAR = _star()
_ARROW = np.array([[-0.9, -0.22], [0.1, -0.22], [0.1, -0.62], [0.95, 0.0], [0.1, 0.62], [0.1, 0.22],
                   [-0.9, 0.22]])
_HEART_TIP = np.array([[-0.86, 0.12], [0.86, 0.12], [0.0, -0.92]])


def shape_sdf(label: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of class ``label`` in local coordinates (y points up)."""
    name = SHAPE_CLASSES[label]
    r = np.hypot(x, y)
    if name == "circle":
        return r - 0.85
    if name == "square":
        return sd_box(x, y, 0.7, 0.7)
    if name == "triangle":
        return sd_polygon(x, y, _TRIANGLE)
    if name == "star":
        return sd_polygon(x, y, _STAR)
    if name == "cross":
        return np.minimum(sd_box(x, y, 0.9, 0.28), sd_box(x, y, 0.28, 0.9))
    if name == "ring":
        return np.abs(r - 0.68) - 0.22
    if name == "hexagon":
        return sd_polygon(x, y, _HEXAGON)
    if name == "heart":
        lobes = np.minimum(np.hypot(x + 0.42, y - 0.32) - 0.46, np.hypot(x - 0.42, y - 0.32) - 0.46)
        return np.minimum(lobes, sd_polygon(x, y, _HEART_TIP))
    if name == "arrow":
        return sd_polygon(x, y, _ARROW)
    if name == "crescent":
        return np.maximum(r - 0.88, -(np.hypot(x - 0.42, y - 0.1) - 0.72))
    raise ValueError(f"unknown shape class {label}")


# ------------------------------------------------------------------------------------------------
# Per-sample parameters (drawn for the whole split from one seed stream) and rendering
# ------------------------------------------------------------------------------------------------


def sample_params(n: int, rng: np.random.Generator) -> Arrays:
    """Draw every per-sample scalar: labels (balanced), level, nuisance strengths and their values."""
    p: Arrays = {}
    p["labels"] = rng.permutation(np.arange(n) % len(SHAPE_CLASSES)).astype(np.int64)
    p["level"] = rng.random(n)
    t = {k: np.clip(p["level"] + 0.25 * rng.standard_normal(n), 0, 1) for k in NUISANCES}
    p["radius"] = MAX_RADIUS - (MAX_RADIUS - MIN_RADIUS) * t["size"]
    p["angle"] = t["rotation"] * rng.uniform(-np.pi, np.pi, n)
    direction = rng.uniform(0, 2 * np.pi, n)
    p["offset"] = MAX_OFFSET * t["position"] * np.sqrt(rng.random(n))
    p["cx"], p["cy"] = p["offset"] * np.cos(direction), p["offset"] * np.sin(direction)
    # Colours: a random background colour, and the shape colour among 16 random directions the one
    # whose distance (after clipping to the RGB cube) comes closest to the contrast wanted.
    p["bg_color"] = rng.random((n, 3))
    want = MAX_CONTRAST - (MAX_CONTRAST - MIN_CONTRAST) * t["contrast"]
    dirs = rng.standard_normal((n, 16, 3))
    dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
    candidates = np.clip(p["bg_color"][:, None, :] + dirs * (want * np.sqrt(3))[:, None, None], 0, 1)
    got = np.linalg.norm(candidates - p["bg_color"][:, None, :], axis=2) / np.sqrt(3)
    best = np.abs(got - want[:, None]).argmin(1)
    p["fg_color"] = candidates[np.arange(n), best]
    # Background: 0 flat, 1 gradient, 2 texture; amplitude grows with the strength.
    p["bg_kind"] = np.digitize(t["background"], [0.35, 0.65])
    p["bg_amp"] = 0.10 + 0.17 * t["background"]
    p["bg_angle"] = rng.uniform(0, 2 * np.pi, n)
    p["tex_freq"] = rng.uniform(2.0, 6.0, (n, 2))
    p["tex_angle"] = rng.uniform(0, np.pi, (n, 2))
    p["tex_phase"] = rng.uniform(0, 2 * np.pi, (n, 2))
    p["tex_color"] = rng.uniform(-1, 1, (n, 2, 3))
    # Clutter: up to MAX_FRAGMENTS fragments (bars and arcs), each with its own colour.
    p["n_fragments"] = np.round(t["clutter"] * MAX_FRAGMENTS).astype(np.int64)
    k = MAX_FRAGMENTS
    p["frag_kind"] = rng.integers(0, 2, (n, k))
    p["frag_xy"] = rng.uniform(-0.95, 0.95, (n, k, 2))
    p["frag_size"] = rng.uniform(0.12, 0.32, (n, k))
    p["frag_angle"] = rng.uniform(0, 2 * np.pi, (n, k))
    p["frag_color"] = rng.random((n, k, 3))
    # Occlusion: a bar across the shape whose width grows with the strength (none below 0.35).
    p["occ_width"] = np.where(t["occlusion"] > 0.35, 0.05 + 0.26 * (t["occlusion"] - 0.35), 0.0)
    p["occ_angle"] = rng.uniform(0, np.pi, n)
    p["occ_shift"] = rng.uniform(-0.6, 0.6, n)
    p["occ_color"] = rng.random((n, 3))
    p["blur"] = MAX_BLUR_PX32 * np.clip((t["blur"] - 0.3) / 0.7, 0, 1)
    p["noise"] = MAX_NOISE * t["noise"]
    p["noise_seed"] = rng.integers(0, 2**31, n)
    return p


def render(p: Arrays, size: int) -> Arrays:
    """Render the samples described by ``p`` (from :func:`sample_params`) at ``size``×``size``."""
    p = as_float32(p)
    n = len(p["labels"])
    half_px = size / 2
    x, y = pixel_grid(n, size)
    # Background.
    canvas = np.broadcast_to(p["bg_color"][:, None, None, :], (n, size, size, 3)).copy()
    ramp = (np.cos(p["bg_angle"])[:, None, None] * x + np.sin(p["bg_angle"])[:, None, None] * y) / 2
    textured = np.zeros((n, size, size, 3), np.float32)
    for j in range(2):
        a = p["tex_angle"][:, j, None, None]
        wave = np.sin(np.pi * p["tex_freq"][:, j, None, None] * (np.cos(a) * x + np.sin(a) * y)
                      + p["tex_phase"][:, j, None, None])
        textured += wave[..., None] * p["tex_color"][:, None, None, j, :] / 2
    kind = p["bg_kind"][:, None, None, None]
    amp = p["bg_amp"][:, None, None, None]
    canvas += np.where(kind == 1, amp * 2 * ramp[..., None], 0) + np.where(kind == 2, amp * textured, 0)
    np.clip(canvas, 0, 1, out=canvas)
    # Clutter fragments behind the shape.
    for k in range(MAX_FRAGMENTS):
        fx, fy = local_coords(x, y, p["frag_xy"][:, k, 0], p["frag_xy"][:, k, 1], p["frag_angle"][:, k],
                        p["frag_size"][:, k])
        bar = sd_box(fx, fy, 1.0, 0.22)
        arc = np.maximum(np.abs(np.hypot(fx, fy) - 0.8) - 0.18, -fy)
        sdf = np.where(p["frag_kind"][:, k, None, None] == 0, bar, arc) * p["frag_size"][:, k, None, None]
        alpha = coverage(sdf, half_px) * (k < p["n_fragments"])[:, None, None]
        paint(canvas, alpha, p["frag_color"][:, k])
    # The shape.
    sx, sy = local_coords(x, y, p["cx"], p["cy"], p["angle"], p["radius"])
    shape_sdf_px = np.zeros((n, size, size), np.float32)
    for label in range(len(SHAPE_CLASSES)):
        idx = np.flatnonzero(p["labels"] == label)
        if len(idx):
            shape_sdf_px[idx] = shape_sdf(label, sx[idx], sy[idx]) * p["radius"][idx, None, None]
    shape_alpha = coverage(shape_sdf_px, half_px)
    surround = (canvas * (1 - shape_alpha[..., None])).sum((1, 2)) / np.maximum(
        (1 - shape_alpha).sum((1, 2))[:, None], 1e-6)
    paint(canvas, shape_alpha, p["fg_color"])
    # Occluding bar across the shape.
    ox, oy = local_coords(x, y, p["cx"], p["cy"], p["occ_angle"], np.ones(n))
    occ_sdf = np.abs(oy - p["occ_shift"][:, None, None] * p["radius"][:, None, None]) \
        - p["occ_width"][:, None, None] * p["radius"][:, None, None]
    occ_alpha = coverage(occ_sdf, half_px) * (p["occ_width"] > 0)[:, None, None]
    paint(canvas, occ_alpha, p["occ_color"])
    visible_area = shape_alpha.sum((1, 2))
    occluded = (shape_alpha * occ_alpha).sum((1, 2)) / np.maximum(visible_area, 1e-6)
    # Blur, then noise (each image its own noise stream, so chunking never changes the bytes).
    canvas = blur(canvas, p["blur"] * size / 32)
    for i in range(n):
        noise_rng = np.random.default_rng(int(p["noise_seed"][i]))
        canvas[i] += p["noise"][i] * noise_rng.standard_normal((size, size, 3))
    images = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
    contrast = np.linalg.norm(p["fg_color"] - surround, axis=1) / np.sqrt(3)
    return {"images": np.ascontiguousarray(images), "contrast": contrast, "occluded": occluded}


def difficulty_terms(p: Arrays, contrast: np.ndarray, occluded: np.ndarray) -> Arrays:
    """Each nuisance as a term in [0, 1] (0 = easiest), from the drawn and measured values."""
    bg = np.select([p["bg_kind"] == 0, p["bg_kind"] == 1], [0.0, 0.4], 0.4 + 0.6 * (p["bg_amp"] - 0.10) / 0.17)
    terms = {
        "contrast": 1 - (contrast - MIN_CONTRAST) / (MAX_CONTRAST - MIN_CONTRAST),
        "size": (MAX_RADIUS - p["radius"]) / (MAX_RADIUS - MIN_RADIUS),
        "occlusion": 2 * occluded,
        "clutter": p["n_fragments"] / MAX_FRAGMENTS,
        "background": bg,
        "blur": p["blur"] / MAX_BLUR_PX32,
        "noise": p["noise"] / MAX_NOISE,
        "rotation": np.abs(p["angle"]) / np.pi,
        "position": p["offset"] / MAX_OFFSET,
    }
    return {k: np.clip(v, 0, 1) for k, v in terms.items()}


def difficulty(terms: Arrays) -> np.ndarray:
    """The ground-truth difficulty: the weighted sum of the nuisance terms, in [0, 1]."""
    return np.clip(sum(DIFFICULTY_WEIGHTS[k] * terms[k] for k in NUISANCES), 0, 1)


def generate(split: str, n: int, size: int = 32, seed: int = 0, workers: int | None = None) -> Arrays:
    """Generate ``n`` samples of ``split`` (deterministic in split, n, size, seed; not in workers)."""
    p = sample_params(n, split_rng(seed, split, GENERATOR_VERSION))
    parts = render_chunks(render, p, n, size, CHUNK, workers)
    out: Arrays = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]} if parts else {
        "images": np.zeros((0, 3, size, size), np.uint8), "contrast": np.zeros(0), "occluded": np.zeros(0)}
    terms = difficulty_terms(p, out["contrast"], out["occluded"])
    arrays = {"images": out["images"], "targets": p["labels"],
              "difficulty": difficulty(terms).astype(np.float32)}
    arrays.update({f"term_{k}": v.astype(np.float32) for k, v in terms.items()})
    return arrays


def load_shapes(split: str, root: Path, *, size: int = 32, num_train: int = 20000, num_val: int = 2000,
                num_test: int = 5000, seed: int = 0) -> ImageTensorDataset:
    """The ``split`` of ``shapes``, generated on first use (all splits) and cached under ``root/shapes``.

    Same arguments → identical bytes. Splits come from different seed streams, so they are disjoint.
    ``meta`` holds each nuisance's difficulty term (``term_<name>``).
    """
    arrays = load_generated("shapes", GENERATOR_VERSION, generate, split, root, size=size, num_train=num_train,
                            num_val=num_val, num_test=num_test, seed=seed)
    meta = {k[5:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("term_")}
    return ImageTensorDataset(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["targets"]),
                              SHAPE_CLASSES, "classification", difficulty=torch.from_numpy(arrays["difficulty"]),
                              meta=meta, name=f"shapes/{split}")
