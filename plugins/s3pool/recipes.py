"""The S3Pool recipe: one classifier (ResNet or NIN) with the chosen downsampling, on any registered
classification dataset, trained for a fixed number of optimisation steps.

Steps, not epochs: the paper's point is that S3Pool helps most when data is scarce, and a fair
comparison across training-set sizes and poolings gives every model the same number of steps and
the same schedule (SGD + Nesterov momentum, cosine decay) — so a small set is not under-trained
against a big one. Model selection and the per-epoch curve use ``val``; ``test`` is the benchmark's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from app.api import ConfigError, Recipe, TrainContext, UserError, config_field
from app.api.training import TrainLoop, random_crop_flip, split_tensors
from plugins.s3pool.model import ARCHITECTURES, DOWNSAMPLING, NetConfig, PoolingNet, build_net


@dataclass
class ClassifierConfig:
    dataset: str = config_field("shapes", "a registered classification dataset (CIFAR-10/100 with their files)")
    arch: str = config_field("resnet", "network: a CIFAR ResNet (paper: ResNet-20) or the official NIN",
                             choices=ARCHITECTURES)
    downsample: str = config_field(
        "s3pool", "how feature maps are halved: strided conv, max pooling, S3Pool or stochastic pooling",
        choices=DOWNSAMPLING)
    grid_sizes: list[int] = config_field(
        [16, 8], "S3Pool grid size of each of the two layers (paper: 16-8 at 32×32; larger = more distortion)",
        min=2)
    depth: int = config_field(20, "ResNet depth 6n+2 (paper: 20)", min=8)
    width: int = config_field(16, "ResNet stage-1 channels (paper's code: 32) or NIN channels (paper: 192)", min=2)
    train_size: int = config_field(1000, "train on the first N training images (0 = the whole split)", min=0)
    val_size: int = config_field(0, "measure val error on the first N val images each epoch (0 = all)", min=0)
    augment: bool = config_field(False, "random crops and flips (the benchmark trains without, as scarce data)")
    steps: int = config_field(2000, "optimisation steps, the same for every size and pooling", min=1)
    batch_size: int = config_field(64, "batch size (paper: 128)", min=1)
    lr: float = config_field(0.05, "peak SGD learning rate, cosine-decayed (paper: Adadelta 1.0)", min=0)
    weight_decay: float = config_field(5e-4, "weight decay (paper: none)", min=0)
    eval_mode: str = config_field("deterministic", "S3Pool at test time: the official average, every 2nd "
                                  "row/col, or an ensemble of 4 stochastic passes",
                                  choices=("deterministic", "uniform", "ensemble"))
    seed: int = config_field(0, "random seed (data order, initialisation, S3Pool draws)")
    eval_every: int = config_field(
        0, "evaluate every N steps (at the end of the epoch that reaches it, and at the last): val error and "
        "the eval-mode error on the whole training subset (train_error), for error-against-steps curves; "
        "0 = val error after every epoch", min=0)

    def __post_init__(self) -> None:  # refused before a run is queued, like any bad value
        if any(g % 2 for g in self.grid_sizes):
            raise ConfigError(f"grid_sizes: must be even (S3Pool keeps g/2 of every g rows), got {self.grid_sizes}")
        if len(self.grid_sizes) != 2:
            raise ConfigError(f"grid_sizes: give one per S3Pool layer (2), got {self.grid_sizes}")
        if self.arch == "nin" and self.downsample == "strided":
            raise ConfigError("downsample: the NIN has no strided variant; use max, s3pool or stochastic")


def net_config_for(config: ClassifierConfig, num_classes: int, input_size: tuple[int, int],
                   labels: list[str]) -> NetConfig:
    """The architecture a recipe config asks for."""
    try:
        return NetConfig(arch=config.arch, downsample=config.downsample, depth=config.depth, width=config.width,
                         grid_sizes=tuple(config.grid_sizes), eval_mode=config.eval_mode, num_classes=num_classes,
                         input_size=input_size, labels=tuple(labels))
    except ValueError as exc:
        raise UserError(str(exc)) from None


@torch.no_grad()
def error_rate(net: PoolingNet, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 error of ``net`` in eval mode on uint8 images (the mode is restored afterwards)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    wrong = 0
    for x, y in zip(images.split(batch_size), targets.split(batch_size), strict=True):
        wrong += int((net(x.to(device).float() / 255).argmax(1) != y.to(device)).sum())
    net.train(was_training)
    return wrong / max(len(targets), 1)


def train_classifier(config: ClassifierConfig, ctx: TrainContext) -> dict[str, float]:
    """Train for ``steps`` optimisation steps; logs train/val error per epoch; saves ``<arch>-<downsample>``."""
    train = ctx.dataset(config.dataset, "train")
    images, targets = split_tensors(train, config.train_size)
    val_images, val_targets = split_tensors(ctx.dataset(config.dataset, "val"), config.val_size)
    labels = list(getattr(train, "labels", []))
    num_classes = max(len(labels), int(targets.max()) + 1)
    arch = net_config_for(config, num_classes, (images.shape[2], images.shape[3]), labels)
    steps_per_epoch = TrainLoop.num_batches(len(images), config.batch_size)
    loop = TrainLoop(ctx, epochs=math.ceil(config.steps / steps_per_epoch), seed=config.seed, checkpoint=arch.name)
    net = build_net(arch).to(loop.device)
    images, targets = loop.to_device(images, targets)
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    card = {"config": asdict(config), "dataset": config.dataset, "eval_split": "val", "net": asdict(arch),
            "train_size": len(images)}
    net.train()

    def evaluate() -> dict[str, float]:
        values = {"val_error": error_rate(net, val_images, val_targets)}
        if config.eval_every:
            values["train_error"] = error_rate(net, images, targets)
        return values

    def due(first_step: int) -> bool:  # this epoch reached a multiple of eval_every, or the end
        if not config.eval_every or loop.step >= config.steps:
            return True
        return loop.step // config.eval_every > first_step // config.eval_every

    forward = loop.compiled(net)
    for _ in loop.epochs():
        first_step = loop.step
        for idx in loop.batches(len(images), config.batch_size):
            if loop.step >= config.steps:
                break
            lr = 0.5 * config.lr * (1 + math.cos(math.pi * loop.step / config.steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch, y = loop.take(images, idx), loop.take(targets, idx)
            x = random_crop_flip(batch) if config.augment else batch.float() / 255
            with loop.autocast():
                logits = forward(x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y)
            loop.minimize(loss, optimizer)
            loop.track(len(idx), train_loss=loss, train_batch_error=(logits.argmax(1) != y).float().mean())
        loop.end_epoch(evaluate=evaluate if due(first_step) else None, metadata=card)
    return loop.final_metrics


RECIPES = [
    Recipe("classifier", ClassifierConfig, train_classifier,
           "A ResNet or NIN with strided, max, S3Pool or stochastic downsampling, for a fixed number of steps; "
           "saves '<arch>-<downsample>'."),
]
