"""What BlockDrop costs and buys: FLOPs, measured latency, FirstK/RandomK baselines, the dataset panel.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``: 1 multiply-add = 2 FLOPs;
convolutions and linear layers only (BatchNorm, ReLU, pooling and adds are not counted), the same
rule as the paper's ``test.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from app.api.demo import interleaved_latency_ms  # noqa: F401  (timed through this module)
from plugins.blockdrop.evaluation import infer
from plugins.blockdrop.model import BlockDropResNet, PolicyModule, greedy_policy
from plugins.blockdrop.rl import apply_curriculum, curriculum_mask

# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of running ``fn()``."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


@dataclass
class FlopTable:
    """Per-image FLOPs of a backbone as ``base + Σ_k kept_k·block_k``, plus the policy network's."""

    base: int  # stem + head (+ the parameter-free shortcuts, which count 0)
    blocks: list[int]
    policy: int

    @property
    def full(self) -> int:
        return self.base + sum(self.blocks)

    def backbone(self, policy: torch.Tensor) -> torch.Tensor:
        """Backbone FLOPs per sample for policies N×K (float tensor N)."""
        return self.base + policy.float().cpu() @ torch.tensor(self.blocks, dtype=torch.float32)

    def blockdrop(self, policy: torch.Tensor) -> torch.Tensor:
        """Backbone + policy network FLOPs per sample."""
        return self.backbone(policy) + self.policy


def flop_table(backbone: BlockDropResNet, policy_net: PolicyModule | None, image_size: tuple[int, int]) -> FlopTable:
    """Count the FLOPs of each block once (batch 1): exact for any policy since blocks are skipped whole."""
    device = next(backbone.parameters()).device
    x = torch.zeros(1, 3, *image_size, device=device)
    k = backbone.num_blocks
    backbone.eval()
    base = count_flops(lambda: backbone(x, torch.zeros(1, k, device=device)))
    blocks = []
    for j in range(k):
        one_hot = torch.zeros(1, k, device=device)
        one_hot[0, j] = 1
        blocks.append(count_flops(partial(backbone, x, one_hot)) - base)
    policy = 0 if policy_net is None else count_flops(lambda: policy_net.eval()(x))
    return FlopTable(base, blocks, policy)


# --------------------------------------------------------------------------------------------
# Latency: the demo and benchmarks/blockdrop.py time BlockDrop with the demo kit's
# interleaved_latency_ms (imported above), through this module
# --------------------------------------------------------------------------------------------


