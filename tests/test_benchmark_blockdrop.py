"""benchmarks/blockdrop.py end to end on tiny random checkpoints: the report has every figure the
BlockDrop issue names, with consistent values (not the quality, which needs the shipped models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.api.training import module_tensors
from benchmarks.blockdrop import pick_policy
from plugins.blockdrop.model import build_policy, build_resnet
from trainer.checkpoints import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
REQUIRED = ["accuracy_full", "accuracy_blockdrop", "accuracy_firstk", "accuracy_randomk", "mean_blocks",
            "num_blocks", "flops_ratio", "speedup_b1_cpu", "speedup_b64_cpu", "spearman_blocks_difficulty"]


def _card(kind: str, accuracy: float, mean_blocks: float, **extra) -> dict:
    return {"kind": kind, "depth": 8, "num_classes": 10, "num_blocks": 3, "policy_input_size": 16,
            "free_blocks": 3, "image_size": [32, 32], "metrics": {"accuracy": accuracy, "mean_blocks": mean_blocks},
            **extra}


def _assets(root: Path, policies: dict[str, tuple[float, float]]) -> tuple[Path, Path]:
    torch.manual_seed(0)
    backbone = build_resnet(8, 10)
    root.mkdir(parents=True, exist_ok=True)
    full = save_checkpoint(root / "backbone.safetensors", module_tensors(backbone, "backbone"),
                           _card("backbone", 0.80, 3.0))
    for name, (accuracy, blocks) in policies.items():
        tensors = {**module_tensors(backbone, "backbone"), **module_tensors(build_policy(3, 16), "policy")}
        save_checkpoint(root / f"{name}.safetensors", tensors,
                        _card("finetune", accuracy, blocks, gamma=float(name.removeprefix("policy-g"))))
    return root, full


def test_pick_policy_prefers_the_fewest_blocks_within_one_point(tmp_path):
    assets, full = _assets(tmp_path, {"policy-g0.5": (0.785, 1.2), "policy-g1": (0.795, 1.8),
                                      "policy-g2": (0.801, 2.6)})
    # g0.5 is 1.5 points below the backbone's 0.80: of the two within 1 point, g1 uses fewer blocks.
    assert pick_policy(assets, full).name == "policy-g1.safetensors"
    for path in assets.glob("policy-g*"):
        path.unlink()
    assets, full = _assets(tmp_path, {"policy-g0.5": (0.70, 1.0), "policy-g1": (0.75, 2.0)})
    assert pick_policy(assets, full).name == "policy-g1.safetensors"  # none close: the most accurate


@pytest.mark.slow  # the quick benchmark in a subprocess: the heaviest test of the file by far
def test_report_has_every_figure_the_issue_names(tmp_path):
    assets, full = _assets(tmp_path / "assets", {"policy-g1": (0.8, 2.0)})
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/blockdrop.py", "--quick", "--device", "cpu", "--backbone", str(full),
         "--policy", str(assets / "policy-g1.safetensors"), "--out", str(out),
         "--data-dir", str(tmp_path / "data"), "--compare-policy", str(assets / "policy-g1.safetensors")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(REQUIRED) <= set(figures)
    assert figures["num_blocks"] == 3 and 0.0 <= figures["mean_blocks"] <= 3.0
    for key in ("accuracy_full", "accuracy_blockdrop", "accuracy_firstk", "accuracy_randomk",
                "accuracy_full_finetuned_backbone"):
        assert 0.0 <= figures[key] <= 1.0, key
    # The same weights with every block kept are the full ResNet.
    assert figures["accuracy_full_finetuned_backbone"] == pytest.approx(figures["accuracy_full"])
    assert figures["speedup_b1_cpu"] > 0 and figures["speedup_b64_cpu"] > 0
    assert figures["speedup_b1_cpu_fraction_of_ideal"] == pytest.approx(
        figures["speedup_b1_cpu"] * figures["flops_ratio"])
    assert -1.0 <= figures["spearman_blocks_difficulty"] <= 1.0
    share = figures["policy_net_b1_cpu"]  # the policy network's time against its FLOPs (docs/blockdrop.md)
    assert share["arch"] == "resnet8" and 0 < share["time_share"] < 1
    assert share["flops_share"] == pytest.approx(figures["flops_policy_net"] / figures["flops_full"])
    assert share["policy_ms"] < share["full_ms"]
    compared = figures["policy_net_b1_cpu_compared"]  # the control: here the same policy, timed again
    assert compared["flops_share"] == pytest.approx(share["flops_share"]) and compared["arch"] == "resnet8"
    assert 0 < compared["time_share"] < 1
    assert len(figures["timing"]["b1_cpu"]["channels_last"]["rounds"]["speedup"]) == figures["timing_rounds"] >= 3
    assert {"accuracy_within_1pt_of_full", "blocks_at_most_50pct", "spearman_at_least_0.3"} <= set(report["targets"])
    assert report["command"].startswith("python benchmarks/blockdrop.py")
