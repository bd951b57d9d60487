"""The multitask recipes through the studio: the wide network, thin networks from SOMP and at
random, branched trees at a huge and a small λ, one budget for all of them, exact resume across widenings,
configs refused before a run is queued, and training on the user's own images + attributes CSV.

Tiny: 128 ``persons`` images (generated with small splits), widths a sixteenth of the default, 3–4 epochs.
The module's runs share one studio; every check reads the checkpoints and metrics a user would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import plugins.datasets as datasets_plugin
import plugins.multitask as multitask_plugin
from app.api import ConfigError
from app.api.training import load_checkpoint
from app.testing import open_test_studio
from plugins.datasets.persons import PERSON_ATTRIBUTES
from plugins.datasets.real import holdout_split
from plugins.multitask.model import BranchedNet, count_flops, count_params, net_from_checkpoint
from plugins.multitask.recipes import attribute_accuracy, replay, tree_from_card
from plugins.multitask.somp import thin_from_wide

DATA = {"dataset_options": ["num_train=128", "num_val=64", "num_test=8"], "train_size": 128, "val_size": 64,
        "batch_size": 32}  # 4 steps per epoch
WIDTHS = [4, 8, 8, 8, 16, 16, 16]
THIN_WIDTHS = [w // 2 for w in WIDTHS]
EPOCHS = 4
STEPS = EPOCHS * 4
HUGE, SMALL = 1000.0, 0.5  # λ: splitting every branch off pays (L_b ≤ 13 here); no split can (L_b ≥ 1 > λ·L_s)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and resume is bit-exact on it
    try:
        with open_test_studio(tmp_path_factory.mktemp("studio"), [datasets_plugin, multitask_plugin]) as opened:
            yield opened
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wide(studio):
    result = studio.train("multitask", "wide", {**DATA, "epochs": 3, "widths": WIDTHS})
    assert result.status == "succeeded", result.error
    return result


def _tree_config(wide, **changes) -> dict:
    return {**DATA, "epochs": EPOCHS, "divisor": 2, "wide": f"run:{wide.run_id}/wide", "widen_after": 1, **changes}


@pytest.fixture(scope="module")
def trees(studio, wide):
    """Four tree runs of one config: thin (SOMP), thin from a random start, and λ huge and small."""
    runs = {}
    for key, changes in {"thin": {}, "thin-random": {"init": "random"}, "huge": {"lam": HUGE},
                         "small": {"lam": SMALL}}.items():
        runs[key] = studio.train("multitask", "tree", _tree_config(wide, **changes))
        assert runs[key].status == "succeeded", runs[key].error
    return runs


def _card(result, name: str) -> dict:
    assert list(result.checkpoints) == [name]
    return load_checkpoint(result.checkpoints[name]).metadata


def _resume_state(studio, result) -> dict:
    return load_checkpoint(studio.settings.runs_dir / str(result.run_id) / "resume-state.safetensors").metadata


def _single_trunk(net: dict) -> bool:
    return all(len(groups) == 1 for groups in net["branches"])


# -- wide -----------------------------------------------------------------------------------------------------


def test_wide_saves_a_card_whose_numbers_the_saved_network_reproduces(studio, wide):
    checkpoint = load_checkpoint(wide.checkpoints["wide"])
    card = checkpoint.metadata
    assert card["tasks"] == list(PERSON_ATTRIBUTES) and card["epoch"] == 3 and card["decisions"] == []
    assert list(card["net"]["widths"]) == WIDTHS and _single_trunk(card["net"])
    net = net_from_checkpoint(checkpoint)
    assert card["params"] == count_params(net) and card["flops"] == count_flops(net) > 0
    assert [step for step, _ in wide.metrics["val_mean_accuracy"]] == [1, 2, 3]
    # the card's per-attribute accuracy is the saved network's on the first val_size val images
    val = studio.dataset("persons", "val", num_train=128, num_val=64, num_test=8)
    accuracy = attribute_accuracy(net, val.images[:64], val.targets[:64])
    expected = dict(zip(PERSON_ATTRIBUTES, accuracy.tolist(), strict=True))
    assert card["val_attribute_accuracy"] == pytest.approx(expected, abs=1e-4)
    assert wide.last("val_mean_accuracy") == pytest.approx(float(accuracy.mean()), abs=1e-6)
    assert "widen_layer" not in wide.metrics


# -- thin -----------------------------------------------------------------------------------------------------


def test_lam_zero_trains_the_thin_baselines_at_the_wide_widths_over_the_divisor(wide, trees):
    for key in ("thin", "thin-random"):
        card = _card(trees[key], key)
        assert list(card["net"]["widths"]) == THIN_WIDTHS and _single_trunk(card["net"])
        assert card["decisions"] == [] and card["finished"] is True
        assert "widen_layer" not in trees[key].metrics and trees[key].last("branches") == len(WIDTHS)
        assert card["params"] < _card(wide, "wide")["params"] / 3


def test_the_somp_start_is_the_wide_networks_filters_selected_by_somp(studio, wide):
    """lr = 0 keeps every weight where the start put it (BN statistics still move), so the saved thin network
    is its start: SOMP's selection from the wide weights, not a random draw."""
    frozen = {"lr": 0.0, "weight_decay": 0.0, "epochs": 1}
    somp = studio.train("multitask", "tree", _tree_config(wide, name="somp-start", **frozen))
    random = studio.train("multitask", "tree", _tree_config(wide, name="random-start", init="random", **frozen))
    assert somp.status == random.status == "succeeded", (somp.error, random.error)
    wide_net = net_from_checkpoint(load_checkpoint(wide.checkpoints["wide"]))
    expected, selections = thin_from_wide(wide_net, THIN_WIDTHS)
    started = load_checkpoint(somp.checkpoints["somp-start"]).tensors
    for key, value in expected.state_dict().items():
        if key.endswith(("op.weight", "bn.weight", "bn.bias")) or key.startswith("heads."):
            assert torch.equal(started[f"net.{key}"], value), key
    # the first layer sees the image itself: its thin filters are the wide filters SOMP kept, unchanged
    wide_filters = wide_net.layers[0][0].op.weight
    assert torch.equal(started["net.layers.0.0.op.weight"], wide_filters[selections[0].indices])
    drawn = load_checkpoint(random.checkpoints["random-start"]).tensors["net.layers.0.0.op.weight"]
    assert not any(torch.equal(f, w) for f in drawn for w in wide_filters)


