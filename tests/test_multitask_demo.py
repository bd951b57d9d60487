"""The multi-task widening tab: predictions grouped by branch, the tree figure, the affinity
heatmap, the model table and the λ selector, on tiny checkpoints trained by the plugin's own recipes in a
temporary studio (promoted and shipped, as a user would have them)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import plugins.datasets
import plugins.multitask
from app.api.demo import image_to_tensor, load_rgb_image, viridis
from app.testing import open_test_studio
from plugins.multitask.demo import MultitaskDemo
from plugins.multitask.drawings import (
    HEAT_BAR,
    HEAT_CELL,
    HEAT_LABELS,
    HEAT_MARGIN,
    SPLIT_COLOUR,
    TREE_BOTTOM,
    TREE_COLUMN,
    TREE_HEADS,
    TREE_LEFT,
    TREE_NAMES,
    TREE_RIGHT,
    TREE_ROW,
    top_groups,
    tree_order,
)
from plugins.multitask.latency import LATENCY_REPEATS
from plugins.multitask.model import net_from_checkpoint
from plugins.multitask.recipes import tree_from_card
from plugins.multitask.tab import TABLE_COLUMNS, build_demo, table_frame
from tests.multitask_studio import BRANCHED, DATA, EXAMPLES, example


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))


@pytest.fixture
def studio(multitask_studio, one_thread):
    """The session's studio with tiny trained multitask models (conftest); torch on one thread meanwhile."""
    return multitask_studio


@pytest.fixture
def ctx(studio):
    return studio.demo_context("multitask")


@pytest.fixture
def demo(ctx):
    return MultitaskDemo(ctx)


def _card(ctx, name: str) -> dict:
    return ctx.load_checkpoint(name).metadata


def test_the_fixture_has_every_kind_of_model_from_both_sources(ctx):
    sources = {info.name: info.source for info in ctx.checkpoints()}
    assert sources == {"wide": "promoted", "thin": "promoted", "branched-l50": "promoted",
                       "thin-random": "shipped", "branched-l5": "shipped"}
    assert len(tree_from_card(_card(ctx, "branched-l50")).branches[-1]) > 1  # λ = 50 did branch


def test_six_examples_from_the_persons_test_split_with_the_command_that_made_them():
    examples = sorted(EXAMPLES.glob("*.png"))
    assert len(examples) == 6
    attributes = set(plugins.datasets.persons.PERSON_ATTRIBUTES)
    short = {a.replace("_", ""): a for a in attributes}
    named = set()
    for path in examples:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
        index, _, names = path.stem.partition("_")
        assert index.startswith("test") and set(names.split("-")) <= set(short)
        named |= set(names.split("-"))
    assert len(named) >= 10  # varied: most attributes appear in some example
    readme = (EXAMPLES / "README.md").read_text()
    assert 'load_persons("test"' in readme and "python -" in readme


# -- predictions --------------------------------------------------------------------------------


def test_probabilities_of_every_task_grouped_exactly_as_the_tree_says(demo, ctx):
    r = demo.predict(example(), "branched-l50")
    checkpoint = ctx.load_checkpoint("branched-l50")
    config = tree_from_card(checkpoint.metadata)
    assert r["model"] == "branched-l50" and r["lam"] == 50.0
    assert list(r["probabilities"]) == list(config.tasks) and len(config.tasks) == 14
    # the groups are the top layer's branches, in the tree's order, and together every task once
    assert [set(g["tasks"]) for g in r["groups"]] == [set(g) for g in
                                                      ({config.tasks[t] for t in g} for g in top_groups(config))]
    assert sorted(t for g in r["groups"] for t in g["tasks"]) == sorted(config.tasks)
    assert {frozenset(config.tasks[t] for t in g) for g in config.branches[-1]} == \
        {frozenset(g["tasks"]) for g in r["groups"]}
    flat = [t for g in r["groups"] for t in g["tasks"]]
    assert flat == [config.tasks[t] for t in tree_order(config)]
    # the numbers are the network's own: sigmoid of its logits for the image at 64×64
    net = net_from_checkpoint(checkpoint)
    with torch.no_grad():
        expected = torch.sigmoid(net(image_to_tensor(load_rgb_image(example()), (64, 64))))[0]
    for task, p in zip(config.tasks, expected.tolist(), strict=True):
        assert r["probabilities"][task] == pytest.approx(p, abs=1e-4)
        group = next(g for g in r["groups"] if task in g["tasks"])
        assert group["probabilities"][task] == r["probabilities"][task]
    # each branch says which layers are its own; the panels carry every attribute
    for g in r["groups"]:
        low, high = g["own_layers"]
        assert high == config.num_layers - 1 and all(
            set(config.tasks.index(t) for t in g["tasks"]) in [set(b) for b in config.branches[layer]]
            for layer in range(low, high + 1))
    assert all(task in r["html"] for task in config.tasks) and r["html"].count("%") >= 14
    assert r["model_input"].shape == (64, 64, 3)


