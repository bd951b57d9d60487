"""Everything GPU, checked and measured by one command in under 8 minutes on one GPU.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--budget-s 480]
    python benchmarks/gpu.py --dry-run [--out PATH]   # the same steps, tiny, on the CPU (< 2 min)

A GPU machine is lent here rarely and briefly, so this one command does all of it, each step timed and
each failure recorded without stopping the steps after it:

1. ``tests``: pytest on every test named ``test_cuda_*`` (each skips without a GPU; none may skip here)
2. ``recipes``: a short run of every built-in recipe, through the worker's own code path, with AMP off
   (float32) and on (bf16, or fp16 on a GPU without bf16): samples/s after the first epoch, peak GPU memory
3. ``blockdrop``: the shipped BlockDrop's timings at batch 1, 64 and 256 on the GPU, as fractions of the
   ideal speedup 1 / (FLOPs ratio), measured as ``benchmarks/blockdrop.py`` measures them on the CPU
4. ``s3pool``: the S3Pool layer's forward + backward time against max pooling's, on the GPU
5. ``nccl``: a one-GPU ``--nproc 1`` run through torchrun, i.e. an NCCL process group (gloo in the dry run)

It writes ``benchmarks/results/gpu.json`` (``figures.device`` names the GPU). ``--dry-run`` runs the same
steps tiny on the CPU and writes to a temporary file unless ``--out`` says otherwise; a default-suite test
(``tests/test_gpu_benchmark.py``) runs it, so the script cannot rot while no GPU is around. The recipes
train on synthetic datasets this module registers (``gpu-bench-images``, ``gpu-bench-attributes``):
throughput does not depend on what the pixels show. docs/gpu.md says how to read the report.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/gpu.py` from the repo root
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from app.api import DatasetSpec, hookimpl  # noqa: E402
from app.api.training import ImageTensorDataset  # noqa: E402

BUDGET_S = 480.0  # 8 minutes, the most a lent GPU machine is asked for
PLUGIN = "benchmarks.gpu"  # this module, registered as a plugin for its datasets
IMAGES, ATTRIBUTES = "gpu-bench-images", "gpu-bench-attributes"
SPLIT_SIZES = {"train": 2048, "val": 256, "test": 256}
NUM_CLASSES, NUM_ATTRIBUTES, IMAGE_SIZE = 10, 8, 32


# -- the synthetic datasets (a plugin: the studio and torchrun's ranks load them by module name) ----------


def _images(split: str, root: Path, **options: Any) -> ImageTensorDataset:
    """Random 32×32 images whose class shows in their mean colour (a net can learn something)."""
    n = SPLIT_SIZES[split]
    g = torch.Generator().manual_seed(list(SPLIT_SIZES).index(split))
    targets = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    base = (targets.float() / (NUM_CLASSES - 1) * 200 + 20).view(n, 1, 1, 1)
    noise = torch.randint(-20, 20, (n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g).float()
    return ImageTensorDataset((base + noise).clamp(0, 255).to(torch.uint8), targets,
                              [f"class {i}" for i in range(NUM_CLASSES)], "classification", name=f"{IMAGES}/{split}")


def _attributes(split: str, root: Path, **options: Any) -> ImageTensorDataset:
    """Random 32×32 images with 8 binary attributes, each shown by the brightness of a region."""
    n = SPLIT_SIZES[split]
    g = torch.Generator().manual_seed(10 + list(SPLIT_SIZES).index(split))
    targets = (torch.rand(n, NUM_ATTRIBUTES, generator=g) < 0.5).float()
    images = torch.randint(0, 120, (n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g)
    rows = IMAGE_SIZE // NUM_ATTRIBUTES
    for a in range(NUM_ATTRIBUTES):
        images[:, :, a * rows:(a + 1) * rows] += (targets[:, a] * 120).long().view(n, 1, 1, 1)
    return ImageTensorDataset(images.clamp(0, 255).to(torch.uint8), targets,
                              [f"attribute {i}" for i in range(NUM_ATTRIBUTES)], "multilabel", name=f"{ATTRIBUTES}/{split}")


@hookimpl
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    for name, task, load, labels in ((IMAGES, "classification", _images, [f"class {i}" for i in range(NUM_CLASSES)]),
                                     (ATTRIBUTES, "multilabel", _attributes,
                                      [f"attribute {i}" for i in range(NUM_ATTRIBUTES)])):
        register(DatasetSpec(name=name, title=f"GPU benchmark ({task})", task=task, load=load, labels=labels,
                             description="synthetic images for benchmarks/gpu.py", splits=tuple(SPLIT_SIZES)))


# -- steps ---------------------------------------------------------------------------------------------------


class Steps:
    """Runs steps in order within a time budget: each is timed, its failure recorded, and a step that the
    budget has no time left for is skipped (so the command ends in time on a lent machine)."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.report: dict[str, dict[str, Any]] = {}

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def run(self, name: str, fn: Callable[[], dict[str, Any]], min_s: float = 5.0) -> dict[str, Any]:
        if self.left_s() < min_s:
            self.report[name] = {"status": "skipped", "error": f"out of time ({self.left_s():.0f} s of the budget left)"}
        else:
            start = time.perf_counter()
            print(f"== {name} ({self.left_s():.0f} s of the budget left)", flush=True)
            try:
                result = {"status": "ok", **fn()}
            except Exception as exc:  # recorded (with what it measured before failing); the next steps still run
                traceback.print_exc()
                result = {**getattr(exc, "partial", {}), "status": "failed",
                          "error": f"{type(exc).__name__}: {exc}"[:2000]}
            result["seconds"] = round(time.perf_counter() - start, 2)
            self.report[name] = result
        print(f"   {name}: {self.report[name]['status']}", flush=True)
        return self.report[name]


