"""Rasterising helpers shared by the procedural datasets: signed distances on a pixel grid, blending, blur.

Arrays are batched: coordinates N×H×W, canvases N×H×W×3 floats in [0, 1], per-sample parameters N.
"""

from __future__ import annotations

import numpy as np


def sd_box(x, y, half_w, half_h):
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def sd_polygon(x, y, verts: np.ndarray):
    """Exact signed distance to a closed polygon (Inigo Quilez's sdPolygon), negative inside."""
    d = (x - verts[0, 0]) ** 2 + (y - verts[0, 1]) ** 2
    sign = np.ones_like(x)
    n = len(verts)
    for i in range(n):
        (vix, viy), (vjx, vjy) = verts[i], verts[i - 1]
        ex, ey = vjx - vix, vjy - viy
        wx, wy = x - vix, y - viy
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        bx, by = wx - ex * h, wy - ey * h
        d = np.minimum(d, bx * bx + by * by)
        c1, c2, c3 = y >= viy, y < vjy, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d)


def local_coords(x, y, cx, cy, angle, scale):
    """Grid coordinates (N×H×W) moved into each sample's frame: centred, unrotated, in units of scale."""
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    return (c * dx + s * dy) / scale[:, None, None], (-s * dx + c * dy) / scale[:, None, None]


def paint(canvas, alpha, color):
    """Alpha-blend ``color`` (N×3) into ``canvas`` (N×H×W×3) with coverage ``alpha`` (N×H×W)."""
    covered = alpha > 0
    if covered.mean() > 0.15:
        canvas += alpha[..., None] * (color[:, None, None, :] - canvas)
        return
    where = np.nonzero(covered)  # small parts: touch only the pixels they cover
    canvas[where] += alpha[where][:, None] * (color[where[0]] - canvas[where])


def as_float32(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float arrays as float32 (half the memory traffic of float64; the bytes stay deterministic)."""
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in params.items()}


def pixel_grid(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x right, y up), broadcast to N×H×W float32."""
    coords = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    return (np.broadcast_to(coords[None, None, :], (n, size, size)),
            np.broadcast_to(-coords[None, :, None], (n, size, size)))


def coverage(sdf_norm, half_px):
    """Anti-aliased coverage from a signed distance in normalised units (half the side = 1)."""
    return np.clip(0.5 - sdf_norm * half_px, 0, 1)


def blur(images, sigma_px):
    """Per-image separable Gaussian blur (sigma 0 keeps the image)."""
    radius = int(np.ceil(3 * max(float(sigma_px.max()), 1e-6)))
    if radius == 0 or sigma_px.max() <= 0:
        return images
    offsets = np.arange(-radius, radius + 1)
    safe = np.maximum(sigma_px, 1e-3)[:, None]
    kernel = np.exp(-0.5 * (offsets[None, :] / safe) ** 2)
    kernel = (kernel / kernel.sum(1, keepdims=True)).astype(images.dtype)
    h, w = images.shape[1:3]
    padded = np.pad(images, [(0, 0), (radius, radius), (0, 0), (0, 0)], mode="edge")
    rows = sum(kernel[:, i, None, None, None] * padded[:, i:i + h] for i in range(len(offsets)))
    padded = np.pad(rows, [(0, 0), (0, 0), (radius, radius), (0, 0)], mode="edge")
    return sum(kernel[:, i, None, None, None] * padded[:, :, i:i + w] for i in range(len(offsets)))


def window(size: int, center_col: np.ndarray, center_row: np.ndarray, width: int, height: int):
    """A per-sample width×height pixel window around (centre col, row), kept inside the image.

    Returns the index tuple that gathers it from an N×H×W(×3) canvas, and its pixel-centre
    coordinates (x right, y up, in [-1, 1]) as N×height×width float32 arrays.
    """
    n = len(center_col)
    width, height = min(width, size), min(height, size)
    col0 = np.clip(np.round(center_col - width / 2), 0, size - width).astype(np.int64)
    row0 = np.clip(np.round(center_row - height / 2), 0, size - height).astype(np.int64)
    cols = col0[:, None] + np.arange(width)
    rows = row0[:, None] + np.arange(height)
    index = (np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :])
    x = ((cols + 0.5) / size * 2 - 1).astype(np.float32)
    y = (1 - (rows + 0.5) / size * 2).astype(np.float32)
    return index, np.broadcast_to(x[:, None, :], (n, height, width)), np.broadcast_to(y[:, :, None], (n, height, width))


def map_chunks(fn, chunks: list, workers: int | None = None) -> list:
    """``[fn(c) for c in chunks]``, in worker processes when there are several chunks and cores.

    Falls back to this process where children are not allowed (e.g. inside a daemonic worker).
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(len(chunks), workers if workers is not None else (os.cpu_count() or 1))
    if workers > 1 and not multiprocessing.current_process().daemon:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(fn, chunks))
    return [fn(c) for c in chunks]
