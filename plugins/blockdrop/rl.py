"""The reinforcement-learning pieces of BlockDrop: reward, exploration bound, curriculum, REINFORCE loss."""

from __future__ import annotations

from typing import Any

import torch

from plugins.blockdrop.model import greedy_policy


def reward(correct: torch.Tensor, policy: torch.Tensor, gamma: float) -> torch.Tensor:
    """The paper's reward per sample: 1 − (|u|/K)² when correct, else −γ."""
    sparsity = 1.0 - (policy.sum(1) / policy.shape[1]) ** 2
    return torch.where(correct, sparsity, torch.full_like(sparsity, -gamma))


def bound_probs(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exploration bound: s' = α·s + (1−α)·(1−s), so every action keeps probability ≥ 1−α."""
    return alpha * probs + (1.0 - alpha) * (1.0 - probs)


def curriculum_mask(num_blocks: int, free_blocks: int, device: Any = None) -> torch.Tensor:
    """1 for the last ``free_blocks`` blocks (learned now), 0 for the first K − free_blocks (forced on)."""
    mask = torch.zeros(num_blocks, device=device)
    mask[num_blocks - min(free_blocks, num_blocks):] = 1.0
    return mask


def apply_curriculum(policy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Force the blocks outside the curriculum ``mask`` to be kept."""
    return policy * mask + (1.0 - mask)


def sample_policies(probs: torch.Tensor, alpha: float, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sampled (α-bounded) and the greedy policy, with blocks outside the curriculum forced on."""
    sampled = torch.bernoulli(bound_probs(probs.detach(), alpha))
    return apply_curriculum(sampled, mask), apply_curriculum(greedy_policy(probs.detach()), mask)


def policy_gradient_loss(probs: torch.Tensor, sampled: torch.Tensor, advantage: torch.Tensor,
                         alpha: float, mask: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
    """REINFORCE on the α-bounded Bernoulli policy: −mean_n Σ_k log π(u_nk)·A_n − β·entropy,
    summed only over the blocks in ``mask`` (the ones being learned)."""
    bounded = bound_probs(probs, alpha).clamp(1e-6, 1 - 1e-6)
    log_prob = sampled * bounded.log() + (1 - sampled) * (1 - bounded).log()
    loss = -((log_prob * mask).sum(1) * advantage).mean()
    if beta:
        entropy = -(bounded * bounded.log() + (1 - bounded) * (1 - bounded).log())
        loss = loss - beta * (entropy * mask).sum(1).mean()
    return loss
