"""benchmarks/load.py --quick against a real ``python app/main.py``: the report has its shape and no call failed."""

from __future__ import annotations

import json

import pytest

from benchmarks import load


def test_percentile_interpolates_between_ranks():
    assert load.percentile([10.0], 95) == 10.0
    assert load.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert load.percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)


def test_targets_fail_on_any_error_slow_answer_or_low_throughput():
    ok = {"throughput_rps": 30.0, "p95_ms": 900.0, "errors": 0}
    figures = {"a": ok, "b": {**ok, "errors": 1}, "c": {**ok, "p95_ms": 2500.0}, "d": {**ok, "throughput_rps": 20.0}}
    t = load.targets(figures, ["a", "b", "c", "d"])
    assert [t["endpoints"][k]["met"] for k in "abcd"] == [True, False, False, False] and t["met"] is False
    assert load.targets(figures, ["a"])["met"] is True


def test_repeats_combine_into_medians_with_their_range_and_summed_counts():
    runs = [{"e": {"requests": 8, "errors": e, "throughput_rps": rps, "p50_ms": 100.0, "p95_ms": p95,
                   "server_cpu_cores": 1.0}}
            for e, rps, p95 in [(0, 30.0, 900.0), (1, 20.0, 1500.0), (0, 26.0, 1000.0)]]
    f = load.combine(runs)["e"]
    assert (f["requests"], f["errors"], f["throughput_rps"], f["p95_ms"]) == (24, 1, 26.0, 1000.0)
    assert f["throughput_rps_range"] == [20.0, 30.0] and f["p95_ms_range"] == [900.0, 1500.0]
    assert f["server_cpu_cores"] == 1.0 and "p50_ms_range" not in f


def test_quick_run_against_a_live_server(tmp_path):
    pytest.importorskip("gradio_client")
    out = tmp_path / "load.json"
    assert load.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "load" and report["setup"]["clients"] == 4 and report["setup"]["cpu_model"]
    assert report["setup"]["repeats"] == 1 and len(report["runs"]) == 1
    figures = report["figures"]
    assert set(figures) == {*load.ENDPOINTS, "total"}
    for name, f in figures.items():
        assert set(f) >= {"requests", "errors", "throughput_rps", "p50_ms", "p95_ms"}, name
        assert f["errors"] == 0, (name, report["errors"])
        assert f["requests"] == (4 * 2 * len(load.ENDPOINTS) if name == "total" else 4 * 2)
        assert f["throughput_rps"] > 0 and 0 < f["p50_ms"] <= f["p95_ms"]
        if name != "total":  # where the machine's time went: the server's cores, the clients'
            assert f["server_cpu_cores"] > 0 and f["client_cpu_cores"] > 0 and f["server_cpu_ms_per_request"] > 0
    assert set(report["targets"]["endpoints"]) == set(load.ENDPOINTS)
    assert isinstance(report["targets"]["met"], bool)
