"""Real-browser checks in headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Run with ``python -m pytest -m browser``; skipped where Playwright or Chromium is missing. Every step saves a
full-page screenshot under ``artifacts/screenshots/`` (``AVSTUDIO_SCREENSHOT_DIR`` overrides), which CI keeps.
The studio is started as a Space starts it (``python app/main.py``); tests/test_browser_training.py drives
the Runs tab with training enabled.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.browser_helpers import (
    METHOD_TABS,
    OTHER_TABS,
    PHONE,
    assert_fits_the_screen,
    assert_no_error_toast,
    chromium,
    click_first_example,
    goto_tab,
    open_studio,
    require_assets,
    running_studio,
    shot,
    wait_for_image,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The studio as a public Space runs it: training off, so no worker."""
    with running_studio(tmp_path_factory.mktemp("browser-home"), AVSTUDIO_NO_WORKER="1") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-home")) as launched:
        yield launched


@pytest.fixture
def page(server, browser):
    page = open_studio(browser, server)
    yield page
    page.context.close()


def _natural_and_drawn_width(page, selector: str) -> tuple[float, float]:
    return page.locator(selector).first.evaluate(
        "img => [img.naturalWidth, img.getBoundingClientRect().width]")


def test_blockdrop_example_click_shows_predictions_and_block_map(page):
    require_assets(*METHOD_TABS["BlockDrop"][0])
    page.get_by_role("tab", name="BlockDrop").click()
    # the selector opens on the recommended operating point (γ = 1)
    assert page.locator("#blockdrop-policy input").first.input_value() == "policy-g1"
    # clicking an example is enough: no Run press
    page.locator("#blockdrop-examples .gallery-item, #blockdrop-examples button").first.click()
    page.locator("#blockdrop-block-map >> text=stage 3").first.wait_for(timeout=60_000)
    map_text = page.inner_text("#blockdrop-block-map")
    assert "stage 1" in map_text and "stage 2" in map_text
    stats = page.inner_text("#blockdrop-stats")
    assert "Blocks used" in stats and "ms" in stats and "32×32" in stats
    body = page.inner_text("body")
    assert "BlockDrop" in body and "full ResNet" in body
    # what the network sees: its 32×32 input, enlarged with crisp pixels, labelled with the resolution
    wait_for_image(page, "#blockdrop-model-input img", 60_000)
    assert "what the network sees: 32×32" in page.inner_text("#blockdrop-model-input")
    natural, drawn = _natural_and_drawn_width(page, "#blockdrop-model-input img")
    assert natural >= 256 and drawn >= 200
    # the 32×32 example in the input is drawn at a readable size too, not 32 pixels wide
    natural, drawn = _natural_and_drawn_width(page, "#blockdrop-input img")
    assert natural == 32 and drawn >= 128, (natural, drawn)
    rendering = page.locator("#blockdrop-input img").first.evaluate("img => getComputedStyle(img).imageRendering")
    assert rendering == "pixelated"
    assert_no_error_toast(page)
    path = shot(page, "blockdrop-example")
    if legacy := os.environ.get("AVSTUDIO_SCREENSHOT"):
        shutil.copy(path, legacy)


def test_datasets_tab_opens_on_shapes_with_a_preview(page):
    page.get_by_role("tab", name="Datasets").click()
    assert page.locator("#dataset-select input").first.input_value() == "shapes"
    # the page's load event draws the grid (the first time it generates the split: allow for that)
    wait_for_image(page, "#dataset-grid img", 120_000)
    assert "Shapes" in page.inner_text("#dataset-info") or "shapes" in page.inner_text("#dataset-info").lower()
    natural, drawn = _natural_and_drawn_width(page, "#dataset-grid img")
    assert natural >= 8 * 32 * 3 and drawn >= 8 * 64, (natural, drawn)  # 8 samples a row, each ≥ 64 px drawn
    assert_no_error_toast(page)
    shot(page, "datasets")


