"""Real-browser checks in headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Run with ``python -m pytest -m browser``; skipped where Playwright or Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.testing import free_port as _free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("AVSTUDIO_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright")
    home = tmp_path_factory.mktemp("browser-home")
    port = _free_port()
    env = {**os.environ, "AVSTUDIO_HOME": str(home), "AVSTUDIO_PLUGINS": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--no-worker"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {proc.stdout.read()}")
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("server did not answer within 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def page(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS,
                                    env={**os.environ, "HOME": str(tmp_path)})
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            # not "networkidle": since the S3Pool tab, Chromium keeps a request open after the page has
            # loaded (the server is idle meanwhile); each test waits for what it needs instead
            page.goto(server, wait_until="load")
            page.get_by_role("tab", name="Runs").first.wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()


def _shots(tmp_path: Path, page, name: str) -> None:
    """A full-page screenshot, also copied to $AVSTUDIO_SCREENSHOT_DIR when set (for reviewing by eye)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if out := os.environ.get("AVSTUDIO_SCREENSHOT_DIR"):
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def _natural_and_drawn_width(page, selector: str) -> tuple[float, float]:
    return page.locator(selector).first.evaluate(
        "img => [img.naturalWidth, img.getBoundingClientRect().width]")


def test_blockdrop_example_click_shows_predictions_and_block_map(page, tmp_path):
    assets = Path(os.environ.get("AVSTUDIO_ASSETS", ROOT / "assets"))
    if not (assets / "blockdrop" / "backbone.safetensors").exists():
        pytest.skip("no shipped BlockDrop checkpoints")
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
    page.locator("#blockdrop-model-input img").first.wait_for(timeout=30_000)
    assert "what the network sees: 32×32" in page.inner_text("#blockdrop-model-input")
    natural, drawn = _natural_and_drawn_width(page, "#blockdrop-model-input img")
    assert natural >= 256 and drawn >= 200
    # the 32×32 example in the input is drawn at a readable size too, not 32 pixels wide
    natural, drawn = _natural_and_drawn_width(page, "#blockdrop-input img")
    assert natural == 32 and drawn >= 128, (natural, drawn)
    rendering = page.locator("#blockdrop-input img").first.evaluate("img => getComputedStyle(img).imageRendering")
    assert rendering == "pixelated"
    _shots(tmp_path, page, "blockdrop-example")
    if legacy := os.environ.get("AVSTUDIO_SCREENSHOT"):
        shutil.copy(tmp_path / "blockdrop-example.png", legacy)


def test_datasets_tab_opens_on_shapes_with_a_preview(page, tmp_path):
    page.get_by_role("tab", name="Datasets").click()
    assert page.locator("#dataset-select input").first.input_value() == "shapes"
    # the page's load event draws the grid (the first time it generates the split: allow for that)
    page.locator("#dataset-grid img").first.wait_for(timeout=120_000)
    assert "Shapes" in page.inner_text("#dataset-info") or "shapes" in page.inner_text("#dataset-info").lower()
    natural, drawn = _natural_and_drawn_width(page, "#dataset-grid img")
    assert natural >= 8 * 32 * 3 and drawn >= 8 * 64, (natural, drawn)  # 8 samples a row, each ≥ 64 px drawn
    _shots(tmp_path, page, "datasets")


def test_plugins_tab_lists_the_builtin_plugins(page):
    page.get_by_role("tab", name="Plugins").click()
    page.locator("text=plugins.blockdrop >> visible=true").first.wait_for(timeout=15_000)
    assert "plugins.datasets" in page.inner_text("body")


