"""VGAN against the plain GAN (and VCD) on `shapes`, with the paper's measures at the same budget.

For each model (``vgan``, ``vcd``, ``gan``) the report gives:

- ``probe_error``: the paper's Table 1, test error of a linear classifier on the energy net's /
  discriminator's penultimate features φ(x), trained on the first N train images;
- ``frechet_distance``: real test images against generated ones (1,000 in the full run) in the 64-d
  globally pooled features of the studio's shipped shapes classifier (the BlockDrop ResNet-32
  backbone). It is FID's formula in a domain classifier's feature space, NOT Inception FID, and its
  scale is set by the reference row: the distance of as many real *train* images to the same test set;
- ``classes_covered`` (of 10; a class counts from 1% of the samples), ``classes_with_2pct`` (the issue's
  bar), ``smallest_class_fraction`` and ``class_histogram``: that classifier's argmax on the generated images;
- ``samples_per_s``: generation throughput on the CPU at batch 64, one thread (median of repeats);
  VCD's samples are transitions of real held-out (val) images, so its time includes the encoder;
- ``semi_supervised``: Table 2 in small, the test error of a small CNN trained on 1,000 labelled
  train images without augmentation (shared by all three entries) and with the VCD model's
  transitions as augmentation (Eq. 11; only VCD has an encoder, so it is null for VGAN and GAN): the
  mean over ``semi_seeds`` (3 in the full run); ``figures.semi_supervised`` has each seed's error, the
  spread, the paired gains and each run's validation curve;
- VCD's ``label_kept``: how often the shipped classifier gives the noise-free reconstruction, and the
  image after 1, 2, … ``chain_steps`` transitions of the Markov chain, the label it gives the real test
  image (``chain[0]`` is what an augmented classifier sees).

Modes: by default the shipped checkpoints ``assets/vgan/{vgan,vcd,gan}.safetensors`` are evaluated,
after checking from their cards that all three had the same budget (steps, batch, k), data and
network sizes; ``--train`` retrains the three with the config of the shipped vgan card (each kind
by its own recipe, through the studio's worker path) in a scratch home; ``--quick`` trains tiny
fresh models and evaluates them on small sets (a couple of minutes on 2 cores).

    python benchmarks/vgan.py [--quick | --train] [--out PATH] [--workers 2] [--assets DIR]

Trainings and evaluations run as parallel single-thread processes (``--workers``): the jobs are in
``benchmarks/vgan_jobs.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.cards import BudgetMismatch, differences, load_cards  # noqa: E402
from benchmarks.report import REPO_ROOT, write_report  # noqa: E402
from benchmarks.vgan_jobs import run_jobs  # noqa: E402

KINDS = ("vgan", "vcd", "gan")
ASSETS = REPO_ROOT / "assets" / "vgan"
CLASSIFIER = REPO_ROOT / "assets" / "blockdrop" / "backbone.safetensors"
NET_KEYS = ("image_size", "channels", "width", "hidden", "latent_dim", "gen_width")  # sizes all three share
DATA_KEYS = ("dataset", "train_size")

# Evaluation sizes. 0 = the whole split (shapes: 20,000 train, 2,000 val, 5,000 test).
FULL = {"probe_train": 5000, "probe_test": 0, "generated": 1000, "fd_test": 0, "semi_labels": 1000,
        "semi_steps": 1500, "semi_batch": 64, "semi_width": 32, "semi_lr": 3e-3, "semi_val": 2000, "semi_test": 0,
        "throughput_batch": 64, "throughput_repeats": 15, "seed": 0, "semi_seeds": [0, 1, 2],
        "agreement_images": 1000, "chain_steps": 9}
QUICK = {"probe_train": 500, "probe_test": 500, "generated": 500, "fd_test": 500, "semi_labels": 1000,
         "semi_steps": 100, "semi_batch": 32, "semi_width": 8, "semi_lr": 3e-3, "semi_val": 500, "semi_test": 500,
         "throughput_batch": 64, "throughput_repeats": 5, "seed": 0, "semi_seeds": [0, 1],
         "agreement_images": 200, "chain_steps": 3}
# The recipes' config for --quick: tiny networks, a few dozen steps.
QUICK_TRAIN = {"dataset": "shapes", "train_size": 2000, "steps": 40, "batch_size": 32, "k": 1, "experts": 16,
               "latent_dim": 32, "width": 8, "hidden": 64, "gen_width": 8, "sample_every": 1000, "seed": 0}
# The targets.
PROBE_MARGIN = 0.03  # VGAN's probe error at least 3 points below the GAN's
CLASS_FRACTION = 0.02  # every class at least 2% of the samples
LABEL_KEPT = 0.7  # the classifier's label kept by one VCD transition
AUGMENT_GAIN = 0.02  # VCD augmentation at least 2 points below none (mean over seeds)
FD_NOTE = ("Fréchet distance between Gaussians fitted to the 64-d globally pooled features of the shipped "
           "shapes classifier (BlockDrop ResNet-32 backbone): NOT Inception FID, and not comparable with "
           "published FIDs; compare it with reference.frechet_distance_train_vs_test, the floor for real images "
           "at the same sample sizes.")


# -- cards ------------------------------------------------------------------------------------------------


def check_budgets(cards: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The budget (steps, batch_size, k), data and network sizes the cards of ``vgan``, ``vcd`` and ``gan``
    share, and each one's number of experts.

    Raises BudgetMismatch, naming what differs, when a card is missing or of another kind, or when
    their ``budget`` (steps, batch_size, k), data (dataset, train_size) or sizes (:data:`NET_KEYS`) differ.
    """
    problems = []
    for kind in KINDS:
        card = cards.get(kind)
        if card is None:
            problems.append(f"no {kind} checkpoint")
        elif card.get("kind") != kind or "budget" not in card or "net" not in card:
            problems.append(f"the {kind} checkpoint is not a {kind} model of the VGAN plugin "
                            f"(card kind {card.get('kind')!r})")
    if problems:
        raise BudgetMismatch("; ".join(problems))
    views = {
        "budget": {k: dict(cards[k]["budget"]) for k in KINDS},
        "data": {k: {key: cards[k].get("config", {}).get(key, cards[k].get(key)) for key in DATA_KEYS} for k in KINDS},
        "network sizes": {k: {key: cards[k]["net"].get(key) for key in NET_KEYS} for k in KINDS},
    }
    problems = [p for what, per_kind in views.items() if (p := differences(what, per_kind))]
    if problems:
        raise BudgetMismatch("the three models must be trained at the same budget to be compared, but "
                             + " | ".join(problems))
    return {**views["budget"]["vgan"], **views["data"]["vgan"], "net": views["network sizes"]["vgan"],
            "experts": {k: cards[k]["net"].get("experts") for k in KINDS}}