def test_a_single_trunk_is_one_group_and_no_model_argument_opens_on_the_best_branched_one(demo, ctx):
    r = demo.predict(example(), "thin")
    assert len(r["groups"]) == 1 and r["groups"][0]["own_layers"] is None
    assert set(r["groups"][0]["tasks"]) == set(r["tasks"]) and "baseline" in r["text"]
    accuracy = {n: _card(ctx, n)["metrics"]["val_mean_accuracy"] for n in BRANCHED}
    wide = _card(ctx, "wide")["metrics"]["val_mean_accuracy"]
    close = [n for n in BRANCHED if accuracy[n] >= wide - 0.01]
    best = (min(close, key=lambda n: (_card(ctx, n)["params"], BRANCHED.index(n))) if close
            else max(BRANCHED, key=lambda n: (accuracy[n], -BRANCHED.index(n))))
    assert demo.default_model() == best and demo.predict(example())["model"] == best


def test_the_tab_opens_on_the_cheapest_branched_model_within_a_point_of_wide():
    def card(accuracy, params, flops=1000):
        return {"metrics": {"val_mean_accuracy": accuracy}, "params": params, "flops": flops}

    demo = MultitaskDemo.__new__(MultitaskDemo)  # default_model reads only the cards it is given
    cards = {"wide": card(0.90, 800_000), "thin": card(0.87, 50_000), "branched-l10": card(0.895, 300_000),
             "branched-l20": card(0.892, 120_000), "branched-l30": card(0.88, 60_000)}
    assert demo.default_model(cards) == "branched-l20"  # within 1 point, fewest parameters
    cards["branched-l30"] = card(0.8905, 60_000)
    assert demo.default_model(cards) == "branched-l30"
    far = {**cards, "branched-l10": card(0.85, 300_000), "branched-l20": card(0.86, 120_000),
           "branched-l30": card(0.84, 60_000)}
    assert demo.default_model(far) == "branched-l20"  # none within a point: the most accurate
    del far["wide"]
    assert demo.default_model(far) == "branched-l20"
    assert demo.default_model({"wide": card(0.9, 1), "thin": card(0.8, 1)}) == "wide"
    assert demo.default_model({}) is None


def test_networks_load_lazily_and_once(ctx, monkeypatch):
    loads = []
    original = type(ctx).load_checkpoint

    def counting(self, name):
        loads.append(name)
        return original(self, name)

    monkeypatch.setattr(type(ctx), "load_checkpoint", counting)
    demo = MultitaskDemo(ctx)
    demo.overview("branched-l50")
    demo.comparison()
    assert loads == []  # the tree, the heatmap and the table read the cards only
    demo.predict(example(), "branched-l5")
    demo.predict(example(), "branched-l5")
    assert loads == ["branched-l5"]


# -- the tree figure and the heatmap --------------------------------------------------------------


