"""BlockDrop training recipes: ``backbone`` → ``policy`` (curriculum RL) → ``finetune`` (joint).

Each recipe is a plain function ``train(config, ctx)`` that trains from whole-split tensors (the
built-in datasets expose uint8 ``images``), augments on the device (random crop + flip), logs per
epoch through ``ctx.log_metrics``, checks ``ctx.should_stop()`` every batch, saves a checkpoint every
epoch and resumes from the last one (model weights and epoch; the optimiser restarts).

Checkpoints hold prefixed tensors: ``backbone.*`` (the ResNet) and, for policies, ``policy.*``
(the ResNet-8), so one policy file is self-contained. The card says how to rebuild the models
(``depth``, ``num_classes``, ``num_blocks``, ``policy_input_size``, ``labels``, ``image_size``).
Paper defaults are in each field's help text; the defaults here are sized for the demo.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from app.api import ConfigError, Recipe, config_field
from plugins.blockdrop.model import (
    BlockDropResNet,
    PolicyNet,
    build_policy,
    build_resnet,
    greedy_policy,
    load_prefixed,
    prefixed,
)

# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclass
class BackboneConfig:
    dataset: str = config_field("shapes", "dataset to train on (a registered classification dataset)")
    depth: int = config_field(32, "ResNet depth 6n+2: 20, 32, 56 or 110 (paper: 32 and 110 on CIFAR)")
    epochs: int = config_field(30, "training epochs (paper's backbones: 164 epochs on CIFAR)")
    batch_size: int = config_field(128, "batch size (paper: 128)")
    lr: float = config_field(0.1, "peak SGD learning rate, cosine-decayed to 0 (paper: 0.1, step decay)")
    momentum: float = config_field(0.9, "SGD momentum")
    weight_decay: float = config_field(5e-4, "weight decay (paper's backbones: 1e-4)")
    num_train: int = config_field(0, "use only the first N training images (0 = the whole split)")
    init: str = config_field(
        "", "start from this checkpoint's backbone (METHOD/NAME, run:ID[/NAME] or a path) instead of random "
            "weights, e.g. to train the full ResNet as long as a fine-tuned BlockDrop backbone; depth comes "
            "from the checkpoint")
    warmup: float = config_field(0.15, "fraction of the steps spent warming the learning rate up from 0")
    drop_prob: float = config_field(
        0.2, "stochastic depth: each block is skipped per sample with this probability while training, "
             "so the backbone tolerates dropped blocks (paper: 0, a plain ResNet)")
    flip: bool = config_field(True, "random horizontal flips during training")
    seed: int = config_field(0, "random seed")


@dataclass
class PolicyConfig:
    backbone: str = config_field("blockdrop/backbone", "backbone checkpoint: METHOD/NAME, run:ID[/NAME] or a path")
    dataset: str = config_field("shapes", "dataset to train on")
    epochs: int = config_field(15, "epochs (paper: 5000 epochs of CIFAR at batch 2048)")
    batch_size: int = config_field(256, "batch size (paper: 2048)")
    lr: float = config_field(1e-3, "Adam learning rate (paper: 1e-3)")
    gamma: float = config_field(1.0, "penalty γ: reward −γ for a wrong prediction (paper: 1 in this stage)")
    alpha: float = config_field(0.8, "exploration bound: keep probabilities squeezed into [1−α, α] (paper: 0.8)")
    beta: float = config_field(0.1, "entropy bonus weight (paper: 0.1)")
    cl_step_iters: int = config_field(
        8, "iterations per curriculum step: one more block (from the end) is learned after each, so the "
           "curriculum takes K steps and the rest of training learns all K blocks (paper: one epoch of "
           "≈25 iterations per step, then all K for the remaining ~5000 epochs)")
    policy_input_size: int = config_field(
        16, "the policy sees the image resized to this size: 16 costs a quarter of the FLOPs of 32 "
            "(paper: 32 on CIFAR, 112 for 224 ImageNet)")
    num_train: int = config_field(0, "use only the first N training images (0 = the whole split)")
    flip: bool = config_field(True, "random horizontal flips during training")
    seed: int = config_field(0, "random seed")


@dataclass
class FinetuneConfig:
    policy: str = config_field("blockdrop/policy", "policy checkpoint from the `policy` recipe (holds the backbone)")
    dataset: str = config_field("shapes", "dataset to train on")
    epochs: int = config_field(15, "epochs (paper: 2000 epochs of CIFAR)")
    batch_size: int = config_field(256, "batch size (paper: 256)")
    lr: float = config_field(1e-3, "Adam learning rate of the policy, cosine-decayed (paper: 1e-4, constant)")
    backbone_optimizer: str = config_field(
        "sgd", "optimiser of the backbone: 'sgd' (Nesterov momentum 0.9 + weight decay, as the backbone recipe) "
               "or 'adam' (paper: Adam 1e-4); the policy always uses Adam", choices=("sgd", "adam"))
    backbone_lr: float = config_field(
        0.05, "learning rate of the backbone, cosine-decayed (SGD: 0.05 here; paper: Adam 1e-4)")
    weight_decay: float = config_field(5e-4, "weight decay of the backbone (SGD only)")
    gamma: float = config_field(1.0, "penalty γ for a wrong prediction: larger keeps more blocks; the studio "
                                     "ships 0.5, 1 and 2 (paper: 10 on CIFAR-10, 5 on ImageNet)")
    alpha: float = config_field(0.8, "exploration bound on the keep probabilities (paper: 0.8)")
    train_forward: str = config_field(
        "skip", "backbone forward while training: 'skip' runs each block only on the samples that keep it "
                "(BatchNorm sees what it sees at test time); 'masked' is the paper's mixture",
        choices=("skip", "masked"))
    num_train: int = config_field(0, "use only the first N training images (0 = the whole split)")
    flip: bool = config_field(True, "random horizontal flips during training")
    seed: int = config_field(0, "random seed")


# --------------------------------------------------------------------------------------------
# Pieces shared by the recipes (and by the analysis)
# --------------------------------------------------------------------------------------------


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


def augment(images: torch.Tensor, flip: bool, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and optional horizontal flip of a uint8 N×C×H×W batch → float [0, 1]."""
    x = images.float().div_(255.0)
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device)
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w)
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    x = _crop(padded, rows, cols)
    if flip:
        flipped = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c = padded.shape[:2]
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    channel = torch.arange(c, device=padded.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def load_split(ctx: Any, name: str, split: str, num: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and int64 targets of a dataset split (the first ``num`` when num > 0)."""
    data = ctx.dataset(name, split)
    if hasattr(data, "images"):
        images, targets = data.images, data.targets
    else:  # any torch Dataset of (float image, target)
        items = [data[i] for i in range(len(data) if num <= 0 else min(num, len(data)))]
        images = (torch.stack([x for x, _ in items]) * 255).round().to(torch.uint8)
        targets = torch.tensor([int(y) for _, y in items])
    if num > 0:
        images, targets = images[:num], targets[:num]
    return images, targets.long()


def labels_of(ctx: Any, name: str) -> list[str]:
    return list(getattr(ctx.dataset(name, "train"), "labels", []))


def eval_split(ctx: Any, name: str) -> str:
    """Evaluate per epoch on ``val`` (the test split stays for the benchmark)."""
    try:
        ctx.dataset(name, "val")
        return "val"
    except Exception:
        return "test"


def batches(n: int, batch_size: int, device: Any, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch as index batches (the last partial batch is dropped when n > batch_size)."""
    order = torch.randperm(n, generator=generator).to(device)
    size = min(batch_size, n)
    return list(order[: n - n % size].split(size))


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (min(step, total) - warmup) / max(total - warmup, 1)
    return 0.5 * base * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def infer(backbone: BlockDropResNet, policy_net: PolicyNet | None, images: torch.Tensor,
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


def _card(config: Any, kind: str, epoch: int, metrics: dict, backbone: BlockDropResNet, dataset: str,
          labels: list[str], image_size: tuple[int, int], **extra: Any) -> dict:
    return {"kind": kind, "epoch": epoch, "metrics": metrics, "config": dataclasses.asdict(config),
            "depth": backbone.config.depth, "num_classes": backbone.config.num_classes,
            "num_blocks": backbone.num_blocks, "dataset": dataset, "labels": labels,
            "image_size": list(image_size), **extra}


def _setup(ctx: Any, config: Any) -> tuple[torch.Generator, Any]:
    torch.manual_seed(config.seed)
    return torch.Generator().manual_seed(config.seed), torch.device(ctx.device)


def backbone_from_card(tensors: dict, card: dict, device: Any = "cpu") -> BlockDropResNet:
    """Rebuild the ResNet stored (``backbone.*``) in a checkpoint."""
    net = build_resnet(int(card["depth"]), int(card["num_classes"]))
    return load_prefixed(net, tensors, "backbone").to(device)


def policy_from_card(tensors: dict, card: dict, device: Any = "cpu") -> PolicyNet:
    """Rebuild the policy network stored (``policy.*``) in a checkpoint."""
    net = build_policy(int(card["num_blocks"]), int(card.get("policy_input_size", 32)))
    return load_prefixed(net, tensors, "policy").to(device)


# --------------------------------------------------------------------------------------------
# Recipe 1: the backbone
# --------------------------------------------------------------------------------------------


def train_backbone(config: BackboneConfig, ctx: Any) -> dict[str, float]:
    """Train a CIFAR-style ResNet with SGD + momentum and a cosine schedule; saves ``backbone``."""
    gen, device = _setup(ctx, config)
    images, targets = load_split(ctx, config.dataset, "train", config.num_train)
    val_split = eval_split(ctx, config.dataset)
    val_images, val_targets = load_split(ctx, config.dataset, val_split)
    labels = labels_of(ctx, config.dataset)
    num_classes = max(len(labels), int(targets.max()) + 1)
    if config.init:
        source = ctx.load_checkpoint(config.init)
        if int(source.card["num_classes"]) != num_classes:
            raise ConfigError(f"init: {config.init!r} has {source.card['num_classes']} classes, "
                              f"dataset {config.dataset!r} has {num_classes}")
        net = backbone_from_card(source.tensors, source.card, device)
    else:
        net = build_resnet(config.depth, num_classes).to(device)
    images, targets = images.to(device), targets.to(device)
    start = 0
    resumed = ctx.resume_checkpoint("backbone")
    if resumed is not None:
        load_prefixed(net, resumed.tensors, "backbone")
        start = int(resumed.card.get("epoch", 0))
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=True)
    steps_per_epoch = len(batches(len(images), config.batch_size, "cpu", torch.Generator()))
    total = config.epochs * steps_per_epoch
    # Without a warm-up, lr 0.1 from the first step left a ResNet-32 on shapes at chance for 10 of 20
    # epochs (measured on CPU, 10k images); 15% of the steps of warm-up, as in one-cycle, avoids it.
    warmup = int(config.warmup * total)
    metrics: dict[str, float] = {}
    for epoch in range(start, config.epochs):
        net.train()
        loss_sum = correct = seen = 0
        with ctx.progress(steps_per_epoch, f"backbone epoch {epoch + 1}/{config.epochs}") as bar:
            for i, idx in enumerate(batches(len(images), config.batch_size, device, gen)):
                if ctx.should_stop():
                    return metrics
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.lr, epoch * steps_per_epoch + i, total, warmup)
                x, y = augment(images[idx], config.flip), targets[idx]
                drops = torch.rand(len(y), net.num_blocks, device=device) < config.drop_prob
                logits = net(x, (~drops).float()) if config.drop_prob > 0 else net(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                bar.update()
        net.eval()
        logits, policies = infer(net, None, val_images)
        stats = policy_stats(logits, policies, val_targets, gamma=1.0)
        metrics = {"train_loss": float(loss_sum / seen), "train_accuracy": float(correct / seen),
                   "accuracy": stats["accuracy"], "mean_blocks": stats["mean_blocks"],
                   "reward": stats["reward"], "unique_policies": stats["unique_policies"]}
        ctx.log_metrics(epoch + 1, **metrics)
        ctx.save_checkpoint("backbone", prefixed(net, "backbone"),
                            _card(config, "backbone", epoch + 1, metrics, net, config.dataset, labels,
                                  tuple(images.shape[2:]), eval_split=val_split))
    return metrics


# --------------------------------------------------------------------------------------------
# Recipe 2: the policy, by curriculum learning with the backbone frozen
# --------------------------------------------------------------------------------------------


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


def _sample(probs: torch.Tensor, alpha: float, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sampled (α-bounded) and the greedy policy, with blocks outside the curriculum forced on."""
    sampled = torch.bernoulli(bound_probs(probs.detach(), alpha))
    return apply_curriculum(sampled, mask), apply_curriculum(greedy_policy(probs.detach()), mask)


def train_policy(config: PolicyConfig, ctx: Any) -> dict[str, float]:
    """Curriculum REINFORCE with a self-critical baseline; the backbone stays frozen. Saves ``policy``."""
    gen, device = _setup(ctx, config)
    source = ctx.load_checkpoint(config.backbone)
    backbone = backbone_from_card(source.tensors, source.card, device).eval().requires_grad_(False)
    k = backbone.num_blocks
    images, targets = load_split(ctx, config.dataset, "train", config.num_train)
    val_split = eval_split(ctx, config.dataset)
    val_images, val_targets = load_split(ctx, config.dataset, val_split)
    images, targets = images.to(device), targets.to(device)
    labels = source.card.get("labels") or labels_of(ctx, config.dataset)
    policy_net = build_policy(k, config.policy_input_size).to(device)
    start = 0
    resumed = ctx.resume_checkpoint("policy")
    if resumed is not None:
        load_prefixed(policy_net, resumed.tensors, "policy")
        start = int(resumed.card.get("epoch", 0))
    optimizer = torch.optim.Adam(policy_net.parameters(), lr=config.lr)
    steps_per_epoch = len(batches(len(images), config.batch_size, "cpu", torch.Generator()))
    metrics: dict[str, float] = {}
    free = 1
    for epoch in range(start, config.epochs):
        policy_net.train()
        reward_sum = blocks_sum = seen = 0
        with ctx.progress(steps_per_epoch, f"policy epoch {epoch + 1}/{config.epochs}") as bar:
            for i, idx in enumerate(batches(len(images), config.batch_size, device, gen)):
                if ctx.should_stop():
                    return metrics
                free = min(k, 1 + (epoch * steps_per_epoch + i) // config.cl_step_iters)
                mask = curriculum_mask(k, free, device)
                x, y = augment(images[idx], config.flip), targets[idx]
                probs = policy_net(x)
                sampled, greedy = _sample(probs, config.alpha, mask)
                with torch.no_grad():
                    r_sampled = reward(backbone(x, sampled).argmax(1) == y, sampled, config.gamma)
                    r_greedy = reward(backbone(x, greedy).argmax(1) == y, greedy, config.gamma)
                loss = policy_gradient_loss(probs, sampled, r_sampled - r_greedy, config.alpha, mask,
                                            config.beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                reward_sum += r_sampled.sum()
                blocks_sum += sampled.sum()
                seen += len(y)
                bar.update()
        policy_net.eval()
        logits, policies = infer(backbone, policy_net, val_images, free_blocks=free)
        metrics = policy_stats(logits, policies, val_targets, config.gamma)
        metrics.update(train_reward=float(reward_sum / seen), train_blocks=float(blocks_sum / seen),
                       free_blocks=float(free))
        ctx.log_metrics(epoch + 1, **metrics)
        tensors = {**prefixed(backbone, "backbone"), **prefixed(policy_net, "policy")}
        ctx.save_checkpoint("policy", tensors, _card(
            config, "policy", epoch + 1, metrics, backbone, config.dataset, labels,
            tuple(images.shape[2:]), gamma=config.gamma, free_blocks=free,
            policy_input_size=config.policy_input_size, backbone_ref=config.backbone,
            eval_split=val_split))
    return metrics


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


def train_finetune(config: FinetuneConfig, ctx: Any) -> dict[str, float]:
    """Train policy and backbone together: CE on the sampled execution + the self-critical policy
    loss (no entropy term, as in the paper). Saves ``policy-g<γ>`` (both networks)."""
    gen, device = _setup(ctx, config)
    name = finetune_name(config.gamma)
    source = ctx.load_checkpoint(config.policy)
    backbone = backbone_from_card(source.tensors, source.card, device)
    policy_net = policy_from_card(source.tensors, source.card, device)
    k = backbone.num_blocks
    start = 0
    resumed = ctx.resume_checkpoint(name)
    if resumed is not None:
        load_prefixed(backbone, resumed.tensors, "backbone")
        load_prefixed(policy_net, resumed.tensors, "policy")
        start = int(resumed.card.get("epoch", 0))
    images, targets = load_split(ctx, config.dataset, "train", config.num_train)
    val_split = eval_split(ctx, config.dataset)
    val_images, val_targets = load_split(ctx, config.dataset, val_split)
    images, targets = images.to(device), targets.to(device)
    labels = source.card.get("labels") or labels_of(ctx, config.dataset)
    optimizers = [torch.optim.Adam(policy_net.parameters(), lr=config.lr), finetune_backbone_optimizer(config, backbone)]
    bases = [config.lr, config.backbone_lr]
    steps_per_epoch = len(batches(len(images), config.batch_size, "cpu", torch.Generator()))
    total = config.epochs * steps_per_epoch
    mask = torch.ones(k, device=device)
    forward = backbone.forward if config.train_forward == "skip" else backbone.forward_masked
    metrics: dict[str, float] = {}
    for epoch in range(start, config.epochs):
        policy_net.train()
        backbone.train()
        reward_sum = blocks_sum = correct_sum = seen = 0
        with ctx.progress(steps_per_epoch, f"finetune γ={config.gamma:g} epoch {epoch + 1}/{config.epochs}") as bar:
            for i, idx in enumerate(batches(len(images), config.batch_size, device, gen)):
                if ctx.should_stop():
                    return metrics
                for optimizer, base in zip(optimizers, bases, strict=True):
                    for group in optimizer.param_groups:
                        group["lr"] = cosine_lr(base, epoch * steps_per_epoch + i, total)
                x, y = augment(images[idx], config.flip), targets[idx]
                probs = policy_net(x)
                sampled, greedy = _sample(probs, config.alpha, mask)
                logits = forward(x, sampled)
                correct = logits.argmax(1) == y
                with torch.no_grad():
                    r_sampled = reward(correct, sampled, config.gamma)
                    r_greedy = reward(forward(x, greedy).argmax(1) == y, greedy, config.gamma)
                loss = F.cross_entropy(logits, y) + policy_gradient_loss(
                    probs, sampled, r_sampled - r_greedy, config.alpha, mask)
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                reward_sum += r_sampled.sum()
                blocks_sum += sampled.sum()
                correct_sum += correct.sum()
                seen += len(y)
                bar.update()
        policy_net.eval()
        backbone.eval()
        logits, policies = infer(backbone, policy_net, val_images)
        metrics = policy_stats(logits, policies, val_targets, config.gamma)
        metrics.update(train_reward=float(reward_sum / seen), train_blocks=float(blocks_sum / seen),
                       train_accuracy=float(correct_sum / seen))
        ctx.log_metrics(epoch + 1, **metrics)
        tensors = {**prefixed(backbone, "backbone"), **prefixed(policy_net, "policy")}
        ctx.save_checkpoint(name, tensors, _card(
            config, "finetune", epoch + 1, metrics, backbone, config.dataset, labels,
            tuple(images.shape[2:]), gamma=config.gamma, free_blocks=k,
            policy_input_size=policy_net.config.input_size, policy_ref=config.policy,
            eval_split=val_split))
    return metrics


RECIPES = [
    Recipe("backbone", BackboneConfig, train_backbone,
           "Train the CIFAR-style ResNet (default ResNet-32 on shapes); saves checkpoint 'backbone'."),
    Recipe("policy", PolicyConfig, train_policy,
           "Curriculum REINFORCE of the ResNet-8 policy on the frozen backbone; saves 'policy'."),
    Recipe("finetune", FinetuneConfig, train_finetune,
           "Joint fine-tuning of policy and backbone at penalty γ; saves 'policy-g<γ>'."),
]