def test_plugins_tab_lists_the_builtin_plugins(page):
    page.get_by_role("tab", name="Plugins").click()
    page.locator("text=plugins.blockdrop >> visible=true").first.wait_for(timeout=15_000)
    table = page.inner_text("#plugins-table")
    for name in ("plugins.blockdrop", "plugins.s3pool", "plugins.vgan", "plugins.multitask", "plugins.datasets"):
        assert name in table
    assert "ok" in table and "failed" not in table
    assert "plugins loaded." in page.inner_text("body")  # and no "N failed"
    shot(page, "plugins")


def test_s3pool_example_click_shows_draws_and_both_predictions(page):
    require_assets(*METHOD_TABS["S3Pool"][0])
    page.get_by_role("tab", name="S3Pool").click()
    page.locator("#s3pool-examples .gallery-item, #s3pool-examples button").first.click()  # no Run press
    wait_for_image(page, "#s3pool-draws img", 60_000)  # one picture: 4 draws, the deterministic path, max pool
    wait_for_image(page, "#s3pool-features img", 60_000)
    for label in ("#s3pool-max", "#s3pool-s3pool"):
        page.locator(f"{label} >> text=%").first.wait_for(timeout=30_000)  # a top-3 with probabilities
    assert "Left to right: 4 random draws" in page.inner_text("#s3pool-draws-text")
    for picture in ("#s3pool-draws img", "#s3pool-features img"):
        # sent at their real size (16×16 tiles), drawn enlarged with crisp pixels: ≥ 3× (48 px per tile)
        natural_w, natural_h, box_w, box_h, rendering = page.locator(picture).first.evaluate(
            "img => [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width,"
            " img.getBoundingClientRect().height, getComputedStyle(img).imageRendering]")
        scale = min(box_w / natural_w, box_h / natural_h)  # object-fit: contain
        assert scale >= 3 and rendering == "pixelated", (picture, natural_w, natural_h, box_w, box_h, rendering)
    assert_no_error_toast(page)
    shot(page, "s3pool-example")


def test_vgan_samples_toggle_and_example_click_show_images(page):
    require_assets(*(f"vgan/{name}.safetensors" for name in ("vgan", "gan", "vcd")))
    page.get_by_role("tab", name="VGAN").click()
    toggle = page.locator("#vgan-model")
    assert toggle.get_by_label("VGAN", exact=True).is_checked()  # opens on the paper's model
    page.locator("#vgan-sample").click()
    wait_for_image(page, "#vgan-samples img", 60_000)
    assert "64 samples of vgan" in page.inner_text("#vgan-samples-text")
    natural, drawn = _natural_and_drawn_width(page, "#vgan-samples img")
    assert natural >= 8 * 34 and drawn >= 400, (natural, drawn)  # an 8×8 grid of 32×32 samples, readable
    # the toggle redraws the grid with the GAN
    toggle.get_by_label("GAN", exact=True).check()
    page.locator("#vgan-samples-text >> text=samples of gan").first.wait_for(timeout=60_000)
    # clicking an example is enough (no Run press): the VCD chain and the energy on the histograms
    page.locator("#vgan-examples .gallery-item, #vgan-examples button").first.click()
    wait_for_image(page, "#vgan-chain img", 60_000)
    page.locator("#vgan-energy-text >> text=E(x)").first.wait_for(timeout=60_000)
    assert "−log D(x)" in page.inner_text("#vgan-energy-text")  # the GAN's energy, said so
    assert "transition steps" in page.inner_text("#vgan-chain-text")
    assert "what the model sees: 32×32" in page.inner_text("#vgan-model-input")
    page.locator("#vgan-energy-plot canvas, #vgan-energy-plot svg").first.wait_for(timeout=30_000)
    assert_no_error_toast(page)
    shot(page, "vgan-example")


