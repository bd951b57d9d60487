"""Baselines on the built-in datasets: is `shapes` hard enough for depth to matter, and `persons` for width?

Trains a ResNet-32 (and a ResNet-8) on `shapes` and reports test accuracy overall and by difficulty
tercile (it should fall as difficulty rises); trains a small multi-task CNN on `persons` (wide and
thin) and reports per-attribute accuracy against the majority rate, and, for the wide net, the task
affinity of arXiv:1611.05377 (do head tasks share their hard examples with each other, and body
tasks with each other?) and accuracy by head and body difficulty tercile.

    python benchmarks/datasets.py [--quick] [--out PATH] [--device auto] [--only shapes|persons]

``--only`` runs one half and keeps the other half's figures from the report already at ``--out``
(the report's ``halves`` records the command, commit and config each half was measured with).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import machine, write_report  # noqa: E402
from plugins.datasets.shapes import load_shapes  # noqa: E402
from trainer.datasets import ImageTensorDataset  # noqa: E402
from trainer.gitinfo import current_commit  # noqa: E402


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_resnet(depth: int, num_classes: int) -> nn.Module:
    from plugins.blockdrop.model import build_resnet as blockdrop_resnet

    return blockdrop_resnet(depth, num_classes)


class MultiTaskCNN(nn.Module):
    """A plain conv trunk (4 stages) with one linear head per attribute (one logit each)."""

    def __init__(self, num_attributes: int, width: int = 64):
        super().__init__()
        layers, in_ch = [], 3
        for stage in range(4):
            out_ch = width * min(2**stage, 4)
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
                       nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
                       nn.MaxPool2d(2)]
            in_ch = out_ch
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.Linear(in_ch, num_attributes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk((x - 0.5) / 0.25))


def _augment(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Random horizontal flip per sample and a random shift (reflect-padded crop) per batch."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if pad:
        h, w = x.shape[2:]
        dx, dy = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")[:, :, dy:dy + h, dx:dx + w]
    return x


def train(model: nn.Module, data: ImageTensorDataset, epochs: int, device: torch.device, batch: int = 128,
          lr: float = 0.1, pad: int = 4) -> float:
    """SGD with momentum, one-cycle schedule, flip+shift augmentation; returns seconds spent."""
    model.to(device).train()
    images, targets = data.images.to(device), data.targets.to(device)
    steps = epochs * math.ceil(len(images) / batch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    multilabel = data.task == "multilabel"
    amp = device.type == "cuda"
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), device=device)
        for i in range(0, len(images), batch):
            idx = order[i:i + batch]
            x = _augment(images[idx].float().div_(255), pad)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            logits = logits.float()
            loss = (F.binary_cross_entropy_with_logits(logits, targets[idx]) if multilabel
                    else F.cross_entropy(logits, targets[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def predict_logits(model: nn.Module, data: ImageTensorDataset, device: torch.device, batch: int = 500) -> torch.Tensor:
    """The model's logits for every image of ``data``, on the CPU."""
    model.to(device).eval()
    return torch.cat([model(data.images[i:i + batch].to(device).float().div_(255)).float().cpu()
                      for i in range(0, len(data), batch)])


def predict(model: nn.Module, data: ImageTensorDataset, device: torch.device, batch: int = 500) -> torch.Tensor:
    """Predicted class indices (classification) or 0/1 attributes (multilabel), on the CPU."""
    logits = predict_logits(model, data, device, batch)
    return logits.argmax(1) if data.task == "classification" else (logits > 0).float()


def task_affinity(margins: torch.Tensor) -> torch.Tensor:
    """T×T affinity of arXiv:1611.05377 from per-example margins (N×T, ``|p − g|``):
    A(i, j) = P(both hard) + P(both easy), an example "hard" for a task when its margin is at least
    that task's mean margin."""
    hard = (margins >= margins.mean(0)).float()
    return (hard.T @ hard + (1 - hard).T @ (1 - hard)) / len(margins)


def group_affinity(affinity: torch.Tensor, rows: list[int], cols: list[int]) -> float:
    """Mean affinity between two groups of tasks (every pair i in rows, j in cols), or within one group
    (rows == cols: every pair i < j)."""
    pairs = [(i, j) for i in rows for j in cols if (i < j if rows == cols else True)]
    return sum(affinity[i, j].item() for i, j in pairs) / len(pairs)


