"""benchmarks/multitask.py: the first split's purity on hand-made trees, the like-with-like budget check,
and the benchmark end to end on a tiny chain (wide, thin, thin-random, two branched) trained by the real
recipes in the test: the report has every figure the multitask issue names, with consistent values (not
the quality, which needs the shipped models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app.api.training import load_checkpoint
from benchmarks import multitask as B
from benchmarks import multitask_cards as MC
from benchmarks import multitask_training as MT
from plugins.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES
from plugins.multitask.model import TreeConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = HEAD_ATTRIBUTES + BODY_ATTRIBUTES
T = len(TASKS)
HEAD = tuple(range(len(HEAD_ATTRIBUTES)))
BODY = tuple(range(len(HEAD_ATTRIBUTES), T))
TINY_DATA = ["num_train=256", "num_val=64", "num_test=128"]
TINY_WIDE = {"dataset": "persons", "dataset_options": TINY_DATA, "train_size": 0, "val_size": 0, "epochs": 2,
             "batch_size": 32, "widths": [4, 8, 8, 8, 16, 16, 16], "seed": 0}
TINY_TREE = {"dataset": "persons", "dataset_options": TINY_DATA, "train_size": 0, "val_size": 0, "epochs": 3,
             "batch_size": 32, "divisor": 2, "seed": 0, "widen_after": 1}
LAMS = (50.0, 400.0)
TINY_EVAL = {"latency_calls": 3, "latency_warmup": 1, "latency_rounds": 5}
MODEL_FIGURES = {"mean_accuracy", "per_attribute_accuracy", "params", "flops", "latency_ms", "latency_ms_range"}
BRANCHED_FIGURES = {"tree", "branches_per_layer", "decisions"}


def _tree(first_split: list[tuple[int, ...]], layer: int = 3) -> TreeConfig:
    """A thin tree with one trunk below ``layer`` and ``first_split``'s groups from ``layer`` up."""
    groups = tuple(tuple(g) for g in first_split)
    branches = [((tuple(range(T))),)] * layer + [groups] * (7 - layer)
    return TreeConfig.thin(TASKS, branches=branches)


# -- the first split -------------------------------------------------------------------------------------


def test_head_body_split_is_pure():
    split = B.first_split(_tree([HEAD, BODY]), HEAD_ATTRIBUTES, BODY_ATTRIBUTES)
    assert (split["layer"], split["num_groups"], split["purity"], split["trivial"]) == (3, 2, 1.0, False)
    assert split["groups"] == [HEAD_ATTRIBUTES, BODY_ATTRIBUTES]


def test_mixed_split_scores_the_majority_region_of_each_group():
    # {5 head + 2 body}, {2 head + 5 body}: (5 + 5) / 14
    mixed = [HEAD[:5] + BODY[:2], HEAD[5:] + BODY[2:]]
    assert B.first_split(_tree(mixed), HEAD_ATTRIBUTES, BODY_ATTRIBUTES)["purity"] == pytest.approx(10 / 14)
    # {hat, long_sleeves}, the rest: 1 + max(6, 6) = 7 of 14
    pair = [(0, 7), tuple(t for t in range(T) if t not in (0, 7))]
    assert B.first_split(_tree(pair), HEAD_ATTRIBUTES, BODY_ATTRIBUTES)["purity"] == pytest.approx(7 / 14)
    assert B.split_purity([["hat", "bag"], ["beard"]], HEAD_ATTRIBUTES, BODY_ATTRIBUTES) == pytest.approx(2 / 3)


def test_the_first_split_is_the_lowest_branched_layer_not_a_finer_one_above():
    # layer 2 splits mixed halves; layer 5 refines them into pure head/body groups: the first split is layer 2
    mixed = [HEAD[:4] + BODY[:3], HEAD[4:] + BODY[3:]]
    refined = [HEAD[:4], BODY[:3], HEAD[4:], BODY[3:]]
    tree = TreeConfig.thin(TASKS, branches=[(tuple(range(T)),)] * 2 + [tuple(mixed)] * 3 + [tuple(refined)] * 2)
    split = B.first_split(tree, HEAD_ATTRIBUTES, BODY_ATTRIBUTES)
    assert (split["layer"], split["num_groups"]) == (2, 2)
    assert split["purity"] == pytest.approx(8 / 14)


def test_singletons_are_trivially_pure_and_say_so():
    split = B.first_split(_tree([(t,) for t in range(T)], layer=6), HEAD_ATTRIBUTES, BODY_ATTRIBUTES)
    assert (split["layer"], split["purity"], split["num_groups"], split["trivial"]) == (6, 1.0, T, True)


