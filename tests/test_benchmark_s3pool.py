"""benchmarks/s3pool.py: the converged comparison is planned, built from one file per finished training
(a chain may span sessions), summarised on what exists, and judged against the issue's targets; one
tiny training runs end to end through the studio so the script cannot rot."""

from __future__ import annotations

import json

import pytest

from benchmarks import s3pool as B

pytestmark = pytest.mark.usefixtures("one_thread")


def _result(pooling, size, seed, test, train, grid=(16, 8), augment=False, curve=None, **extra):
    return {"downsample": pooling, "train_size": size, "seed": seed, "grid_sizes": list(grid), "augment": augment,
            "test_error": test, "train_error": train, "test_error_uniform": test + 0.01,
            "test_error_ensemble": test + 0.02,
            "curves": {"train_error": curve or [[100, 0.5], [200, 0.1], [300, 0.0]],
                       "val_error": [[100, 0.6], [200, 0.55], [300, 0.56]]}, **extra}


def test_the_plan_pairs_max_pooling_with_s3pool_first_and_every_job_has_its_own_file():
    plan = B.planned_jobs(B.FULL, augment=True)
    assert [(j["downsample"], j["train_size"], j["seed"]) for j in plan[:4]] == [
        ("max", 1000, 0), ("s3pool", 1000, 0), ("max", 1000, 1), ("s3pool", 1000, 1)]
    assert len({B.job_key(j) for j in plan}) == len(plan)
    assert all(j["steps"] == B.FULL["steps"] and j["eval_every"] == B.FULL["eval_every"] for j in plan)
    assert sum(j["augment"] for j in plan) == 2 * len(B.FULL["seeds"])
    assert len(B.FULL["seeds"]) >= 3 and min(B.FULL["sizes"]) <= 1000


def test_the_plateau_is_where_the_training_error_stops_falling():
    assert B.plateau_step([[100, 0.5], [200, 0.1], [300, 0.0], [400, 0.0]]) == 300
    assert B.plateau_step([[100, 0.5], [200, 0.3], [300, 0.31], [400, 0.1]]) == 400  # still falling at the end
    assert B.plateau_step([[100, 0.1], [200, 0.098]]) == 100  # within the tolerance
    assert B.plateau_step([]) is None


def test_the_summary_and_targets_use_what_exists():
    cfg = {**B.FULL, "sizes": [1000, 2000], "seeds": [0, 1, 2]}
    results = [_result("max", 1000, s, 0.55 + 0.01 * s, 0.0) for s in range(3)]
    results += [_result("s3pool", 1000, s, 0.47 + 0.01 * s, 0.0, curve=[[100, 0.7], [200, 0.4], [400, 0.0]])
                for s in range(3)]
    results += [_result("max", 2000, 0, 0.40, 0.0), _result("s3pool", 2000, 0, 0.38, 0.0)]
    results += [_result("s3pool", 1000, 0, 0.60, 0.1, grid=(2, 2)), _result("max", 1000, 0, 0.5, 0.0, augment=True)]
    figures = B.summarise(results, cfg)
    assert figures["test_error"]["max"]["1000"] == pytest.approx(0.56)
    assert figures["test_error_std"]["s3pool"]["1000"] == pytest.approx(0.01)
    assert figures["seeds"]["s3pool"]["1000"] == [0, 1, 2] and figures["seeds"]["max"]["2000"] == [0]
    assert "strided" not in figures["test_error"]  # not trained yet: left out, not zero
    assert figures["train_error_plateau_step"]["s3pool"]["1000"] == 400
    assert set(figures["grid_sweep"]) == {"2-2", "16-8"}
    assert figures["augmented"]["max"]["test_error"] == 0.5 and "s3pool" not in figures["augmented"]
    assert figures["ensemble"]["uniform"] == pytest.approx(0.49)
    figures["layer_overhead"] = 1.1
    targets = B.targets_met(figures, cfg)
    assert targets["s3pool_gain_pts"] == {"1000": pytest.approx(8.0), "2000": pytest.approx(2.0)}
    assert targets["gain_at_smallest_at_least_5_pts"] and targets["gain_at_smallest_larger_than_seed_spread"]
    assert targets["s3pool_below_max_at_second_size"] and targets["layer_overhead_at_most_1.3"]
    assert figures["paired_gain_pts"]["1000"] == [8.0, 8.0, 8.0] and figures["paired_gain_pts"]["2000"] == [2.0]
    assert targets["s3pool_ahead_on_every_seed_at_smallest"]
    assert figures["val_error_plateau_step"]["max"]["1000"] == 200
    figures["test_error"]["s3pool"]["1000"] = 0.53
    assert not B.targets_met(figures, cfg)["gain_at_smallest_at_least_5_pts"]


@pytest.mark.slow  # trains two benchmark jobs; what the report makes of jobs: the tests above and below (fast)
def test_a_quick_run_trains_only_what_is_missing_and_reports(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    args = ["--quick", "--poolings", "max", "--max-jobs", "1", "--workers", "1", "--jobs-dir", str(jobs),
            "--out", str(tmp_path / "r.json"), "--data-dir", str(tmp_path / "data")]
    monkeypatch.setattr(B, "layer_times", lambda repeats, device="cpu": {"s3pool": 1.0, "max": 1.0})
    B.main(args)
    files = sorted(p.name for p in jobs.glob("*.json"))
    assert files == ["max-n200-seed0-g16x8-40steps-w4.json"]
    result = json.loads((jobs / files[0]).read_text())
    assert result["curves"]["train_error"][-1][0] == 40 and "commit" in result
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["figures"]["test_error"]["max"]["200"] == result["test_error"]
    assert len(report["figures"]["missing_jobs"]) == len(B.planned_jobs(B.QUICK, False)) - 1
    B.main(args)  # nothing missing among max-pool jobs of this budget but the next one: it trains that one
    assert len(list(jobs.glob("*.json"))) == 2


def test_report_only_trains_nothing(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    result = _result("max", 200, 0, 0.8, 0.5)
    (jobs / "max-n200-seed0-g16x8-40steps-w4.json").write_text(json.dumps(result))
    monkeypatch.setattr(B, "layer_times", lambda repeats, device="cpu": {"s3pool": 1.0, "max": 2.0})
    monkeypatch.setattr(B, "run_job", lambda job: pytest.fail("--report-only trained something"))
    B.main(["--quick", "--report-only", "--jobs-dir", str(jobs), "--out", str(tmp_path / "r.json")])
    figures = json.loads((tmp_path / "r.json").read_text())["figures"]
    assert figures["test_error"] == {"max": {"200": 0.8}} and figures["layer_overhead"] == 0.5