def by_tercile(correct: torch.Tensor, difficulty: torch.Tensor) -> list[float]:
    """Accuracy in the easiest, middle and hardest third of the samples by difficulty."""
    order = difficulty.argsort()
    return [correct[part].float().mean().item() for part in order.tensor_split(3)]


def run_shapes(cfg: dict, data_dir: Path, device: torch.device, log) -> dict:
    kwargs = dict(num_train=cfg["shapes_train"], num_val=cfg["shapes_val"], num_test=cfg["shapes_test"])
    start = time.perf_counter()
    train_set = load_shapes("train", data_dir, **kwargs)
    test_set = load_shapes("test", data_dir, **kwargs)
    figures = {"shapes_generate_or_load_s": round(time.perf_counter() - start, 2)}
    for i, depth in enumerate(cfg["depths"]):
        torch.manual_seed(0)
        model = build_resnet(depth, len(train_set.labels))
        seconds = train(model, train_set, cfg["shapes_epochs"], device, batch=cfg["batch"], lr=cfg["lr"])
        correct = predict(model, test_set, device) == test_set.targets
        log(f"resnet{depth}: {correct.float().mean():.4f} in {seconds:.0f}s, terciles "
            f"{[round(a, 3) for a in by_tercile(correct, test_set.difficulty)]}")
        suffix = "" if i == 0 else f"_resnet{depth}"  # the first depth (32 unless --set depths=...) unsuffixed
        figures[f"shapes_accuracy{suffix}"] = round(correct.float().mean().item(), 4)
        figures[f"shapes_accuracy_by_difficulty_tercile{suffix}"] = [
            round(a, 4) for a in by_tercile(correct, test_set.difficulty)]
        figures[f"shapes_train_s{suffix}"] = round(seconds, 1)
    return figures


def run_persons(cfg: dict, data_dir: Path, device: torch.device, log) -> dict:
    from plugins.datasets.persons import BODY_ATTRIBUTES, HEAD_ATTRIBUTES, load_persons

    kwargs = dict(num_train=cfg["persons_train"], num_val=cfg["persons_val"], num_test=cfg["persons_test"])
    start = time.perf_counter()
    train_set = load_persons("train", data_dir, **kwargs)
    test_set = load_persons("test", data_dir, **kwargs)
    figures: dict = {"persons_generate_or_load_s": round(time.perf_counter() - start, 2)}
    names, targets = train_set.labels, test_set.targets
    frequency = targets.mean(0)
    majority = torch.maximum(frequency, 1 - frequency)
    head = [names.index(a) for a in HEAD_ATTRIBUTES]
    body = [names.index(a) for a in BODY_ATTRIBUTES]
    for width in cfg["widths"]:
        torch.manual_seed(0)
        model = MultiTaskCNN(len(names), width=width)
        seconds = train(model, train_set, cfg["persons_epochs"], device, batch=cfg["batch"], lr=cfg["lr"] / 2)
        logits = predict_logits(model, test_set, device)
        correct = ((logits > 0).float() == targets).float()
        per_attr = correct.mean(0)
        mean = per_attr.mean().item()
        log(f"persons width {width}: mean {mean:.4f} in {seconds:.0f}s")
        if width != cfg["widths"][0]:
            figures[f"persons_mean_accuracy_width{width}"] = round(mean, 4)
            continue
        figures["persons_mean_accuracy"] = round(mean, 4)
        figures["persons_attribute_accuracy"] = {n: round(a.item(), 4) for n, a in zip(names, per_attr, strict=True)}
        figures["persons_attribute_majority"] = {n: round(m.item(), 4) for n, m in zip(names, majority, strict=True)}
        gain = per_attr - majority
        figures["persons_min_gain_over_majority"] = round(gain.min().item(), 4)
        # Share of the majority rule's error the network removes: 1 − error / majority error.
        figures["persons_min_error_reduction"] = round((1 - (1 - per_attr) / (1 - majority)).min().item(), 4)
        log("persons accuracy − majority: " + ", ".join(f"{n} {g:+.3f}" for n, g in zip(names, gain.tolist(),
                                                                                        strict=True)))
        # Task affinity (arXiv:1611.05377) on the test split: do tasks of one region share hard examples?
        margins = (torch.sigmoid(logits) - targets).abs()
        affinity = task_affinity(margins)
        figures["persons_affinity_within_head"] = round(group_affinity(affinity, head, head), 4)
        figures["persons_affinity_within_body"] = round(group_affinity(affinity, body, body), 4)
        figures["persons_affinity_head_body"] = round(group_affinity(affinity, head, body), 4)
        figures["persons_affinity"] = [[round(a, 3) for a in row] for row in affinity.tolist()]
        log(f"persons affinity: within head {figures['persons_affinity_within_head']:.3f}, within body "
            f"{figures['persons_affinity_within_body']:.3f}, head-body {figures['persons_affinity_head_body']:.3f}")
        # Each region's tasks against each region's ground-truth difficulty (easiest to hardest third).
        for tasks, task_name in ((head, "head"), (body, "body")):
            region_correct = correct[:, tasks].mean(1)
            for region in ("head", "body"):
                figures[f"persons_{task_name}_accuracy_by_{region}_difficulty_tercile"] = [
                    round(a, 4) for a in by_tercile(region_correct, test_set.meta[f"{region}_difficulty"])]
        figures["persons_train_s"] = round(seconds, 1)
    return figures


