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
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import REPO_ROOT, cpu_model, write_report  # noqa: E402

ASSETS = REPO_ROOT / "assets" / "multitask"
TREE_NAMES = ("thin", "thin-random")  # plus every branched-l<λ>
# What every tree run must share (from the card's recipe config), and the network widths it was thinned to.
BUDGET_KEYS = ("dataset", "dataset_options", "train_size", "val_size", "epochs", "batch_size", "lr",
               "weight_decay", "augment", "seed", "wide", "divisor")
WIDE_KEYS = ("dataset", "dataset_options", "train_size", "val_size", "epochs", "batch_size", "lr",
             "weight_decay", "augment", "seed", "widths")
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


class BudgetMismatch(ValueError):
    """The checkpoints were not trained at the same budget (or are not what their names say)."""


# -- names and cards -------------------------------------------------------------------------------------


def model_key(name: str) -> str:
    """The report's key of checkpoint ``name``: wide, thin, thin_random, branched_<λ> (``branched-l10`` →
    ``branched_10``)."""
    if name.startswith("branched-l"):
        return "branched_" + name.removeprefix("branched-l").replace("-", "_")
    return name.replace("-", "_")


def _lam_of(name: str) -> float:
    try:
        return float(name.removeprefix("branched-l").split("-")[0])
    except ValueError:
        return float("inf")


def shipped_paths(assets: Path) -> dict[str, Path]:
    """wide, thin, thin-random and every branched-l*.safetensors in ``assets`` (SystemExit if one is missing)."""
    paths = {name: assets / f"{name}.safetensors" for name in ("wide", *TREE_NAMES)}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    branched = sorted(assets.glob("branched-l*.safetensors"), key=lambda p: (_lam_of(p.stem), p.stem))
    if not branched:
        missing.append(str(assets / "branched-l<λ>.safetensors"))
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: train and ship them, or run with --train/--quick")
    return {**paths, **{p.stem: p for p in branched}}


def load_cards(paths: Mapping[str, Path], part: str = "metadata") -> dict[str, dict[str, Any]]:
    """Each checkpoint's card: what the recipe stored (``metadata``) or the studio's record (``studio``)."""
    from app.api import load_checkpoint

    return {name: dict(getattr(load_checkpoint(path), part)) for name, path in paths.items()}


def _differences(what: str, values: Mapping[str, Any]) -> str | None:
    if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
        return f"{what} differ: " + "; ".join(f"{name} {value!r}" for name, value in values.items())
    return None


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
    problems = [p for what, values in views.items() if (p := _differences(what, values))]
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


def evaluate(paths: Mapping[str, Path], cards: Mapping[str, Mapping[str, Any]], budget: Mapping[str, Any],
             cfg: Mapping[str, Any], *, data_dir: Path | str) -> dict[str, Any]:
    """``figures.models`` and the first splits, for the checkpoints ``paths`` (name → file)."""
    import torch

    from app.api import load_checkpoint
    from plugins.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES
    from plugins.multitask.model import count_flops, count_params, net_from_checkpoint
    from plugins.multitask.recipes import attribute_accuracy

    images, targets, tasks = load_test_split(budget, data_dir)
    nets = {name: net_from_checkpoint(load_checkpoint(path)) for name, path in paths.items()}
    models: dict[str, dict[str, Any]] = {}
    for name, net in nets.items():
        if list(net.config.tasks) != list(tasks):
            raise BudgetMismatch(f"{name} predicts {list(net.config.tasks)}, the test split has {tasks}")
        accuracy = attribute_accuracy(net, images, targets)
        entry: dict[str, Any] = {"checkpoint": name, "mean_accuracy": float(accuracy.mean()),
                                 "per_attribute_accuracy": dict(zip(tasks, map(float, accuracy), strict=True)),
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

    def shortfalls(key: str) -> list[str]:
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
    notes = [f"{key}: missed ({t['reason']})" for key, t in targets.items() if not t["met"]]
    notes += [f"{key}'s first split puts every task on its own branch ({s['num_groups']} groups at layer "
              f"{s['layer']}): its purity of 1 is trivial, not evidence of a head/body split"
              for key, s in splits.items() if s["trivial"]]
    targets["notes"] = "; ".join(notes) or "all targets met"
    return targets


# -- training (--train, --quick) ------------------------------------------------------------------------------


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one recipe through the studio's worker path in its own scratch home; the checkpoint's path."""
    import torch

    import plugins.multitask as plugin
    from app.testing import open_test_studio

    torch.set_num_threads(job["threads"])
    previous = os.environ.get("AVSTUDIO_DATA")
    os.environ["AVSTUDIO_DATA"] = job["data_dir"]
    started = time.time()
    try:
        with open_test_studio(job["home"], [plugin]) as studio:
            result = studio.train("multitask", job["recipe"], job["config"])
    finally:  # inline jobs leave this process's environment as it was
        if previous is None:
            os.environ.pop("AVSTUDIO_DATA", None)
        else:
            os.environ["AVSTUDIO_DATA"] = previous
    if result.status != "succeeded":
        raise RuntimeError(f"training {job['name']} failed: {result.status}: {result.error}")
    (path,) = result.checkpoints.values()
    return {"name": job["name"], "path": str(path), "seconds": time.time() - started}


def _run(jobs: list[dict[str, Any]], workers: int) -> dict[str, Path]:
    started, paths = time.time(), {}
    if workers <= 1 or len(jobs) == 1:
        results = map(_train_job, jobs)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
        results = pool.imap_unordered(_train_job, jobs)
    try:
        for result in results:
            paths[result["name"]] = Path(result["path"])
            print(f"[{time.time() - started:6.0f}s] trained {result['name']} in {result['seconds']:.0f}s", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return paths


def tree_runs(tree_config: Mapping[str, Any], lams: Sequence[float]) -> dict[str, dict[str, Any]]:
    """The tree recipe's config per checkpoint name: thin (SOMP, λ = 0), thin-random (λ = 0) and branched-l<λ>
    (SOMP) per λ, all with ``tree_config``'s budget (its wide, init, λ and name are replaced)."""
    base = {k: v for k, v in tree_config.items() if k not in ("init", "lam", "name", "wide")}
    runs = {"thin": {**base, "init": "somp", "lam": 0.0}, "thin-random": {**base, "init": "random", "lam": 0.0}}
    for lam in lams:
        runs[f"branched-l{lam:g}"] = {**base, "init": "somp", "lam": float(lam)}
    return runs


def train_models(wide_config: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]], scratch: Path,
                 data_dir: str, *, threads: int = 1, workers: int = 1) -> dict[str, Path]:
    """Train the wide network, then each tree run (name → config, e.g. :func:`tree_runs`) from it, ``workers``
    at a time, each by its recipe in a home under ``scratch``; checkpoint name → file."""
    common = {"data_dir": data_dir, "threads": threads}
    wide = _run([{"name": "wide", "recipe": "wide", "config": dict(wide_config), "home": str(scratch / "wide"),
                  **common}], 1)["wide"]
    jobs = [{"name": name, "recipe": "tree", "config": {**config, "wide": str(wide)}, "home": str(scratch / name),
             **common} for name, config in runs.items()]
    trained = _run(jobs, workers)
    return {"wide": wide, **{name: trained[name] for name in runs}}