def test_s3pool_example_click_shows_draws_and_both_predictions(page, tmp_path):
    assets = Path(os.environ.get("AVSTUDIO_ASSETS", ROOT / "assets"))
    if not (assets / "s3pool" / "resnet-s3pool.safetensors").exists():
        pytest.skip("no shipped S3Pool checkpoints")
    page.get_by_role("tab", name="S3Pool").click()
    page.locator("#s3pool-examples .gallery-item, #s3pool-examples button").first.click()  # no Run press
    page.locator("#s3pool-draws img").nth(4).wait_for(timeout=60_000)  # 4 draws and the deterministic path
    assert page.locator("#s3pool-draws img").count() >= 5
    page.locator("#s3pool-features img").first.wait_for(timeout=60_000)
    for label in ("#s3pool-max", "#s3pool-s3pool"):
        page.locator(f"{label} >> text=%").first.wait_for(timeout=30_000)  # a top-3 with probabilities
    natural, drawn = _natural_and_drawn_width(page, "#s3pool-draws img")
    assert drawn >= 96, (natural, drawn)  # a 16×16 draw is shown at a readable size
    _shots(tmp_path, page, "s3pool-example")


def test_vgan_samples_toggle_and_example_click_show_images(page, tmp_path):
    assets = Path(os.environ.get("AVSTUDIO_ASSETS", ROOT / "assets"))
    if not all((assets / "vgan" / f"{name}.safetensors").exists() for name in ("vgan", "gan", "vcd")):
        pytest.skip("no shipped VGAN checkpoints")
    page.get_by_role("tab", name="VGAN").click()
    toggle = page.locator("#vgan-model")
    assert toggle.get_by_label("VGAN", exact=True).is_checked()  # opens on the paper's model
    page.locator("#vgan-sample").click()
    page.locator("#vgan-samples img").first.wait_for(timeout=60_000)
    assert "64 samples of vgan" in page.inner_text("#vgan-samples-text")
    natural, drawn = _natural_and_drawn_width(page, "#vgan-samples img")
    assert natural >= 8 * 34 and drawn >= 400, (natural, drawn)  # an 8×8 grid of 32×32 samples, readable
    # the toggle redraws the grid with the GAN
    toggle.get_by_label("GAN", exact=True).check()
    page.locator("#vgan-samples-text >> text=samples of gan").first.wait_for(timeout=60_000)
    # clicking an example is enough (no Run press): the VCD chain and the energy on the histograms
    page.locator("#vgan-examples .gallery-item, #vgan-examples button").first.click()
    page.locator("#vgan-chain img").first.wait_for(timeout=60_000)
    page.locator("#vgan-energy-text >> text=E(x)").first.wait_for(timeout=60_000)
    assert "−log D(x)" in page.inner_text("#vgan-energy-text")  # the GAN's energy, said so
    assert "transition steps" in page.inner_text("#vgan-chain-text")
    assert "what the model sees: 32×32" in page.inner_text("#vgan-model-input")
    page.locator("#vgan-energy-plot canvas, #vgan-energy-plot svg").first.wait_for(timeout=30_000)
    _shots(tmp_path, page, "vgan-example")


def test_multitask_example_click_shows_probabilities_by_branch_tree_and_heatmap(page, tmp_path):
    assets = Path(os.environ.get("AVSTUDIO_ASSETS", ROOT / "assets"))
    if not (assets / "multitask" / "wide.safetensors").exists():
        pytest.skip("no shipped multitask checkpoints (assets/multitask/wide.safetensors is absent)")
    page.get_by_role("tab", name="Multi-task widening").click()
    # the tree, the heatmap and the table are drawn from the cards when the page loads
    page.locator("#multitask-tree img").first.wait_for(timeout=60_000)
    page.locator("#multitask-affinity img").first.wait_for(timeout=60_000)
    assert "wide" in page.inner_text("#multitask-table")
    # clicking an example is enough (no Run press): every attribute's probability, by branch
    page.locator("#multitask-examples .gallery-item, #multitask-examples button").first.click()
    page.locator("#multitask-probabilities >> text=%").first.wait_for(timeout=60_000)
    probabilities = page.inner_text("#multitask-probabilities")
    assert all(name in probabilities for name in ("hat", "glasses", "skirt", "belt"))
    assert "what the network sees: 64×64" in page.inner_text("#multitask-model-input")
    natural, drawn = _natural_and_drawn_width(page, "#multitask-tree img")
    assert natural >= 600 and drawn >= 400, (natural, drawn)
    _shots(tmp_path, page, "multitask-example")
