"""S3Pool where it matters: test error against training-set size, for four kinds of downsampling,
every network trained until its training error stops falling.

Every model is the same ResNet, trained by the plugin's own recipe (through the studio's worker
path) on `shapes`, with the same number of optimisation steps and the same schedule whatever its
training-set size or pooling (compare like with like), and enough steps that each one's eval-mode
training error has stopped falling (the curves are in the report: a short budget measures who
converges faster, not who generalises). Reports:

- test error of strided, max, stochastic and S3Pool downsampling at each training-set size, over
  seeds (mean and spread), with training error and the error-against-steps curves of every run;
- a grid-size sweep for S3Pool at the smallest size (train and test error for each grid);
- S3Pool's test paths: the official deterministic average, uniform subsampling, an ensemble of K draws;
- with ``--augment``, max pooling and S3Pool again with random crops and flips at the smallest size;
- the layer's forward+backward time against ``nn.MaxPool2d`` on the same input, in the same run.

    python benchmarks/s3pool.py [--quick] [--out PATH] [--workers 2] [--poolings max,s3pool] [--augment]

Trainings run as parallel single-thread processes (``--workers``), as CPU time is the budget. Each
finished training writes its result (curves included) to ``--jobs-dir`` (committed with the report), and
a later invocation trains only what is missing there: the comparison may be built over several sessions.
The report says which planned trainings are still missing, and its targets are computed on what exists.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import write_report  # noqa: E402

POOLINGS = ("strided", "max", "stochastic", "s3pool")
# 6,000 steps: at 1,000 images both max pooling and S3Pool reach training error 0 (one probe pair, 18 min
# each on one thread); width 8 because the official code's 32 is about 10x the CPU time.
FULL = {"sizes": [1000, 2000], "seeds": [0, 1, 2], "steps": 6000, "batch_size": 64, "depth": 20, "width": 8,
        "grids": [[2, 2], [4, 2], [8, 4], [16, 8], [32, 16]], "default_grid": [16, 8], "val_size": 1000,
        "test_size": 0, "ensemble_k": 4, "eval_every": 250}
QUICK = {"sizes": [200, 400], "seeds": [0], "steps": 40, "batch_size": 32, "depth": 8, "width": 4,
         "grids": [[2, 2], [16, 8]], "default_grid": [16, 8], "val_size": 200, "test_size": 500, "ensemble_k": 2,
         "eval_every": 20}


def job_config(cfg: dict, pooling: str, size: int, seed: int, grid: list[int], augment: bool = False) -> dict[str, Any]:
    """The recipe config of one training (the plugin's ``classifier`` recipe)."""
    return {"dataset": "shapes", "arch": "resnet", "downsample": pooling, "grid_sizes": grid, "depth": cfg["depth"],
            "width": cfg["width"], "train_size": size, "val_size": cfg["val_size"], "augment": augment,
            "steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": seed, "eval_every": cfg["eval_every"]}


def job_key(config: dict[str, Any]) -> str:
    """A training's file name in the jobs directory: everything that differs between the planned jobs."""
    grid = "x".join(map(str, config["grid_sizes"]))
    return (f"{config['downsample']}-n{config['train_size']}-seed{config['seed']}-g{grid}"
            f"{'-aug' if config['augment'] else ''}-{config['steps']}steps-w{config['width']}")


def curves(metrics: dict[str, list[tuple[int, float]]], steps_per_epoch: int, steps: int) -> dict[str, list]:
    """Error against optimisation steps from a run's metric history (logged per epoch): [[step, value], ...]."""
    return {key: [[min(epoch * steps_per_epoch, steps), round(value, 5)] for epoch, value in metrics.get(key, [])]
            for key in ("train_error", "val_error")}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model through the studio (a scratch home, the shared dataset cache) and evaluate it."""
    import torch

    torch.set_num_threads(1)
    os.environ["AVSTUDIO_DATA"] = job["data_dir"]
    import plugins.s3pool as plugin
    from app.api.training import TrainLoop, load_checkpoint
    from app.testing import open_test_studio
    from plugins.datasets.shapes import load_shapes
    from plugins.s3pool.model import net_from_checkpoint
    from plugins.s3pool.recipes import error_rate

    start = time.time()
    with tempfile.TemporaryDirectory() as home, open_test_studio(home, [plugin]) as studio:
        result = studio.train("s3pool", "classifier", job["config"])
        if result.status != "succeeded":
            raise RuntimeError(f"{job['config']}: {result.status}: {result.error}")
        name = f"resnet-{job['config']['downsample']}"
        net = net_from_checkpoint(load_checkpoint(result.checkpoints[name])).eval()
        if job.get("keep_dir"):  # the trained network and its card, e.g. to ship as the demo's weights
            import shutil

            keep = Path(job["keep_dir"]) / job_key(job["config"])
            keep.mkdir(parents=True, exist_ok=True)
            for path in result.checkpoints[name].parent.glob(f"{name}.*"):
                shutil.copy2(path, keep / path.name)
    test = load_shapes("test", Path(job["data_dir"]))
    train = load_shapes("train", Path(job["data_dir"]))
    limit = job["test_size"] or len(test.targets)
    x_test, y_test = test.images[:limit], test.targets[:limit].long()
    size = job["config"]["train_size"]
    out = {**{k: job["config"][k] for k in ("downsample", "train_size", "seed", "grid_sizes")},
           "test_error": error_rate(net, x_test, y_test),
           "train_error": error_rate(net, train.images[:size], train.targets[:size].long()),
           "augment": job["config"]["augment"], "seconds": time.time() - start,
           "curves": curves(result.metrics, TrainLoop.num_batches(size, job["config"]["batch_size"]),
                             job["config"]["steps"])}
    if job["config"]["downsample"] == "s3pool":
        for mode in ("uniform", "ensemble"):
            for pool in net.pools:
                pool.eval_mode, pool.ensemble_k = mode, job["ensemble_k"]
            torch.manual_seed(0)
            out[f"test_error_{mode}"] = error_rate(net, x_test, y_test)
    return out


def layer_times(repeats: int, device: str = "cpu") -> dict[str, float]:
    """Median forward+backward time (ms) of S3Pool2d and nn.MaxPool2d on the same batch, interleaved."""
    import torch
    from torch import nn

    from plugins.s3pool.layer import S3Pool2d

    x = torch.randn(64, 16, 32, 32, device=device, requires_grad=True)
    layers = {"s3pool": S3Pool2d(2, grid_size=16).train(), "max": nn.MaxPool2d(2)}
    times: dict[str, list[float]] = {name: [] for name in layers}
    for i in range(repeats + 3):
        for name, layer in layers.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            layer(x).sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up
                times[name].append((time.perf_counter() - start) * 1000)
            x.grad = None
    return {name: statistics.median(values) for name, values in times.items()}


def planned_jobs(cfg: dict, augment: bool) -> list[dict[str, Any]]:
    """Every training the report is built from, the ones that decide the targets first."""
    jobs = []
    for pair in (("max", "s3pool"), ("strided", "stochastic")):  # the pair the targets compare, side by side
        for size in cfg["sizes"]:
            for seed in cfg["seeds"]:
                jobs.extend(job_config(cfg, pooling, size, seed, cfg["default_grid"]) for pooling in pair)
    if augment:
        for seed in cfg["seeds"]:
            for pooling in ("max", "s3pool"):
                jobs.append(job_config(cfg, pooling, min(cfg["sizes"]), seed, cfg["default_grid"], augment=True))
    for grid in cfg["grids"]:
        if list(grid) != list(cfg["default_grid"]):
            jobs.append(job_config(cfg, "s3pool", min(cfg["sizes"]), cfg["seeds"][0], grid))
    return jobs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plateau_step(curve: list[list[float]], tolerance: float = 0.005) -> int | None:
    """The first step from which the error never again falls by more than ``tolerance`` (None: no curve)."""
    if not curve:
        return None
    best_after = [min(v for _, v in curve[i:]) for i in range(len(curve))]
    for (step, value), later_best in zip(curve, best_after, strict=True):
        if value - later_best <= tolerance:
            return int(step)
    return int(curve[-1][0])


def summarise(results: list[dict[str, Any]], cfg: dict) -> dict[str, Any]:
    """The report's figures from the per-training results (the sizes and poolings that have runs)."""
    default = list(cfg["default_grid"])
    main = [r for r in results if (r["downsample"] != "s3pool" or list(r["grid_sizes"]) == default)
            and not r.get("augment")]
    test_error: dict[str, dict[str, float]] = {}
    test_std: dict[str, dict[str, float]] = {}
    train_error: dict[str, dict[str, float]] = {}
    seeds: dict[str, dict[str, list[int]]] = {}
    plateau: dict[str, dict[str, float]] = {}
    val_plateau: dict[str, dict[str, float]] = {}
    for pooling in POOLINGS:
        for size in cfg["sizes"]:
            runs = [r for r in main if r["downsample"] == pooling and r["train_size"] == size]
            if not runs:
                continue
            key = str(size)
            test_error.setdefault(pooling, {})[key], test_std.setdefault(pooling, {})[key] = _mean_std(
                [r["test_error"] for r in runs])
            train_error.setdefault(pooling, {})[key] = statistics.mean(r["train_error"] for r in runs)
            seeds.setdefault(pooling, {})[key] = sorted(r["seed"] for r in runs)
            steps = [plateau_step(r.get("curves", {}).get("train_error", [])) for r in runs]
            if all(s is not None for s in steps):
                plateau.setdefault(pooling, {})[key] = max(steps)
            held_out = [plateau_step(r.get("curves", {}).get("val_error", [])) for r in runs]
            if held_out and all(s is not None for s in held_out):
                val_plateau.setdefault(pooling, {})[key] = max(held_out)
    paired: dict[str, list[float]] = {}
    for size in cfg["sizes"]:
        by_seed = {(r["downsample"], r["seed"]): r["test_error"] for r in main if r["train_size"] == size}
        common = sorted(seed for pooling, seed in by_seed if pooling == "max" and ("s3pool", seed) in by_seed)
        if common:
            paired[str(size)] = [round(100 * (by_seed["max", s] - by_seed["s3pool", s]), 2) for s in common]
    figures: dict[str, Any] = {"paired_gain_pts": paired, "test_error": test_error, "test_error_std": test_std, "train_error": train_error,
                               "seeds": seeds, "train_error_plateau_step": plateau,
                               "val_error_plateau_step": val_plateau}
    augmented = [r for r in results if r.get("augment")]
    if augmented:
        figures["augmented"] = {}
        for pooling in ("max", "s3pool"):
            runs = [r for r in augmented if r["downsample"] == pooling]
            if runs:
                mean, std = _mean_std([r["test_error"] for r in runs])
                figures["augmented"][pooling] = {"train_size": runs[0]["train_size"], "test_error": mean,
                                                 "test_error_std": std, "seeds": sorted(r["seed"] for r in runs),
                                                 "train_error": statistics.mean(r["train_error"] for r in runs)}
    smallest = min(cfg["sizes"])
    sweep = {}
    for grid in cfg["grids"]:
        runs = [r for r in results if r["downsample"] == "s3pool" and list(r["grid_sizes"]) == list(grid)
                and r["train_size"] == smallest and r["seed"] == cfg["seeds"][0] and not r.get("augment")]
        if runs:
            sweep["-".join(map(str, grid))] = {"train_error": runs[0]["train_error"], "test_error": runs[0]["test_error"]}
    figures["grid_sweep"] = sweep
    s3 = [r for r in main if r["downsample"] == "s3pool" and r["train_size"] == smallest]
    if s3:
        figures["ensemble"] = {"deterministic": statistics.mean(r["test_error"] for r in s3),
                               "uniform": statistics.mean(r["test_error_uniform"] for r in s3),
                               f"ensemble_{cfg['ensemble_k']}": statistics.mean(r["test_error_ensemble"] for r in s3)}
    return figures


def targets_met(figures: dict[str, Any], cfg: dict) -> dict[str, Any]:
    """The issue's targets, on the runs that exist (a missing pooling or size leaves its target out)."""
    sizes = [str(s) for s in sorted(cfg["sizes"])]
    err, std = figures["test_error"], figures["test_error_std"]
    targets: dict[str, Any] = {"layer_overhead_at_most_1.3": figures["layer_overhead"] <= 1.3}
    if "max" in err and "s3pool" in err and sizes[0] in err["max"] and sizes[0] in err["s3pool"]:
        gain = {s: err["max"][s] - err["s3pool"][s] for s in sizes if s in err["max"] and s in err["s3pool"]}
        smallest = sizes[0]
        spread = max(std["max"][smallest], std["s3pool"][smallest])
        targets.update({
            "s3pool_gain_pts": {s: round(100 * g, 2) for s, g in gain.items()},
            "gain_at_smallest_at_least_5_pts": gain[smallest] >= 0.05,
            "gain_at_smallest_larger_than_seed_spread": gain[smallest] > spread,
        })
        if len(sizes) > 1 and sizes[1] in gain:
            targets["s3pool_below_max_at_second_size"] = gain[sizes[1]] > 0
        # the same seed gives both poolings the same data order and initial weights: a paired comparison
        paired = figures.get("paired_gain_pts", {}).get(smallest)
        if paired and len(paired) > 1:
            targets["paired_gain_at_smallest_larger_than_its_spread"] = (
                statistics.mean(paired) > statistics.stdev(paired))
            targets["s3pool_ahead_on_every_seed_at_smallest"] = all(g > 0 for g in paired)
    train_errors = [v["train_error"] for v in figures["grid_sweep"].values()]
    if len(train_errors) > 1:
        targets["train_error_rises_with_grid"] = all(b >= a for a, b in zip(train_errors, train_errors[1:], strict=False))
    return targets


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a few minutes on 2 cores")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/results/s3pool[-quick].json)")
    parser.add_argument("--workers", type=int, default=2, help="parallel single-thread training processes")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "avstudio-benchmark-data"))
    parser.add_argument("--jobs-dir", default=None,
                        help="one JSON per finished training (default benchmarks/results/s3pool[-quick]-jobs)")
    parser.add_argument("--poolings", default=",".join(POOLINGS),
                        help="train only these poolings now (the report uses every finished training)")
    parser.add_argument("--augment", action="store_true", help="also max pooling and S3Pool with crops and flips")
    parser.add_argument("--max-jobs", type=int, default=0, help="train at most N missing jobs now (0 = all)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the finished trainings in --jobs-dir")
    parser.add_argument("--keep-checkpoints", default=None, metavar="DIR",
                        help="copy each trained network and its card to DIR/<job>/ (to ship one as demo weights)")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    suffix = "-quick" if args.quick else ""
    out = Path(args.out or Path(__file__).parent / "results" / f"s3pool{suffix}.json")
    jobs_dir = Path(args.jobs_dir or Path(__file__).parent / "results" / f"s3pool{suffix}-jobs")
    jobs_dir.mkdir(parents=True, exist_ok=True)
    unknown = set(args.poolings.split(",")) - set(POOLINGS)
    if unknown:
        parser.error(f"--poolings: unknown {sorted(unknown)}; choose from {', '.join(POOLINGS)}")

    from plugins.datasets.shapes import load_shapes

    plan = planned_jobs(cfg, args.augment)
    missing = [c for c in plan if not (jobs_dir / f"{job_key(c)}.json").exists()]
    todo = [c for c in missing if c["downsample"] in args.poolings.split(",")]
    if args.max_jobs:
        todo = todo[: args.max_jobs]
    if args.report_only:
        todo = []
    if todo:
        for split in ("train", "val", "test"):  # generate the cache once, before the workers share it
            load_shapes(split, Path(args.data_dir))
    work = [{"config": c, "data_dir": args.data_dir, "test_size": cfg["test_size"], "ensemble_k": cfg["ensemble_k"],
             "keep_dir": args.keep_checkpoints} for c in todo]
    print(f"{len(plan)} trainings planned, {len(plan) - len(missing)} done in {jobs_dir}; training {len(work)} "
          f"of {cfg['steps']} steps on {args.workers} worker(s)", flush=True)
    started = time.time()
    from trainer.gitinfo import current_commit

    commit = current_commit(Path(__file__).resolve().parent.parent)
    if work:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for result in pool.imap_unordered(run_job, work):
                result["commit"] = commit
                key = job_key({**result, "augment": result["augment"], "steps": cfg["steps"], "width": cfg["width"]})
                (jobs_dir / f"{key}.json").write_text(json.dumps(result, indent=1) + "\n")
                print(f"[{time.time() - started:6.0f}s] {result['downsample']:<10} n={result['train_size']:<6} "
                      f"seed={result['seed']} grid={result['grid_sizes']} aug={result['augment']} "
                      f"test {result['test_error']:.3f} train {result['train_error']:.3f}", flush=True)
    results = [json.loads((jobs_dir / f"{job_key(c)}.json").read_text()) for c in plan
               if (jobs_dir / f"{job_key(c)}.json").exists()]
    if not results:
        raise SystemExit("no finished trainings to report on")
    import torch

    torch.set_num_threads(1)
    figures = summarise(results, cfg)
    rounds = [layer_times(20 if args.quick else 100) for _ in range(3)]
    figures["layer_times_ms"] = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    figures["layer_overhead_rounds"] = [r["s3pool"] / r["max"] for r in rounds]
    figures["layer_overhead"] = statistics.median(figures["layer_overhead_rounds"])
    if torch.cuda.is_available():
        cuda = layer_times(100, "cuda")
        figures["layer_overhead_cuda"] = cuda["s3pool"] / cuda["max"]
    figures["runs"] = sorted(results, key=lambda r: (r["downsample"], r["train_size"], r["seed"], r["grid_sizes"],
                                                     r.get("augment", False)))
    figures["missing_jobs"] = [job_key(c) for c in plan if not (jobs_dir / f"{job_key(c)}.json").exists()]
    figures["setup"] = {**cfg, "dataset": "shapes", "test_images": cfg["test_size"] or 5000,
                        "optimizer": "SGD nesterov 0.9, cosine from lr 0.05, weight decay 5e-4 (recipe defaults)",
                        "jobs_dir": str(jobs_dir.relative_to(Path(__file__).resolve().parent.parent))
                        if jobs_dir.resolve().is_relative_to(Path(__file__).resolve().parent.parent) else str(jobs_dir)}
    figures["wall_s"] = time.time() - started
    path = write_report("s3pool", out, figures, targets_met(figures, cfg))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
