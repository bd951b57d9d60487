"""What the real-browser tests share (not a test module): the studio started as a Space starts it, headless
Chromium driven by Playwright, moving between tabs, waiting for images, screenshots and layout checks
(tests/test_browser.py and tests/test_browser_training.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.testing import free_port as _free_port

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("AVSTUDIO_ASSETS", ROOT / "assets"))
SCREENSHOT_DIR = Path(os.environ.get("AVSTUDIO_SCREENSHOT_DIR") or ROOT / "artifacts" / "screenshots")
CHROMIUM = os.environ.get("AVSTUDIO_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
DESKTOP = {"width": 1400, "height": 1200}
PHONE = {"width": 375, "height": 812}

# Each method tab: the checkpoints its example needs, its examples, and what its result looks like once drawn.
METHOD_TABS = {
    "BlockDrop": (["blockdrop/backbone.safetensors"], "#blockdrop-examples", "#blockdrop-block-map >> text=stage 3"),
    "S3Pool": (["s3pool/resnet-s3pool.safetensors"], "#s3pool-examples", "#s3pool-s3pool >> text=%"),
    "VGAN": (["vgan/vgan.safetensors"], "#vgan-examples", "#vgan-energy-text >> text=E(x)"),
    "Multi-task widening": (["multitask/wide.safetensors"], "#multitask-examples",
                            "#multitask-probabilities >> text=%"),
}
# What the other tabs show once drawn (real content, not just the tab's frame).
OTHER_TABS = {
    "Runs": "#runs-table >> text=latest metrics >> visible=true",
    "Datasets": "#dataset-grid img",
    "Plugins": "text=plugins.blockdrop >> visible=true",
    "About": "text=AVSTUDIO_HOME >> visible=true",
}


SERVER_LOGS: dict[str, Path] = {}  # a running studio's URL -> the file its output goes to


def server_log_tail(url: str, chars: int = 4000) -> str:
    """The end of what the studio at ``url`` (or a page of it) has printed, for a failing test's message."""
    base = next((u for u in SERVER_LOGS if url.startswith(u)), None)
    if base is None or not SERVER_LOGS[base].exists():
        return "(no server log)"
    return SERVER_LOGS[base].read_text(errors="replace")[-chars:]


def what_the_page_shows(page, selector: str) -> str:
    """For a failing wait: the text in ``selector``, the error toasts, and the end of the server's log."""
    element = page.locator(selector).first
    text = element.inner_text() if element.count() else "(no such element)"
    toasts = page.evaluate("() => window.__toastsSeen || []")  # every toast so far (they close themselves)
    return (f"{selector} shows: {text[:2000]!r}\ntoasts: {toasts}\n"
            f"server log (end):\n{server_log_tail(page.url)}")


@contextmanager
def running_studio(home: Path, **env: str) -> Iterator[str]:
    """``python app/main.py`` on a free port with ``home`` as AVSTUDIO_HOME; yields its URL."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright")
    port = _free_port()
    env = {**os.environ, "AVSTUDIO_HOME": str(home), "AVSTUDIO_PLUGINS": "", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": str(home / "gradio-tmp"), **env}
    # its output goes to a file, read when a test fails: a pipe nobody reads would block the server (and its
    # worker's runs) once the pipe's buffer filled
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app/main.py"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    SERVER_LOGS[url] = log_path
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {server_log_tail(url)}")
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("server did not answer within 120 s")
        yield url
    finally:
        proc.terminate()  # app/main.py turns SIGTERM into an exit that stops its worker too
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium(tmp_path: Path) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS,
                                    env={**os.environ, "HOME": str(tmp_path)})
        try:
            yield browser
        finally:
            browser.close()


# Gradio's toasts close after a few seconds: a failing test reports every one the page has shown.
TOAST_RECORDER_JS = """
window.__toastsSeen = [];
new MutationObserver(() => {
  for (const toast of document.querySelectorAll('.toast-body:not([data-seen])')) {
    toast.setAttribute('data-seen', '');
    window.__toastsSeen.push(toast.innerText.trim().replace(/\\s+/g, ' '));
  }
}).observe(document, {childList: true, subtree: true});
"""


def open_studio(browser, url: str, viewport: dict[str, int] = DESKTOP):
    """A new page on the studio, once its tabs are drawn."""
    page = browser.new_context(viewport=viewport).new_page()
    page.add_init_script(TOAST_RECORDER_JS)
    # not "networkidle": since the S3Pool tab, Chromium keeps a request open after the page has
    # loaded (the server is idle meanwhile); each test waits for what it needs instead
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="BlockDrop").first.wait_for(timeout=60_000)
    return page


def goto_tab(page, name: str) -> None:
    """Open tab ``name`` as a user would: from the tab bar, or from its "More tabs" menu where the bar is too
    narrow for every tab (on a phone)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=name).first.click()
    page.wait_for_function("name => [...document.querySelectorAll('[role=tab][aria-selected=true]')]"
                           ".some(t => t.innerText.trim() === name)", arg=name, timeout=10_000)


def click_first_example(page, examples: str) -> None:
    page.locator(f"{examples} .gallery-item, {examples} button").first.click(timeout=60_000)  # no Run press


def wait_for_image(page, selector: str, timeout_ms: int = 60_000, nth: int = 0) -> None:
    """Until the ``nth`` image matching ``selector`` has loaded, scrolled to as a user would (Gradio's images
    load lazily: one below the fold may never load on a busy machine otherwise)."""
    page.wait_for_function("([selector, nth]) => { const img = document.querySelectorAll(selector)[nth];"
                           " if (!img) return false; img.scrollIntoView({block: 'nearest'});"
                           " return img.complete && img.naturalWidth > 0; }", arg=[selector, nth],
                           timeout=timeout_ms)


def assert_no_error_toast(page) -> None:
    """No error toast on the page (a demo function that raised, a failed request)."""
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.all_inner_texts()


def require_assets(*names: str) -> None:
    missing = [n for n in names if not (ASSETS / n).exists()]
    if missing:
        pytest.skip(f"no shipped checkpoints {missing} under {ASSETS}")


def shot(page, name: str) -> Path:
    """A full-page screenshot ``name``.png in the screenshots folder."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


OUT_OF_REACH_JS = """() => {
  const width = window.innerWidth, out = [];
  for (const el of document.querySelectorAll('button, input, textarea, select, [role=button], [role=tab]')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    if (el.closest('[aria-hidden=true], .visually-hidden')) continue;  // Gradio's tab-measuring copy
    if (box.left < -1 || box.right > width + 1) {
      out.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${(el.innerText || el.value ||
        el.getAttribute('aria-label') || '').trim().slice(0, 40)}" at x ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width, outOfReach: out};
}"""


def assert_fits_the_screen(page) -> None:
    """No horizontal scrolling of the page, and every visible control within the screen's width."""
    found = page.evaluate(OUT_OF_REACH_JS)
    assert found["scrollWidth"] <= found["innerWidth"] + 1, f"the page scrolls sideways: {found}"
    assert not found["outOfReach"], f"controls out of reach at {found['innerWidth']} px: {found['outOfReach']}"
