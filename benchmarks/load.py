"""Load on a running studio: concurrent ``gradio_client`` users calling each method's main demo function.

Starts ``python app/main.py`` as a public Space starts it (fresh, empty ``AVSTUDIO_HOME``; the shipped
checkpoints and examples; training off, so no worker), opens ``--clients`` ``gradio_client.Client``
sessions (32 by default, all connected before the clock starts), warms each endpoint up with one call
(the first call of a model loads it; not counted), then, one endpoint after another, has every client call
that endpoint ``--calls`` times in a row with the method's shipped example images in turn. Each call is
timed from the client's side (upload of the image, queueing, the function, the result), as a user waits
for it. ``figures`` has, per endpoint and in total, ``requests``, ``errors``, ``throughput_rps`` (requests
answered per second of that phase's wall time), ``p50_ms`` and ``p95_ms``, and where the machine's time went
(``server_cpu_cores``, ``client_cpu_cores``, ``server_cpu_ms_per_request``). The whole measurement runs
``--repeats`` times (3 by default), each on a freshly started server: ``figures`` has the median of each
figure over the repeats (``requests`` and ``errors`` are summed), ``*_range`` the lowest and highest, and
``runs`` each repeat's own figures. ``targets`` checks each endpoint's median against ≥ 25 requests/s,
p95 ≤ 2 s and no errors.

    python benchmarks/load.py [--clients 32] [--calls 8] [--repeats 3] [--out PATH] [--note TEXT]
    python benchmarks/load.py --quick          # 4 clients × 2 calls, once: checks the machinery, not the targets
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/load.py` from the repo root
    sys.path.insert(0, str(REPO_ROOT))

from app.testing import free_port  # noqa: E402
from benchmarks.report import cpu_model, write_report  # noqa: E402

ASSETS = REPO_ROOT / "assets"
TARGET_RPS, TARGET_P95_MS = 25.0, 2000.0

# api_name → (the method whose shipped examples it gets, the arguments after the image): each method's
# main demo function with the values its tab opens on.
ENDPOINTS: dict[str, tuple[str, tuple]] = {
    "blockdrop_predict": ("blockdrop", ("policy-g1",)),
    "s3pool_run": ("s3pool", (16, 1)),
    "vgan_analyse": ("vgan", ("vgan", 2, 0)),
    "multitask_predict": ("multitask", ("branched-l10",)),
}


def examples(method: str) -> list[Path]:
    """The method's shipped example images (what a visitor clicks first)."""
    found = sorted((ASSETS / method / "examples").glob("*.png"))
    if not found:
        raise SystemExit(f"no example images in {ASSETS / method / 'examples'}; is the checkout complete?")
    return found


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(latencies_ms: list[float], errors: int, wall_s: float) -> dict[str, Any]:
    """requests, errors, throughput_rps, p50_ms and p95_ms of one phase (latencies of answered calls)."""
    requests = len(latencies_ms) + errors
    return {
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(len(latencies_ms) / wall_s, 2) if wall_s > 0 else 0.0,
        "p50_ms": round(percentile(latencies_ms, 50), 1) if latencies_ms else None,
        "p95_ms": round(percentile(latencies_ms, 95), 1) if latencies_ms else None,
        "wall_s": round(wall_s, 3),
    }


