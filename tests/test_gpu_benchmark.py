"""benchmarks/gpu.py, the one command that checks and measures everything GPU on a lent GPU machine: its
``--dry-run`` runs every step tiny on the CPU here (marked slow: .ci/run runs it after the default suite, so the
script cannot rot while no GPU is around; about 30 s of CPU time), and its plan covers every built-in recipe and
every ``test_cuda_*`` test (fast, in the default suite)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from app.plugin_manager import load_registry
from app.settings import REPO_ROOT
from benchmarks import gpu

CPU_BUDGET_S = 120.0  # the dry run's CPU time (its wall time is whatever else the machine runs)


def test_the_plan_trains_every_built_in_recipe_and_finds_every_cuda_test():
    registry = load_registry(plugins="")
    built_in = {(slug, recipe.name) for slug, method in registry.methods.items() for recipe in method.recipes}
    for dry_run in (True, False):
        assert {(method, recipe) for _, method, recipe, _ in gpu.recipe_plan(dry_run)} == built_in
    files = {path.name for path in gpu.cuda_test_files()}
    assert {"test_amp.py", "test_demo_devices.py", "test_s3pool_layer.py"} <= files
    assert "test_gpu_benchmark.py" not in files


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-dry-run.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "benchmarks/gpu.py", "--dry-run", "--out", str(out), "--budget-s", "900",
                           "--home", str(tmp_path / "home")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_s < CPU_BUDGET_S, f"the dry run took {cpu_s:.0f} s of CPU time"

    report = json.loads(out.read_text())
    figures, steps = report["figures"], report["figures"]["steps"]
    assert report["benchmark"] == "gpu" and figures["dry_run"] is True and figures["device"] == "cpu (dry run)"
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(
        ("tests", "recipes", "blockdrop", "s3pool", "nccl"), "ok")
    assert report["targets"]["every_step_ok"]["met"] is True

    tests = steps["tests"]
    assert tests["tests"] >= 8 and tests["failures"] == tests["errors"] == 0
    assert tests["passed"] + tests["skipped"] == tests["tests"]  # all skip on a machine without a GPU

    recipes = steps["recipes"]
    assert recipes["amp_on"] == "bf16"
    for label, _, _, _ in gpu.recipe_plan(dry_run=True):
        for mode in ("off", "bf16"):
            run = recipes[label][mode]
            assert run["status"] == "succeeded" and run["samples_per_s"] > 0, (label, mode, run)
        assert recipes[label]["amp_speedup"] > 0

    sizes = steps["blockdrop"]["sizes"]
    assert set(sizes) == {"b1", "b4", "b8"} and all(s["fraction_of_ideal"] > 0 for s in sizes.values())
    assert steps["s3pool"]["s3pool_ms"] > 0 and steps["s3pool"]["max_ms"] > 0
    assert steps["nccl"]["backend"] == "gloo" and steps["nccl"]["run_status"] == "succeeded"
    assert not (REPO_ROOT / "benchmarks" / "results" / "gpu.json").exists() or \
        json.loads((REPO_ROOT / "benchmarks" / "results" / "gpu.json").read_text())["figures"]["dry_run"] is False


def test_without_a_gpu_the_real_run_says_to_use_the_dry_run(monkeypatch):
    import pytest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU here.*--dry-run"):
        gpu.main([])


def test_a_failing_step_is_recorded_and_the_next_ones_still_run():
    steps = gpu.Steps(budget_s=60)

    def broken() -> dict:
        raise gpu.StepFailed("two recipes failed", {"measured": 1})

    assert steps.run("first", broken) == {"measured": 1, "status": "failed", "seconds": steps.report["first"]["seconds"],
                                          "error": "StepFailed: two recipes failed"}
    assert steps.run("second", lambda: {"value": 2})["status"] == "ok"
    late = gpu.Steps(budget_s=0)
    assert late.run("third", lambda: {})["status"] == "skipped"
    assert Path(gpu.__file__).name == "gpu.py"


def test_the_readme_and_the_guide_say_whether_the_gpu_path_ran_on_hardware():
    readme, guide = (REPO_ROOT / "README.md").read_text(), (REPO_ROOT / "docs" / "gpu.md").read_text()
    report = REPO_ROOT / "benchmarks" / "results" / "gpu.json"
    if not report.is_file():  # no GPU has run benchmarks/gpu.py: both say so plainly
        assert "**The GPU path is untested on hardware**" in readme and "[docs/gpu.md](docs/gpu.md)" in readme
        assert "**Status: the GPU path is untested on hardware.**" in guide
    else:  # a committed report: the docs name its GPU and no longer call the path untested
        device = json.loads(report.read_text())["figures"]["device"]
        for text in (readme, guide):
            assert device in text and "untested on hardware" not in text
