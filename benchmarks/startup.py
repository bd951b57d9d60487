"""Start-up time of the studio as a Hugging Face Space starts it: from `python app/main.py` to the first
served page that lists every method's tab.

Each run starts the app in a fresh process with a fresh, empty ``AVSTUDIO_HOME`` (a Space restarts on an
empty local disk, so the run store is created and migrated within the measured time), ``SPACE_ID`` set and
training off (so, as on a public Space, no background worker), and polls the port every 50 ms until ``/``
answers with a page whose Gradio config has a tab for every registered method and for Runs, Datasets,
Plugins and About. ``figures.startup_s`` is the median over the runs, with the range beside it.

    python benchmarks/startup.py [--runs 5] [--out PATH] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/startup.py` from the repo root
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import write_report  # noqa: E402

TARGET_S = 10.0
STUDIO_TABS = ("Runs", "Datasets", "Plugins", "About")
POLL_S = 0.05
CONFIG = re.compile(r"window\.gradio_config\s*=\s*(\{.*?\});?\s*</script>", re.DOTALL)


def page_tabs(html: str) -> list[str]:
    """The labels of the tabs in a served Gradio page (from the config it embeds), in page order."""
    match = CONFIG.search(html)
    if match is None:
        raise ValueError("the page carries no Gradio config (window.gradio_config)")
    config = json.loads(match.group(1))
    return [c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"]


def expected_tabs() -> list[str]:
    """Every method's tab title, as the app about to start registers them, then the studio's own tabs."""
    from app.plugin_manager import registry_from_env

    return [method.title for method in registry_from_env().methods.values()] + list(STUDIO_TABS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def space_env(home: Path, port: int) -> dict[str, str]:
    """This process's environment as a public Space sees it: no AVSTUDIO_* setting but a fresh home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(home), GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    env.setdefault("SPACE_ID", "avstudio/startup-benchmark")
    return env


def fetch_page(port: int) -> str | None:
    """The page at ``/``, or None while nothing answers there yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.read().decode() if response.status == 200 else None
    except OSError:
        return None


def time_one_start(tabs: list[str], timeout_s: float = 120.0) -> float:
    """Seconds from starting `python app/main.py` to the first page listing every tab in ``tabs``.

    The app is stopped with SIGTERM afterwards (as a Space stops it) and must exit cleanly. Raises
    RuntimeError when it exits early, answers without one of the tabs, or does not answer in time.
    """
    with tempfile.TemporaryDirectory(prefix="avstudio-startup-") as home:
        port = free_port()
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app/main.py"], cwd=REPO_ROOT, env=space_env(Path(home), port),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            page = None
            while page is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"app/main.py exited with {proc.returncode}:\n{proc.stdout.read()}")
                if time.perf_counter() - started > timeout_s:
                    raise RuntimeError(f"app/main.py did not answer within {timeout_s:.0f} s")
                page = fetch_page(port)
                if page is None:
                    time.sleep(POLL_S)
            elapsed = time.perf_counter() - started
            missing = [tab for tab in tabs if tab not in page_tabs(page)]
            if missing:
                raise RuntimeError(f"the first page has no tab {missing} (a plugin failed to load?)")
            proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=60) != 0:
                raise RuntimeError(f"app/main.py exited with {proc.returncode} on SIGTERM:\n{proc.stdout.read()}")
            return elapsed
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def measure(runs: int) -> dict:
    """Start the app ``runs`` times, one after another; the figures of the report."""
    tabs = expected_tabs()
    load_before = os.getloadavg()
    times = [time_one_start(tabs) for _ in range(runs)]
    return {
        "startup_s": statistics.median(times),
        "startup_min_s": min(times),
        "startup_max_s": max(times),
        "runs_s": times,
        "runs": runs,
        "tabs": tabs,
        # the machine's 1-minute load average before the first and after the last start: the other
        # work it was doing, which the start-up times include
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="starts to time, one after another (default 5)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "startup.json"),
                        help="report path (default benchmarks/results/startup.json)")
    parser.add_argument("--note", default="", help="what else the machine was doing, kept in the report")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    figures = measure(args.runs)
    targets = {"startup_target_s": TARGET_S, "startup_under_target": figures["startup_s"] < TARGET_S}
    path = write_report("startup", args.out, figures, targets, notes=args.note)
    print(f"start-up to first page: median {figures['startup_s']:.2f} s "
          f"(range {figures['startup_min_s']:.2f}–{figures['startup_max_s']:.2f} s, {args.runs} runs); report: {path}")
    return path


if __name__ == "__main__":
    main()