def test_a_tree_that_never_branched_has_no_first_split():
    split = B.first_split(TreeConfig.thin(TASKS), HEAD_ATTRIBUTES, BODY_ATTRIBUTES)
    assert split["layer"] is None and split["purity"] is None and split["num_groups"] == 1


def test_purity_refuses_tasks_without_ground_truth():
    with pytest.raises(ValueError, match="neither head nor body"):
        B.split_purity([["hat"], ["attribute 3"]], HEAD_ATTRIBUTES, BODY_ATTRIBUTES)


def test_model_keys():
    assert [MC.model_key(n) for n in ("wide", "thin", "thin-random", "branched-l10", "branched-l0.5")] == [
        "wide", "thin", "thin_random", "branched_10", "branched_0.5"]


# -- a tiny chain trained by the recipes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """wide, thin, thin-random, branched-l50 and branched-l400, tiny, trained in scratch homes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("multitask-benchmark")
        data_dir = str(root / "data")
        paths = MT.train_models(TINY_WIDE, MT.tree_runs(TINY_TREE, LAMS), root / "homes", data_dir)
    finally:
        torch.set_num_threads(threads)
    return {"paths": paths, "data_dir": data_dir, "root": root}


def test_report_has_every_figure_the_issue_names(trained, tmp_path):
    out = B.run_benchmark(trained["paths"], TINY_EVAL, tmp_path / "report.json", data_dir=trained["data_dir"],
                          mode="quick")
    report = json.loads(out.read_text())
    figures, models = report["figures"], report["figures"]["models"]
    assert set(models) == {"wide", "thin", "thin_random", "branched_50", "branched_400"}
    assert figures["test_images"] == 128
    for key, m in models.items():
        assert MODEL_FIGURES <= set(m), key
        assert set(m["per_attribute_accuracy"]) == set(TASKS)
        assert m["mean_accuracy"] == pytest.approx(sum(m["per_attribute_accuracy"].values()) / T)
        assert all(0.0 <= a <= 1.0 for a in m["per_attribute_accuracy"].values())
        low, high = m["latency_ms_range"]
        assert 0 < low <= m["latency_ms"] <= high and len(m["latency_ms_rounds"]) == 5
        card = load_checkpoint(trained["paths"][m["checkpoint"]]).metadata
        assert (m["params"], m["flops"]) == (card["params"], card["flops"])  # the card's own count
    assert models["thin"]["params"] == models["thin_random"]["params"] < models["wide"]["params"]
    for key in ("branched_50", "branched_400"):
        m = models[key]
        assert BRANCHED_FIGURES <= set(m) and m["lam"] == float(key.split("_")[1])
        card = load_checkpoint(trained["paths"][m["checkpoint"]]).metadata
        assert m["tree"] == card["tree"]
        assert m["branches_per_layer"] == [len(g) for g in card["net"]["branches"]]
        assert [d["layer"] for d in m["decisions"]] == [d["layer"] for d in card["decisions"]]
        assert all(sorted(t for g in d["groups"] for t in g) == sorted(TASKS) for d in m["decisions"])
        split = m["first_split"]
        assert figures["first_split_purity"][key] == split["purity"]
        assert figures["first_split_layer"][key] == split["layer"]
        assert figures["first_split_groups"][key] == split["num_groups"]
        if split["layer"] is not None:  # the lowest layer with more than one branch
            assert m["branches_per_layer"][split["layer"]] > 1 == max(m["branches_per_layer"][:split["layer"]] or [1])
            assert split["purity"] == pytest.approx(B.split_purity(split["groups"], HEAD_ATTRIBUTES, BODY_ATTRIBUTES))
        c = figures["comparisons"][key]
        assert c["params_ratio_to_wide"] == pytest.approx(m["params"] / models["wide"]["params"])
        assert c["latency_ratio_to_wide"] == pytest.approx(m["latency_ms"] / models["wide"]["latency_ms"])
        assert c["accuracy_minus_thin"] == pytest.approx(m["mean_accuracy"] - models["thin"]["mean_accuracy"])
    assert max(models["branched_400"]["branches_per_layer"]) > 1  # the tiny chain did branch
    targets = report["targets"]
    for key in ("branched_within_1pt_of_wide_at_most_fifth_params_flops_above_thin",
                "first_split_purity_at_least_0.8", "thin_somp_above_thin_random"):
        assert isinstance(targets[key]["met"], bool) and targets[key]["reason"], key
    assert targets["thin_somp_above_thin_random"]["met"] == (models["thin"]["mean_accuracy"]
                                                            > models["thin_random"]["mean_accuracy"])
    budget = report["budget"]
    assert (budget["epochs"], budget["batch_size"], budget["divisor"], budget["dataset"]) == (3, 32, 2, "persons")
    assert budget["wide"] == str(trained["paths"]["wide"]) and budget["wide_network"]["epochs"] == 2
    assert figures["timing"]["torch_threads"]["intra_op"] == 1 and figures["timing"]["cpu_model"]
    assert report["mode"] == "quick" and "commit" in report


