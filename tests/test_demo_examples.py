"""Clicking an example in any plugin's demo fills its upload and runs the demo on it (docs/plugins.md, "Demo conventions"),
one test for the four built-in plugins: the click's wiring in the built tab, then its function on the file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.demo_helpers import (
    FakeDemoContext,
    built_tab,
    event_fn,
    example_file,
    save_blockdrop_assets,
    save_s3pool_assets,
    save_vgan_assets,
)


@dataclass(frozen=True)
class ExampleClick:
    method: str
    run: str  # the event a click triggers (after filling the upload)
    twin: str  # the upload's own event, whose outputs the click's run updates too
    upload: str  # elem_id of the image input the example fills
    settings: tuple[str, ...]  # elem_ids of the controls the run reads beside the image
    values: tuple[Any, ...]  # what those controls hold in the direct call below
    check: Callable[[tuple, str], None]  # on the run's outputs for the example file

    def __str__(self) -> str:
        return self.method


def _blockdrop(outputs: tuple, example: str) -> None:
    full, blockdrop, block_map, stats, seen = outputs
    assert len(full) == 3 and len(blockdrop) == 3 and block_map.count("<tr>") == 3 and "Blocks used" in stats
    assert seen["value"].shape[2] == 3 and "32×32" in seen["label"]


def _s3pool(outputs: tuple, example: str) -> None:
    from plugins.s3pool.demo import S3POOL_NET

    seen, strip, text, features, features_text, max_top3, s3_top3, predict_text, state = outputs
    assert seen["value"].shape == (192, 192, 3) and seen["label"] == "what S3Pool sees: 32×32"
    assert strip.shape == (16, 101, 3) and "grid 16" in text and text.startswith("Left to right: 4 random draws")
    assert features.shape == (4 * 16 + 3, 4 * 16 + 3, 3) and features_text.startswith(f"`{S3POOL_NET}`")
    assert len(max_top3) == 3 and len(s3_top3) == 3 and predict_text == "" and state == example


def _vgan(outputs: tuple, example: str) -> None:
    from plugins.vgan.demo import GENERATED, MARKER, REAL
    from plugins.vgan.tab import READABLE_PX

    seen, chain, chain_text, plot, energy_text, state = outputs
    assert seen["value"].shape == (READABLE_PX, READABLE_PX, 3) and seen["label"] == "what the model sees: 32×32"
    assert chain.shape == (36, 10 * 34 + 2, 3) and "9 transition steps" in chain_text
    assert set(plot["images"]) == {REAL, GENERATED, MARKER} and "E(x) =" in energy_text
    assert state == example


def _multitask(outputs: tuple, example: str) -> None:
    html, text, seen, state = outputs
    assert "λ = 50" in text and "%" in html and state == example
    assert seen["value"].shape == (192, 192, 3) and seen["label"] == "what the network sees: 64×64"


CASES = [
    ExampleClick("blockdrop", "blockdrop_predict_example", "blockdrop_predict", "blockdrop-input",
                 ("blockdrop-policy",), ("policy-g1",), _blockdrop),
    ExampleClick("s3pool", "s3pool_run_example", "s3pool_run", "s3pool-input",
                 ("s3pool-grid", "s3pool-layers"), (16, 1), _s3pool),
    ExampleClick("vgan", "vgan_analyse_example", "vgan_analyse", "vgan-input",
                 ("vgan-model", "vgan-chain-steps", "vgan-chain-seed"), ("vgan", 9, 0), _vgan),
    ExampleClick("multitask", "multitask_predict_example", "multitask_predict", "multitask-input",
                 ("multitask-model",), ("branched-l50",), _multitask),
]


def _tab(method: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Any, dict, str]:
    """(blocks, components by elem_id, the example file) of ``method``'s tab with one example listed."""
    if method == "multitask":  # needs trained models: the session's studio, and its shipped examples
        from plugins.multitask.tab import build_demo
        from tests.multitask_studio import example

        studio = request.getfixturevalue("multitask_studio")
        return (*built_tab(build_demo, studio.demo_context("multitask")), example())
    assets = tmp_path / "assets"
    if method == "blockdrop":
        from plugins.blockdrop.demo import build_demo

        save_blockdrop_assets(assets)
    elif method == "s3pool":
        from plugins.s3pool.tab import build_demo

        save_s3pool_assets(assets)
    else:
        from plugins.vgan.tab import build_demo

        save_vgan_assets(assets)
    example = example_file(assets)
    return (*built_tab(build_demo, FakeDemoContext(method, assets, data_dir=tmp_path / "data")), str(example))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_clicking_an_example_runs_the_demo_on_it(case, tmp_path, request, monkeypatch, one_thread):
    monkeypatch.setenv("GRADIO_CACHE_EXAMPLES", "true")  # as on a Space: still no caching at start-up
    blocks, by_elem, example = _tab(case.method, tmp_path, request)
    deps = blocks.config["dependencies"]
    dataset_id = next(c["id"] for c in blocks.config["components"] if c["type"] == "dataset")
    load = next(d for d in deps if (dataset_id, "click") in [tuple(t) for t in d["targets"]])
    settings = {by_elem[elem]["id"] for elem in case.settings}
    assert by_elem[case.upload]["id"] in load["outputs"]
    assert not settings & set(load["outputs"]), "the example fills the upload and keeps the chosen settings"
    runs = [d for d in deps if d.get("trigger_after") == load["id"]]
    assert len(runs) == 1, "clicking an example must also run the demo"
    run = runs[0]
    assert run["api_name"] == case.run
    assert settings <= set(run["inputs"])
    assert run["outputs"] == next(d for d in deps if d.get("api_name") == case.twin)["outputs"]
    case.check(event_fn(blocks, case.run).fn(example, *case.values), example)