def test_multitask_example_click_shows_probabilities_by_branch_tree_and_heatmap(page):
    require_assets(*METHOD_TABS["Multi-task widening"][0])
    page.get_by_role("tab", name="Multi-task widening").click()
    # the tree, the heatmap and the table are drawn from the cards when the page loads
    wait_for_image(page, "#multitask-tree img", 60_000)
    wait_for_image(page, "#multitask-affinity img", 60_000)
    assert "wide" in page.inner_text("#multitask-table")
    # clicking an example is enough (no Run press): every attribute's probability, by branch
    page.locator("#multitask-examples .gallery-item, #multitask-examples button").first.click()
    page.locator("#multitask-probabilities >> text=%").first.wait_for(timeout=60_000)
    probabilities = page.inner_text("#multitask-probabilities")
    assert all(name in probabilities for name in ("hat", "glasses", "skirt", "belt"))
    assert "what the network sees: 64×64" in page.inner_text("#multitask-model-input")
    natural, drawn = _natural_and_drawn_width(page, "#multitask-tree img")
    assert natural >= 600 and drawn >= 400, (natural, drawn)
    assert_no_error_toast(page)
    shot(page, "multitask-example")


def test_about_tab_says_where_the_studio_keeps_its_files(page, server):
    goto_tab(page, "About")
    page.locator(OTHER_TABS["About"]).first.wait_for(timeout=15_000)
    about = page.inner_text("#about")
    assert "Training from the web UI: off" in about
    assert all(title in about for title in METHOD_TABS)  # every method, with its paper
    shot(page, "about")


# -- phone width -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tab", [*METHOD_TABS, *OTHER_TABS])
def test_every_tab_fits_a_phone_screen(tab, server, browser):
    """At 375 px: the page never scrolls sideways and every control of the tab is on the screen, also once a
    method's example has drawn its result (the widest state of a demo tab)."""
    page = open_studio(browser, server, PHONE)
    try:
        goto_tab(page, tab)
        if tab in METHOD_TABS:
            needs, examples, result = METHOD_TABS[tab]
            require_assets(*needs)
            click_first_example(page, examples)
            page.locator(result).first.wait_for(timeout=60_000)
        else:
            shown = OTHER_TABS[tab]
            if shown.endswith(" img"):
                wait_for_image(page, shown, 120_000)
            else:
                page.locator(shown).first.wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # images and plots settle into their final size
        assert_no_error_toast(page)
        shot(page, f"phone-{tab.split()[0].lower()}")
        assert_fits_the_screen(page)
        if tab == "BlockDrop":  # the stats table's headers stay whole words, not "laten-cy" over two lines
            page.locator("#blockdrop-stats th").first.wait_for(timeout=30_000)
            headers = page.locator("#blockdrop-stats th").evaluate_all(  # [text, text height, one line's height]
                "cells => cells.map(c => { const s = getComputedStyle(c); return [c.innerText.trim(),"
                " c.getBoundingClientRect().height - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom)"
                " - parseFloat(s.borderTopWidth) - parseFloat(s.borderBottomWidth), parseFloat(s.lineHeight)]; })")
            assert all(height < 1.5 * line for text, height, line in headers if text), headers
    finally:
        page.context.close()


def test_blockdrop_dataset_panel_reads_on_a_phone(server, browser):
    """The panel's galleries show three thumbnails a row at 375 px: each caption (blocks used · class) is
    whole, not cut to "crescen…"; the page still fits the screen with the panel's plots drawn."""
    require_assets(*METHOD_TABS["BlockDrop"][0])
    page = open_studio(browser, server, PHONE)
    try:
        goto_tab(page, "BlockDrop")
        page.get_by_text("Dataset panel (shapes test split)").click()
        page.get_by_role("button", name="Compute dataset panel").click()
        page.locator("text=distinct policies").first.wait_for(timeout=240_000)  # the summary: computed
        page.locator("#blockdrop-most .caption-label").nth(7).wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        captions = page.locator("#blockdrop-fewest .caption-label, #blockdrop-most .caption-label").evaluate_all(
            "labels => labels.map(c => [c.innerText, c.scrollWidth, c.clientWidth])")
        assert len(captions) == 16, captions
        assert all(re.fullmatch(r"\d+ · [a-z]+", text) for text, _, _ in captions), captions
        assert all(scroll <= client for _, scroll, client in captions), f"cut captions: {captions}"
        assert_no_error_toast(page)
        shot(page, "phone-blockdrop-panel")
        assert_fits_the_screen(page)
    finally:
        page.context.close()
