"""benchmarks/multitask_curves.py: the chain's curves read back from studio run stores, summarised and drawn."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import multitask_curves as C
from trainer.records import MetricPoint
from trainer.store import RunStore


def _home(tmp_path, name: str, val: list[float]):
    home = tmp_path / name
    home.mkdir()
    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    run_id = store.enqueue("multitask", "tree", {})
    points = [MetricPoint(step=e + 1, key=k, value=v if k == "val_mean_accuracy" else 1.0 - v, time=0.0)
              for e, v in enumerate(val) for k in C.KEYS]
    store.log_metrics(run_id, points)
    store.engine.dispose()
    return home, run_id


def test_curves_are_read_summarised_and_drawn(tmp_path):
    wide = [0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.871, 0.872]
    thin = [0.5, 0.6, 0.65, 0.66, 0.7, 0.72, 0.73, 0.74]
    (home_w, run_w), (home_t, _) = _home(tmp_path, "w", wide), _home(tmp_path, "t", thin)
    out, pic = tmp_path / "curves.json", tmp_path / "curves.png"
    C.main(["--run", f"wide={home_w}:{run_w}", "--run", f"thin={home_t}", "--out", str(out), "--picture", str(pic)])
    report = json.loads(out.read_text())
    w = report["figures"]["models"]["wide"]
    assert w["curves"]["val_mean_accuracy"] == wide and w["epochs"] == 8
    assert w["curves"]["train_loss"] == pytest.approx([1.0 - v for v in wide])
    assert (w["val_best"], w["val_best_epoch"], w["val_last"]) == (0.872, 8, 0.872)
    assert w["val_gain_last_5"] == pytest.approx(0.872 - 0.8)  # best of epochs 4-8 minus best of 1-3
    assert report["figures"]["models"]["thin"]["val_gain_last_5"] == pytest.approx(0.74 - 0.65)
    assert pic.stat().st_size > 1000 and report["runs"]["thin"].endswith(":1")


def test_a_model_whose_best_epoch_is_early_says_so():
    s = C.summary([0.5, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7])
    assert s["val_best_epoch"] == 2 and s["val_gain_last_5"] == pytest.approx(0.7 - 0.9)
    assert C.summary([0.5, 0.6])["val_gain_last_5"] is None  # too short to say
    assert C.summary([])["val_best"] is None


def test_bad_run_arguments_are_refused(tmp_path):
    assert C.parse_run("wide=/x/home:3") == ("wide", tmp_path.__class__("/x/home"), 3)
    for bad in ("wide", "=home", "wide=", "wide=home:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            C.parse_run(bad)
    with pytest.raises(SystemExit, match="no run store"):
        C.read_curves(tmp_path, 1)
    home, _ = _home(tmp_path, "h", [0.5])
    with pytest.raises(SystemExit, match="run 7 .* logged none"):
        C.read_curves(home, 7)
