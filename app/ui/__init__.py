"""The Gradio shell: one tab per method (built by its plugin), then Runs, Datasets, Plugins and About.

``build_app`` only assembles the Blocks (fast: demos load their models lazily); ``launch`` opens the
run store, starts the background worker, and serves the app.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from app.demo_context import StudioDemoContext
from app.errors import UserError
from app.plugin_manager import failure_line
from app.settings import Settings, upload_limits
from app.ui.about_tab import build_about_tab
from app.ui.datasets_tab import build_datasets_tab
from app.ui.plugins_tab import build_plugins_tab
from app.ui.runs_actions import RunsActions
from app.ui.runs_tab import build_runs_tab

log = logging.getLogger("avstudio.ui")

CSS = """
#runs-table { font-variant-numeric: tabular-nums; }
.demo-error { border-left: 4px solid #dc2626; padding-left: 0.75rem; }
/* Phones (tests/test_browser.py checks 375 px): a gallery keeps its column count at any width, each column
   at least 100 px, so S3Pool's six draws ran 270 px past the screen's edge; there they wrap instead. */
@media (max-width: 640px) {
  .gallery-container .grid-container { grid-template-columns: repeat(auto-fill, minmax(80px, 1fr)) !important; }
}
"""

__all__ = ["build_app", "build_method_demo", "check_demos", "launch"]


def _one_line_user_errors(fn: Callable) -> Callable:
    """Wrap a demo event function: a UserError (or gr.Error) reaches the user as its message and the
    log as one line, not a traceback; anything else is left to Gradio (traceback in the log)."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        return fn  # errors surface while iterating; left to Gradio

    def convert(exc: Exception) -> gr.Error:
        message = str(exc).strip() or type(exc).__name__
        log.warning("user error in a demo (%s): %s", getattr(fn, "__qualname__", fn), message.splitlines()[0])
        if isinstance(exc, gr.Error):
            exc.print_exception = False
            return exc
        return gr.Error(message, print_exception=False)

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except (UserError, gr.Error) as exc:
                raise convert(exc) from None

        return wrapped_async

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, gr.Error) as exc:
            raise convert(exc) from None

    return wrapped


def build_method_demo(blocks: gr.Blocks, method: Any, ctx: Any, registry: Any) -> str | None:
    """Build ``method``'s demo in the current tab; returns the one-line error if it failed to build.

    A failure is recorded on the owning plugin (its status becomes failed everywhere: Plugins tab,
    ``avstudio plugins``) and shown in the tab; the rest of the app still builds. The demo's event
    functions are wrapped so user errors are one line in the log.
    """
    if method.summary:
        gr.Markdown(f"{method.summary}" + (f" — [{method.paper}]({method.paper_url})" if method.paper_url
                                           else f" — {method.paper}"))
    if method.build_demo is None:
        gr.Markdown("This method has no demo.")
        return None
    before = set(blocks.fns)
    try:
        method.build_demo(ctx)
    except Exception as exc:  # one broken demo must not take the studio down
        owner = registry.owner(method.slug)
        where = f"build_demo of {method.slug}"
        if owner is not None:
            registry.fail(owner.name, where, exc, withdraw=False)
        else:
            log.error("demo of %s failed to build:\n%s", method.slug, traceback.format_exc())
        message = failure_line(where, exc)
        gr.Markdown(f"**This demo failed to build.** {message}\n\nThe traceback is in the server log; "
                    "the Plugins tab lists the failure.", elem_classes=["demo-error"],
                    elem_id=f"demo-error-{method.slug}")
        return message
    finally:
        for key in set(blocks.fns) - before:
            blocks.fns[key].fn = _one_line_user_errors(blocks.fns[key].fn) if blocks.fns[key].fn else None
    return None