def test_the_tree_figure_has_the_tasks_at_the_leaves_a_level_per_layer_and_marked_splits(demo, ctx):
    o = demo.overview("branched-l50")
    config = tree_from_card(_card(ctx, "branched-l50"))
    tree = o["tree"]
    height = TREE_NAMES + TREE_HEADS + config.num_layers * TREE_ROW + TREE_BOTTOM
    width = TREE_LEFT + config.num_tasks * TREE_COLUMN + TREE_RIGHT
    assert tree["image"].shape == (height, width, 3) and tree["image"].dtype == np.uint8
    order = tree_order(config)
    assert [leaf["task"] for leaf in tree["leaves"]] == [config.tasks[t] for t in order]
    leaf_x = {leaf["task"]: leaf["x"] for leaf in tree["leaves"]}
    nodes = tree["nodes"]
    assert len(nodes) == sum(len(groups) for groups in config.branches)
    ys = sorted({n["y"] for n in nodes})
    assert len(ys) == config.num_layers  # one level per layer, the top layer nearest the leaves
    assert all(n["y"] == ys[config.num_layers - 1 - n["layer"]] for n in nodes)
    for n in nodes:
        assert n["x"] == pytest.approx(np.mean([leaf_x[t] for t in n["tasks"]]))
        above = config.branches[n["layer"] + 1] if n["layer"] < config.num_layers - 1 else ()
        children = [g for g in above if {config.tasks[t] for t in g} <= set(n["tasks"])]
        assert n["split"] == (len(children) > 1)
        pixel = tuple(tree["image"][int(n["y"]), int(round(n["x"]))])
        assert pixel == (_rgb(SPLIT_COLOUR) if n["split"] else _rgb(n["colour"]))
    splits = [n for n in nodes if n["split"]]
    assert splits and min(n["layer"] for n in splits) == min(
        layer for layer, groups in enumerate(config.branches) if len(groups) > 1) - 1
    # every branch's tasks sit side by side under it
    for groups in config.branches:
        for group in groups:
            positions = sorted(order.index(t) for t in group)
            assert positions == list(range(positions[0], positions[0] + len(group)))
    assert "first split at layer" in o["tree_text"]


def test_a_nested_tree_splits_twice_and_keeps_each_branch_contiguous():
    from plugins.multitask.drawings import first_split, own_layers, split_group_of, tree_figure
    from plugins.multitask.model import TreeConfig

    trunk = ((0, 1, 2, 3, 4, 5),)
    halves = ((0, 3, 5), (1, 2, 4))  # first split at layer 4
    top = ((0, 5), (3,), (1, 2, 4))  # the first half splits again at layer 6
    config = TreeConfig(tasks=tuple("abcdef"), widths=(2, 2, 2, 2, 2, 2, 2),
                        branches=(trunk, trunk, trunk, trunk, halves, halves, top))
    order = tree_order(config)
    assert order == [0, 5, 3, 1, 2, 4] and first_split(config) == 4
    assert top_groups(config) == [(0, 5), (3,), (1, 2, 4)]
    assert split_group_of(config) == [0, 1, 1, 0, 1, 0]
    assert own_layers(config, (0, 5)) == (6, 6) and own_layers(config, (1, 2, 4)) == (4, 6)
    assert own_layers(config, trunk[0]) is None
    nodes = tree_figure(config)["nodes"]
    assert {(n["layer"], n["branch"]) for n in nodes if n["split"]} == {(3, 0), (5, 0)}
    colours = {(n["layer"], n["branch"]): n["colour"] for n in nodes}
    assert colours[(6, 0)] == colours[(6, 1)] == colours[(4, 0)] != colours[(4, 1)] == colours[(6, 2)]
    assert len({colours[(layer, 0)] for layer in range(4)}) == 1  # the shared trunk: one grey