class Server:
    """``python app/main.py`` in a subprocess, as a public Space runs it, with a fresh home."""

    def __init__(self, home: Path, threads: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = home / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
        env.update(AVSTUDIO_HOME=str(home / "home"), GRADIO_SERVER_NAME="127.0.0.1",
                   GRADIO_SERVER_PORT=str(self.port), GRADIO_ANALYTICS_ENABLED="False")
        env.setdefault("SPACE_ID", "avstudio/load-benchmark")
        if threads is not None:
            env["AVSTUDIO_THREADS"] = str(threads)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "app/main.py"], cwd=REPO_ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"python app/main.py exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"python app/main.py did not answer within {timeout_s:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _caller(client: Any, api_name: str, args: Callable[[int], tuple]) -> Callable[[int], str | None]:
    def call(i: int) -> str | None:
        try:
            client.predict(*args(i), api_name=f"/{api_name}")
            return None
        except Exception as exc:  # an AppError from the server, a dropped connection, …
            return (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
    return call


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) used so far by process ``pid`` (Linux /proc), or by this process."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_endpoint(clients: list[Any], api_name: str, calls: int,
                 server_pid: int | None = None) -> tuple[dict[str, Any], list[float], list[str]]:
    """Every client calls ``api_name`` ``calls`` times, all clients at once; (figures, latencies, errors).
    With ``server_pid`` (Linux), figures also say how many cores the server and the clients kept busy."""
    from gradio_client import handle_file

    method, extra = ENDPOINTS[api_name]
    images = [str(p) for p in examples(method)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(clients))

    def one_client(k: int) -> None:
        call = _caller(clients[k], api_name, lambda i: (handle_file(images[i % len(images)]), *extra))
        start.wait()
        for j in range(calls):
            t0 = time.perf_counter()
            error = call(k * calls + j)
            elapsed_ms = (time.perf_counter() - t0) * 1000
            with lock:
                (errors.append(error) if error else latencies.append(elapsed_ms))

    measure_cpu = server_pid is not None and Path(f"/proc/{server_pid}/stat").exists()
    cpu0 = (cpu_seconds(server_pid), cpu_seconds()) if measure_cpu else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(one_client, range(len(clients))))
    wall_s = time.perf_counter() - t0
    figures = summarise(latencies, len(errors), wall_s)
    if cpu0 is not None:
        server_s, client_s = cpu_seconds(server_pid) - cpu0[0], cpu_seconds() - cpu0[1]
        figures.update(server_cpu_cores=round(server_s / wall_s, 2), client_cpu_cores=round(client_s / wall_s, 2),
                       server_cpu_ms_per_request=round(server_s * 1000 / max(1, len(latencies)), 1))
    return figures, latencies, errors


