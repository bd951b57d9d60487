"""The multitask benchmark's training (``--train``, ``--quick``): the wide network, then thin, thin-random
and the branched runs from it, each through the studio's worker path in a scratch home, and the
``avstudio train`` command of each (see benchmarks/multitask.py)."""

from __future__ import annotations

import multiprocessing as mp
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.cards import load_cards, studio_data, train_in_scratch_home
from benchmarks.multitask_cards import lam_of

# -- training (--train, --quick) ------------------------------------------------------------------------------


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one recipe through the studio's worker path in its own scratch home; the checkpoint's path."""
    import torch

    torch.set_num_threads(job["threads"])
    started = time.time()
    with studio_data(job["data_dir"]):  # inline jobs leave this process's environment as it was
        checkpoints = train_in_scratch_home("plugins.multitask", "multitask", job["recipe"], job["config"],
                                            job["home"], job["name"])
    (path,) = checkpoints.values()
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
    branched = {p.stem: p for p in sorted(assets.glob("branched-l*.safetensors"), key=lambda p: lam_of(p.stem))}
    for name, card in load_cards(branched).items():
        own = card.get("config", {})
        runs[name] = {**runs["thin"], **{k: own[k] for k in ("init", "lam", "unit_cost", "widen_after", "widen_every", "name")
                                         if k in own}}
    if len(runs) == 2:
        raise SystemExit(f"no branched-l*.safetensors in {assets} to take λ from: pass --lams")
    return dict(wide_config), runs
