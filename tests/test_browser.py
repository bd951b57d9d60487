"""Real-browser checks in headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Run with ``python -m pytest -m browser``; skipped where Playwright or Chromium is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("AVSTUDIO_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
            page.goto(server, wait_until="networkidle")
            yield page
        finally:
            browser.close()


def test_blockdrop_example_click_shows_predictions_and_block_map(page, tmp_path):
    assets = Path(os.environ.get("AVSTUDIO_ASSETS", ROOT / "assets"))
    if not (assets / "blockdrop" / "backbone.safetensors").exists():
        pytest.skip("no shipped BlockDrop checkpoints")
    page.get_by_role("tab", name="BlockDrop").click()
    # the first example fills the upload; Run computes both predictions and the block map
    page.locator(".gallery-item, button.gallery-item, [data-testid='examples'] button").first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.locator("text=stage 3 >> visible=true").first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "stage 1" in body and "stage 2" in body
    assert "blocks" in body.lower() and "ms" in body  # blocks used / K and measured latency
    page.screenshot(path=str(tmp_path / "blockdrop.png"), full_page=True)
    shutil.copy(tmp_path / "blockdrop.png", os.environ.get("AVSTUDIO_SCREENSHOT", tmp_path / "copy.png"))


def test_plugins_tab_lists_the_builtin_plugins(page):
    page.get_by_role("tab", name="Plugins").click()
    page.locator("text=plugins.blockdrop >> visible=true").first.wait_for(timeout=15_000)
    assert "plugins.datasets" in page.inner_text("body")