def measure(clients_n: int, calls: int, endpoints: list[str], threads: int | None = None,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start a studio, load it endpoint by endpoint; {"figures", "errors"} (first error texts)."""
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="avstudio-load-") as tmp:
        server = Server(Path(tmp), threads)
        try:
            server.wait_ready()
            # Plain HTTP on loopback: no TLS, so nothing to verify. With ssl_verify=True, gradio_client has
            # httpx build a certificate-verifying SSL context (loading the whole CA bundle) for every HTTP
            # request it makes, used or not: measured on the 2-core machine, 32 such clients spent 1.7 cores
            # on it, more than the server they were loading, and capped a trivial Gradio app at ~20 req/s.
            clients = [Client(server.url, verbose=False, download_files=False, ssl_verify=False)
                       for _ in range(clients_n)]
            for api_name in endpoints:  # the first call loads the method's models: not counted
                method, extra = ENDPOINTS[api_name]
                clients[0].predict(handle_file(str(examples(method)[0])), *extra, api_name=f"/{api_name}")
            figures: dict[str, Any] = {}
            all_latencies: list[float] = []
            error_texts: dict[str, list[str]] = {}
            total_wall = 0.0
            for api_name in endpoints:
                figures[api_name], latencies, errors = run_endpoint(clients, api_name, calls, server.proc.pid)
                log(f"{api_name}: {figures[api_name]}")
                all_latencies += latencies
                total_wall += figures[api_name]["wall_s"]
                if errors:
                    error_texts[api_name] = sorted(set(errors))[:5]
            figures["total"] = summarise(all_latencies, sum(f["errors"] for f in figures.values()), total_wall)
            if server.proc.poll() is not None:
                raise RuntimeError(f"the server died during the run:\n{server.log_path.read_text()[-3000:]}")
        finally:
            server.stop()
    return {"figures": figures, "errors": error_texts}


SUMMED = ("requests", "errors")
SPREAD = ("throughput_rps", "p95_ms")  # figures whose lowest and highest over the repeats are reported


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several repeats as one: per endpoint (and total), ``requests`` and ``errors`` summed,
    every other figure the median over the repeats, and ``throughput_rps_range`` / ``p95_ms_range``."""
    import statistics

    combined: dict[str, Any] = {}
    for name in runs[0]:
        per_run = [run[name] for run in runs]
        figures: dict[str, Any] = {}
        for key in per_run[0]:
            values = [f[key] for f in per_run if f.get(key) is not None]
            if key in SUMMED:
                figures[key] = sum(values)
            elif values:
                figures[key] = round(statistics.median(values), 2)
            else:
                figures[key] = None
            if key in SPREAD and values:
                figures[f"{key}_range"] = [min(values), max(values)]
        combined[name] = figures
    return combined


def targets(figures: dict[str, Any], endpoints: list[str]) -> dict[str, Any]:
    """Each main function: ≥ 25 requests/s, p95 ≤ 2 s, zero errors; ``met`` true when all hold."""
    per_endpoint = {}
    for api_name in endpoints:
        f = figures[api_name]
        per_endpoint[api_name] = {
            "throughput_rps": f["throughput_rps"], "p95_ms": f["p95_ms"], "errors": f["errors"],
            "met": (f["errors"] == 0 and f["throughput_rps"] >= TARGET_RPS
                    and f["p95_ms"] is not None and f["p95_ms"] <= TARGET_P95_MS),
        }
    return {"min_throughput_rps": TARGET_RPS, "max_p95_ms": TARGET_P95_MS, "max_errors": 0,
            "endpoints": per_endpoint, "met": all(t["met"] for t in per_endpoint.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent gradio_client sessions")
    parser.add_argument("--calls", type=int, default=8, help="calls of each endpoint per client")
    parser.add_argument("--repeats", type=int, default=3, help="whole measurements, each on a fresh server")
    parser.add_argument("--quick", action="store_true", help="4 clients × 2 calls, once: a smoke run")
    parser.add_argument("--only", nargs="+", choices=list(ENDPOINTS), help="load only these endpoints")
    parser.add_argument("--threads", type=int, help="AVSTUDIO_THREADS for the server (default: unset)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "load.json")
    parser.add_argument("--note", default="", help="what else ran on the machine, etc.")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.calls, args.repeats = 4, 2, 1
    if args.clients < 1 or args.calls < 1 or args.repeats < 1:
        parser.error("--clients, --calls and --repeats must be at least 1")
    endpoints = args.only or list(ENDPOINTS)
    runs = []
    for k in range(args.repeats):
        print(f"repeat {k + 1} of {args.repeats}")
        runs.append(measure(args.clients, args.calls, endpoints, args.threads))
    figures = combine([run["figures"] for run in runs])
    result = {"figures": figures, "targets": targets(figures, endpoints),
              "errors": {name: sorted({e for run in runs for e in run["errors"].get(name, [])})[:5]
                         for name in endpoints if any(run["errors"].get(name) for run in runs)}}
    out = write_report("load", args.out, result["figures"], result["targets"],
                       runs=[run["figures"] for run in runs],
                       setup={"clients": args.clients, "calls_per_client": args.calls, "repeats": args.repeats,
                              "endpoints": {name: {"method": ENDPOINTS[name][0],
                                                   "args_after_image": list(ENDPOINTS[name][1])}
                                            for name in endpoints},
                              "quick": args.quick, "server_threads": args.threads, "cpu_model": cpu_model(),
                              "load_average_at_end": list(os.getloadavg())},
                       errors=result["errors"], notes=args.note)
    print(f"wrote {out}; targets met: {result['targets']['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
