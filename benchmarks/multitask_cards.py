"""The multitask benchmark's checkpoints: their names (report keys, λ), the shipped ones, their cards, and
the like-with-like check that the tree checkpoints share one budget and one wide network (see
benchmarks/multitask.py). Reading cards and the BudgetMismatch error are shared with the VGAN benchmark
(benchmarks/cards.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.cards import BudgetMismatch, differences, load_cards  # noqa: F401  (load_cards: re-exported)

TREE_NAMES = ("thin", "thin-random")  # plus every branched-l<λ>
# What every tree run must share (from the card's recipe config), and the network widths it was thinned to.
BUDGET_KEYS = ("dataset", "dataset_options", "train_size", "val_size", "epochs", "batch_size", "lr",
               "weight_decay", "augment", "seed", "wide", "divisor")
WIDE_KEYS = ("dataset", "dataset_options", "train_size", "val_size", "epochs", "batch_size", "lr",
             "weight_decay", "augment", "seed", "widths")


# -- names and cards -------------------------------------------------------------------------------------


def model_key(name: str) -> str:
    """The report's key of checkpoint ``name``: wide, thin, thin_random, branched_<λ> (``branched-l10`` →
    ``branched_10``)."""
    if name.startswith("branched-l"):
        return "branched_" + name.removeprefix("branched-l").replace("-", "_")
    return name.replace("-", "_")


def lam_of(name: str) -> float:
    try:
        return float(name.removeprefix("branched-l").split("-")[0])
    except ValueError:
        return float("inf")


def shipped_paths(assets: Path) -> dict[str, Path]:
    """wide, thin, thin-random and every branched-l*.safetensors in ``assets`` (SystemExit if one is missing)."""
    paths = {name: assets / f"{name}.safetensors" for name in ("wide", *TREE_NAMES)}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    branched = sorted(assets.glob("branched-l*.safetensors"), key=lambda p: (lam_of(p.stem), p.stem))
    if not branched:
        missing.append(str(assets / "branched-l<λ>.safetensors"))
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: train and ship them, or run with --train/--quick")
    return {**paths, **{p.stem: p for p in branched}}


def check_budgets(cards: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The budget the tree checkpoints (thin, thin-random, branched-*) share, and the wide network's.

    Raises BudgetMismatch, naming what differs, when a card is missing or is not what its name says
    (thin: SOMP start, λ = 0; thin-random: random start, λ = 0; branched: λ > 0), when the tree runs'
    :data:`BUDGET_KEYS`, images, network widths or tasks differ, or when they were not thinned from the
    wide network's widths, or the wide network saw another dataset (another test split) or other tasks.
    """
    problems = []
    trees = [name for name in cards if name != "wide"]
    for name in ("wide", *TREE_NAMES):
        if name not in cards:
            problems.append(f"no {name} checkpoint")
    if not any(name.startswith("branched-") for name in trees):
        problems.append("no branched-l<λ> checkpoint")
    for name, card in cards.items():
        config = card.get("config") or {}
        if "net" not in card or "tasks" not in card:
            problems.append(f"{name} is not a multitask-plugin checkpoint (its card has no net/tasks)")
            continue
        expected = {"wide": ("widths" in config, "a wide network (recipe 'wide')"),
                    "thin": (config.get("init") == "somp" and config.get("lam") == 0, "init=somp, lam=0"),
                    "thin-random": (config.get("init") == "random" and config.get("lam") == 0, "init=random, lam=0")
                    }.get(name, ((config.get("lam") or 0) > 0, "lam > 0"))
        if not expected[0]:
            problems.append(f"{name} is not what its name says ({expected[1]}); its config: "
                            f"init={config.get('init')!r} lam={config.get('lam')!r}")
    if problems:
        raise BudgetMismatch("; ".join(problems))
    wide = cards["wide"]
    views = {
        "budgets": {n: {k: cards[n]["config"].get(k) for k in BUDGET_KEYS} for n in trees},
        "training images": {n: cards[n].get("train_size") for n in trees},
        "network widths": {n: list(cards[n]["net"]["widths"]) for n in trees},
        "tasks": {n: list(cards[n]["tasks"]) for n in cards},
        "datasets (the test split)": {n: [cards[n]["config"].get("dataset"), cards[n]["config"].get("dataset_options")]
                                      for n in cards},
    }
    problems = [p for what, values in views.items() if (p := differences(what, values))]
    if not problems:
        divisor = cards["thin"]["config"]["divisor"]
        thinned = [max(1, w // divisor) for w in wide["net"]["widths"]]
        if thinned != views["network widths"]["thin"]:
            problems.append(f"the tree networks' widths {views['network widths']['thin']} are not the wide network's "
                            f"{list(wide['net']['widths'])} / {divisor}: they were not thinned from this wide network")
    if problems:
        raise BudgetMismatch("the tree checkpoints must be trained at the same budget, from the same wide network "
                             "and on the wide network's dataset, to be compared, but " + " | ".join(problems))
    thin = cards["thin"]
    return {**views["budgets"]["thin"], "train_images": thin.get("train_size"), "widths": list(thin["net"]["widths"]),
            "tasks": list(thin["tasks"]), "lams": {n: cards[n]["config"].get("lam") for n in trees},
            "wide_network": {**{k: wide["config"].get(k) for k in WIDE_KEYS}, "train_images": wide.get("train_size")}}