# -- training (--train, --quick) --------------------------------------------------------------------------


def train_models(config: Mapping[str, Any], scratch: Path, data_dir: str, workers: int) -> dict[str, Path]:
    """Train vgan, vcd and gan, each by its recipe with ``config``, in homes under ``scratch``."""
    jobs = [{"job": "train", "kind": kind, "config": dict(config), "home": str(scratch / kind),
             "data_dir": data_dir} for kind in KINDS]
    return {r["kind"]: Path(r["path"]) for r in run_jobs(jobs, workers)}


def shipped_train_config(assets: Path) -> dict[str, Any]:
    """The recipe config recorded in the shipped vgan card (what --train retrains all three with)."""
    path = assets / "vgan.safetensors"
    if not path.is_file():
        raise SystemExit(f"no {path}: --train retrains with the shipped vgan card's config; use --quick instead")
    card = load_cards({"vgan": path})["vgan"]
    if "config" not in card:
        raise SystemExit(f"{path}: its card records no recipe config")
    return dict(card["config"])


# -- evaluation -------------------------------------------------------------------------------------------


def evaluate(paths: Mapping[str, Path], cfg: Mapping[str, Any], *, data_dir: str, classifier: Path | str,
             workers: int) -> dict[str, Any]:
    """The report's figures for the checkpoints ``paths`` (kind → file) at the sizes ``cfg``."""
    from plugins.vgan.metrics import classes_covered, frechet_distance

    common = {"cfg": dict(cfg), "data_dir": data_dir, "classifier": str(classifier)}
    seeds = list(cfg["semi_seeds"])
    jobs = [{"job": "model", "kind": kind, "path": str(paths[kind]), **common} for kind in KINDS]
    jobs += [{"job": "semi", "kind": f"{name}-seed{seed}", "augment_from": source, "seed": seed, **common}
             for seed in seeds for name, source in (("vcd-augmented", str(paths["vcd"])), ("no-augmentation", None))]
    jobs.append({"job": "reference", "kind": "reference", **common})
    results = {(r["job"], r["kind"]): r for r in run_jobs(jobs, workers)}
    reference = results["reference", "reference"]
    semi = {key: semi_summary([results["semi", f"{name}-seed{seed}"] for seed in seeds], seeds)
            for key, name in (("no_augmentation", "no-augmentation"), ("vcd_augmentation", "vcd-augmented"))}
    semi["vcd_gain_pts"] = [round(100 * (a - b), 3) for a, b in zip(semi["no_augmentation"]["test_errors"],
                                                                    semi["vcd_augmentation"]["test_errors"],
                                                                    strict=True)]
    no_aug, vcd_aug = semi["no_augmentation"]["mean"], semi["vcd_augmentation"]["mean"]
    figures: dict[str, Any] = {}
    for kind in KINDS:
        r = results["model", kind]
        figures[kind] = {
            "probe_error": r["probe_error"],
            "frechet_distance": frechet_distance(reference["test_features"], r["features"]),
            "classes_covered": classes_covered(r["class_histogram"]),
            "classes_with_2pct": classes_covered(r["class_histogram"], CLASS_FRACTION),
            "smallest_class_fraction": min(r["class_histogram"]) / max(1, sum(r["class_histogram"])),
            "class_histogram": r["class_histogram"],
            "samples_per_s": r["samples_per_s"],
            "semi_supervised": {
                "no_augmentation": no_aug,
                "vcd_augmentation": vcd_aug if kind == "vcd" else None,
                **({} if kind == "vcd" else {"note": f"{kind} has no encoder, so no transition of a labelled "
                                                      "image to augment with; vcd_augmentation is VCD's"}),
            },
        }
    figures["reference"] = {
        "frechet_distance_train_vs_test": frechet_distance(reference["test_features"], reference["train_features"]),
        "classes_covered_train": classes_covered(reference["class_histogram"]),
        "class_histogram_train": reference["class_histogram"],
        "probe_error_pixels": reference["probe_error_pixels"],
    }
    figures["vcd"]["label_kept"] = results["model", "vcd"]["label_kept"]
    figures["semi_supervised"] = semi
    figures["job_seconds"] = {f"{job}:{kind}": r["seconds"] for (job, kind), r in results.items()}
    return figures


