"""benchmarks/vgan.py on three tiny fresh models trained through the studio: the report has every
figure the VGAN issue names with consistent values (not the quality, which needs the shipped models),
and the benchmark refuses models trained at different budgets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app.api import load_checkpoint, module_tensors, save_checkpoint
from benchmarks import vgan as B
from benchmarks import vgan_jobs
from plugins.blockdrop.model import build_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TRAIN = {"dataset": "shapes", "train_size": 128, "steps": 3, "batch_size": 16, "experts": 4, "latent_dim": 8,
              "width": 4, "hidden": 16, "gen_width": 4, "sample_every": 1000, "seed": 0}
TINY_EVAL = {"probe_train": 200, "probe_test": 200, "generated": 100, "fd_test": 200, "semi_labels": 100,
             "semi_steps": 6, "semi_batch": 16, "semi_width": 4, "semi_lr": 3e-3, "semi_val": 50, "semi_test": 100,
             "throughput_batch": 64, "throughput_repeats": 2, "seed": 0}
FIGURES = {"probe_error", "frechet_distance", "classes_covered", "class_histogram", "samples_per_s",
           "semi_supervised"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Three tiny models (vgan, vcd, gan) trained by their recipes in scratch homes, a tiny random
    ResNet-8 as the shapes classifier, and the shared shapes cache."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("vgan-benchmark")
        data_dir = str(root / "data")
        paths = B.train_models(TINY_TRAIN, root / "homes", data_dir, workers=1)
        torch.manual_seed(0)
        classifier = save_checkpoint(root / "classifier.safetensors", module_tensors(build_resnet(8, 10), "backbone"),
                                     {"kind": "backbone", "depth": 8, "num_classes": 10})
    finally:
        torch.set_num_threads(threads)
    return {"paths": paths, "data_dir": data_dir, "classifier": classifier, "root": root}


def test_report_has_every_figure_the_issue_names(trained, tmp_path):
    out = B.run_benchmark(trained["paths"], TINY_EVAL, tmp_path / "report.json", data_dir=trained["data_dir"],
                          classifier=trained["classifier"], workers=1, mode="quick")
    report = json.loads(out.read_text())
    figures = report["figures"]
    n = TINY_EVAL["generated"]
    shared_no_aug = figures["vgan"]["semi_supervised"]["no_augmentation"]
    for kind in ("vgan", "vcd", "gan"):
        f = figures[kind]
        assert FIGURES <= set(f), kind
        assert 0.0 <= f["probe_error"] <= 1.0
        assert f["frechet_distance"] >= 0.0
        assert len(f["class_histogram"]) == 10 and sum(f["class_histogram"]) == n
        assert f["classes_covered"] == sum(c >= 0.01 * n for c in f["class_histogram"])
        assert f["samples_per_s"] > 0
        semi = f["semi_supervised"]
        assert {"no_augmentation", "vcd_augmentation"} <= set(semi)
        assert semi["no_augmentation"] == shared_no_aug and 0.0 <= shared_no_aug <= 1.0
    assert 0.0 <= figures["vcd"]["semi_supervised"]["vcd_augmentation"] <= 1.0
    for kind in ("vgan", "gan"):
        assert figures[kind]["semi_supervised"]["vcd_augmentation"] is None
        assert "no encoder" in figures[kind]["semi_supervised"]["note"]
    reference = figures["reference"]
    assert reference["frechet_distance_train_vs_test"] >= 0.0
    assert sum(reference["class_histogram_train"]) == n and 0.0 <= reference["probe_error_pixels"] <= 1.0
    curve = figures["semi_supervised"]["vcd_augmentation"]["val_errors"]
    assert [s for s, _ in curve] == list(range(1, TINY_EVAL["semi_steps"] + 1))
    targets = report["targets"]
    assert {"vgan_probe_error_below_gan", "vgan_frechet_distance_below_gan", "vgan_covers_all_10_classes",
            "vcd_augmentation_error_at_most_no_augmentation"} <= set(targets)
    assert all(isinstance(t["met"], bool) for k, t in targets.items() if k != "notes")
    assert targets["vgan_probe_error_below_gan"]["met"] == (figures["vgan"]["probe_error"]
                                                           < figures["gan"]["probe_error"])
    budget = report["budget"]
    assert (budget["steps"], budget["batch_size"], budget["k"]) == (3, 16, 1)
    assert budget["net"]["width"] == 4 and budget["experts"] == {"vgan": 4, "vcd": 4, "gan": 1}
    assert "NOT Inception FID" in report["frechet_distance_note"]
    assert report["mode"] == "quick" and "commit" in report
    assert all(report["checkpoints"][k]["created"] for k in ("vgan", "vcd", "gan"))


def _copy_assets(paths: dict, folder: Path) -> Path:
    folder.mkdir()
    for kind, path in paths.items():
        shutil.copy(path, folder / f"{kind}.safetensors")
        shutil.copy(path.with_suffix(".json"), folder / f"{kind}.json")
    return folder


def test_refuses_models_trained_at_different_budgets(trained, tmp_path):
    assets = _copy_assets(trained["paths"], tmp_path / "assets")
    card_path = assets / "gan.json"
    card = json.loads(card_path.read_text())
    card["metadata"]["budget"]["steps"] = 6
    card_path.write_text(json.dumps(card))
    assert load_checkpoint(assets / "gan.safetensors").metadata["budget"]["steps"] == 6
    with pytest.raises(SystemExit, match=r"refusing to compare.*budget differ.*gan \{.*'steps': 6"):
        B.main(["--assets", str(assets), "--out", str(tmp_path / "r.json"), "--workers", "1",
                "--data-dir", trained["data_dir"], "--classifier", str(trained["classifier"])])
    assert not (tmp_path / "r.json").exists()


def test_check_budgets_names_what_differs(trained):
    cards = B.load_cards(trained["paths"])
    shared = B.check_budgets(cards)
    assert shared["dataset"] == "shapes" and shared["train_size"] == 128
    wider = {**cards, "vcd": {**cards["vcd"], "net": {**cards["vcd"]["net"], "width": 8}}}
    with pytest.raises(B.BudgetMismatch, match="network sizes differ"):
        B.check_budgets(wider)
    with pytest.raises(B.BudgetMismatch, match="not a gan model"):
        B.check_budgets({**cards, "gan": cards["vgan"]})
    with pytest.raises(B.BudgetMismatch, match="no vcd checkpoint"):
        B.check_budgets({k: v for k, v in cards.items() if k != "vcd"})
    more_data = {**cards, "vgan": {**cards["vgan"], "config": {**cards["vgan"]["config"], "train_size": 0}}}
    with pytest.raises(B.BudgetMismatch, match="data differ"):
        B.check_budgets(more_data)


def test_missing_assets_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="missing .*vgan.safetensors"):
        B.main(["--assets", str(tmp_path), "--out", str(tmp_path / "r.json")])


def test_fd_features_are_what_the_classifier_head_reads(trained):
    net, pooled, num_classes = vgan_jobs._classifier(str(trained["classifier"]))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        features = pooled(x)
        assert features.shape == (4, 64) and num_classes == 10
        assert torch.allclose(net.fc(features), net(x), atol=1e-5)
