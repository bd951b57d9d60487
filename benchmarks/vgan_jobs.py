"""The VGAN benchmark's jobs, each in its own single-thread process (or inline with ``--workers 1``): one
checkpoint's probe error, generated-image features, class histogram and throughput; the real images
through the same extractors; the small semi-supervised table; training one kind through the studio
(see benchmarks/vgan.py)."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.cards import studio_data, train_in_scratch_home


def _split(data_dir: str, split: str, limit: int = 0) -> tuple[Any, Any]:
    from plugins.datasets.shapes import load_shapes

    data = load_shapes(split, Path(data_dir))
    limit = limit or len(data.targets)
    return data.images[:limit], data.targets[:limit].long()


def _classifier(path: str) -> tuple[Any, Any, int]:
    """The shapes classifier: (logits fn, pooled-features fn, classes), on float images in [0, 1]
    (the ResNet normalises its input itself, with the mean/std its card records)."""
    import torch
    import torch.nn.functional as F

    from app.api.training import load_checkpoint
    from plugins.blockdrop.model import backbone_from_checkpoint

    net = backbone_from_checkpoint(load_checkpoint(path)).eval()

    def pooled(x: torch.Tensor) -> torch.Tensor:
        h = net.stem(x)
        for block, shortcut in zip(net.blocks, net.shortcuts, strict=True):
            h = F.relu(shortcut(h) + block(h))
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    return net, pooled, net.config.num_classes


def samples_per_s(gcfg: Any, generator: Any, source: Any, batch: int, repeats: int) -> float:
    """Images generated per second at ``batch`` (median time of ``repeats`` after 2 warm-ups)."""
    from plugins.vgan.recipes import generate

    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        generate(gcfg, generator, batch, seed=i, source=source[:batch] if source is not None else None,
                 batch_size=batch)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _model_job(job: dict[str, Any]) -> dict[str, Any]:
    """Probe error, generated-image features and histogram, and throughput of one checkpoint."""
    import torch

    from app.api.training import load_checkpoint
    from plugins.vgan.metrics import class_histogram, extract_features, label_agreement, linear_probe_error
    from plugins.vgan.model import models_from_checkpoint
    from plugins.vgan.recipes import generate

    cfg, data_dir = job["cfg"], job["data_dir"]
    gcfg, energy_net, generator = models_from_checkpoint(load_checkpoint(job["path"]))
    x_train, y_train = _split(data_dir, "train", cfg["probe_train"])
    x_test, y_test = _split(data_dir, "test", cfg["probe_test"])
    probe = linear_probe_error(energy_net.features, x_train, y_train, x_test, y_test)
    n = cfg["generated"]
    source = None
    if gcfg.kind == "vcd":  # a transition operator: its samples are transitions of held-out images
        val, _ = _split(data_dir, "val")
        source = val[torch.arange(n) % len(val)]
    fake = generate(gcfg, generator, n, seed=cfg["seed"], source=source)
    net, pooled, num_classes = _classifier(job["classifier"])
    kept = None
    if gcfg.kind == "vcd":  # the classifier's label of a test image, kept by its reconstruction and transitions
        x_kept, _ = _split(data_dir, "test", cfg["agreement_images"])
        kept = label_agreement(net, generator, x_kept, cfg["chain_steps"], seed=cfg["seed"])
    return {"kind": job["kind"], "probe_error": probe, "features": extract_features(pooled, fake).numpy(),
            "label_kept": kept,
            "class_histogram": class_histogram(net, fake, num_classes).tolist(),
            "samples_per_s": samples_per_s(gcfg, generator, source, cfg["throughput_batch"],
                                           cfg["throughput_repeats"])}


def _reference_job(job: dict[str, Any]) -> dict[str, Any]:
    """Real images through the same extractors: test and train features, the train histogram, and a
    linear probe on raw pixels (the floor a useful φ should beat)."""
    from plugins.vgan.metrics import class_histogram, extract_features, linear_probe_error

    cfg, data_dir = job["cfg"], job["data_dir"]
    net, pooled, num_classes = _classifier(job["classifier"])
    x_test, y_test = _split(data_dir, "test", cfg["fd_test"])
    x_real, _ = _split(data_dir, "train", cfg["generated"])
    x_probe, y_probe = _split(data_dir, "train", cfg["probe_train"])
    x_probe_test, y_probe_test = _split(data_dir, "test", cfg["probe_test"])
    return {"kind": "reference", "test_features": extract_features(pooled, x_test).numpy(),
            "train_features": extract_features(pooled, x_real).numpy(),
            "class_histogram": class_histogram(net, x_real, num_classes).tolist(),
            "probe_error_pixels": linear_probe_error(lambda x: x.flatten(1), x_probe, y_probe, x_probe_test,
                                                     y_probe_test)}


def _semi_job(job: dict[str, Any]) -> dict[str, Any]:
    """Table 2 in small: the CNN on the first labelled train images, with or without VCD transitions."""
    from app.api.training import load_checkpoint
    from plugins.vgan.metrics import semi_supervised_error
    from plugins.vgan.model import models_from_checkpoint

    cfg, data_dir = job["cfg"], job["data_dir"]
    augment = None
    if job["augment_from"] is not None:
        _, _, generator = models_from_checkpoint(load_checkpoint(job["augment_from"]))
        augment = generator.transition  # eval mode: BN running statistics; fresh noise every call
    x, y = _split(data_dir, "train", cfg["semi_labels"])
    x_val, y_val = _split(data_dir, "val", cfg["semi_val"])
    x_test, y_test = _split(data_dir, "test", cfg["semi_test"])
    result = semi_supervised_error(x, y, x_test, y_test, augment=augment, val_images=x_val, val_labels=y_val,
                                   steps=cfg["semi_steps"], batch_size=cfg["semi_batch"], seed=job["seed"],
                                   width=cfg["semi_width"], lr=cfg["semi_lr"])
    return {"kind": job["kind"], "test_error": result.test_error, "best_step": result.best_step,
            "val_errors": [[s, e] for s, e in result.val_errors]}


def _train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one kind through the studio's worker path in its own scratch home; the checkpoint's path."""
    checkpoints = train_in_scratch_home("plugins.vgan", "vgan", job["kind"], job["config"], job["home"], job["kind"])
    return {"kind": job["kind"], "path": str(checkpoints[job["kind"]])}


JOBS = {"model": _model_job, "reference": _reference_job, "semi": _semi_job, "train": _train_job}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job on one thread with the studio's data in ``job['data_dir']``; adds its wall time."""
    import torch

    torch.set_num_threads(1)
    start = time.time()
    with studio_data(job["data_dir"]):  # inline jobs (--workers 1) leave this process's environment as it was
        out = JOBS[job["job"]](job)
    out["job"], out["seconds"] = job["job"], time.time() - start
    return out


def run_jobs(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Run ``jobs`` in ``workers`` spawned processes (inline, in this process, when ``workers`` is 1)."""
    started, results = time.time(), []

    def log(result: dict[str, Any]) -> None:
        print(f"[{time.time() - started:6.0f}s] {result['job']:<9} {result['kind']:<9} "
              f"done in {result['seconds']:.0f}s", flush=True)

    if workers <= 1:
        for job in jobs:
            results.append(run_job(job))
            log(results[-1])
        return results
    with mp.get_context("spawn").Pool(workers) as pool:
        for result in pool.imap_unordered(run_job, jobs):
            results.append(result)
            log(result)
    return results
