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


def test_quick_run_against_a_live_server(tmp_path):
    pytest.importorskip("gradio_client")
    out = tmp_path / "load.json"
    assert load.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "load" and report["setup"]["clients"] == 4 and report["setup"]["cpu_model"]
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