def test_the_heatmap_follows_the_tree_order_and_shows_the_first_decisions_affinity(demo, ctx):
    card = _card(ctx, "branched-l50")
    config = tree_from_card(card)
    o = demo.overview("branched-l50")
    heat = o["heatmap"]
    n = config.num_tasks
    assert heat["image"].shape == (HEAT_LABELS + n * HEAT_CELL + HEAT_MARGIN, HEAT_LABELS + n * HEAT_CELL + HEAT_BAR, 3)
    order = tree_order(config)
    assert heat["order"] == order and heat["tasks"] == [config.tasks[t] for t in order]
    affinity = np.asarray(card["decisions"][0]["task_affinity"])
    assert np.allclose(heat["matrix"], affinity[np.ix_(order, order)])
    x0, y0 = heat["origin"]
    for i in range(n):
        for j in range(n):
            value = (affinity[order[i], order[j]] - heat["vmin"]) / (heat["vmax"] - heat["vmin"])
            centre = heat["image"][y0 + i * HEAT_CELL + HEAT_CELL // 2, x0 + j * HEAT_CELL + HEAT_CELL // 2]
            assert tuple(centre) == tuple(viridis(value)), (i, j)
    assert "first widening decision" in o["affinity_text"]
    # a model that never branched shows the affinity its card tracked on the last epoch
    thin = demo.overview("thin")
    assert np.allclose(thin["heatmap"]["matrix"], np.asarray(_card(ctx, "thin")["affinity"]))  # one trunk: same order
    assert "last epoch" in thin["affinity_text"] and "one shared trunk" in thin["tree_text"]


# -- the table ------------------------------------------------------------------------------------


def test_the_table_has_a_row_per_model_with_the_cards_numbers_and_measured_latency(demo, ctx):
    before = demo.comparison()
    names = ["wide", "thin", "thin-random", *BRANCHED]
    assert [r["model"] for r in before["rows"]] == names
    for row in before["rows"]:
        card = _card(ctx, row["model"])
        assert row["params"] == card["params"] and row["flops"] == card["flops"]
        assert row["mean_accuracy"] == pytest.approx(card["metrics"]["val_mean_accuracy"])
        assert row["latency_ms"] is None  # not measured yet: nothing loaded
    assert [r["lam"] for r in before["rows"]] == [None, None, None, 5.0, 50.0]
    assert before["rows"][0]["params"] > before["rows"][1]["params"]  # wide is wider than thin
    after = demo.comparison(measure=True)
    assert all(0 < r["latency_ms"] < 1000 for r in after["rows"]) and after["measured"]
    assert f"median of {LATENCY_REPEATS}" in after["caption"] and "one CPU thread" in after["caption"]
    assert "batch 1" in after["caption"]
    assert [r["latency_ms"] for r in demo.comparison()["rows"]] == [r["latency_ms"] for r in after["rows"]]
    frame = table_frame(after["rows"])
    assert list(frame.columns) == TABLE_COLUMNS and list(frame["model"]) == names
    assert list(frame["parameters"]) == [f"{r['params']:,d}" for r in after["rows"]]
    assert list(frame["FLOPs (M)"]) == [f"{r['flops'] / 1e6:.2f}" for r in after["rows"]]
    assert list(frame["λ"]) == ["—", "—", "—", "5", "50"]


# -- the built tab ----------------------------------------------------------------------------------


def _built(ctx):
    import gradio as gr

    with gr.Blocks() as blocks:
        build_demo(ctx)
    by_elem = {c["props"]["elem_id"]: c for c in blocks.config["components"] if c["props"].get("elem_id")}
    return blocks, by_elem


def _fn(blocks, api_name: str):
    return next(f for f in blocks.fns.values() if f.api_name == api_name)


def test_every_event_is_named_and_start_up_loads_no_model(ctx, monkeypatch):
    from plugins.multitask import demo as demo_module

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded at start-up")

    monkeypatch.setattr(demo_module, "net_from_checkpoint", boom)
    monkeypatch.setattr(type(ctx), "load_checkpoint", boom)
    blocks, by_elem = _built(ctx)
    names = [dep.get("api_name") for dep in blocks.config["dependencies"]]
    assert names and all(isinstance(n, str) and n.startswith("multitask_") for n in names), names
    assert {"multitask_predict", "multitask_predict_sketch", "multitask_predict_example", "multitask_load_example",
            "multitask_models", "multitask_switch_model", "multitask_measure_latency",
            "multitask_overview_on_load"} <= set(names)
    assert by_elem["multitask-input"]["props"]["height"] >= 128 and "multitask-sketch" in by_elem
    assert "multitask-examples" in by_elem and "multitask-table" in by_elem


def test_the_lambda_selector_lists_exactly_the_branched_checkpoints_present(studio, ctx):
    _, by_elem = _built(ctx)
    model = by_elem["multitask-model"]["props"]
    assert [c[1] for c in model["choices"]] == BRANCHED
    assert [c[0] for c in model["choices"]] == ["λ = 5 · branched-l5", "λ = 50 · branched-l50"]
    assert model["value"] == MultitaskDemo(ctx).default_model()
    # a branched model promoted after start-up appears when the selector is opened (its focus event)
    blocks, _ = _built(ctx)
    extra = studio.train("multitask", "tree", {**DATA, "epochs": 2, "divisor": 2, "lam": 20.0, "widen_after": 1,
                                                "wide": str(studio.runs["wide"].checkpoints["wide"])})
    studio.promote(extra.run_id, "branched-l20")
    try:
        update, table = _fn(blocks, "multitask_models").fn("branched-l50")
        assert [c[1] for c in update["choices"]] == ["branched-l5", "branched-l20", "branched-l50"]
        assert "value" not in update  # the selector keeps what it holds (picked since, perhaps)
        assert "branched-l20" in table.iloc[:, 0].tolist()  # and the table lists the new model too
        update, _ = _fn(blocks, "multitask_models").fn("branched-l20")
        assert "value" not in update
    finally:
        studio.store.unpromote("multitask", "branched-l20")
    update, table = _fn(blocks, "multitask_models").fn("branched-l20")  # gone: the selector falls back
    assert update["value"] == MultitaskDemo(ctx).default_model() and "branched-l20" not in table.iloc[:, 0].tolist()
    assert [c[1] for c in MultitaskDemo(ctx).model_choices()] == BRANCHED


def test_page_load_and_the_selector_redraw_the_tree_heatmap_and_prediction(ctx):
    blocks, _ = _built(ctx)
    choices, tree, tree_text, heat, heat_text, table, status = _fn(blocks, "multitask_overview_on_load").fn(None)
    assert [c[1] for c in choices["choices"]] == BRANCHED and choices["value"] in BRANCHED
    assert tree.ndim == 3 and heat.ndim == 3 and ("first split" in tree_text or "one shared trunk" in tree_text)
    assert list(table["model"]) == ["wide", "thin", "thin-random", *BRANCHED] and "**Models:**" in status
    switch = _fn(blocks, "multitask_switch_model").fn
    tree5, _, _, _, html5, text5, _ = switch("branched-l5", example())
    tree50, text50_tree, _, _, html50, text50, _ = switch("branched-l50", example())
    assert "λ = 5 " in text5 and "λ = 50" in text50 and "λ = 50" in text50_tree
    assert tree5.shape[1] == tree50.shape[1] and not np.array_equal(tree5, tree50)
    untouched = switch("branched-l5", None)[4:]  # no image yet: the prediction panel is left as it is
    assert all(isinstance(u, dict) and "value" not in u for u in untouched)
    table, _ = _fn(blocks, "multitask_measure_latency").fn()
    assert all(v != "—" for v in table["CPU latency, batch 1 (ms)"])


@pytest.mark.parametrize("kind", ["text", "empty", "none"])
def test_bad_images_are_one_line_errors(ctx, tmp_path, kind):
    import gradio as gr

    blocks, _ = _built(ctx)
    if kind == "none":
        image = None
    else:
        path = tmp_path / "person.png"
        path.write_bytes(b"name,hat\nalice,1\n" if kind == "text" else b"")
        image = str(path)
    for api_name in ("multitask_predict", "multitask_predict_sketch"):
        with pytest.raises(gr.Error) as info:
            _fn(blocks, api_name).fn(image, "branched-l50")
        message = str(info.value.message)
        assert "\n" not in message and ("not a readable image" in message or "No image given" in message)


def test_an_unknown_model_name_is_a_clear_error(demo):
    from app.api import UserError

    with pytest.raises(UserError, match="not a multitask model"):
        demo.predict(example(), "resnet")
    with pytest.raises(UserError, match="avstudio train multitask tree --set lam=7"):
        demo.predict(example(), "branched-l7")


def test_without_checkpoints_the_tab_builds_and_says_how_to_train(tmp_path):
    import gradio as gr

    with open_test_studio(tmp_path / "empty", [plugins.datasets, plugins.multitask]) as studio:
        studio.settings.assets_dir = tmp_path / "no-assets"
        ctx = studio.demo_context("multitask")
        blocks, by_elem = _built(ctx)
        assert by_elem["multitask-model"]["props"]["choices"] == []
        status = by_elem["multitask-checkpoints"]["props"]["value"]
        assert "No model yet" in status and "avstudio train multitask wide" in status
        choices, tree, tree_text, heat, heat_text, table, status = _fn(blocks, "multitask_overview_on_load").fn(None)
        assert tree is None and heat is None and "avstudio train multitask" in tree_text
        assert len(table) == 0
        with pytest.raises(gr.Error, match="avstudio train multitask"):
            _fn(blocks, "multitask_predict").fn(example(), None)
        table, _ = _fn(blocks, "multitask_measure_latency").fn()
        assert len(table) == 0
