"""The S3Pool benchmark's report as the demo tab shows it: a copy of ``benchmarks/results/s3pool.json``
ships in the assets, and these functions turn its figures into plot rows."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

REPORT_FILE = "benchmark-report.json"  # a copy of benchmarks/results/s3pool.json in the assets
NO_REPORT = ("The benchmark report is not shipped yet: run `python benchmarks/s3pool.py` and copy "
             "`benchmarks/results/s3pool.json` to `assets/s3pool/benchmark-report.json`.")
CURVE_POOLINGS = ("max", "s3pool")  # the pair whose curves show the regulariser at work
CURVE_NAMES = {"train_error": "training", "val_error": "held-out (val)"}


def load_report(assets_dir: Path | str) -> dict[str, Any] | None:
    """The ``figures`` of the shipped benchmark report, or None when it is not there (or unreadable)."""
    path = Path(assets_dir) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    figures = report.get("figures", report) if isinstance(report, dict) else None
    return figures if isinstance(figures, dict) and "test_error" in figures else None


def mean_curves(runs: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Training and held-out error against steps at training-set size ``size``, for max pooling and S3Pool
    (default grid, no augmentation), averaged over the seeds at each logged step: rows (curve, step, error)."""
    rows = []
    for pooling in CURVE_POOLINGS:
        chosen = [r for r in runs if r.get("downsample") == pooling and r.get("train_size") == size
                  and not r.get("augment") and r.get("curves")]
        if pooling == "s3pool":  # the comparison's grid: the one most runs used
            grids = [tuple(r["grid_sizes"]) for r in chosen]
            chosen = [r for r in chosen if grids and tuple(r["grid_sizes"]) == max(set(grids), key=grids.count)]
        for key, name in CURVE_NAMES.items():
            by_step: dict[int, list[float]] = {}
            for run in chosen:
                for step, value in run["curves"].get(key, []):
                    by_step.setdefault(int(step), []).append(float(value))
            rows += [{"curve": f"{pooling} {name}", "step": step, "error": statistics.mean(values)}
                     for step, values in sorted(by_step.items()) if len(values) == len(chosen)]
    return rows


def benchmark_data(figures: dict[str, Any]) -> dict[str, Any]:
    """The plot data of the report's figures: ``error_vs_size`` rows (pooling, train size, test error,
    std), ``grid_sweep`` rows (grid, train error, test error), ``curves`` rows (curve, step, error) at the
    smallest training-set size (``curves_size``), and a Markdown ``summary`` (test paths, layer overhead)."""
    std = figures.get("test_error_std") or {}
    error_rows = [
        {"pooling": pooling, "train size": int(size), "test error": float(error),
         "std": float((std.get(pooling) or {}).get(size, 0.0))}
        for pooling, by_size in figures.get("test_error", {}).items()
        for size, error in sorted(by_size.items(), key=lambda item: int(item[0]))
    ]
    sweep_rows = [{"grid": grid, "train error": float(v["train_error"]), "test error": float(v["test_error"])}
                  for grid, v in (figures.get("grid_sweep") or {}).items()]
    sizes = sorted(int(size) for by_size in figures.get("test_error", {}).values() for size in by_size)
    curves_size = sizes[0] if sizes else 0
    lines = []
    if figures.get("ensemble"):
        paths = ", ".join(f"{k} {float(v):.3f}" for k, v in figures["ensemble"].items())
        lines.append(f"**S3Pool test paths** (test error, smallest training set): {paths}.")
    if figures.get("layer_overhead") is not None:
        lines.append(f"**Layer overhead:** S3Pool forward + backward takes {float(figures['layer_overhead']):.2f}× "
                     "the time of max pooling.")
    return {"error_vs_size": error_rows, "grid_sweep": sweep_rows, "summary": "\n\n".join(lines),
            "curves": mean_curves(figures.get("runs") or [], curves_size), "curves_size": curves_size}
