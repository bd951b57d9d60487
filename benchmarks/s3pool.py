"""S3Pool where it matters: test error against training-set size, for four kinds of downsampling.

Every model is the same ResNet, trained by the plugin's own recipe (through the studio's worker
path) on `shapes` without augmentation, with the same number of optimisation steps and the same
schedule whatever its training-set size or pooling (compare like with like). Reports:

- test error of strided, max, stochastic and S3Pool downsampling at each training-set size, over
  seeds (mean and spread);
- a grid-size sweep for S3Pool at the smallest size (train and test error for each grid);
- S3Pool's test paths: the official deterministic average, uniform subsampling, an ensemble of K draws;
- the layer's forward+backward time against ``nn.MaxPool2d`` on the same input, in the same run.

    python benchmarks/s3pool.py [--quick] [--out PATH] [--workers 2]

Trainings run as parallel single-thread processes (``--workers``), as CPU time is the budget.
"""

from __future__ import annotations

import argparse
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
FULL = {"sizes": [1000, 4000, 10000], "seeds": [0, 1], "steps": 1500, "batch_size": 64, "depth": 20, "width": 8,
        "grids": [[2, 2], [4, 2], [8, 4], [16, 8], [32, 16]], "default_grid": [16, 8], "val_size": 200,
        "test_size": 0, "ensemble_k": 4}
QUICK = {"sizes": [200, 400], "seeds": [0], "steps": 40, "batch_size": 32, "depth": 8, "width": 4,
         "grids": [[2, 2], [16, 8]], "default_grid": [16, 8], "val_size": 200, "test_size": 500, "ensemble_k": 2}


def job_config(cfg: dict, pooling: str, size: int, seed: int, grid: list[int]) -> dict[str, Any]:
    """The recipe config of one training (the plugin's ``classifier`` recipe)."""
    return {"dataset": "shapes", "arch": "resnet", "downsample": pooling, "grid_sizes": grid, "depth": cfg["depth"],
            "width": cfg["width"], "train_size": size, "val_size": cfg["val_size"], "augment": False,
            "steps": cfg["steps"], "batch_size": cfg["batch_size"], "seed": seed}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model through the studio (a scratch home, the shared dataset cache) and evaluate it."""
    import torch

    torch.set_num_threads(1)
    os.environ["AVSTUDIO_DATA"] = job["data_dir"]
    import plugins.s3pool as plugin
    from app.api import load_checkpoint, open_test_studio
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
    test = load_shapes("test", Path(job["data_dir"]))
    train = load_shapes("train", Path(job["data_dir"]))
    limit = job["test_size"] or len(test.targets)
    x_test, y_test = test.images[:limit], test.targets[:limit].long()
    size = job["config"]["train_size"]
    out = {**{k: job["config"][k] for k in ("downsample", "train_size", "seed", "grid_sizes")},
           "test_error": error_rate(net, x_test, y_test),
           "train_error": error_rate(net, train.images[:size], train.targets[:size].long()),
           "seconds": time.time() - start}
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


def summarise(results: list[dict[str, Any]], cfg: dict) -> dict[str, Any]:
    """The report's figures from the per-training results."""
    default = list(cfg["default_grid"])
    main = [r for r in results if r["downsample"] != "s3pool" or list(r["grid_sizes"]) == default]
    test_error: dict[str, dict[str, float]] = {}
    test_std: dict[str, dict[str, float]] = {}
    train_error: dict[str, dict[str, float]] = {}
    for pooling in POOLINGS:
        for size in cfg["sizes"]:
            runs = [r for r in main if r["downsample"] == pooling and r["train_size"] == size]
            errors = [r["test_error"] for r in runs]
            test_error.setdefault(pooling, {})[str(size)] = statistics.mean(errors)
            test_std.setdefault(pooling, {})[str(size)] = statistics.stdev(errors) if len(errors) > 1 else 0.0
            train_error.setdefault(pooling, {})[str(size)] = statistics.mean(r["train_error"] for r in runs)
    smallest = min(cfg["sizes"])
    sweep = {}
    for grid in cfg["grids"]:
        runs = [r for r in results if r["downsample"] == "s3pool" and list(r["grid_sizes"]) == list(grid)
                and r["train_size"] == smallest and r["seed"] == cfg["seeds"][0]]
        sweep["-".join(map(str, grid))] = {"train_error": runs[0]["train_error"], "test_error": runs[0]["test_error"]}
    s3 = [r for r in main if r["downsample"] == "s3pool" and r["train_size"] == smallest]
    ensemble = {"deterministic": statistics.mean(r["test_error"] for r in s3),
                "uniform": statistics.mean(r["test_error_uniform"] for r in s3),
                f"ensemble_{cfg['ensemble_k']}": statistics.mean(r["test_error_ensemble"] for r in s3)}
    return {"test_error": test_error, "test_error_std": test_std, "train_error": train_error,
            "grid_sweep": sweep, "ensemble": ensemble}


