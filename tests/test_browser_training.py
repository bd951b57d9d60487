"""The Runs tab in a real browser with training enabled: queue a tiny run from the form, watch the studio's
own background worker finish it, promote its checkpoint, and see the method's demo use it.

The run is the cheapest that still goes through a method's whole path: a multi-task tree (SOMP from the
shipped wide network, widened once) on 128 generated persons for 2 epochs, about 10 s on one CPU thread.
"""

from __future__ import annotations

import pytest

from tests.browser_helpers import (
    METHOD_TABS,
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
    what_the_page_shows,
)

pytestmark = pytest.mark.browser
PlaywrightTimeout = pytest.importorskip("playwright.sync_api").TimeoutError

TINY_TREE = {"lam": 50, "epochs": 2, "widen_after": 1, "train_size": 0, "val_size": 0, "batch_size": 32,
             "dataset_options": "num_train=128,num_val=64,num_test=64"}
CHECKPOINT = "branched-l50"  # the tree recipe's name for λ = 50; no shipped model has it


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-home")) as launched:
        yield launched


@pytest.fixture(scope="module")
def training_server(tmp_path_factory):
    """The studio with web training on: ``python app/main.py`` starts its background worker."""
    home = tmp_path_factory.mktemp("training-home")
    with running_studio(home, AVSTUDIO_ENABLE_TRAINING="1", AVSTUDIO_DEVICE="cpu", AVSTUDIO_THREADS="1") as url:
        yield url


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in the dropdown ``elem_id`` as a user does: open it, click the entry."""
    page.locator(f"#{elem_id} input").first.click(timeout=60_000)
    page.get_by_role("option", name=option).first.click(timeout=30_000)


def fill(page, elem_id: str, value: object) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def wait_for_text(page, selector: str, pattern: str, timeout_ms: int) -> None:
    """Until the text a user sees in ``selector`` matches the regular expression ``pattern``."""
    try:
        page.wait_for_function("([selector, pattern]) => new RegExp(pattern).test("
                               "document.querySelector(selector)?.innerText ?? '')", arg=[selector, pattern],
                               timeout=timeout_ms)
    except PlaywrightTimeout:
        shot(page, "failed-wait")
        raise AssertionError(f"no /{pattern}/ in {selector} within {timeout_ms / 1000:.0f} s\n"
                             f"{what_the_page_shows(page, selector)}") from None


def test_queue_a_tiny_run_watch_it_finish_promote_it_and_the_demo_uses_it(training_server, browser):
    require_assets(*METHOD_TABS["Multi-task widening"][0])
    page = open_studio(browser, training_server)
    try:
        # queue: the form of the multitask tree recipe, every value typed in as a user would
        goto_tab(page, "Runs")
        pick(page, "queue-method", "Multi-task widening")
        page.wait_for_function("() => document.querySelector('#queue-recipe input').value === 'wide'")
        pick(page, "queue-recipe", "tree")
        page.locator("#cfg-multitask-tree-lam").wait_for(timeout=10_000)
        for name, value in TINY_TREE.items():
            fill(page, f"cfg-multitask-tree-{name}", value)
        assert page.locator("#queue-device input").input_value() == "cpu"
        page.locator("#queue-button").click()
        page.locator("text=Queued run #1 (multitask/tree on cpu)").first.wait_for(timeout=30_000)
        shot(page, "runs-queued")

        # watch: the table and the details follow the run to its end (the tab polls every 2 s)
        wait_for_text(page, "#run-detail", r'"status"\s*:\s*"succeeded"', 240_000)
        wait_for_text(page, "#runs-table", r"(^|\s)1\s+multitask\s+tree\s+succeeded\s+100\s", 30_000)
        wait_for_text(page, "#run-detail", r'"error"\s*:\s*null', 5_000)
        assert "val_mean_accuracy" in page.inner_text("#runs-table")  # its metrics, in the table
        wait_for_image(page, "#run-curves img", 30_000)  # the curves, a panel per metric
        natural, drawn = page.locator("#run-curves img").first.evaluate(
            "img => [img.naturalWidth, img.getBoundingClientRect().width]")
        assert natural >= 800 and drawn >= 400, (natural, drawn)
        assert_no_error_toast(page)
        shot(page, "runs-finished")

        # promote: the run's checkpoint, into the slot of the same name
        pick(page, "promote-artifact", CHECKPOINT)
        page.wait_for_function(f"() => document.querySelector('#promote-slot input, #promote-slot textarea')"
                               f".value === '{CHECKPOINT}'", timeout=30_000)
        page.locator("#promote-button").click()
        wait_for_text(page, "#action-message", "Promoted", 30_000)
        assert (f"Promoted {CHECKPOINT} of run #1: the multitask demo now uses it"
                in page.inner_text("#action-message"))
        assert_no_error_toast(page)
        shot(page, "runs-promoted")

        # the demo: the new model is in the λ selector (it lists what is available when opened), and runs
        goto_tab(page, "Multi-task widening")
        pick(page, "multitask-model", f"λ = 50 · {CHECKPOINT}")
        # the selector redraws the tree with the chosen model (its overlay covers the examples meanwhile)
        wait_for_text(page, "#multitask-tree-text", CHECKPOINT, 90_000)
        page.locator("#multitask-tree .wrap.default:not(.hide)").first.wait_for(state="detached", timeout=60_000)
        click_first_example(page, "#multitask-examples")
        wait_for_text(page, "#multitask-predict-text", f"{CHECKPOINT}", 60_000)
        page.locator("#multitask-probabilities >> text=%").first.wait_for(timeout=60_000)
        predicted = page.inner_text("#multitask-predict-text")
        assert predicted.startswith(f"λ = 50 · {CHECKPOINT}: ") and "branches at the top layer" in predicted
        # the tree drawn is the run's (widened once, at the top), not a shipped model's
        assert "first split at layer" in page.inner_text("#multitask-tree-text")
        assert_no_error_toast(page)
        shot(page, "multitask-uses-promoted")
    finally:
        page.context.close()


def test_runs_tab_with_its_training_controls_fits_a_phone_screen(training_server, browser):
    page = open_studio(browser, training_server, PHONE)
    try:
        goto_tab(page, "Runs")
        page.locator("#queue-button").wait_for(timeout=30_000)
        page.locator("#promote-button").wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        shot(page, "phone-runs-training")
        assert_fits_the_screen(page)
    finally:
        page.context.close()
