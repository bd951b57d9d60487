"""benchmarks/vcd_sweep.py: variants resume from their job files and the report gathers what is there
(training itself is the VGAN recipes', tested in tests/test_vgan_recipes.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks import vcd_sweep as S


def _job(name: str, kept: float) -> dict:
    return {"name": name, "steps": 10, "changed": S.VARIANTS[name], "reconstruction_bce": 0.5,
            "label_kept": {"reconstruction": kept + 0.1, "chain": [kept, kept / 2], "images": 20},
            "class_histogram": [2] * 10, "classes_with_2pct": 10, "train_s": 1.0}


def test_finished_variants_are_not_trained_again_and_the_report_names_the_best(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    S.job_path(jobs, "shipped", 10).write_text(json.dumps(_job("shipped", 0.2)))
    trained = []

    def fake(job):
        trained.append(job["name"])
        S.job_path(jobs, job["name"], job["steps"]).write_text(json.dumps(_job(job["name"], 0.75)))
        return job["name"]

    monkeypatch.setattr(S, "_run_and_save", fake)
    monkeypatch.setattr("plugins.datasets.shapes.load_shapes", lambda split, root: None)
    out = tmp_path / "sweep.json"
    S.main(["--steps", "10", "--variants", "shipped", "per-image", "--jobs-dir", str(jobs), "--out", str(out)])
    assert trained == ["per-image"]  # shipped was there already
    report = json.loads(out.read_text())
    assert set(report["figures"]["variants"]) == {"shipped", "per-image"}
    assert set(report["figures"]["missing"]) == set(S.VARIANTS) - {"shipped", "per-image"}
    target = report["targets"]["label_kept_at_least_0.7"]
    assert target == {"met": True, "best": "per-image", "one_transition": 0.75}
    assert report["setup"]["steps"] == 10 and report["setup"]["base_config"]["recon_reduction"] == "mean"


def test_a_report_without_any_finished_variant_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no finished variant"):
        S.main(["--report-only", "--jobs-dir", str(tmp_path), "--out", str(tmp_path / "r.json")])


def test_every_variant_changes_settings_the_recipe_knows():
    from dataclasses import fields

    from plugins.vgan.recipes import GanTrainConfig

    known = {f.name for f in fields(GanTrainConfig)}
    assert set(S.BASE) <= known
    for name, changed in S.VARIANTS.items():
        assert set(changed) <= known, name
        assert all(S.BASE[k] != v for k, v in changed.items()), name  # each really changes something