def targets_met(figures: dict[str, Any], cfg: dict) -> dict[str, Any]:
    sizes = [str(s) for s in sorted(cfg["sizes"])]
    err = figures["test_error"]
    gain = {s: err["max"][s] - err["s3pool"][s] for s in sizes}
    train_errors = [v["train_error"] for v in figures["grid_sweep"].values()]
    return {
        "s3pool_beats_max_at_the_two_smaller_sizes": all(gain[s] > 0 for s in sizes[:2]),
        "s3pool_gain_at_smallest_pts": 100 * gain[sizes[0]],
        "gain_at_smallest_at_least_2_pts": gain[sizes[0]] >= 0.02,
        "train_error_rises_with_grid": all(b >= a for a, b in zip(train_errors, train_errors[1:], strict=False)),
        "layer_overhead_at_most_1.5": figures["layer_overhead"] <= 1.5,
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a few minutes on 2 cores")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/results/s3pool[-quick].json)")
    parser.add_argument("--workers", type=int, default=2, help="parallel single-thread training processes")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "avstudio-benchmark-data"))
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    out = Path(args.out or Path(__file__).parent / "results" / f"s3pool{'-quick' if args.quick else ''}.json")

    from plugins.datasets.shapes import load_shapes

    for split in ("train", "val", "test"):  # generate the cache once, before the workers share it
        load_shapes(split, Path(args.data_dir))
    jobs = []
    for size in cfg["sizes"]:
        for seed in cfg["seeds"]:
            for pooling in POOLINGS:
                jobs.append(job_config(cfg, pooling, size, seed, cfg["default_grid"]))
    for grid in cfg["grids"]:
        if list(grid) != list(cfg["default_grid"]):
            jobs.append(job_config(cfg, "s3pool", min(cfg["sizes"]), cfg["seeds"][0], grid))
    jobs.sort(key=lambda c: -c["train_size"])  # the same steps, but big sets evaluate longer: start them first
    work = [{"config": c, "data_dir": args.data_dir, "test_size": cfg["test_size"], "ensemble_k": cfg["ensemble_k"]}
            for c in jobs]
    print(f"{len(work)} trainings of {cfg['steps']} steps on {args.workers} worker(s)", flush=True)
    started = time.time()
    results = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for result in pool.imap_unordered(run_job, work):
            results.append(result)
            print(f"[{time.time() - started:6.0f}s] {result['downsample']:<10} n={result['train_size']:<6} "
                  f"seed={result['seed']} grid={result['grid_sizes']} test {result['test_error']:.3f} "
                  f"train {result['train_error']:.3f}", flush=True)
    import torch

    torch.set_num_threads(1)
    figures = summarise(results, cfg)
    times = layer_times(20 if args.quick else 100)
    figures["layer_times_ms"] = times
    figures["layer_overhead"] = times["s3pool"] / times["max"]
    if torch.cuda.is_available():
        cuda = layer_times(100, "cuda")
        figures["layer_overhead_cuda"] = cuda["s3pool"] / cuda["max"]
    figures["runs"] = sorted(results, key=lambda r: (r["downsample"], r["train_size"], r["seed"], r["grid_sizes"]))
    figures["setup"] = {**cfg, "dataset": "shapes", "augment": False, "test_images": cfg["test_size"] or 5000,
                        "optimizer": "SGD nesterov 0.9, cosine from lr 0.05, weight decay 5e-4 (recipe defaults)"}
    figures["wall_s"] = time.time() - started
    path = write_report("s3pool", out, figures, targets_met(figures, cfg))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
