"""A studio with tiny trained multitask models (not a test module): the multitask demo tests and the demo
tests of every plugin use it through conftest's session fixture ``multitask_studio``, trained once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "multitask" / "examples"
DATA = {"dataset_options": ["num_train=96", "num_val=32", "num_test=16"],  # a tiny persons: generated fast
        "train_size": 64, "val_size": 32, "batch_size": 32, "epochs": 2}
WIDE = {**DATA, "widths": [4, 8, 8, 8, 16, 16, 16]}
TREES = {"thin": {"lam": 0.0}, "thin-random": {"lam": 0.0, "init": "random"},
         "branched-l5": {"lam": 5.0, "widen_after": 1}, "branched-l50": {"lam": 50.0, "widen_after": 1}}
PROMOTED = ("wide", "thin", "branched-l50")  # promoted from their runs; the others are shipped (copied to assets)
BRANCHED = ["branched-l5", "branched-l50"]  # by λ


def example() -> str:
    """The first shipped multitask example (a persons test image)."""
    return str(sorted(EXAMPLES.glob("*.png"))[0])


@contextmanager
def trained_multitask_studio(home: Path) -> Iterator[object]:
    """A studio whose multitask demo sees wide, thin, thin-random, branched-l5 and branched-l50 (tiny, trained
    here on one thread: 2 epochs of 64 images) and the shipped examples; assets in ``home``, not the
    repository's. ``studio.runs`` maps each model to its run."""
    import plugins.datasets
    import plugins.multitask
    from app.testing import open_test_studio

    with open_test_studio(home / "studio", [plugins.datasets, plugins.multitask]) as studio:
        assets = home / "assets"
        (assets / "multitask").mkdir(parents=True)
        shutil.copytree(EXAMPLES, assets / "multitask" / "examples")
        studio.settings.assets_dir = assets
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            wide = studio.train("multitask", "wide", WIDE)
            assert wide.status == "succeeded", wide.error
            runs = {"wide": wide}
            for name, extra in TREES.items():
                config = {**DATA, "epochs": 4, "divisor": 2, "wide": str(wide.checkpoints["wide"]), **extra}
                runs[name] = studio.train("multitask", "tree", config)
                assert runs[name].status == "succeeded", runs[name].error
                assert list(runs[name].checkpoints) == [name]
        finally:
            torch.set_num_threads(threads)
        for name, run in runs.items():
            if name in PROMOTED:
                studio.promote(run.run_id, name)
            else:
                path = run.checkpoints[name]
                shutil.copy(path, assets / "multitask" / path.name)
                shutil.copy(path.with_suffix(".json"), assets / "multitask" / f"{name}.json")
        studio.runs = runs
        yield studio