# -- branched -------------------------------------------------------------------------------------------------


def test_a_huge_lam_splits_and_the_logged_decisions_replay_to_the_saved_tree(studio, trees):
    card = _card(trees["huge"], f"branched-l{HUGE:g}")
    decisions = card["decisions"]
    assert [d["layer"] for d in decisions] == [6, 5, 4]  # one per epoch after the first, top layer down
    for decision in decisions:
        totals = [c["total"] for c in decision["candidates"]]
        assert decision["chosen"] == totals.index(min(totals))
        assert {"groups", "branch_cost", "separation_cost"} <= set(decision["candidates"][0])
    assert len(decisions[0]["candidates"][decisions[0]["chosen"]]["groups"]) == len(PERSON_ATTRIBUTES)
    thin = BranchedNet.from_config(_card(trees["thin"], "thin")["net"])  # the tree every run starts from
    assert replay(thin, decisions).config == tree_from_card(card)
    assert not _single_trunk(card["net"]) and card["params"] > _card(trees["thin"], "thin")["params"]
    chosen = [len(d["candidates"][d["chosen"]]["groups"]) for d in decisions]
    assert trees["huge"].metrics["widen_layer"] == [(1, 6.0), (2, 5.0), (3, 4.0)]
    assert [v for _, v in trees["huge"].metrics["widen_groups"]] == chosen
    studio.promote(trees["huge"].run_id, f"branched-l{HUGE:g}")  # the branched-* slot rebuilds it


def test_a_small_lam_stops_at_the_first_decision_keeping_one_group(trees):
    card = _card(trees["small"], f"branched-l{SMALL:g}")
    [decision] = card["decisions"]
    assert decision["layer"] == 6 and decision["candidates"][decision["chosen"]]["groups"] == [
        list(range(len(PERSON_ATTRIBUTES)))]
    assert card["finished"] is True and card["net"] == _card(trees["thin"], "thin")["net"]
    assert trees["small"].metrics["widen_groups"] == [(1, 1.0)]


def test_thin_random_and_branched_runs_have_one_budget(studio, trees):
    """Like with like: the same data, epochs, optimisation steps and schedule, whatever λ and the start."""
    configs = {key: _card(result, next(iter(result.checkpoints)))["config"] for key, result in trees.items()}
    for key, config in configs.items():
        assert {k for k in config if config[k] != configs["thin"][k]} <= {"lam", "init"}, key
    for key, result in trees.items():
        assert _resume_state(studio, result)["step"] == STEPS, key
        assert [step for step, _ in result.metrics["train_loss"]] == list(range(1, EPOCHS + 1)), key


