"""Scaling of one recipe from 1 to 2 processes on the CPU: ``avstudio train … --nproc 2`` against one process.

The recipe is S3Pool's ``classifier`` (a ResNet-8, width 16, with S3Pool, on the shapes dataset), run through the real
command line, with the same global batch, steps and data for every setting; each process uses one thread.
Throughput is samples per second over the epochs after the first (the first holds start-up, dataset
loading and the process group's set-up), from the times rank 0 logged each epoch's metrics (so they
include rank 0's evaluation of ``val_size`` images, which does not scale). The control is one process
with two threads: what the two cores give a run without ``--nproc``. Each run starts in a session of its
own: with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) a busy machine shares the
CPU between sessions, so on a shared machine two processes also get two shares of it.

    python benchmarks/distributed.py [--quick] [--repeats 2] [--data-dir DIR] [--out PATH] [--note TEXT]

No GPU here: GPU scaling (NCCL, one process per GPU) is not measured, and the report says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/distributed.py` from the repo root
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import write_report  # noqa: E402

SETTINGS = {"one_process_one_thread": (1, 1), "two_processes_one_thread_each": (2, 1),
            "one_process_two_threads": (1, 2)}


def recipe_config(quick: bool) -> dict[str, int]:
    """The classifier's budget: ``epochs`` epochs of ``train_size // batch_size`` steps."""
    train_size, batch_size, epochs = (320, 64, 3) if quick else (640, 64, 4)
    return {"depth": 8, "width": 16, "train_size": train_size, "batch_size": batch_size, "val_size": 100,
            "steps": epochs * (train_size // batch_size), "epochs": epochs}


def train_once(home: Path, data_dir: Path, nproc: int, threads: int, config: dict[str, int]) -> dict[str, float]:
    """One ``avstudio train s3pool classifier`` with ``nproc`` processes; its throughput after epoch 1."""
    from trainer.store import RunStatus, RunStore

    env = {k: v for k, v in os.environ.items() if not k.startswith("AVSTUDIO_")}
    env.update(AVSTUDIO_HOME=str(home), AVSTUDIO_DATA=str(data_dir), OMP_NUM_THREADS=str(threads))
    sets = [f"{k}={v}" for k, v in config.items() if k != "epochs"]
    command = [sys.executable, "-m", "app.cli", "--device", "cpu", "--threads", str(threads), "train", "s3pool",
               "classifier", "--nproc", str(nproc), *[a for s in sets for a in ("--set", s)]]
    started = time.perf_counter()
    # a session of its own, as torchrun gives each rank: with the kernel's autogroup scheduling (on here) a
    # busy machine shares the CPU between sessions first, so a run in the caller's crowded session got ~10x
    # less of it than the ranks did (15 against 143 samples/s in a first try)
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=3600,
                            start_new_session=True)
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    try:
        run = store.list_runs(limit=1)[0]
        assert run.status == RunStatus.SUCCEEDED
        times = sorted((p.step, p.time) for p in store.metrics(run.id, keys=["train_loss"]))
    finally:
        store.close()
    epochs = config["epochs"]
    if [s for s, _ in times] != list(range(1, epochs + 1)):
        raise RuntimeError(f"run {run.id} logged train_loss at steps {[s for s, _ in times]}")
    samples = (epochs - 1) * (config["train_size"] // config["batch_size"]) * config["batch_size"]
    seconds = times[-1][1] - times[0][1]
    return {"samples_per_s": samples / seconds, "train_s": seconds, "wall_s": wall_s, "run_id": run.id}


def busy_processes() -> list[str]:
    """Other processes using the CPU now (``ps``: %CPU ≥ 10), to say what else the machine was doing."""
    out = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        cpu, _, args = line.strip().partition(" ")
        if float(cpu) >= 10 and "benchmarks/distributed.py" not in args and " ps " not in f" {args} ":
            rows.append(f"{cpu}% {args[:160]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs of 5 steps, one repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per setting, interleaved (default 2; 1 with --quick)")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".avstudio" / "data",
                        help="dataset cache (shapes is generated there once if missing)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "distributed.json"))
    parser.add_argument("--note", default="", help="what else the machine was doing, kept in the report")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    config = recipe_config(args.quick)
    load_before, busy_before = os.getloadavg()[0], busy_processes()
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="avstudio-distributed-") as tmp:
        home = Path(tmp) / "home"
        for repeat in range(repeats):
            for name, (nproc, threads) in SETTINGS.items():  # interleaved, so a change in load hits all alike
                measured[name].append(train_once(home, args.data_dir, nproc, threads, config))
                print(f"repeat {repeat + 1}/{repeats} {name}: {measured[name][-1]['samples_per_s']:.1f} samples/s",
                      file=sys.stderr)
    throughput = {name: statistics.median(r["samples_per_s"] for r in runs) for name, runs in measured.items()}
    figures = {
        "recipe": "s3pool/classifier", "config": config, "repeats": repeats,
        "samples_per_s": throughput,
        "samples_per_s_runs": {name: [round(r["samples_per_s"], 2) for r in runs] for name, runs in measured.items()},
        "wall_s_runs": {name: [round(r["wall_s"], 1) for r in runs] for name, runs in measured.items()},
        "scaling_2_vs_1_process": throughput["two_processes_one_thread_each"] / throughput["one_process_one_thread"],
        "two_processes_vs_one_process_two_threads":
            throughput["two_processes_one_thread_each"] / throughput["one_process_two_threads"],
        "gpu_scaling": "not measured: no GPU on this machine",
        "sched_autogroup": Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
        if Path("/proc/sys/kernel/sched_autogroup_enabled").exists() else None,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "busy_processes_before": busy_before, "busy_processes_after": busy_processes(),
    }
    targets = {"ideal_scaling_2_processes": 2.0}
    path = write_report("distributed", args.out, figures, targets, notes=args.note)
    print(f"{path}: 2 processes / 1 process = {figures['scaling_2_vs_1_process']:.2f}× "
          f"({throughput['two_processes_one_thread_each']:.1f} vs {throughput['one_process_one_thread']:.1f} samples/s); "
          f"vs one process with two threads {figures['two_processes_vs_one_process_two_threads']:.2f}×")


if __name__ == "__main__":
    main()