def cuda_test_files(tests_dir: Path = REPO_ROOT / "tests") -> list[Path]:
    """The test files that hold a ``test_cuda_*`` test (the convention for tests that need a GPU)."""
    return sorted(p for p in tests_dir.glob("test_*.py") if "def test_cuda_" in p.read_text(encoding="utf-8"))


def run_cuda_tests(timeout_s: float) -> dict[str, Any]:
    """pytest ``-k test_cuda`` over :func:`cuda_test_files` (``-m ""``: marked slow ones too); the counts."""
    files = cuda_test_files()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", "-k", "test_cuda",
                   f"--junitxml={junit}", *[str(f.relative_to(REPO_ROOT)) for f in files]]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=max(timeout_s, 10))
        suite = ET.parse(junit).getroot() if junit.is_file() else None
    if suite is not None and suite.tag == "testsuites":
        suite = suite[0]
    counts = {key: int(suite.get(key, 0)) if suite is not None else 0 for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    result = {"files": [str(f.relative_to(REPO_ROOT)) for f in files], "returncode": done.returncode, **counts,
              "output_tail": (done.stdout + done.stderr)[-3000:]}
    if done.returncode not in (0, 5) or counts["tests"] == 0:  # 5: nothing collected
        raise RuntimeError(f"pytest exited {done.returncode} with {counts}: {(done.stdout + done.stderr)[-1500:]}")
    return result


# -- recipes ----------------------------------------------------------------------------------------------------


def recipe_plan(dry_run: bool) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(label, method, recipe, config) of every built-in recipe, in an order where each run's checkpoint
    exists before a later run starts from it (``{label}`` in a value: that label's run, ``run:ID``)."""
    if dry_run:
        n, bs, epochs = 64, 16, 2
        blockdrop = {"depth": 8, "num_train": n}
        s3pool = {"depth": 8, "width": 4, "grid_sizes": [4, 2], "val_size": 32}
        multitask = {"widths": [4, 8, 8, 8, 16, 16, 16], "val_size": 32}
        vgan = {"width": 4, "hidden": 16, "experts": 6, "latent_dim": 8, "gen_width": 4}
    else:
        n, bs, epochs = SPLIT_SIZES["train"], 128, 3
        blockdrop = {"depth": 32, "num_train": n}
        s3pool = {"depth": 20, "width": 16, "val_size": 256}
        multitask = {"val_size": 256}
        vgan = {}
    steps = epochs * (n // bs)
    budget = {"epochs": epochs, "batch_size": bs}
    return [
        ("blockdrop/backbone", "blockdrop", "backbone", {"dataset": IMAGES, **blockdrop, **budget}),
        ("blockdrop/policy", "blockdrop", "policy", {"dataset": IMAGES, "backbone": "{blockdrop/backbone}/backbone",
                                                     "num_train": n, **budget}),
        ("blockdrop/finetune", "blockdrop", "finetune", {"dataset": IMAGES, "policy": "{blockdrop/policy}/policy",
                                                         "num_train": n, **budget}),
        ("s3pool/classifier", "s3pool", "classifier", {"dataset": IMAGES, "train_size": n, "steps": steps,
                                                       "batch_size": bs, **s3pool}),
        ("multitask/wide", "multitask", "wide", {"dataset": ATTRIBUTES, "train_size": n, **multitask, **budget}),
        ("multitask/tree", "multitask", "tree", {"dataset": ATTRIBUTES, "train_size": n, "wide": "{multitask/wide}/wide",
                                                 "lam": 1.0, "widen_after": 1, "divisor": 2,
                                                 "val_size": multitask["val_size"], **budget}),
        *[(f"vgan/{kind}", "vgan", kind, {"dataset": IMAGES, "train_size": n, "steps": steps, "batch_size": bs,
                                          "sample_every": 10 * steps, **vgan}) for kind in ("vgan", "vcd", "gan")],
    ]


def throughput(store: Any, run_id: int, samples_per_epoch: int) -> dict[str, Any]:
    """Samples/s over the epochs after the first, from the times the epochs' metrics were logged (after
    each epoch's evaluation: the first epoch holds start-up, and compilation when it is on)."""
    times: dict[int, float] = {}
    for point in store.metrics(run_id):
        times[point.step] = min(times.get(point.step, point.time), point.time)
    epochs = sorted(step for step in times if step >= 1)
    last = max(step for step in epochs if step <= len(epochs)) if epochs else 0
    if last < 2:
        return {"samples_per_s": None, "epochs_timed": 0}
    seconds = times[last] - times[1]
    return {"samples_per_s": round((last - 1) * samples_per_epoch / seconds, 1), "epochs_timed": last - 1,
            "seconds_timed": round(seconds, 3)}


def samples_per_epoch(config: dict[str, Any]) -> int:
    n = int(config.get("num_train") or config.get("train_size") or SPLIT_SIZES["train"])
    bs = int(config.get("batch_size", 64))
    return (n // bs) * bs


def amp_on_mode(device: torch.device) -> str:
    from trainer.amp import bf16_supported

    return "bf16" if bf16_supported(device) else "fp16"


def run_recipes(device: torch.device, home: Path, dry_run: bool) -> dict[str, Any]:
    """Every recipe with AMP off and on, through the studio's worker path on ``device``."""
    from app.testing import environment, open_test_studio

    on = amp_on_mode(device)
    results: dict[str, Any] = {"amp_on": on}
    for amp in ("off", on):
        with open_test_studio(home / f"studio-{amp}", [PLUGIN]) as studio, environment(AVSTUDIO_AMP=amp):
            run_ids: dict[str, int] = {}
            for label, method, recipe, config in recipe_plan(dry_run):
                config = {k: (v.format(**{key: f"run:{rid}" for key, rid in run_ids.items()})
                              if isinstance(v, str) else v) for k, v in config.items()}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                result = studio.train(method, recipe, config, device=str(device))
                wall = time.perf_counter() - start
                entry: dict[str, Any] = {"status": result.status, "wall_s": round(wall, 2)}
                if result.status != "succeeded":
                    entry["error"] = result.error
                else:
                    run_ids[label] = result.run_id
                    entry.update(throughput(studio.store, result.run_id, samples_per_epoch(config)))
                if device.type == "cuda":
                    entry["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                results.setdefault(label, {})[amp] = entry
                print(f"   {label} amp={amp}: {entry}", flush=True)
    failed = [f"{label} amp={amp}" for label, runs in results.items() if isinstance(runs, dict)
              for amp, entry in runs.items() if isinstance(entry, dict) and entry.get("status") != "succeeded"]
    for runs in results.values():
        if isinstance(runs, dict) and all(isinstance(runs.get(m), dict) and runs[m].get("samples_per_s")
                                          for m in ("off", on)):
            runs["amp_speedup"] = round(runs[on]["samples_per_s"] / runs["off"]["samples_per_s"], 3)
    if failed:
        results["failed"] = failed
        raise StepFailed(f"recipes that did not succeed: {', '.join(failed)}", results)
    return results


class StepFailed(RuntimeError):
    """A step that failed with partial results worth keeping in the report."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial


# -- BlockDrop, S3Pool, NCCL -------------------------------------------------------------------------------


def blockdrop_timings(device: torch.device, dry_run: bool) -> dict[str, Any]:
    """The shipped backbone and policy, timed at batch 1, 64 and 256 on ``device`` as benchmarks/blockdrop.py
    times them (every inference path, the deployed one reported), on rendered ``shapes`` test images."""
    from benchmarks.blockdrop import inference_paths, pick_policy, timing_rounds
    from plugins.blockdrop import analysis
    from plugins.blockdrop.inference import deployed_layout
    from plugins.blockdrop.model import backbone_from_checkpoint, policy_from_checkpoint
    from plugins.datasets.shapes import generate
    from trainer.checkpoints import load_checkpoint

    assets = REPO_ROOT / "assets" / "blockdrop"
    backbone_path = assets / "backbone.safetensors"
    policy_path = pick_policy(assets, backbone_path)
    full_ckpt, bd_ckpt = load_checkpoint(backbone_path), load_checkpoint(policy_path)
    full, bd = backbone_from_checkpoint(full_ckpt).eval(), backbone_from_checkpoint(bd_ckpt).eval()
    policy_net = policy_from_checkpoint(bd_ckpt).eval()
    free_blocks = bd_ckpt.metadata.get("free_blocks")
    sizes = ((1, 2), (4, 1), (8, 1)) if dry_run else ((1, 50), (64, 4), (256, 2))
    reps, rounds = (1, 1) if dry_run else (3, 3)
    n = max(batch * count for batch, count in sizes)
    arrays = generate("test", n, size=int(full.config.input_size[0]), seed=0)
    images, targets = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["targets"]).long()
    for net in (full, bd, policy_net):
        net.to(device)
    result = analysis.evaluate_policy(bd, policy_net, images, targets, free_blocks)
    table = analysis.flop_table(bd, policy_net, tuple(images.shape[2:]))
    flops_ratio = table.blockdrop(result["policy"]).mean().item() / table.full
    ideal = 1.0 / flops_ratio
    paths = inference_paths(full, bd, policy_net, free_blocks)
    figures: dict[str, Any] = {"policy": policy_path.name, "images": n, "flops_ratio": flops_ratio,
                               "ideal_speedup": ideal, "rounds": rounds, "sizes": {}}
    for batch, count in sizes:
        summary = timing_rounds(paths, images, device, batch, count, reps, rounds, ideal)
        deployed = "channels_last" if deployed_layout(batch) else "folded"
        chosen = summary[deployed]
        figures["sizes"][f"b{batch}"] = {
            "deployed": deployed, "speedup": chosen["speedup_median"],
            "fraction_of_ideal": chosen["fraction_of_ideal_median"],
            "fraction_of_ideal_range": [chosen["fraction_of_ideal_min"], chosen["fraction_of_ideal_max"]],
            "full_ms": chosen["full_ms_median"], "blockdrop_ms": chosen["blockdrop_ms_median"],
            "paths": {name: {k: v for k, v in s.items() if k != "rounds"} for name, s in summary.items()
                      if isinstance(s, dict)}}
    return figures


def s3pool_layer_cost(device: torch.device, dry_run: bool) -> dict[str, Any]:
    """Forward + backward ms of S3Pool2d and nn.MaxPool2d on a 64×16×32×32 batch (benchmarks/s3pool.py's)."""
    from benchmarks.s3pool import layer_times

    times = layer_times(2 if dry_run else 50, device=device.type)
    return {"s3pool_ms": times["s3pool"], "max_ms": times["max"], "s3pool_over_max": times["s3pool"] / times["max"]}


def nccl_smoke(device: torch.device, home: Path) -> dict[str, Any]:
    """A tiny S3Pool run with ``--nproc 1`` through torchrun: NCCL on a GPU (gloo on the CPU)."""
    from app.plugin_manager import registry_from_env
    from app.settings import ASSETS_DIR
    from app.testing import environment
    from trainer.config import config_to_dict, make_config
    from trainer.distributed import launch_run
    from trainer.store import RunStore

    kind = "cuda" if device.type == "cuda" else "cpu"
    env = {"AVSTUDIO_EXTRA_PLUGINS": PLUGIN, "AVSTUDIO_PLUGINS": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    home.mkdir(parents=True, exist_ok=True)
    store = RunStore(f"sqlite:///{home / 'runs.db'}")
    try:
        with environment(env):
            registry = registry_from_env()
            chosen = registry.recipe("s3pool", "classifier")
            config = make_config(chosen.config_cls, {"dataset": IMAGES, "depth": 8, "width": 4, "train_size": 64,
                                                     "val_size": 32, "steps": 4, "batch_size": 16})
            run_id = store.enqueue("s3pool", "classifier", config_to_dict(config), device=kind)
            start = time.perf_counter()
            launch_run(store, run_id, nproc=1, device=kind, registry="app.plugin_manager:registry_from_env",
                       data_dir=home / "data", runs_dir=home / "runs", assets_dir=ASSETS_DIR, threads=1,
                       show_progress=False)
            wall = time.perf_counter() - start
        run = store.get_run(run_id)
        if str(run.status) != "succeeded":
            raise RuntimeError(f"the --nproc 1 run ended {run.status}: {(run.error or '').splitlines()[:1]}")
        return {"backend": "nccl" if kind == "cuda" else "gloo", "run_status": str(run.status),
                "run_device": run.device, "wall_s": round(wall, 2)}
    finally:
        store.close()


# -- the report ---------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"


def targets(steps: dict[str, dict[str, Any]], total_s: float, budget_s: float, dry_run: bool) -> dict[str, Any]:
    tests = steps.get("tests", {})
    met = {
        "every_step_ok": all(step.get("status") == "ok" for step in steps.values()),
        f"within_{budget_s / 60:g}_minutes": total_s <= budget_s,
        "cuda_tests_passed_none_skipped": (tests.get("status") == "ok" and tests.get("failures", 1) == 0
                                           and tests.get("errors", 1) == 0 and tests.get("skipped", 1) == 0),
    }
    report: dict[str, Any] = {key: {"met": value} for key, value in met.items()}
    if dry_run:
        report["notes"] = "dry run on the CPU: the CUDA tests skip and no figure is a GPU's"
    return report


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps, tiny, on the CPU (no GPU needed)")
    parser.add_argument("--out", default=None,
                        help="report path (default benchmarks/results/gpu.json; a temporary file with --dry-run)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="skip the steps that no time is left for")
    parser.add_argument("--steps", default="tests,recipes,blockdrop,s3pool,nccl", help="which steps, comma-separated")
    parser.add_argument("--home", default=None, help="where the runs go (default: a temporary directory)")
    args = parser.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny networks: one thread is fastest, and kind to a busy machine
        out = Path(args.out or Path(tempfile.gettempdir()) / "avstudio-gpu-dry-run.json")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here: run `python benchmarks/gpu.py --dry-run` to check the steps on the CPU")
        device = torch.device("cuda", torch.cuda.current_device())
        out = Path(args.out or REPO_ROOT / "benchmarks" / "results" / "gpu.json")
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    steps = Steps(args.budget_s)
    with contextlib.ExitStack() as stack:
        home = Path(args.home) if args.home else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("tests", lambda: run_cuda_tests(steps.left_s())),
            ("recipes", lambda: run_recipes(device, home / "recipes", args.dry_run)),
            ("blockdrop", lambda: blockdrop_timings(device, args.dry_run)),
            ("s3pool", lambda: s3pool_layer_cost(device, args.dry_run)),
            ("nccl", lambda: nccl_smoke(device, home / "nccl")),
        ]
        unknown = set(wanted) - {name for name, _ in plan}
        if unknown:
            raise SystemExit(f"unknown steps {sorted(unknown)}; use {', '.join(name for name, _ in plan)}")
        for name, fn in plan:
            if name in wanted:
                steps.run(name, fn)
    total_s = time.perf_counter() - steps.started
    from benchmarks.report import write_report

    figures = {"device": device_name(device), "dry_run": args.dry_run, "total_s": round(total_s, 1),
               "budget_s": args.budget_s, "torch": torch.__version__,
               "cuda": torch.version.cuda, "steps": steps.report}
    path = write_report("gpu", out, figures, targets(steps.report, total_s, args.budget_s, args.dry_run))
    print(f"wrote {path} in {total_s:.0f} s: " + ", ".join(f"{k} {v['status']}" for k, v in steps.report.items()))
    return path


if __name__ == "__main__":
    main()