# -- resume -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("widen_every", "interrupt_after"), [(1, 10), (2, 14)])
def test_a_tree_interrupted_after_a_widening_resumes_to_the_same_tree(studio, wide, widen_every, interrupt_after):
    """Killed in the second half (step 10 or 14 of 16), after a widening; (2, 14) resumes between two
    decisions, so the affinity statistics carried in the state must come back exactly."""
    config = _tree_config(wide, lam=HUGE, widen_every=widen_every)
    straight = studio.train("multitask", "tree", config)
    killed = studio.train("multitask", "tree", config, interrupt_after=interrupt_after)
    assert killed.status == "interrupted"
    state = _resume_state(studio, killed)
    assert state["step"] < interrupt_after and state["card"]["decisions"]
    assert not _single_trunk(state["card"]["net"])  # the resumed run must rebuild a widened tree
    resumed = studio.resume(killed.run_id)
    assert resumed.status == "succeeded", resumed.error
    name = f"branched-l{HUGE:g}"
    expected, got = _card(straight, name), _card(resumed, name)
    assert got["net"] == expected["net"]
    assert [(d["layer"], d["chosen"]) for d in got["decisions"]] == [
        (d["layer"], d["chosen"]) for d in expected["decisions"]]
    # bit-exact on one CPU thread; the margin sums restored as float32 would differ by ~1e-8
    for key in ("margin_sum", "both_hard", "both_easy"):
        assert np.allclose(got["tracker"][key], expected["tracker"][key], rtol=1e-12, atol=0), key
    for key in ("train_loss", "val_mean_accuracy", "branches", "params", "widen_layer", "widen_groups"):
        assert dict(resumed.metrics[key]) == pytest.approx(dict(straight.metrics[key]), rel=1e-4), key
    assert _resume_state(studio, resumed)["step"] == STEPS


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_configs_are_refused_before_a_run_is_queued(studio):
    queued = len(studio.store.list_runs())
    for recipe, changes, message in [("tree", {"name": "my tree!"}, "name"), ("tree", {"init": "magic"}, "init"),
                                     ("tree", {"lam": -1}, "lam"), ("wide", {"widths": [4, 8]}, "widths"),
                                     ("wide", {"dataset_options": ["num_train"]}, "key=value")]:
        with pytest.raises(ConfigError, match=message):
            studio.train("multitask", recipe, {**DATA, **changes})
    assert len(studio.store.list_runs()) == queued


def _user_error(result) -> str:
    assert result.status == "failed"
    assert "\ntrainer.errors.UserError: " in result.run.error  # a message for the user, not a crash
    return result.error


def test_a_missing_wide_checkpoint_and_a_classification_dataset_are_user_errors(studio):
    missing = studio.train("multitask", "tree", {**DATA, "wide": "run:999/wide"})
    assert _user_error(missing) == ("wide: cannot load 'run:999/wide': no run 999 in the run store "
                                    "(checkpoint reference 'run:999/wide')")
    shapes = {**DATA, "dataset": "shapes", "dataset_options": ["num_train=32", "num_val=16", "num_test=8"]}
    classes = studio.train("multitask", "wide", shapes)
    assert "multi-label dataset" in _user_error(classes) and "one class per image" in classes.error


# -- the user's own data -----------------------------------------------------------------------------------------


def test_wide_then_tree_on_an_images_and_attributes_csv_folder(studio, tmp_path):
    """40 PNGs whose attributes are drawn on them (a red square, in the top half, a blue bar), -1/1 in the CSV."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    rows = ["filename,red_square,on_top,blue_bar"]
    for i in range(40):
        red, top, bar = (int(v) for v in rng.integers(0, 2, 3))
        image = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
        y = 8 if top else 40
        image[y:y + 16, 24:40] = (220, 30, 30) if red else (30, 220, 30)
        if bar:
            image[:, 56:62] = (30, 30, 230)
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
        rows.append(f"img{i:02d}.png,{2 * red - 1},{2 * top - 1},{2 * bar - 1}")
    (tmp_path / "attributes.csv").write_text("\n".join(rows) + "\n")
    train = sum(holdout_split(f"img{i:02d}.png") == "train" for i in range(40))
    own = {"dataset": "attributes-csv", "dataset_options": [f"path={folder}", f"csv={tmp_path / 'attributes.csv'}"],
           "train_size": 0, "val_size": 0, "batch_size": 8, "epochs": 3}
    wide = studio.train("multitask", "wide", {**own, "widths": WIDTHS})
    assert wide.status == "succeeded", wide.error
    card = _card(wide, "wide")
    assert card["tasks"] == ["red_square", "on_top", "blue_bar"] and card["train_size"] == train
    assert card["dataset"] == "attributes-csv" and card["net"]["input_size"] == 64
    tree = studio.train("multitask", "tree", {**own, "wide": f"run:{wide.run_id}/wide", "lam": HUGE, "divisor": 2,
                                             "widen_after": 1})
    assert tree.status == "succeeded", tree.error
    card = _card(tree, f"branched-l{HUGE:g}")
    assert list(card["net"]["widths"]) == THIN_WIDTHS and [d["layer"] for d in card["decisions"]] == [6, 5]
    assert card["net"]["branches"][-1] == [[0], [1], [2]]  # every attribute split off at the top
