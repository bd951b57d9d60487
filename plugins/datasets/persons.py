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

This module draws what each figure looks like (:func:`sample_params`) and scores its difficulty;
:mod:`plugins.datasets.persons_figure` has the labels, the person-local geometry and the renderer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from app.api.training import Arrays, ImageTensorDataset
from plugins.datasets.persons_figure import (
    BODY_ATTRIBUTES,  # noqa: F401  (the labels: the studio imports them from this module)
    CHIN,
    FACE_Y,
    HAT_TOP,
    HEAD_ATTRIBUTES,  # noqa: F401  (idem)
    MAX_UNIT,
    PERSON_ATTRIBUTES,
    SOLES,
    render,
)
from plugins.datasets.procedural import load_generated, render_chunks, split_rng

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