def test_a_second_test_set_drawn_with_another_seed_is_reported_with_its_own_conclusions(trained, tmp_path):
    out = B.run_benchmark(trained["paths"], TINY_EVAL, tmp_path / "report.json", data_dir=trained["data_dir"],
                          mode="quick", second_seed=3)
    report = json.loads(out.read_text())
    figures, second = report["figures"], report["figures"]["second_test"]
    assert second["seed"] == 3 and second["test_images"] == figures["test_images"] == 128
    assert set(second["models"]) == set(figures["models"])
    for key, m in second["models"].items():
        assert m["mean_accuracy"] == pytest.approx(sum(m["per_attribute_accuracy"].values()) / T)
        c = second["comparisons"].get(key)
        if c:  # costs as on the first test set, accuracies from the second
            assert c["params_ratio_to_wide"] == figures["comparisons"][key]["params_ratio_to_wide"]
            assert c["accuracy_minus_wide"] == pytest.approx(m["mean_accuracy"]
                                                             - second["models"]["wide"]["mean_accuracy"])
    # other images: the accuracies are not the first test set's
    assert [m["mean_accuracy"] for m in second["models"].values()] != [
        m["mean_accuracy"] for m in figures["models"].values()]
    target = report["targets"]["same_conclusions_on_second_test_set"]
    first = report["targets"]["branched_within_1pt_of_wide_at_most_fifth_params_flops_above_thin"]
    assert isinstance(target["met"], bool) and target["reason"] and target["seed"] == 3
    assert set(target["models_meeting"]) <= set(first["models_meeting"])


def test_the_second_test_budget_changes_only_the_seed_and_refuses_the_trained_one():
    budget = {"dataset": "persons", "dataset_options": ["num_train=256", "num_val=64", "num_test=128", "size=64"]}
    again = B.second_test_budget(budget, 2)
    assert again["dataset_options"] == ["num_test=128", "size=64", "seed=2", "num_train=1", "num_val=1"]
    assert budget["dataset_options"][0] == "num_train=256"  # the budget itself is left alone
    with pytest.raises(ValueError, match="seed the models were trained"):
        B.second_test_budget(budget, 0)
    with pytest.raises(ValueError, match="seed the models were trained"):
        B.second_test_budget({**budget, "dataset_options": ["seed=5"]}, 5)


def _copy_assets(paths: dict, folder: Path) -> Path:
    folder.mkdir()
    for name, path in paths.items():
        shutil.copy(path, folder / f"{name}.safetensors")
        shutil.copy(path.with_suffix(".json"), folder / f"{name}.json")
    return folder


