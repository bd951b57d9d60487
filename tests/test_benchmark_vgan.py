"""benchmarks/vgan.py on three tiny fresh models trained through the studio: the report has every
figure the VGAN issue names with consistent values (not the quality, which needs the shipped models),
and the benchmark refuses models trained at different budgets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app.api.training import load_checkpoint, module_tensors, save_checkpoint
from benchmarks import vgan as B
from benchmarks import vgan_jobs
from plugins.blockdrop.model import build_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TRAIN = {"dataset": "shapes", "train_size": 128, "steps": 3, "batch_size": 16, "experts": 4, "latent_dim": 8,
              "width": 4, "hidden": 16, "gen_width": 4, "sample_every": 1000, "seed": 0}
TINY_EVAL = {"probe_train": 200, "probe_test": 200, "generated": 100, "fd_test": 200, "semi_labels": 100,
             "semi_steps": 6, "semi_batch": 16, "semi_width": 4, "semi_lr": 3e-3, "semi_val": 50, "semi_test": 100,
             "throughput_batch": 64, "throughput_repeats": 2, "seed": 0, "semi_seeds": [0, 1],
             "agreement_images": 40, "chain_steps": 3}
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
        assert f["classes_with_2pct"] == sum(c >= 0.02 * n for c in f["class_histogram"])
        assert f["smallest_class_fraction"] == min(f["class_histogram"]) / n
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
    semi = figures["semi_supervised"]
    for condition in ("no_augmentation", "vcd_augmentation"):
        runs = semi[condition]
        assert runs["seeds"] == [0, 1] and len(runs["test_errors"]) == 2
        assert runs["mean"] == pytest.approx(sum(runs["test_errors"]) / 2)
        assert runs["range"] == [min(runs["test_errors"]), max(runs["test_errors"])] and runs["std"] >= 0
        for run in runs["runs"]:
            assert [s for s, _ in run["val_errors"]] == list(range(1, TINY_EVAL["semi_steps"] + 1))
    assert shared_no_aug == semi["no_augmentation"]["mean"]
    assert figures["vcd"]["semi_supervised"]["vcd_augmentation"] == semi["vcd_augmentation"]["mean"]
    assert semi["vcd_gain_pts"] == [pytest.approx(100 * (a - b), abs=1e-3) for a, b in zip(
        semi["no_augmentation"]["test_errors"], semi["vcd_augmentation"]["test_errors"], strict=True)]
    kept = figures["vcd"]["label_kept"]
    assert kept["images"] == 40 and len(kept["chain"]) == 3
    assert all(0.0 <= a <= 1.0 for a in [kept["reconstruction"], *kept["chain"]])
    targets = report["targets"]
    assert {"vgan_probe_error_3_points_below_gan", "vgan_and_vcd_frechet_distance_below_gan",
            "vgan_and_vcd_cover_all_10_classes_each_at_least_2pct", "vcd_transition_keeps_the_label_at_least_0.7",
            "vcd_augmentation_2_points_below_no_augmentation"} <= set(targets)
    assert all(isinstance(t["met"], bool) for k, t in targets.items() if k != "notes")
    assert targets["vgan_probe_error_3_points_below_gan"]["met"] == (figures["vgan"]["probe_error"]
                                                                    <= figures["gan"]["probe_error"] - 0.03)
    assert targets["vcd_transition_keeps_the_label_at_least_0.7"]["met"] == (kept["chain"][0] >= 0.7)
    assert targets["vcd_augmentation_2_points_below_no_augmentation"]["met"] == (
        semi["vcd_augmentation"]["mean"] <= semi["no_augmentation"]["mean"] - 0.02)
    budget = report["budget"]
    assert (budget["steps"], budget["batch_size"], budget["k"]) == (3, 16, 1)
    assert budget["net"]["width"] == 4 and budget["experts"] == {"vgan": 4, "vcd": 4, "gan": 1}
    assert "NOT Inception FID" in report["frechet_distance_note"]
    assert report["mode"] == "quick" and "commit" in report
    assert all(report["checkpoints"][k]["created"] for k in ("vgan", "vcd", "gan"))


def test_label_agreement_counts_the_classifier_s_own_label_kept_along_the_chain(trained):
    from plugins.vgan.metrics import label_agreement
    from plugins.vgan.model import models_from_checkpoint

    _, _, generator = models_from_checkpoint(load_checkpoint(trained["paths"]["vcd"]))
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)

    def by_brightness(x: torch.Tensor) -> torch.Tensor:  # a "classifier": bright or dark
        return torch.stack([0.5 - x.mean((1, 2, 3)), x.mean((1, 2, 3)) - 0.5], 1)

    def constant(x: torch.Tensor) -> torch.Tensor:  # always class 1: every label is kept
        return torch.tensor([0.0, 1.0]).expand(len(x), 2)

    assert label_agreement(constant, generator, images, 2) == {"reconstruction": 1.0, "chain": [1.0, 1.0],
                                                               "images": 30}
    first = label_agreement(by_brightness, generator, images, 4, seed=3, batch_size=7)
    assert first == label_agreement(by_brightness, generator, images, 4, seed=3, batch_size=7)  # seeded
    assert len(first["chain"]) == 4 and all(k * 30 == round(k * 30) for k in first["chain"])
    assert generator.training is False
    with pytest.raises(ValueError, match="at least one image"):
        label_agreement(constant, generator, images[:0], 1)

    class Inverting(torch.nn.Module):  # reconstructs exactly; every transition inverts the image
        def reconstruct(self, x):
            return x

        def transition(self, x, rng=None):
            return 1 - x

    bright_or_dark = torch.cat([torch.full((6, 3, 4, 4), 200), torch.full((4, 3, 4, 4), 40)]).to(torch.uint8)
    kept = label_agreement(by_brightness, Inverting(), bright_or_dark, 3)
    assert kept == {"reconstruction": 1.0, "chain": [0.0, 1.0, 0.0], "images": 10}  # each step flips every label


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
