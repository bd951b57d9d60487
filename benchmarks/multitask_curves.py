"""The training curves of the multitask chain: every model's loss and accuracies per epoch, read from the run
stores of the studio homes that trained them, into one JSON report and one picture.

The benchmark (benchmarks/multitask.py) measures the finished checkpoints; this says whether each was trained
to the end: for each model the epoch of its best validation accuracy, and how much validation accuracy its
last epochs still added (``val_gain_last_5``: the best of the last 5 epochs minus the best before them).

    python benchmarks/multitask_curves.py --run wide=HOME[:RUN_ID] --run thin=HOME ... \\
        [--out benchmarks/results/multitask-curves.json] [--picture docs/images/multitask-curves.png]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import REPO_ROOT, write_report  # noqa: E402

KEYS = ("val_mean_accuracy", "train_batch_accuracy", "train_loss")
LAST = 5  # epochs whose gain says whether a model was still learning


def parse_run(text: str) -> tuple[str, Path, int]:
    """``NAME=HOME[:RUN_ID]`` → (name, home, run id; 1 by default)."""
    name, sep, where = text.partition("=")
    if not sep or not name or not where:
        raise argparse.ArgumentTypeError(f"expected NAME=HOME[:RUN_ID], got {text!r}")
    home, _, run_id = where.partition(":")
    try:
        return name, Path(home), int(run_id or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"run id must be an integer in {text!r}") from None


def read_curves(home: Path, run_id: int) -> dict[str, list[float]]:
    """Each of :data:`KEYS` per epoch (in step order) from the run store of studio home ``home``."""
    from trainer.store import RunStore

    db = home / "runs.db"
    if not db.is_file():
        raise SystemExit(f"no run store at {db}")
    store = RunStore(f"sqlite:///{db}")
    try:  # reads only (get_run would also expire stale runs: not for a store whose run may be training)
        points = store.metrics(run_id, list(KEYS))
    finally:
        store.engine.dispose()
    if not points:
        raise SystemExit(f"run {run_id} in {home} logged none of {', '.join(KEYS)}")
    curves: dict[str, list[float]] = {key: [] for key in KEYS}
    for p in points:  # ordered by key, then step
        curves[p.key].append(p.value)
    return curves


def summary(val: Sequence[float], last: int = LAST) -> dict[str, Any]:
    """Best validation accuracy, its epoch (1-based), and what the last ``last`` epochs added to the best."""
    if not val:
        return {"epochs": 0, "val_best": None, "val_best_epoch": None, "val_last": None, f"val_gain_last_{last}": None}
    best = max(range(len(val)), key=lambda i: val[i])
    before = max(val[:-last]) if len(val) > last else None
    return {"epochs": len(val), "val_best": val[best], "val_best_epoch": best + 1, "val_last": val[-1],
            f"val_gain_last_{last}": None if before is None else max(val[-last:]) - before}


def picture(models: Mapping[str, Mapping[str, Sequence[float]]]) -> Any:
    from app.ui.curves import curves_image

    def short(name: str) -> str:  # the legend is one line per panel: branched-l20 → λ20, thin-random → random
        return name.replace("branched-l", "λ").replace("thin-random", "random")

    panels = {key: {short(name): [(epoch + 1, v) for epoch, v in enumerate(curves[key])]
                    for name, curves in models.items()} for key in KEYS}
    return curves_image(panels, columns=len(KEYS))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=parse_run, action="append", required=True, help="NAME=HOME[:RUN_ID]")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "multitask-curves.json"))
    parser.add_argument("--picture", default=str(REPO_ROOT / "docs" / "images" / "multitask-curves.png"))
    args = parser.parse_args(argv)
    models = {name: read_curves(home, run_id) for name, home, run_id in args.run}
    figures = {"models": {name: {**summary(c["val_mean_accuracy"]), "curves": c} for name, c in models.items()}}
    image = picture(models)
    if image is not None:
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        image.save(args.picture)
    path = write_report("multitask-curves", args.out, figures, {}, mode="curves",
                        runs={name: f"{home}:{run_id}" for name, home, run_id in args.run},
                        picture=str(Path(args.picture).resolve().relative_to(REPO_ROOT))
                        if Path(args.picture).resolve().is_relative_to(REPO_ROOT) else args.picture)
    print(f"wrote {path} and {args.picture}")
    return path


if __name__ == "__main__":
    main()