def check_demos(settings: Settings, registry: Any) -> dict[str, str]:
    """Build every method's demo in throw-away Blocks (nothing is served or loaded eagerly), so that
    ``avstudio plugins`` reports the demos that fail to build. Returns slug → one-line error."""
    store = settings.open_store()
    errors: dict[str, str] = {}
    try:
        with gr.Blocks() as blocks:
            for slug, method in registry.methods.items():
                with gr.Tab(method.title):
                    error = build_method_demo(blocks, method, StudioDemoContext(slug, settings, registry, store),
                                              registry)
                    if error:
                        errors[slug] = error
    finally:
        store.close()
    return errors


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
                    error = build_method_demo(demo, method, StudioDemoContext(slug, settings, registry, store),
                                              registry)
                    if error:
                        demo_errors[slug] = error
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


def _asset_paths(settings: Settings, registry: Any) -> list[str]:
    """The directories Gradio may serve files from: the studio's assets and each method's own
    (a third-party plugin's examples live in its package)."""
    from trainer.context import method_assets_dir

    paths = {Path(settings.assets_dir).resolve()}
    for slug in registry.methods:
        own = method_assets_dir(registry, settings.assets_dir, slug)
        if own is not None:
            paths.add(Path(own).resolve())
    # A directory inside another one adds nothing, and Gradio resolves every allowed path once per file it
    # sends (under load that path checking was a main cost of the server's event loop): keep the outermost.
    return sorted(str(p) for p in paths if not any(other != p and p.is_relative_to(other) for other in paths))


def launch(settings: Settings, registry: Any, *, host: str = "127.0.0.1", port: int = 7860,
           start_worker: bool = True, share: bool = False, prevent_thread_lock: bool = False,
           mcp: bool = False) -> gr.Blocks:
    """Open the run store, start the background worker (if ``start_worker``), build and serve the app
    (with ``mcp``, also as an MCP server whose tools are its public API endpoints: app/mcp.py).

    Blocks until the server stops unless ``prevent_thread_lock``; then the caller closes the returned
    Blocks (``demo.close()``). The worker and the store are shut down when the server stops or the
    process exits.
    """
    settings.ensure_dirs()
    store = settings.open_store()
    worker = None
    if start_worker:
        from app.worker_process import start_background_worker

        worker = start_background_worker(settings)
    # The server computes on one torch thread. Its requests run side by side (two per event, many events),
    # so threads inside one forward only compete with them: with 32 concurrent users (benchmarks/load.py)
    # one thread cost 15–25% less CPU per request than two on the 2-core machine. And when training runs
    # beside the demos, two processes that each spread their math over every core oversubscribe the
    # machine, and OpenMP's spin-waiting then slows both by 10x or more (seen on 2 cores).
    from trainer.devices import apply_threads

    apply_threads(settings.threads if settings.threads is not None else 1)  # AVSTUDIO_THREADS wins

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
        # Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event by default
        # (for its monitoring page): under load that grew to a main per-request cost. Refresh it every 100.
        os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
        # Each event runs at most two requests at once. The demos' work is mostly Python (Gradio's and the
        # models' small layers) under one GIL: under 32 concurrent users (benchmarks/load.py) 8 at a time
        # cost more CPU per request (S3Pool 53 ms against 41 ms) and answered fewer, not more.
        demo.queue(default_concurrency_limit=2)
        if mcp:
            from app.mcp import check_mcp_installed, prepare_tools

            check_mcp_installed()
            prepare_tools(demo, settings)
        # Gradio's run history (/gradio_api/runs) would keep visitors' calls in their browsers beside the studio's
        # own runs, a second "Runs" that is not them: off unless the operator sets GRADIO_RUN_HISTORY=true.
        run_history = os.environ.get("GRADIO_RUN_HISTORY", "false").strip().lower() == "true"
        demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                    css=CSS, allowed_paths=_asset_paths(settings, registry), footer_links=["api", "gradio", "settings"],
                    ssr_mode=False, show_error=True, max_file_size=upload_limits().max_bytes,
                    run_history=run_history, mcp_server=mcp)
    except BaseException:
        shutdown()
        atexit.unregister(shutdown)
        raise
    if not prevent_thread_lock:  # the server has stopped
        shutdown()
        atexit.unregister(shutdown)
    return demo
