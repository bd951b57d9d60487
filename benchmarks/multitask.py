"""Multi-task widening (arXiv:1611.05377) on `persons`: wide, thin and branched networks at the same budget.

For each model (``wide``, ``thin`` (SOMP start), ``thin_random``, ``branched_<λ>``) the report's
``figures.models`` gives, on the test split of the dataset the cards name (every model on the same images):

- ``mean_accuracy`` and ``per_attribute_accuracy`` (each logit thresholded at 0);
- ``params`` and ``flops`` (one image; 1 multiply-add = 2 FLOPs, convolutions and linear layers);
- ``latency_ms`` and ``latency_ms_range``: CPU, batch 1, ``--threads`` threads, inference mode; the median
  (and min, max) over ``--rounds`` rounds, each timing ``calls`` calls of every model in turn (the order
  rotates from round to round, so machine noise hits every model alike);
- for branched models the tree (``TreeConfig.describe()``), ``branches_per_layer`` (bottom to top) and the
  widening ``decisions`` (layer, d, the chosen groups as task names).

``figures.first_split_purity``: for each branched model, the *first split of the tree*, the lowest hidden
layer with more than one branch (where the shared trunk first splits), scored against the head/body ground
truth of ``persons`` as cluster purity (1/T)·Σ_groups max(#head tasks, #body tasks in the group). A split
into singletons is trivially pure, so ``first_split_groups`` (the number of groups) and
``first_split_layer`` come with it. With one branched model these three are numbers, with several they are
dicts keyed ``branched_<λ>``. ``figures.comparisons`` holds each branched model's ratios to wide (params,
FLOPs, latency) and accuracy differences to wide and thin; ``targets`` the issue's targets, met or missed,
with the reason.

Like with like: the tree checkpoints (thin, thin-random, branched-*) must share their budget (data,
train_size, epochs, batch size, learning rate, seed, the wide network they started from, ...); the
benchmark refuses to compare them otherwise, and reports the budget.

Modes: by default the shipped checkpoints ``assets/multitask/{wide,thin,thin-random,branched-l<λ>}``
(every ``branched-l*.safetensors`` present); ``--train`` retrains the whole chain in scratch homes through
the studio's worker path, with the commands the model card gives: wide with the shipped wide card's config
(the recipe's defaults without one), then, from it, thin (init=somp lam=0) and thin-random (init=random
lam=0) with the shipped thin card's budget, and one branched run per shipped branched card (its λ and
widening settings; ``--lams`` to choose others); the report records each command. ``--quick`` trains tiny
versions of all of them with the real recipes (about a minute on one thread) and evaluates them the same
way, into a separate report (``multitask-quick.json``).

    python benchmarks/multitask.py [--quick | --train] [--out PATH] [--threads 1] [--rounds 5] [--calls N]
                                   [--workers 1] [--lams λ ...] [--assets DIR] [--data-dir DIR]

The checkpoints' names, cards and budget check are in ``benchmarks/multitask_cards.py``, the training in
``benchmarks/multitask_training.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.multitask_cards import (  # noqa: E402
    BudgetMismatch,
    check_budgets,
    load_cards,
    model_key,
    shipped_paths,
)
from benchmarks.multitask_training import commands, shipped_runs, train_models, tree_runs  # noqa: E402
from benchmarks.report import REPO_ROOT, cpu_model, write_report  # noqa: E402

ASSETS = REPO_ROOT / "assets" / "multitask"
PURITY_TARGET = 0.8
ACCURACY_MARGIN = 0.01  # "within 1 point of wide"
COST_FRACTION = 0.2  # "at most 1/5 of its parameters and FLOPs"

FULL = {"latency_calls": 100, "latency_warmup": 10}
QUICK = {"latency_calls": 20, "latency_warmup": 3}
# --quick: tiny networks on a small persons (the generated splits are cached apart from the full ones).
QUICK_DATA = ["num_train=1500", "num_val=300", "num_test=1000"]
QUICK_WIDE = {"dataset": "persons", "dataset_options": QUICK_DATA, "train_size": 0, "val_size": 0, "epochs": 3,
              "batch_size": 32, "widths": [16, 32, 32, 32, 64, 64, 64], "seed": 0}
QUICK_TREE = {"dataset": "persons", "dataset_options": QUICK_DATA, "train_size": 0, "val_size": 0, "epochs": 4,
              "batch_size": 32, "seed": 0, "widen_after": 1}
QUICK_LAMS = (10.0, 100.0)  # when no branched model is shipped


# -- the tree ------------------------------------------------------------------------------------------------


def split_purity(groups: Sequence[Sequence[str]], head: Sequence[str], body: Sequence[str]) -> float:
    """Cluster purity of a grouping of tasks against head/body: (1/T) Σ_groups max(#head, #body in the group)."""
    head_set, body_set = set(head), set(body)
    unknown = sorted({t for g in groups for t in g} - head_set - body_set)
    if unknown:
        raise ValueError(f"tasks {unknown} are neither head nor body attributes: no ground truth to score against")
    total = sum(len(g) for g in groups)
    return sum(max(len(set(g) & head_set), len(set(g) & body_set)) for g in groups) / total


def first_split(config: Any, head: Sequence[str], body: Sequence[str]) -> dict[str, Any]:
    """Where the shared trunk of tree ``config`` (a TreeConfig) first splits: the lowest hidden layer with more
    than one branch, its groups (task names), their number and purity; layer and purity are None when the tree
    never branched."""
    layer = next((i for i, groups in enumerate(config.branches) if len(groups) > 1), None)
    if layer is None:
        return {"layer": None, "num_groups": 1, "groups": [list(config.tasks)], "purity": None,
                "trivial": False}
    groups = [[config.tasks[t] for t in g] for g in config.branches[layer]]
    return {"layer": layer, "num_groups": len(groups), "groups": groups, "purity": split_purity(groups, head, body),
            "trivial": all(len(g) == 1 for g in groups)}


def decisions_summary(decisions: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Each widening decision of a card: layer, d and the chosen groups as task names."""
    from plugins.multitask.widening import WideningDecision

    out = []
    for record in decisions:
        decision = WideningDecision.from_dict(dict(record))
        out.append({"layer": decision.layer, "d": decision.d,
                    "groups": [[tasks[t] for t in g] for g in decision.task_groups]})
    return out


# -- measurements ----------------------------------------------------------------------------------------------


def latency_ms(nets: Mapping[str, Any], image: Any, rounds: int, calls: int, warmup: int) -> dict[str, list[float]]:
    """Per network, ms per call at batch 1 in each of ``rounds`` rounds; a round times ``calls`` calls of each
    network in turn, the order rotating by one each round (inference mode, after ``warmup`` calls each)."""
    import torch

    names = list(nets)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for net in nets.values():
            for _ in range(warmup):
                net(image)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                net = nets[name]
                start = time.perf_counter()
                for _ in range(calls):
                    net(image)
                times[name].append((time.perf_counter() - start) * 1000.0 / calls)
    return times


class _DataContext:
    """What ``plugins.multitask.recipes.load_data`` needs of a train context: the registered datasets, read
    from (and generated into) ``data_dir`` as a studio with that data directory would."""

    def __init__(self, data_dir: Path | str) -> None:
        from app.plugin_manager import load_registry

        self.data_dir = Path(data_dir)
        self.registry = load_registry(plugins="")

    def dataset(self, name: str, split: str, **options: Any) -> Any:
        return self.registry.load_dataset(name, split, self.data_dir, **options)


def load_test_split(budget: Mapping[str, Any], data_dir: Path | str) -> tuple[Any, Any, list[str]]:
    """uint8 images, 0/1 targets and attribute names of the whole test split of the budget's dataset."""
    from plugins.multitask.recipes import TrainConfig, load_data

    config = TrainConfig(dataset=budget["dataset"], dataset_options=list(budget["dataset_options"] or []))
    return load_data(_DataContext(data_dir), config, "test", 0)


def second_test_budget(budget: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """The budget with its dataset drawn from another ``seed``, for a second test split of the same size. A
    persons split depends only on the seed, the split and its own size, so the train and val splits are
    made as small as allowed (generating them would cost minutes and they are never read)."""
    options = list(budget["dataset_options"] or [])
    used = next((o.split("=", 1)[1] for o in options if o.startswith("seed=")), "0")
    if str(seed) == used:
        raise BudgetMismatch(f"--second-test-seed {seed} is the seed the models were trained and tested on")
    kept = [o for o in options if not o.startswith(("seed=", "num_train=", "num_val="))]
    return {**budget, "dataset_options": [*kept, f"seed={seed}", "num_train=1", "num_val=1"]}


def accuracy_entry(net: Any, images: Any, targets: Any, tasks: Sequence[str]) -> dict[str, Any]:
    from plugins.multitask.recipes import attribute_accuracy

    accuracy = attribute_accuracy(net, images, targets)
    return {"mean_accuracy": float(accuracy.mean()),
            "per_attribute_accuracy": dict(zip(tasks, map(float, accuracy), strict=True))}


def evaluate(paths: Mapping[str, Path], cards: Mapping[str, Mapping[str, Any]], budget: Mapping[str, Any],
             cfg: Mapping[str, Any], *, data_dir: Path | str, second_seed: int | None = None) -> dict[str, Any]:
    """``figures.models`` and the first splits, for the checkpoints ``paths`` (name → file); with
    ``second_seed`` also ``figures.second_test``: every model's accuracy on a test split drawn with that seed,
    and the comparisons on it (costs as on the first)."""
    import torch

    from app.api.training import load_checkpoint
    from plugins.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES
    from plugins.multitask.model import count_flops, count_params, net_from_checkpoint

    images, targets, tasks = load_test_split(budget, data_dir)
    nets = {name: net_from_checkpoint(load_checkpoint(path)) for name, path in paths.items()}
    models: dict[str, dict[str, Any]] = {}
    for name, net in nets.items():
        if list(net.config.tasks) != list(tasks):
            raise BudgetMismatch(f"{name} predicts {list(net.config.tasks)}, the test split has {tasks}")
        entry: dict[str, Any] = {"checkpoint": name, **accuracy_entry(net, images, targets, tasks),
                                 "params": count_params(net), "flops": count_flops(net)}
        config = cards[name].get("config") or {}
        if name != "wide":
            entry.update(init=config.get("init"), lam=config.get("lam"))
        if name.startswith("branched-"):
            entry.update(tree=net.config.describe(), branches_per_layer=[len(g) for g in net.config.branches],
                         decisions=decisions_summary(cards[name].get("decisions") or [], tasks),
                         first_split=first_split(net.config, HEAD_ATTRIBUTES, BODY_ATTRIBUTES))
        models[model_key(name)] = entry
    image = images[:1].float() / 255
    times = latency_ms({model_key(n): net for n, net in nets.items()}, image, cfg["latency_rounds"],
                       cfg["latency_calls"], cfg["latency_warmup"])
    for key, values in times.items():
        models[key].update(latency_ms=statistics.median(values), latency_ms_range=[min(values), max(values)],
                           latency_ms_rounds=values)
    figures: dict[str, Any] = {"models": models, "test_images": len(targets)}
    branched = [k for k in models if k.startswith("branched_")]
    splits = {k: models[k]["first_split"] for k in branched}
    for figure, field in (("first_split_purity", "purity"), ("first_split_layer", "layer"),
                          ("first_split_groups", "num_groups")):
        values = {k: split[field] for k, split in splits.items()}
        figures[figure] = values[branched[0]] if len(branched) == 1 else values
    figures["comparisons"] = comparisons(models)
    if second_seed is not None:
        images2, targets2, _ = load_test_split(second_test_budget(budget, second_seed), data_dir)
        second = {model_key(n): accuracy_entry(net, images2, targets2, tasks) for n, net in nets.items()}
        costs = {k: {**models[k], **second[k]} for k in second}
        figures["second_test"] = {"seed": second_seed, "test_images": len(targets2), "models": second,
                                  "comparisons": comparisons(costs)}
    figures["timing"] = {"cpu_model": cpu_model(), "torch_threads": {"intra_op": torch.get_num_threads(),
                                                                      "inter_op": torch.get_num_interop_threads()},
                         "rounds": cfg["latency_rounds"], "calls_per_round": cfg["latency_calls"],
                         "warmup_calls": cfg["latency_warmup"], "batch": 1, "device": "cpu"}
    return figures


def comparisons(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Each branched model against wide (cost ratios, accuracy difference) and thin (accuracy difference)."""
    wide, thin = models["wide"], models["thin"]
    return {key: {"params_ratio_to_wide": m["params"] / wide["params"],
                  "flops_ratio_to_wide": m["flops"] / wide["flops"],
                  "latency_ratio_to_wide": m["latency_ms"] / wide["latency_ms"],
                  "accuracy_minus_wide": m["mean_accuracy"] - wide["mean_accuracy"],
                  "accuracy_minus_thin": m["mean_accuracy"] - thin["mean_accuracy"]}
            for key, m in models.items() if key.startswith("branched_")}


def targets_met(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's three targets, each with ``met`` and the reason, plus ``notes`` (misses, trivial splits)."""
    models, compared = figures["models"], figures["comparisons"]
    wide, thin, thin_random = models["wide"], models["thin"], models["thin_random"]

    def shortfalls(key: str, compared: Mapping[str, Mapping[str, float]] = compared) -> list[str]:
        c, out = compared[key], []
        if c["accuracy_minus_wide"] < -ACCURACY_MARGIN:
            out.append(f"{-100 * c['accuracy_minus_wide']:.1f} pts below wide (at most 1 allowed)")
        if c["params_ratio_to_wide"] > COST_FRACTION:
            out.append(f"params {c['params_ratio_to_wide']:.3f} of wide (at most {COST_FRACTION:g})")
        if c["flops_ratio_to_wide"] > COST_FRACTION:
            out.append(f"FLOPs {c['flops_ratio_to_wide']:.3f} of wide (at most {COST_FRACTION:g})")
        if c["accuracy_minus_thin"] <= 0:
            out.append(f"not above thin ({100 * c['accuracy_minus_thin']:+.1f} pts)")
        return out

    per_model = {key: shortfalls(key) for key in compared}
    meeting = [key for key, misses in per_model.items() if not misses]
    accuracy_reason = ("; ".join(f"{key} meets all four: {100 * compared[key]['accuracy_minus_wide']:+.1f} pts vs "
                                 f"wide, params {compared[key]['params_ratio_to_wide']:.3f} and FLOPs "
                                 f"{compared[key]['flops_ratio_to_wide']:.3f} of wide, "
                                 f"{100 * compared[key]['accuracy_minus_thin']:+.1f} pts vs thin" for key in meeting)
                       if meeting else "no branched model meets all four: "
                       + "; ".join(f"{key}: {', '.join(misses)}" for key, misses in per_model.items()))
    splits = {key: models[key]["first_split"] for key in compared}
    pure = [key for key, s in splits.items() if s["purity"] is not None and s["purity"] >= PURITY_TARGET]

    def split_text(key: str) -> str:
        s = splits[key]
        if s["layer"] is None:
            return f"{key} never branched (one trunk): no split to score"
        return (f"{key}: purity {s['purity']:.3f} at layer {s['layer']} into {s['num_groups']} groups "
                + " ".join("[" + " ".join(g) + "]" for g in s["groups"]))

    somp_gain = thin["mean_accuracy"] - thin_random["mean_accuracy"]
    targets: dict[str, Any] = {
        "branched_within_1pt_of_wide_at_most_fifth_params_flops_above_thin": {
            "met": bool(meeting), "models_meeting": meeting, "reason": accuracy_reason,
            "wide_mean_accuracy": wide["mean_accuracy"], "thin_mean_accuracy": thin["mean_accuracy"]},
        f"first_split_purity_at_least_{PURITY_TARGET:g}": {
            "met": bool(pure), "models_meeting": pure, "purity": {k: s["purity"] for k, s in splits.items()},
            "reason": "; ".join(split_text(key) for key in splits)},
        "thin_somp_above_thin_random": {
            "met": somp_gain > 0, "thin": thin["mean_accuracy"], "thin_random": thin_random["mean_accuracy"],
            "reason": f"SOMP start {100 * somp_gain:+.1f} pts against the random start at the same budget"},
    }
    second = figures.get("second_test")
    if second is not None:
        again = {key: shortfalls(key, second["comparisons"]) for key in second["comparisons"]}
        both = [key for key in meeting if not again[key]]
        targets["same_conclusions_on_second_test_set"] = {
            "met": bool(both), "models_meeting": both, "seed": second["seed"],
            "reason": ("; ".join(f"{key} again: {100 * second['comparisons'][key]['accuracy_minus_wide']:+.1f} pts vs "
                                 f"wide, {100 * second['comparisons'][key]['accuracy_minus_thin']:+.1f} pts vs thin"
                                 for key in both) if both else
                       "no model meets the first target on both test sets: "
                       + "; ".join(f"{key}: {', '.join(m) or 'meets it'}" for key, m in again.items()))}
    notes = [f"{key}: missed ({t['reason']})" for key, t in targets.items() if not t["met"]]
    notes += [f"{key}'s first split puts every task on its own branch ({s['num_groups']} groups at layer "
              f"{s['layer']}): its purity of 1 is trivial, not evidence of a head/body split"
              for key, s in splits.items() if s["trivial"]]
    targets["notes"] = "; ".join(notes) or "all targets met"
    return targets


# -- the report -------------------------------------------------------------------------------------------------


def run_benchmark(paths: Mapping[str, Path], cfg: Mapping[str, Any], out: Path | str, *, data_dir: Path | str,
                  mode: str = "shipped", training: Mapping[str, Any] | None = None,
                  second_seed: int | None = None) -> Path:
    """Check the cards' budgets (BudgetMismatch otherwise), evaluate and write the report to ``out``."""
    cards = load_cards(paths)
    budget = check_budgets(cards)
    if budget["dataset"] != "persons":
        raise BudgetMismatch(f"the models were trained on {budget['dataset']!r}; this benchmark measures persons "
                             "(its head/body ground truth scores the first split)")
    started = time.time()
    figures = evaluate(paths, cards, budget, cfg, data_dir=data_dir, second_seed=second_seed)
    figures["evaluation_s"] = time.time() - started
    targets = targets_met(figures)

    def where(path: Path) -> str:
        path = Path(path).resolve()
        return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)

    runs = load_cards(paths, "studio")
    checkpoints = {model_key(name): {"file": where(paths[name]) if mode == "shipped" else "scratch home (deleted)",
                                     "run_commit": runs[name].get("commit"), "created": runs[name].get("created"),
                                     "config": cards[name].get("config")}
                   for name in paths}
    setup = {**cfg, "split": "test", "accuracy": "each attribute's logit thresholded at 0, on the whole test split",
             "latency": "CPU, batch 1 (the first test image), the training modules in eval and inference mode; "
                        "per round ms = time of calls_per_round calls / calls; latency_ms is the median over rounds",
             "purity": "(1/T)·Σ_groups max(#head, #body tasks in the group) at the lowest hidden layer with more "
                       "than one branch; ground truth plugins.datasets.persons HEAD_ATTRIBUTES / BODY_ATTRIBUTES",
             "flops_unit": "FLOPs of one image (1 multiply-add = 2 FLOPs; conv + linear, torch.utils.flop_counter)"}
    mode_note = {"shipped": "the shipped checkpoints",
                 "train": "the chain retrained with the shipped cards' configs",
                 "quick": "tiny networks trained for a few epochs on a small persons: a smoke test of the benchmark, "
                          "whose figures say nothing about the method"}.get(mode, mode)
    return write_report("multitask", out, figures, targets, mode=mode, mode_note=mode_note, budget=budget,
                        checkpoints=checkpoints, setup=setup, **({"training": dict(training)} if training else {}))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="train tiny versions of every model and evaluate them")
    mode.add_argument("--train", action="store_true", help="retrain the chain with the shipped cards' configs")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/results/multitask[-quick].json)")
    parser.add_argument("--assets", default=str(ASSETS), help="folder with wide/thin/thin-random/branched-l*")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for evaluation, timing and training")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (median and range are reported)")
    parser.add_argument("--calls", type=int, default=None, help="calls per model per latency round")
    parser.add_argument("--workers", type=int, default=1, help="--train/--quick: tree trainings run in parallel")
    parser.add_argument("--lams", type=float, nargs="+", default=None,
                        help="--train/--quick: λ of the branched runs (default: the shipped branched cards')")
    parser.add_argument("--second-test-seed", type=int, default=1,
                        help="also test every model on a persons test split drawn with this seed (-1: skip)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "avstudio-benchmark-data"))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be at least 1")
    import torch

    torch.set_num_threads(args.threads)
    cfg = {**(QUICK if args.quick else FULL), "latency_rounds": args.rounds}
    if args.calls:
        cfg["latency_calls"] = args.calls
    out = Path(args.out or Path(__file__).parent / "results" / f"multitask{'-quick' if args.quick else ''}.json")
    assets = Path(args.assets)
    started = time.time()
    training = None
    with tempfile.TemporaryDirectory(prefix="multitask-benchmark-") as scratch:
        if args.quick or args.train:
            if args.quick:
                wide_config = dict(QUICK_WIDE)
                shipped = sorted(assets.glob("branched-l*.safetensors"))
                lams = args.lams or sorted({float(c["config"]["lam"]) for c in load_cards(
                    {p.stem: p for p in shipped}).values()}) or list(QUICK_LAMS)
                runs = tree_runs(QUICK_TREE, lams)
            else:
                wide_config, runs = shipped_runs(assets, args.lams)
            print(f"training wide, then {', '.join(runs)}", flush=True)
            trained = time.time()
            paths = train_models(wide_config, runs, Path(scratch), args.data_dir, threads=args.threads,
                                 workers=args.workers)
            training = {"seconds": time.time() - trained, "threads_per_run": args.threads, "workers": args.workers,
                        "commands": commands(wide_config, runs)}
        else:
            paths = shipped_paths(assets)
        try:
            path = run_benchmark(paths, cfg, out, data_dir=args.data_dir,
                                 mode="quick" if args.quick else "train" if args.train else "shipped",
                                 training=training,
                                 second_seed=None if args.second_test_seed < 0 else args.second_test_seed)
        except BudgetMismatch as exc:
            raise SystemExit(f"refusing to compare: {exc}") from None
    print(f"wrote {path} in {time.time() - started:.0f}s")
    return path


if __name__ == "__main__":
    main()