def blockdrop_forward(backbone: BlockDropResNet, policy_net: PolicyModule, x: torch.Tensor,
                      free_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What BlockDrop runs at test time: policy net → greedy policy → backbone with real skipping."""
    policy = greedy_policy(policy_net(x))
    if free_blocks is not None and free_blocks < backbone.num_blocks:
        policy = apply_curriculum(policy, curriculum_mask(backbone.num_blocks, free_blocks, x.device))
    return backbone(x, policy), policy


# --------------------------------------------------------------------------------------------
# Baselines at the same budget
# --------------------------------------------------------------------------------------------


def _counts_for_budget(n: int, budget: float, num_blocks: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample block counts whose mean is ``budget`` (floor for some samples, ceil for the rest)."""
    budget = min(max(budget, 0.0), float(num_blocks))
    low = int(np.floor(budget))
    counts = torch.full((n,), low)
    extra = torch.randperm(n, generator=generator)[: int(round((budget - low) * n))]
    counts[extra] += 1
    return counts.clamp(max=num_blocks)


def firstk_policy(n: int, num_blocks: int, budget: float, seed: int = 0) -> torch.Tensor:
    """FirstK: each sample keeps its first k blocks, k chosen so the mean is ``budget``."""
    counts = _counts_for_budget(n, budget, num_blocks, torch.Generator().manual_seed(seed))
    return (torch.arange(num_blocks)[None, :] < counts[:, None]).float()


def randomk_policy(n: int, num_blocks: int, budget: float, seed: int = 0) -> torch.Tensor:
    """RandomK: each sample keeps k blocks drawn at random, k chosen so the mean is ``budget``."""
    g = torch.Generator().manual_seed(seed)
    counts = _counts_for_budget(n, budget, num_blocks, g)
    ranks = torch.rand(n, num_blocks, generator=g).argsort(1).argsort(1)
    return (ranks < counts[:, None]).float()


@torch.no_grad()
def accuracy_with_policy(backbone: BlockDropResNet, images: torch.Tensor, targets: torch.Tensor,
                         policy: torch.Tensor, batch_size: int = 500) -> float:
    """Accuracy of ``backbone`` on uint8 ``images`` executed with a fixed per-sample policy."""
    device = next(backbone.parameters()).device
    backbone.eval()
    correct = 0
    for xs, ys, ps in zip(images.split(batch_size), targets.split(batch_size), policy.split(batch_size),
                          strict=True):
        logits = backbone(xs.to(device).float().div_(255.0), ps.to(device))
        correct += (logits.argmax(1).cpu() == ys).sum().item()
    return correct / max(len(targets), 1)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two 1-D sequences (ties averaged); 0 when either is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


# --------------------------------------------------------------------------------------------
# The dataset panel
# --------------------------------------------------------------------------------------------


def file_hash(*paths: Path | str) -> str:
    """A short hash of the files' bytes: keys the cached panel to exactly these checkpoints."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def evaluate_policy(backbone: BlockDropResNet, policy_net: PolicyModule, images: torch.Tensor,
                    targets: torch.Tensor, free_blocks: int | None = None) -> dict[str, Any]:
    """Per-sample predictions, policies and correctness of BlockDrop on a split."""
    backbone.eval()
    policy_net.eval()
    logits, policies = infer(backbone, policy_net, images, free_blocks=free_blocks)
    return {"pred": logits.argmax(1), "policy": policies, "correct": logits.argmax(1) == targets}


def dataset_panel(full_backbone: BlockDropResNet, policies: dict[str, tuple[BlockDropResNet, PolicyModule, int]],
                  images: torch.Tensor, targets: torch.Tensor, difficulty: torch.Tensor | None,
                  labels: list[str], gallery_size: int = 8) -> dict[str, Any]:
    """Everything the dataset panel shows, as JSON-ready lists (galleries as split indices).

    ``policies`` maps a name (``policy-g5``) to (its backbone, its policy net, free blocks).
    """
    k = full_backbone.num_blocks
    full_logits, _ = infer(full_backbone.eval(), None, images)
    panel: dict[str, Any] = {"num_blocks": k, "labels": labels, "num_images": len(targets),
                             "accuracy_full": (full_logits.argmax(1) == targets).float().mean().item(),
                             "policies": {}}
    for name, (backbone, policy_net, free) in policies.items():
        result = evaluate_policy(backbone, policy_net, images, targets, free)
        used = result["policy"].sum(1)
        budget = used.mean().item()
        entry = {
            "accuracy": result["correct"].float().mean().item(),
            "mean_blocks": budget,
            "histogram": torch.bincount(used.long(), minlength=k + 1).tolist(),
            "accuracy_firstk": accuracy_with_policy(full_backbone, images, targets,
                                                    firstk_policy(len(targets), k, budget)),
            "accuracy_randomk": accuracy_with_policy(full_backbone, images, targets,
                                                     randomk_policy(len(targets), k, budget)),
            "class_mean_blocks": [used[targets == c].mean().item() if (targets == c).any() else 0.0
                                  for c in range(len(labels))],
            "unique_policies": int(torch.unique(result["policy"], dim=0).shape[0]),
            "spearman_difficulty": None if difficulty is None else spearman(used.numpy(), difficulty.numpy()),
            "fewest": torch.argsort(used + torch.rand(len(used)) * 0.1)[:gallery_size].tolist(),
            "most": torch.argsort(used + torch.rand(len(used)) * 0.1, descending=True)[:gallery_size].tolist(),
            "used": used.tolist(),
        }
        panel["policies"][name] = entry
    return panel


class PanelCache:
    """The dataset panel cached in memory and as JSON under ``cache_dir``, keyed by checkpoint hashes."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.memory: dict[str, dict] = {}

    def get(self, key: str, compute: Callable[[], dict]) -> dict:
        if key in self.memory:
            return self.memory[key]
        path = self.cache_dir / f"panel-{key}.json"
        if path.is_file():
            try:
                self.memory[key] = json.loads(path.read_text())
                return self.memory[key]
            except (OSError, ValueError):
                pass  # a broken cache file is recomputed
        panel = compute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(panel))
        except OSError:
            pass  # a read-only data dir still gets the in-memory cache
        self.memory[key] = panel
        return panel