def test_shipped_mode_reads_every_branched_checkpoint_and_refuses_other_budgets(trained, tmp_path):
    assets = _copy_assets(trained["paths"], tmp_path / "assets")
    args = ["--assets", str(assets), "--data-dir", trained["data_dir"], "--rounds", "1", "--calls", "1"]
    report = json.loads(B.main([*args, "--out", str(tmp_path / "shipped.json")]).read_text())
    assert report["mode"] == "shipped" and sorted(report["figures"]["first_split_purity"]) == ["branched_400",
                                                                                                "branched_50"]
    assert report["checkpoints"]["thin_random"]["file"] == str(assets / "thin-random.safetensors")
    card_path = assets / "thin-random.json"
    card = json.loads(card_path.read_text())
    card["metadata"]["config"]["epochs"] = 6
    card_path.write_text(json.dumps(card))
    with pytest.raises(SystemExit, match=r"refusing to compare.*budgets differ.*thin-random \{.*'epochs': 6"):
        B.main([*args, "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_check_budgets_names_what_differs(trained):
    cards = MC.load_cards(trained["paths"])
    budget = MC.check_budgets(cards)
    assert budget["lams"] == {"thin": 0.0, "thin-random": 0.0, "branched-l50": 50.0, "branched-l400": 400.0}

    def changed(name: str, **config) -> dict:
        return {**cards, name: {**cards[name], "config": {**cards[name]["config"], **config}}}

    for name, change in (("branched-l50", {"lr": 0.1}), ("thin", {"seed": 1}), ("branched-l400", {"train_size": 64}),
                         ("thin-random", {"batch_size": 16}), ("thin", {"wide": "multitask/wide"})):
        with pytest.raises(MC.BudgetMismatch, match=f"budgets differ.*{name} .*'{next(iter(change))}'"):
            MC.check_budgets(changed(name, **change))
    with pytest.raises(MC.BudgetMismatch, match=r"datasets \(the test split\) differ: wide \['persons', \['num_test=64'\]\]"):
        MC.check_budgets(changed("wide", dataset_options=["num_test=64"]))
    with pytest.raises(MC.BudgetMismatch, match="thin-random is not what its name says"):
        MC.check_budgets(changed("thin-random", init="somp"))
    with pytest.raises(MC.BudgetMismatch, match="no thin checkpoint"):
        MC.check_budgets({k: v for k, v in cards.items() if k != "thin"})
    with pytest.raises(MC.BudgetMismatch, match="no branched"):
        MC.check_budgets({k: v for k, v in cards.items() if not k.startswith("branched")})
    other_wide = {**cards, "wide": {**cards["wide"], "net": {**cards["wide"]["net"], "widths": [8] * 7}}}
    with pytest.raises(MC.BudgetMismatch, match="not thinned from this wide network"):
        MC.check_budgets(other_wide)


def test_missing_assets_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="missing .*wide.safetensors.*branched-l"):
        B.main(["--assets", str(tmp_path), "--out", str(tmp_path / "r.json")])


def test_train_commands_are_the_model_cards():
    commands = MT.commands({}, MT.tree_runs({"epochs": 20, "wide": "/scratch/wide.safetensors"}, [10.0]))
    assert commands == {
        "wide": "avstudio train multitask wide",
        "thin": "avstudio train multitask tree --set epochs=20",
        "thin-random": "avstudio train multitask tree --set epochs=20 --set init=random",
        "branched-l10": "avstudio train multitask tree --set epochs=20 --set lam=10"}
    listed = MT.commands({"dataset_options": ["num_test=10", "seed=1"], "widths": [8] * 7}, {})["wide"]
    assert listed == "avstudio train multitask wide --set dataset_options=num_test=10,seed=1 --set widths=8,8,8,8,8,8,8"


def test_train_retrains_what_the_shipped_cards_say(trained, tmp_path):
    assets = _copy_assets(trained["paths"], tmp_path / "assets")
    card_path = assets / "branched-l400.json"
    card = json.loads(card_path.read_text())
    card["metadata"]["config"]["unit_cost"] = 2.0
    card_path.write_text(json.dumps(card))
    wide_config, runs = MT.shipped_runs(assets, None)
    assert wide_config["widths"] == TINY_WIDE["widths"] and wide_config["epochs"] == 2
    assert list(runs) == ["thin", "thin-random", "branched-l50", "branched-l400"]
    assert all(runs[n]["epochs"] == 3 and runs[n]["divisor"] == 2 and "wide" not in runs[n] for n in runs)
    assert [(runs[n]["init"], runs[n]["lam"]) for n in runs] == [("somp", 0.0), ("random", 0.0), ("somp", 50.0),
                                                                 ("somp", 400.0)]
    assert runs["branched-l400"]["unit_cost"] == 2.0 and runs["branched-l50"]["unit_cost"] == 1.0
    assert list(MT.shipped_runs(assets, [7.0])[1]) == ["thin", "thin-random", "branched-l7"]
    for path in assets.glob("branched-*"):
        path.unlink()
    with pytest.raises(SystemExit, match="pass --lams"):
        MT.shipped_runs(assets, None)


@pytest.mark.slow  # trains the whole chain again; the report itself: test_report_has_every_figure_the_issue_names
def test_quick_trains_every_model_and_writes_its_own_report(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "QUICK_WIDE", TINY_WIDE)
    monkeypatch.setattr(B, "QUICK_TREE", TINY_TREE)
    out = B.main(["--quick", "--assets", str(tmp_path / "none"), "--lams", "50", "--rounds", "2", "--calls", "2",
                  "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "multitask-quick.json")])
    report = json.loads(out.read_text())
    assert set(report["figures"]["models"]) == {"wide", "thin", "thin_random", "branched_50"}
    assert isinstance(report["figures"]["first_split_groups"], int)  # one branched model: plain numbers
    assert report["mode"] == "quick" and report["budget"]["epochs"] == 3
    assert report["training"]["commands"]["branched-l50"].endswith("--set lam=50")
    assert report["checkpoints"]["branched_50"]["file"] == "scratch home (deleted)"
