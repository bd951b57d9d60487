"""The Gradio shell: one tab per method (built by its plugin), then Runs, Datasets, Plugins and About.

``build_app`` only assembles the Blocks (fast: demos load their models lazily); ``launch`` opens the
run store, starts the background worker, and serves the app.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
import traceback
from typing import Any

import gradio as gr

from app.demo_context import StudioDemoContext
from app.settings import Settings
from app.ui.about_tab import build_about_tab
from app.ui.datasets_tab import build_datasets_tab
from app.ui.plugins_tab import build_plugins_tab
from app.ui.runs_tab import RunsActions, build_runs_tab

log = logging.getLogger("avstudio.ui")

CSS = """
#runs-table { font-variant-numeric: tabular-nums; }
.demo-error { border-left: 4px solid #dc2626; padding-left: 0.75rem; }
"""

__all__ = ["build_app", "launch"]


def _build_method_tab(method: Any, ctx: StudioDemoContext, demo_errors: dict[str, str]) -> None:
    if method.summary:
        gr.Markdown(f"{method.summary}" + (f" — [{method.paper}]({method.paper_url})" if method.paper_url
                                           else f" — {method.paper}"))
    if method.build_demo is None:
        gr.Markdown("This method has no demo.")
        return
    try:
        method.build_demo(ctx)
    except Exception as exc:  # one broken demo must not take the studio down
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        demo_errors[method.slug] = message
        log.error("demo of %s failed to build:\n%s", method.slug, traceback.format_exc())
        gr.Markdown(f"**This demo failed to build.** {message}\n\nThe traceback is in the server log; "
                    "the Plugins tab lists the failure.", elem_classes=["demo-error"],
                    elem_id=f"demo-error-{method.slug}")


def build_app(settings: Settings, registry: Any, store: Any) -> gr.Blocks:
    """Assemble the studio's Blocks: a tab per registered method, then Runs, Datasets, Plugins, About.

    A method whose ``build_demo`` raises gets a tab showing the error (also listed in the Plugins
    tab); the rest of the app still builds. Training controls exist only when
    ``settings.enable_training`` is true.
    """
    demo_errors: dict[str, str] = {}
    with gr.Blocks(title="Adaptive Vision Studio") as demo:
        gr.Markdown("# Adaptive Vision Studio")
        with gr.Tabs():
            for slug, method in registry.methods.items():
                with gr.Tab(method.title, id=f"method-{slug}"):
                    _build_method_tab(method, StudioDemoContext(slug, settings, registry, store), demo_errors)
            with gr.Tab("Runs", id="runs"):
                build_runs_tab(demo, RunsActions(store, registry, settings), registry, settings)
            with gr.Tab("Datasets", id="datasets"):
                build_datasets_tab(registry, settings)
            with gr.Tab("Plugins", id="plugins"):
                build_plugins_tab(registry, demo_errors)
            with gr.Tab("About", id="about"):
                build_about_tab(settings, registry)
    demo.studio_demo_errors = demo_errors  # for tests and diagnostics
    return demo


def launch(settings: Settings, registry: Any, *, host: str = "127.0.0.1", port: int = 7860,
           start_worker: bool = True, share: bool = False, prevent_thread_lock: bool = False) -> gr.Blocks:
    """Open the run store, start the background worker (if ``start_worker``), build and serve the app.

    Blocks until the server stops unless ``prevent_thread_lock``; then the caller closes the returned
    Blocks (``demo.close()``). The worker and the store are shut down when the server stops or the
    process exits.
    """
    from trainer.store import RunStore

    settings.ensure_dirs()
    store = RunStore(settings.db_url)
    worker = None
    if start_worker:
        from app.worker_process import start_background_worker

        worker = start_background_worker(settings)
        # Demos answer in short bursts while training runs beside them. Two processes that each
        # spread their math over every core oversubscribe the machine, and OpenMP's spin-waiting
        # then slows both by 10x or more (seen on 2 cores): the server keeps to one thread.
        import torch

        torch.set_num_threads(1)

    def shutdown() -> None:
        if worker is not None:
            from app.worker_process import stop_background_worker

            stop_background_worker(worker)
        store.close()

    atexit.register(shutdown)
    if not prevent_thread_lock and threading.current_thread() is threading.main_thread():
        # `docker stop` and Spaces send SIGTERM: turn it into an exit that runs the shutdown below,
        # so the worker subprocess is not left behind.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        demo = build_app(settings, registry, store)
        demo.queue(default_concurrency_limit=2)
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                    css=CSS, allowed_paths=[str(settings.assets_dir)], footer_links=["api", "gradio", "settings"],
                    ssr_mode=False, show_error=True)
    except BaseException:
        shutdown()
        atexit.unregister(shutdown)
        raise
    if not prevent_thread_lock:  # the server has stopped
        shutdown()
        atexit.unregister(shutdown)
    return demo
