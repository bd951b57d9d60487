"""Evaluating a backbone (and a policy network) on a split: logits, greedy policies, the paper's stats."""

from __future__ import annotations

import torch

from plugins.blockdrop.model import BlockDropResNet, PolicyModule, greedy_policy
from plugins.blockdrop.rl import apply_curriculum, curriculum_mask, reward


@torch.no_grad()
def infer(backbone: BlockDropResNet, policy_net: PolicyModule | None, images: torch.Tensor,
          free_blocks: int | None = None, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits and greedy policies (N×K, all ones without a policy net) for uint8 images."""
    device = next(backbone.parameters()).device
    k = backbone.num_blocks
    mask = curriculum_mask(k, k if free_blocks is None else free_blocks, device)
    logits, policies = [], []
    for chunk in images.split(batch_size):
        x = chunk.to(device).float().div_(255.0)
        if policy_net is None:
            policy = torch.ones(len(x), k, device=device)
        else:
            policy = apply_curriculum(greedy_policy(policy_net(x)), mask)
        logits.append(backbone(x, policy).cpu())
        policies.append(policy.cpu())
    return torch.cat(logits), torch.cat(policies)


def policy_stats(logits: torch.Tensor, policies: torch.Tensor, targets: torch.Tensor, gamma: float) -> dict:
    """accuracy, reward, mean blocks used and number of unique policies of an evaluation."""
    correct = logits.argmax(1) == targets
    return {
        "accuracy": correct.float().mean().item(),
        "reward": reward(correct, policies, gamma).mean().item(),
        "mean_blocks": policies.sum(1).mean().item(),
        "unique_policies": float(torch.unique(policies, dim=0).shape[0]),
    }


def evaluate(backbone: BlockDropResNet, policy_net: PolicyModule | None, images: torch.Tensor,
             targets: torch.Tensor, gamma: float = 1.0, free_blocks: int | None = None) -> dict:
    """:func:`policy_stats` of the models in eval mode (they are put back in the mode they were in)."""
    modes = [(m, m.training) for m in (backbone, policy_net) if m is not None]
    for module, _ in modes:
        module.eval()
    try:
        logits, policies = infer(backbone, policy_net, images, free_blocks=free_blocks)
    finally:
        for module, training in modes:
            module.train(training)
    return policy_stats(logits, policies, targets, gamma)
