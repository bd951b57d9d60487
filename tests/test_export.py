"""Runs leave the studio: `avstudio runs export ID… --format csv|jsonl --out DIR` (trainer/export.py), read by
Trackio's import_csv and by the MLflow snippet of docs/hosting.md."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from app.settings import REPO_ROOT
from app.testing import open_test_studio
from trainer.export import export_run


def cli(studio, *args: str):
    from app.cli import cli as avstudio

    env = {"AVSTUDIO_HOME": str(studio.home), "AVSTUDIO_DB_URL": studio.settings.db_url, "AVSTUDIO_PLUGINS": "",
           "AVSTUDIO_EXTRA_PLUGINS": ""}
    saved = {k: os.environ.get(k) for k in env}
    try:
        return CliRunner().invoke(avstudio, list(args), env=env, catch_exceptions=False)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture
def studio(tmp_path):
    with open_test_studio(tmp_path / "home") as opened:
        yield opened


def a_run(studio) -> int:
    """A run with a metric history (keys logged at different steps, one NaN), a checkpoint and an image."""
    with studio.train_context("s3pool", "classifier", {"steps": 4, "lr": 0.1}) as ctx:
        ctx.log_metrics(1, train_loss=2.0)
        ctx.log_metrics(2, train_loss=1.0, val_error=0.5)
        ctx.log_metrics(3, train_loss=float("nan"))
        ctx.log_metrics(4, train_loss=0.25, val_error=0.125)
        ctx.save_checkpoint("resnet-max", {"net.w": torch.ones(2)}, {"epoch": 4})
        ctx.save_image("sample", Image.new("RGB", (2, 2)), step=4)
        return ctx.run_id


def test_csv_export_one_row_per_step_with_params_tags_and_artifacts(studio, tmp_path):
    run_id = a_run(studio)
    result = cli(studio, "runs", "export", str(run_id), "--format", "csv", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / f"run-{run_id}"
    assert result.output.strip() == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["artifacts", "metrics.csv", "params.json", "run.json",
                                                         "tags.json"]
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert list(rows[0]) == ["step", "timestamp", "train_loss", "val_error"]
    assert [(r["step"], r["train_loss"], r["val_error"]) for r in rows] == [
        ("1", "2.0", ""), ("2", "1.0", "0.5"), ("3", "nan", ""), ("4", "0.25", "0.125")]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["timestamp"]) for r in rows)

    params = json.loads((folder / "params.json").read_text())
    assert params == studio.store.params(run_id) and params["lr"] == "0.1" and params["steps"] == "4"
    tags = json.loads((folder / "tags.json").read_text())
    assert tags["avstudio.method"] == "s3pool" and tags["avstudio.recipe"] == "classifier"
    assert tags["avstudio.status"] == "succeeded" and all(isinstance(v, str) for v in tags.values())
    record = json.loads((folder / "run.json").read_text())
    assert record["id"] == run_id and record["config"]["lr"] == 0.1 and record["metric_points"] == 6
    exported = {a["name"]: a["exported"] for a in record["artifacts"]}
    assert exported == {"resnet-max": "artifacts/resnet-max.safetensors",
                        "sample-000004": "artifacts/images/sample-000004.png"}
    checkpoint = studio.store.latest_checkpoint(run_id).path
    assert (folder / "artifacts" / "resnet-max.safetensors").read_bytes() == Path(checkpoint).read_bytes()
    assert json.loads((folder / "artifacts" / "resnet-max.json").read_text())["metadata"] == {"epoch": 4}


def test_jsonl_export_one_metric_point_per_line_as_mlflow_takes_them(studio, tmp_path):
    run_id = a_run(studio)
    folder = export_run(studio.store, run_id, tmp_path / "out", "jsonl", artifacts=False)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(p["step"], p["key"], p["value"]) for p in lines] == [
        (1, "train_loss", 2.0), (2, "train_loss", 1.0), (2, "val_error", 0.5), (3, "train_loss", None),
        (4, "train_loss", 0.25), (4, "val_error", 0.125)]
    stored = {(p.step, p.key): p.time for p in studio.store.metrics(run_id)}
    assert all(p["timestamp"] == round(stored[(p["step"], p["key"])] * 1000) for p in lines)
    assert not (folder / "artifacts").exists() and not (folder / "metrics.csv").exists()


def test_several_runs_and_an_unknown_one(studio, tmp_path):
    first, second = a_run(studio), a_run(studio)
    result = cli(studio, "runs", "export", str(first), "999", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "no run 999" in result.output and not (tmp_path / "out").exists()
    result = cli(studio, "runs", "export", str(first), str(second), "--format", "jsonl", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"run-{first}", f"run-{second}"]


def test_a_run_without_metrics_exports_a_header_only(studio, tmp_path):
    run_id = studio.store.enqueue("vgan", "vgan", {"steps": 1})
    folder = export_run(studio.store, run_id, tmp_path / "out")
    assert (folder / "metrics.csv").read_text().splitlines() == ["step,timestamp"]


TRACKIO_IMPORT = """
import json, sys
import trackio
from trackio.sqlite_storage import SQLiteStorage
trackio.import_csv(sys.argv[1], project="studio-export", name="run")
print(json.dumps([{k: v for k, v in row.items() if k != "timestamp"}
                  for row in SQLiteStorage.get_logs("studio-export", "run")]))
