"""BlockDrop training recipes: ``backbone`` → ``policy`` (curriculum RL) → ``finetune`` (joint).

Each recipe is a plain function ``train(config, ctx)``: data and models are set up, then the
training step runs inside an :class:`app.api.training.TrainLoop`, which owns seeding, stopping, progress,
per-epoch evaluation on ``val``, metrics, checkpoints and exact resume (optimisers and RNG included),
and the accelerator: mixed precision (``loop.autocast``, ``loop.minimize``), the data on the device
(``loop.to_device``, ``loop.take``) and ``torch.compile`` (``loop.compiled``). Recipes train from
whole-split tensors (the built-in datasets expose uint8 ``images``) and augment on the device
(random crop + flip); evaluation runs in float32.

Checkpoints hold prefixed tensors: ``backbone.*`` (the ResNet) and, for policies, ``policy.*`` (the
policy network), so one policy file is self-contained. Their metadata records the architectures as
dataclasses (``backbone``: :class:`~plugins.blockdrop.model.ResNetConfig`, ``policy``:
:class:`~plugins.blockdrop.model.PolicyNetConfig`) beside ``kind``, ``epoch``, ``metrics``, ``config``,
``dataset``, ``eval_split`` and, for policies, ``gamma`` and ``free_blocks``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from functools import partial

import torch
import torch.nn.functional as F

from app.api import ConfigError, Recipe, TrainContext
from app.api.training import TrainLoop
from plugins.blockdrop.configs import BackboneConfig, FinetuneConfig, PolicyConfig
from plugins.blockdrop.data import augment, eval_split, labels_of, load_split
from plugins.blockdrop.evaluation import evaluate
from plugins.blockdrop.model import (
    BlockDropResNet,
    PolicyNetConfig,
    ResNetConfig,
    backbone_from_checkpoint,
    make_policy,
    policy_from_checkpoint,
)
from plugins.blockdrop.rl import (
    curriculum_mask,
    policy_gradient_loss,
    reward,
    sample_policies,
)


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (min(step, total) - warmup) / max(total - warmup, 1)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _with_labels(net: BlockDropResNet, labels: list[str]) -> BlockDropResNet:
    """Record the dataset's class names in the model's config when it has none."""
    if labels and not net.config.labels:
        net.config = replace(net.config, labels=tuple(labels))
    return net


# --------------------------------------------------------------------------------------------
# Recipe 1: the backbone
# --------------------------------------------------------------------------------------------


def train_backbone(config: BackboneConfig, ctx: TrainContext) -> dict[str, float]:
    """Train a CIFAR-style ResNet with SGD + momentum and a cosine schedule; saves ``backbone``."""
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint="backbone")
    images, targets = load_split(ctx, config.dataset, "train", config.num_train)
    val_split = eval_split(ctx, config.dataset)
    val_images, val_targets = load_split(ctx, config.dataset, val_split)
    labels = labels_of(ctx, config.dataset)
    num_classes = max(len(labels), int(targets.max()) + 1)
    if config.init:  # depth, width and normalisation come from the checkpoint
        net = backbone_from_checkpoint(ctx.load_checkpoint(config.init))
        if net.config.num_classes != num_classes:
            raise ConfigError(f"init: {config.init!r} has {net.config.num_classes} classes, "
                              f"dataset {config.dataset!r} has {num_classes}")
    else:
        net = BlockDropResNet(ResNetConfig(depth=config.depth, num_classes=num_classes,
                                           input_size=(images.shape[2], images.shape[3])))
    net = _with_labels(net, labels).to(loop.device)
    images, targets = loop.to_device(images, targets)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    loop.resume(modules={"backbone": net}, optimizers=[optimizer])
    total = config.epochs * loop.num_batches(len(images), config.batch_size)
    # Without a warm-up, lr 0.1 from the first step left a ResNet-32 on shapes at chance for 10 of 20
    # epochs (measured on CPU, 10k images); 15% of the steps of warm-up, as in one-cycle, avoids it.
    warmup = int(config.warmup * total)
    card = {"kind": "backbone", "config": asdict(config), "dataset": config.dataset, "eval_split": val_split,
            "backbone": asdict(net.config)}
    net.train()
    forward = loop.compiled(net)
    for _ in loop.epochs():
        for idx in loop.batches(len(images), config.batch_size):
            set_lr(optimizer, cosine_lr(config.lr, loop.step, total, warmup))
            x, y = augment(loop.take(images, idx), config.flip), loop.take(targets, idx)
            drops = torch.rand(len(y), net.num_blocks, device=loop.device) < config.drop_prob  # stochastic depth
            with loop.autocast():
                logits = forward(x, (~drops).float()) if config.drop_prob > 0 else forward(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y)
            loop.minimize(loss, optimizer)
            loop.track(len(y), train_loss=loss, train_accuracy=(logits.argmax(1) == y).float().mean())
        loop.end_epoch(evaluate=lambda: evaluate(net, None, val_images, val_targets), metadata=card)
    return loop.final_metrics


# --------------------------------------------------------------------------------------------
# Recipe 2: the policy, by curriculum learning with the backbone frozen
# --------------------------------------------------------------------------------------------


def train_policy(config: PolicyConfig, ctx: TrainContext) -> dict[str, float]:
    """Curriculum REINFORCE with a self-critical baseline; the backbone stays frozen. Saves ``policy``."""
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint="policy")
    backbone = backbone_from_checkpoint(ctx.load_checkpoint(config.backbone), loop.device)
    backbone = _with_labels(backbone.eval().requires_grad_(False), labels_of(ctx, config.dataset))
    k = backbone.num_blocks
    images, targets = load_split(ctx, config.dataset, "train", config.num_train)
    val_split = eval_split(ctx, config.dataset)
    val_images, val_targets = load_split(ctx, config.dataset, val_split)
    images, targets = loop.to_device(images, targets)
    policy_net = make_policy(PolicyNetConfig(num_blocks=k, input_size=config.policy_input_size,
                                             mean=backbone.config.mean, std=backbone.config.std,
                                             arch=config.policy_arch)).to(loop.device)
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=config.lr)
    loop.resume(modules={"backbone": backbone, "policy": policy_net}, optimizers=[optimizer])
    card = {"kind": "policy", "config": asdict(config), "dataset": config.dataset, "eval_split": val_split,
            "backbone": asdict(backbone.config), "policy": asdict(policy_net.config), "gamma": config.gamma,
            "backbone_ref": config.backbone}

    def free_blocks(step: int) -> int:  # the curriculum: one more block (from the end) every cl_step_iters
        return min(k, 1 + step // config.cl_step_iters)

    policy_net.train()
    policy, frozen = loop.compiled(policy_net), loop.compiled(backbone)
    for _ in loop.epochs():
        for idx in loop.batches(len(images), config.batch_size):
            mask = curriculum_mask(k, free_blocks(loop.step), loop.device)
            x, y = augment(loop.take(images, idx), config.flip), loop.take(targets, idx)
            with loop.autocast():
                probs = policy(x)
            probs = probs.float()
            sampled, greedy = sample_policies(probs, config.alpha, mask)
            with torch.no_grad(), loop.autocast():
                r_sampled = reward(frozen(x, sampled).argmax(1) == y, sampled, config.gamma)
                r_greedy = reward(frozen(x, greedy).argmax(1) == y, greedy, config.gamma)
            loss = policy_gradient_loss(probs, sampled, r_sampled - r_greedy, config.alpha, mask, config.beta)
            loop.minimize(loss, optimizer)
            loop.track(len(y), train_reward=r_sampled.mean(), train_blocks=sampled.sum(1).mean())
        free = free_blocks(loop.step - 1)  # where the curriculum stood at the epoch's last step
        loop.end_epoch(evaluate=partial(evaluate, backbone, policy_net, val_images, val_targets, config.gamma, free),
                       metadata={**card, "free_blocks": free}, free_blocks=free)
    return loop.final_metrics


# --------------------------------------------------------------------------------------------
# Recipe 3: joint fine-tuning of policy and backbone
# --------------------------------------------------------------------------------------------


def finetune_name(gamma: float) -> str:
    """The checkpoint name a fine-tuned policy is saved under, e.g. ``policy-g5``."""
    return f"policy-g{gamma:g}"


def finetune_backbone_optimizer(config: FinetuneConfig, backbone: BlockDropResNet) -> torch.optim.Optimizer:
    """The backbone's optimiser while fine-tuning: SGD + Nesterov (as the backbone recipe) or the paper's Adam."""
    if config.backbone_optimizer == "sgd":
        return torch.optim.SGD(backbone.parameters(), lr=config.backbone_lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(backbone.parameters(), lr=config.backbone_lr)


def train_finetune(config: FinetuneConfig, ctx: TrainContext) -> dict[str, float]:
    """Train policy and backbone together: CE on the sampled execution + the self-critical policy
    loss (no entropy term, as in the paper). Saves ``policy-g<γ>`` (both networks)."""
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint=finetune_name(config.gamma),
                     name=f"finetune γ={config.gamma:g}")
    source = ctx.load_checkpoint(config.policy)
    backbone = _with_labels(backbone_from_checkpoint(source, loop.device), labels_of(ctx, config.dataset))
    policy_net = policy_from_checkpoint(source, loop.device)
    k = backbone.num_blocks
    images, targets = load_split(ctx, config.dataset, "train", config.num_train)
    val_split = eval_split(ctx, config.dataset)
    val_images, val_targets = load_split(ctx, config.dataset, val_split)
    images, targets = loop.to_device(images, targets)
    optimizers = [torch.optim.Adam(policy_net.parameters(), lr=config.lr), finetune_backbone_optimizer(config, backbone)]
    loop.resume(modules={"backbone": backbone, "policy": policy_net}, optimizers=optimizers)
    total = config.epochs * loop.num_batches(len(images), config.batch_size)
    mask = torch.ones(k, device=loop.device)
    forward = loop.compiled(backbone.forward if config.train_forward == "skip" else backbone.forward_masked)
    policy = loop.compiled(policy_net)
    card = {"kind": "finetune", "config": asdict(config), "dataset": config.dataset, "eval_split": val_split,
            "backbone": asdict(backbone.config), "policy": asdict(policy_net.config), "gamma": config.gamma,
            "free_blocks": k, "policy_ref": config.policy}
    policy_net.train()
    backbone.train()
    for _ in loop.epochs():
        for idx in loop.batches(len(images), config.batch_size):
            for optimizer, base in zip(optimizers, (config.lr, config.backbone_lr), strict=True):
                set_lr(optimizer, cosine_lr(base, loop.step, total))
            x, y = augment(loop.take(images, idx), config.flip), loop.take(targets, idx)
            with loop.autocast():
                probs = policy(x)
            probs = probs.float()
            sampled, greedy = sample_policies(probs, config.alpha, mask)
            with loop.autocast():
                logits = forward(x, sampled)
            logits = logits.float()
            correct = logits.argmax(1) == y
            with torch.no_grad(), loop.autocast():
                r_sampled = reward(correct, sampled, config.gamma)
                r_greedy = reward(forward(x, greedy).argmax(1) == y, greedy, config.gamma)
            loss = F.cross_entropy(logits, y) + policy_gradient_loss(
                probs, sampled, r_sampled - r_greedy, config.alpha, mask)
            loop.minimize(loss, *optimizers)
            loop.track(len(y), train_reward=r_sampled.mean(), train_blocks=sampled.sum(1).mean(),
                       train_accuracy=correct.float().mean())
        loop.end_epoch(evaluate=lambda: evaluate(backbone, policy_net, val_images, val_targets, config.gamma),
                       metadata=card)
    return loop.final_metrics


RECIPES = [
    Recipe("backbone", BackboneConfig, train_backbone,
           "Train the CIFAR-style ResNet (default ResNet-32 on shapes); saves checkpoint 'backbone'."),
    Recipe("policy", PolicyConfig, train_policy,
           "Curriculum REINFORCE of the policy network on the frozen backbone; saves 'policy'."),
    Recipe("finetune", FinetuneConfig, train_finetune,
           "Joint fine-tuning of policy and backbone at penalty γ; saves 'policy-g<γ>'."),
]