def commands(wide_config: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The ``avstudio train`` command of each checkpoint (only the settings that differ from the defaults;
    the tree runs start from the default ``wide=multitask/wide``, the wide network trained first)."""
    from plugins.multitask.recipes import TreeRecipeConfig, WideConfig

    def command(recipe: str, config: Mapping[str, Any], defaults: Any) -> str:
        sets = []
        for key, value in config.items():
            if key == "wide" or getattr(defaults, key, object()) == value:
                continue
            if isinstance(value, (list, tuple)):
                text = ",".join(map(str, value))
            else:
                text = f"{value:g}" if isinstance(value, float) else str(value)
            sets.append(f"--set {shlex.quote(f'{key}={text}')}")
        return " ".join(["avstudio train multitask", recipe, *sets])

    return {"wide": command("wide", wide_config, WideConfig()),
            **{name: command("tree", config, TreeRecipeConfig()) for name, config in runs.items()}}


def shipped_runs(assets: Path, lams: Sequence[float] | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """What --train retrains: the shipped wide card's config (else the recipe's defaults), and the tree runs
    with the shipped thin card's budget (else the defaults): thin, thin-random, and one branched run per
    ``lams``, or per shipped branched card with that card's own settings (λ, init, unit_cost, widen_after, widen_every)."""
    wide, thin = assets / "wide.safetensors", assets / "thin.safetensors"
    wide_config = load_cards({"wide": wide})["wide"].get("config", {}) if wide.is_file() else {}
    tree_config = load_cards({"thin": thin})["thin"].get("config", {}) if thin.is_file() else {}
    if lams:
        return dict(wide_config), tree_runs(tree_config, lams)
    runs = tree_runs(tree_config, [])
    branched = {p.stem: p for p in sorted(assets.glob("branched-l*.safetensors"), key=lambda p: _lam_of(p.stem))}
    for name, card in load_cards(branched).items():
        own = card.get("config", {})
        runs[name] = {**runs["thin"], **{k: own[k] for k in ("init", "lam", "unit_cost", "widen_after", "widen_every", "name")
                                         if k in own}}
    if len(runs) == 2:
        raise SystemExit(f"no branched-l*.safetensors in {assets} to take λ from: pass --lams")
    return dict(wide_config), runs


# -- the report -------------------------------------------------------------------------------------------------


def run_benchmark(paths: Mapping[str, Path], cfg: Mapping[str, Any], out: Path | str, *, data_dir: Path | str,
                  mode: str = "shipped", training: Mapping[str, Any] | None = None) -> Path:
    """Check the cards' budgets (BudgetMismatch otherwise), evaluate and write the report to ``out``."""
    cards = load_cards(paths)
    budget = check_budgets(cards)
    if budget["dataset"] != "persons":
        raise BudgetMismatch(f"the models were trained on {budget['dataset']!r}; this benchmark measures persons "
                             "(its head/body ground truth scores the first split)")
    started = time.time()
    figures = evaluate(paths, cards, budget, cfg, data_dir=data_dir)
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
                                 training=training)
        except BudgetMismatch as exc:
            raise SystemExit(f"refusing to compare: {exc}") from None
    print(f"wrote {path} in {time.time() - started:.0f}s")
    return path


if __name__ == "__main__":
    main()