def _kept_half(path: Path, half: str, quick: bool, log) -> tuple[dict, dict | None]:
    """The figures of ``half`` in the report at ``path`` and how that half was measured (``--only`` runs)."""
    if not path.exists():
        return {}, None
    report = json.loads(path.read_text())
    if report.get("benchmark") != "datasets" or bool(report.get("quick")) != quick:
        return {}, None
    figures = {k: v for k, v in report["figures"].items() if k.startswith(f"{half}_")}
    measured = report.get("halves", {}).get(half) or {
        k: report.get(k) for k in ("command", "commit", "machine", "config")}
    log(f"keeping the {half} figures of {path} (measured by: {measured['command']})")
    return figures, measured


FULL = dict(shapes_train=20000, shapes_val=2000, shapes_test=5000, shapes_epochs=30,
            persons_train=20000, persons_val=2000, persons_test=5000, persons_epochs=15, batch=128, lr=0.1,
            depths=[32, 8], widths=[64, 16])
# Quick: small batches, so that a few minutes of CPU still make enough optimiser steps to learn something.
QUICK = dict(shapes_train=2000, shapes_val=100, shapes_test=600, shapes_epochs=4,
             persons_train=800, persons_val=100, persons_test=400, persons_epochs=3, batch=32, lr=0.05,
             depths=[32, 8], widths=[64, 16])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts and few epochs (CPU, minutes)")
    parser.add_argument("--out", default="benchmarks/results/datasets.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "avstudio-benchmark-data"),
                        help="where the generated datasets are cached")
    parser.add_argument("--only", choices=["shapes", "persons"], help="run one half only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. shapes_train=5000 or depths=20,8 (calibration runs)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in cfg:
            parser.error(f"unknown config key {key!r}; valid: {', '.join(cfg)}")
        cfg[key] = [int(v) for v in value.split(",")] if isinstance(cfg[key], list) else type(cfg[key])(value)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data_dir = Path(args.data_dir)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"device {device}, {'quick' if args.quick else 'full'} run")
    this_run = {"command": "python " + " ".join(sys.argv), "commit": current_commit(), "machine": machine(),
                "config": cfg}
    figures: dict = {}
    halves: dict = {}
    for half, run in (("shapes", run_shapes), ("persons", run_persons)):
        if args.only in (None, half):
            figures.update(run(cfg, data_dir, device, log))
            halves[half] = this_run
        else:
            kept, measured = _kept_half(Path(args.out), half, args.quick, log)
            figures.update(kept)
            if measured is not None:
                halves[half] = measured
    figures = {k: figures[k] for k in sorted(figures, key=lambda k: not k.startswith("shapes_"))}
    targets = {
        "shapes_accuracy": "0.85–0.97 (full run): high but not saturated",
        "shapes_accuracy_by_difficulty_tercile": "falls from the easiest to the hardest tercile",
        "shapes_accuracy_resnet8": "clearly below shapes_accuracy",
        "persons_mean_accuracy": "several points above persons_mean_accuracy_width16 (thin net)",
        "persons_min_gain_over_majority": "≥ 0.08, or persons_min_error_reduction ≥ 0.5: every attribute learnt",
        "persons_affinity_within_head": "clearly above persons_affinity_head_body",
        "persons_affinity_within_body": "clearly above persons_affinity_head_body",
        "persons_head_accuracy_by_head_difficulty_tercile": "falls; by body difficulty it stays about flat "
                                                            "(and the same for the body's tasks)",
    }
    out = write_report("datasets", args.out, figures, targets, quick=args.quick, config=cfg, halves=halves)
    log(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