def semi_summary(runs: list[Mapping[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One condition of the semi-supervised table over seeds: each test error, their mean and spread, and
    each run's best step and validation curve."""
    import statistics

    errors = [r["test_error"] for r in runs]
    return {"seeds": seeds, "test_errors": errors, "mean": statistics.fmean(errors),
            "std": statistics.stdev(errors) if len(errors) > 1 else 0.0, "range": [min(errors), max(errors)],
            "runs": [{"seed": seed, "best_step": r["best_step"], "val_errors": r["val_errors"]}
                     for seed, r in zip(seeds, runs, strict=True)]}


def targets_met(figures: Mapping[str, Any], generated: int) -> dict[str, Any]:
    """The issue's targets, each with ``met`` and the figures it compares, plus notes on misses."""
    v, c, g = figures["vgan"], figures["vcd"], figures["gan"]
    semi = figures["semi_supervised"]
    no_aug, vcd_aug = semi["no_augmentation"], semi["vcd_augmentation"]
    num_classes = len(v["class_histogram"])
    kept = c["label_kept"]["chain"][0]
    targets: dict[str, Any] = {
        f"vgan_probe_error_{100 * PROBE_MARGIN:g}_points_below_gan": {
            "met": v["probe_error"] <= g["probe_error"] - PROBE_MARGIN, "vgan": v["probe_error"],
            "gan": g["probe_error"], "points_below": 100 * (g["probe_error"] - v["probe_error"])},
        "vgan_and_vcd_frechet_distance_below_gan": {
            "met": max(v["frechet_distance"], c["frechet_distance"]) < g["frechet_distance"],
            "vgan": v["frechet_distance"], "vcd": c["frechet_distance"], "gan": g["frechet_distance"]},
        f"vgan_and_vcd_cover_all_{num_classes}_classes_each_at_least_{100 * CLASS_FRACTION:g}pct": {
            "met": min(v["classes_with_2pct"], c["classes_with_2pct"]) == num_classes, "samples": generated,
            "vgan": v["classes_with_2pct"], "vcd": c["classes_with_2pct"],
            "smallest_class_fraction": {"vgan": v["smallest_class_fraction"], "vcd": c["smallest_class_fraction"]}},
        f"vcd_transition_keeps_the_label_at_least_{LABEL_KEPT:g}": {
            "met": kept >= LABEL_KEPT, "one_transition": kept, "reconstruction": c["label_kept"]["reconstruction"]},
        f"vcd_augmentation_{100 * AUGMENT_GAIN:g}_points_below_no_augmentation": {
            "met": vcd_aug["mean"] <= no_aug["mean"] - AUGMENT_GAIN, "seeds": no_aug["seeds"],
            "no_augmentation": [no_aug["mean"], no_aug["std"]], "vcd_augmentation": [vcd_aug["mean"], vcd_aug["std"]],
            "gain_pts_per_seed": semi["vcd_gain_pts"]},
    }
    notes = [f"{key}: missed" for key, t in targets.items() if not t["met"]]
    targets["notes"] = "; ".join(notes) or "all targets met"
    return targets


def run_benchmark(paths: Mapping[str, Path], cfg: Mapping[str, Any], out: Path | str, *, data_dir: str,
                  classifier: Path | str = CLASSIFIER, workers: int = 2, mode: str = "shipped",
                  training_s: float | None = None) -> Path:
    """Check the cards' budgets (BudgetMismatch otherwise), evaluate and write the report to ``out``."""
    cards = load_cards(paths)
    shared = check_budgets(cards)
    if shared["dataset"] != "shapes":
        raise BudgetMismatch(f"the models were trained on {shared['dataset']!r}; this benchmark measures shapes")
    from plugins.datasets.shapes import load_shapes

    for split in ("train", "val", "test"):  # generate the cache once, before the workers share it
        load_shapes(split, Path(data_dir))
    started = time.time()
    figures = evaluate(paths, cfg, data_dir=data_dir, classifier=classifier, workers=workers)
    figures["evaluation_s"] = time.time() - started
    if training_s is not None:
        figures["training_s"] = training_s
    targets = targets_met(figures, cfg["generated"])

    def where(path: Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)

    runs = load_cards(paths, "studio")
    checkpoints = {kind: {"path": where(paths[kind]) if mode == "shipped" else "scratch home (deleted)",
                          "run_commit": runs[kind].get("commit"), "created": runs[kind].get("created"),
                          "card_metrics": runs[kind].get("metrics") or cards[kind].get("metrics"),
                          "config": cards[kind].get("config")}
                   for kind in KINDS}
    setup = {**cfg, "dataset": "shapes", "classifier": where(Path(classifier)),
             "probe": "multinomial logistic regression on standardised φ(x), L-BFGS 200 iterations, L2 1e-3",
             "semi_supervised": f"SmallCNN (plugins/vgan/metrics.py), Adam {cfg['semi_lr']:g} ×0.1 at 60%/90%, "
                                "model picked on the val split, loss 0.5·CE(x) + 0.5·CE(x̃) with augmentation",
             "vcd_samples": "transitions of shapes val images (first `generated`, cycled)",
             "samples_per_s": f"CPU, one thread, batch {cfg['throughput_batch']}, median of "
                              f"{cfg['throughput_repeats']} (other jobs may share the cores)"}
    mode_note = {"shipped": "the shipped checkpoints",
                 "train": "the three retrained with the shipped vgan card's config",
                 "quick": "tiny models of a few dozen steps and small evaluation sets: a smoke test of the "
                          "benchmark, whose figures say nothing about the method"}.get(mode, mode)
    return write_report("vgan", out, figures, targets, mode=mode, mode_note=mode_note, budget=shared,
                        checkpoints=checkpoints, setup=setup, frechet_distance_note=FD_NOTE)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="train tiny fresh models and evaluate on small sets")
    mode.add_argument("--train", action="store_true", help="retrain all three with the shipped vgan card's config")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/results/vgan[-quick].json)")
    parser.add_argument("--workers", type=int, default=2, help="parallel single-thread processes")
    parser.add_argument("--assets", default=str(ASSETS), help="folder with vgan/vcd/gan.safetensors")
    parser.add_argument("--classifier", default=str(CLASSIFIER), help="the shapes classifier (BlockDrop backbone)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "avstudio-benchmark-data"))
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    out = Path(args.out or Path(__file__).parent / "results" / f"vgan{'-quick' if args.quick else ''}.json")
    assets = Path(args.assets)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vgan-benchmark-") as scratch:
        if args.quick or args.train:
            config = QUICK_TRAIN if args.quick else shipped_train_config(assets)
            from plugins.datasets.shapes import load_shapes

            for split in ("train", "val", "test"):
                load_shapes(split, Path(args.data_dir))
            print(f"training vgan, vcd and gan ({config['steps']} steps each) on {args.workers} worker(s)", flush=True)
            trained = time.time()
            paths = train_models(config, Path(scratch), args.data_dir, args.workers)
            training_s = time.time() - trained
        else:
            training_s = None
            paths = {kind: assets / f"{kind}.safetensors" for kind in KINDS}
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if missing:
                raise SystemExit(f"missing {', '.join(missing)}: train and ship them, or run with --train/--quick")
        try:
            path = run_benchmark(paths, cfg, out, data_dir=args.data_dir, classifier=args.classifier,
                                 workers=args.workers,
                                 mode="quick" if args.quick else "train" if args.train else "shipped",
                                 training_s=training_s)
        except BudgetMismatch as exc:
            raise SystemExit(f"refusing to compare: {exc}") from None
    print(f"wrote {path} in {time.time() - started:.0f}s")
    return path


if __name__ == "__main__":
    main()