"""


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None,
                    reason="trackio is not installed (pip install trackio): the CSV import is not checked")
def test_trackio_import_csv_reads_the_csv_export(studio, tmp_path):
    """Trackio's own import_csv, in a fresh process with its own TRACKIO_DIR (it reads it at import)."""
    run_id = a_run(studio)
    folder = export_run(studio.store, run_id, tmp_path / "out", "csv")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", TRACKIO_IMPORT, str(folder / "metrics.csv")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = json.loads(done.stdout.strip().splitlines()[-1])
    # Trackio keeps the first 10 letters, digits or '/' of a column name: train_loss -> trainloss
    by_step = {row["step"]: row for row in logs}
    assert sorted(by_step) == [1, 2, 3, 4]
    assert by_step[1]["trainloss"] == 2.0 and "valerror" not in by_step[1]
    assert by_step[2]["valerror"] == 0.5 and by_step[4]["trainloss"] == 0.25
    assert by_step[3]["trainloss"] is None or math.isnan(by_step[3]["trainloss"])


class FakeMlflow:
    """What the documented snippet calls of mlflow, recorded."""

    def __init__(self) -> None:
        self.runs: list[dict] = []

    def start_run(self, run_name=None):
        self.runs.append({"name": run_name, "params": {}, "tags": {}, "metrics": [], "artifacts": []})
        mlflow = self

        class Active:
            def __enter__(self):
                return mlflow.runs[-1]

            def __exit__(self, *exc):
                return False

        return Active()

    def log_params(self, params):
        self.runs[-1]["params"].update(params)

    def set_tags(self, tags):
        self.runs[-1]["tags"].update(tags)

    def log_metric(self, key, value, step=None, timestamp=None):
        self.runs[-1]["metrics"].append((key, value, step, timestamp))

    def log_artifacts(self, local_dir):
        self.runs[-1]["artifacts"].append(sorted(p.relative_to(local_dir).as_posix()
                                                 for p in Path(local_dir).rglob("*") if p.is_file()))


def documented_mlflow_snippet() -> str:
    text = (REPO_ROOT / "docs" / "hosting.md").read_text()
    match = re.search(r"```python\n(import json, math, pathlib\n.*?mlflow.*?)```", text, re.DOTALL)
    assert match, "docs/hosting.md has no MLflow snippet for the export"
    return match.group(1)


def test_the_documented_mlflow_snippet_logs_an_export(studio, tmp_path, monkeypatch):
    run_id = a_run(studio)
    export_run(studio.store, run_id, tmp_path / "avstudio-export", "jsonl")
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.chdir(tmp_path)
    exec(compile(documented_mlflow_snippet(), "docs/hosting.md", "exec"), {})
    [logged] = fake.runs
    assert logged["name"] == f"run-{run_id}" and logged["params"]["lr"] == "0.1"
    assert logged["tags"]["avstudio.method"] == "s3pool"
    assert ("val_error", 0.125, 4, logged["metrics"][-1][3]) == logged["metrics"][-1]
    assert len(logged["metrics"]) == 6 and math.isnan(logged["metrics"][3][1])  # NaN logged as NaN
    assert logged["artifacts"] == [["images/sample-000004.png", "resnet-max.json", "resnet-max.safetensors"]]
