"""Where VCD loses the label: short VCD trainings that differ in one setting, each measured the same way.

The VGAN benchmark (benchmarks/vgan.py) found that the shipped VCD's transitions keep the shapes
classifier's label of an image about as often as chance. This sweep trains VCD variants at one short
budget (same data, steps, batch and seed; one setting changed from the shipped card's config each) and
measures, on the first ``--images`` test images:

- ``reconstruction_bce``: the per-pixel binary cross-entropy of the noise-free path Decode(Encode(x))
  (a floor above 0: the images are not binary);
- ``label_kept``: how often the classifier gives the reconstruction, and the image after 1, 2, …
  ``--chain`` transitions, the label it gives the real image (plugins.vgan.metrics.label_agreement);
- ``classes_with_2pct``: classes that get at least 2% of the one-step transitions of 1,000 val images.

Each variant is one JSON file in ``--jobs-dir`` (a finished variant is not trained again, so an
interrupted sweep resumes); the report ``benchmarks/results/vcd-sweep.json`` gathers those present.

    python benchmarks/vcd_sweep.py [--steps 1500] [--variants NAME ...] [--workers 1] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import REPO_ROOT, write_report  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"
BASE = {"dataset": "shapes", "batch_size": 64, "k": 1, "experts": 64, "latent_dim": 128, "width": 32,
        "hidden": 256, "gen_width": 32, "rho": 0.01, "recon_loss": "bce", "recon_reduction": "mean",
        "noise_ratio": 0.5, "sample_every": 100000, "seed": 0}
# name → the settings that differ from BASE (the shipped VCD's config)
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "per-image": {"recon_reduction": "sum"},
    "per-image-wide": {"recon_reduction": "sum", "latent_dim": 512, "gen_width": 64},
    "per-image-wide-rho0.1": {"recon_reduction": "sum", "latent_dim": 512, "gen_width": 64, "rho": 0.1},
    "per-image-noise0.25": {"recon_reduction": "sum", "noise_ratio": 0.25},
    "rho0.001": {"rho": 0.001},  # per pixel, the energy weighed 10× less than the shipped model's
}


def job_path(jobs_dir: Path, name: str, steps: int) -> Path:
    return jobs_dir / f"{name}-{steps}steps.json"


def run_variant(job: Mapping[str, Any]) -> dict[str, Any]:
    """Train one variant through the studio's worker path and measure it (one thread)."""
    import torch

    from app.api.training import load_checkpoint
    from benchmarks.cards import studio_data, train_in_scratch_home
    from benchmarks.vgan_jobs import _classifier, _split
    from plugins.vgan.metrics import class_histogram, classes_covered, label_agreement
    from plugins.vgan.model import models_from_checkpoint
    from plugins.vgan.recipes import generate

    torch.set_num_threads(1)
    config = {**BASE, **VARIANTS[job["name"]], "steps": job["steps"]}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vcd-sweep-") as home, studio_data(job["data_dir"]):
        paths = train_in_scratch_home("plugins.vgan", "vgan", "vcd", config, home, job["name"])
        checkpoint = load_checkpoint(paths["vcd"])
    train_s = time.time() - started
    gcfg, _, generator = models_from_checkpoint(checkpoint)
    net, _, num_classes = _classifier(job["classifier"])
    x, _ = _split(job["data_dir"], "test", job["images"])
    with torch.no_grad():
        xf = x.float() / 255
        rec = torch.cat([generator.reconstruct(b) for b in xf.split(250)])
        bce = float(torch.nn.functional.binary_cross_entropy(rec.clamp(1e-4, 1 - 1e-4), xf))
    kept = label_agreement(net, generator, x, job["chain"], seed=0)
    val, _ = _split(job["data_dir"], "val", 1000)
    hist = class_histogram(net, generate(gcfg, generator, len(val), seed=0, source=val), num_classes).tolist()
    return {"name": job["name"], "steps": job["steps"], "config": config, "changed": VARIANTS[job["name"]],
            "reconstruction_bce": bce, "label_kept": kept, "class_histogram": hist,
            "classes_with_2pct": classes_covered(hist, 0.02), "train_s": train_s,
            "final_metrics": {k: v for k, v in (checkpoint.metadata.get("metrics") or {}).items()
                              if isinstance(v, (int, float))}}


def _run_and_save(job: Mapping[str, Any]) -> str:
    out = run_variant(job)
    path = job_path(Path(job["jobs_dir"]), job["name"], job["steps"])
    path.write_text(json.dumps(out, indent=1))
    return f"{job['name']}: kept {out['label_kept']['chain'][0]:.3f} after one transition, {out['train_s']:.0f}s"


def report(jobs_dir: Path, steps: int, out: Path) -> Path:
    found = {name: json.loads(job_path(jobs_dir, name, steps).read_text())
             for name in VARIANTS if job_path(jobs_dir, name, steps).is_file()}
    if not found:
        raise SystemExit(f"no finished variant in {jobs_dir} at {steps} steps")
    figures = {"variants": found, "missing": [n for n in VARIANTS if n not in found]}
    best = max(found, key=lambda n: found[n]["label_kept"]["chain"][0])
    targets = {"label_kept_at_least_0.7": {"met": found[best]["label_kept"]["chain"][0] >= 0.7, "best": best,
                                           "one_transition": found[best]["label_kept"]["chain"][0]}}
    setup = {"base_config": BASE, "steps": steps, "variants": VARIANTS,
             "classifier": "assets/blockdrop/backbone.safetensors (shapes, ResNet-32)"}
    return write_report("vcd-sweep", out, figures, targets, mode="sweep", setup=setup,
                        mode_note="short VCD trainings, one setting changed each: a diagnosis, not the shipped models")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--images", type=int, default=1000, help="test images for the label measures")
    parser.add_argument("--chain", type=int, default=5, help="transition steps measured")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--jobs-dir", default=str(RESULTS / "vcd-sweep-jobs"))
    parser.add_argument("--out", default=str(RESULTS / "vcd-sweep.json"))
    parser.add_argument("--classifier", default=str(REPO_ROOT / "assets" / "blockdrop" / "backbone.safetensors"))
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "avstudio-benchmark-data"))
    args = parser.parse_args(argv)
    jobs_dir = Path(args.jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from plugins.datasets.shapes import load_shapes

        for split in ("train", "val", "test"):  # the cache, made once before workers share it
            load_shapes(split, Path(args.data_dir))
        todo = [{"name": n, "steps": args.steps, "images": args.images, "chain": args.chain,
                 "data_dir": args.data_dir, "classifier": args.classifier, "jobs_dir": str(jobs_dir)}
                for n in args.variants if not job_path(jobs_dir, n, args.steps).is_file()]
        print(f"{len(todo)} variant(s) to train: {', '.join(j['name'] for j in todo) or 'none'}", flush=True)
        if args.workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(args.workers) as pool:
                for line in pool.imap_unordered(_run_and_save, todo):
                    print(line, flush=True)
        else:
            for job in todo:
                print(_run_and_save(job), flush=True)
    path = report(jobs_dir, args.steps, Path(args.out))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
