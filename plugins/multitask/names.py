"""The multitask plugin's checkpoints by name: which names fill its slots (``wide``, ``thin``,
``thin-random``, ``branched-l<λ>``), the λ and label of each, and the command that trains a missing one."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

BASELINES = ("wide", "thin", "thin-random")  # the table's first rows, in this order
BRANCHED_PREFIX = "branched-"
TITLES = {"wide": "wide: one trunk at full width (the reference, SOMP's source)",
          "thin": "thin: SOMP start, never widened", "thin-random": "thin-random: random start, never widened"}


def train_command(name: str) -> str:
    """The command that trains checkpoint ``name`` (the thin and branched ones start from ``wide``)."""
    if name == "wide":
        return "avstudio train multitask wide"
    if name == "thin":
        return "avstudio train multitask tree --set lam=0"
    if name == "thin-random":
        return "avstudio train multitask tree --set lam=0 --set init=random"
    lam = lam_from_name(name)
    random = " --set init=random" if name.endswith("-random") else ""
    return f"avstudio train multitask tree --set lam={'10' if lam is None else f'{lam:g}'}{random}"


def how_to_train(name: str) -> str:
    """The message shown instead of a missing model: the command that trains it and where it goes."""
    after = "" if name == "wide" else " (after the wide one, which it starts from)"
    return (f"No `{name}` checkpoint yet. Train it{after} with:\n\n"
            f"    {train_command(name)}\n\n"
            f"then promote the run's `{name}` checkpoint in the Runs tab (`avstudio runs promote RUN_ID`) "
            f"or place `{name}.safetensors` and its `{name}.json` card in assets/multitask/.")


def lam_from_name(name: str) -> float | None:
    """λ written in a branched checkpoint's name (``branched-l10``, ``branched-l0.5-random``), else None."""
    match = re.fullmatch(r"branched-l([0-9.eE+]+)(-random)?", name)
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def is_model_name(name: str) -> bool:
    """Whether ``name`` fills one of the plugin's slots (wide, thin, thin-random, branched-*)."""
    return name in BASELINES or name.startswith(BRANCHED_PREFIX)


def lam_of(name: str, metadata: dict[str, Any]) -> float | None:
    """λ of a checkpoint: its card's recipe config, else its name; None for the baselines."""
    if not name.startswith(BRANCHED_PREFIX):
        return None
    lam = (metadata.get("config") or {}).get("lam")
    return float(lam) if isinstance(lam, (int, float)) else lam_from_name(name)


def mean_accuracy(metadata: dict[str, Any]) -> float | None:
    """The card's validation mean attribute accuracy (its metrics, else the mean of the per-attribute ones)."""
    value = (metadata.get("metrics") or {}).get("val_mean_accuracy")
    if isinstance(value, (int, float)):
        return float(value)
    per_attribute = metadata.get("val_attribute_accuracy") or {}
    return float(np.mean(list(per_attribute.values()))) if per_attribute else None


def model_label(name: str, metadata: dict[str, Any]) -> str:
    """``λ = 10 · branched-l10`` (the selector's entries)."""
    lam = lam_of(name, metadata)
    start = " (random start)" if (metadata.get("config") or {}).get("init") == "random" else ""
    return f"λ = {lam:g} · {name}{start}" if lam is not None else name

