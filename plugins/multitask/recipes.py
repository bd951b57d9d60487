"""Recipes of the multi-task widening plugin (arXiv:1611.05377): the wide network, then thin and branched
networks grown from it, all trained by one loop with one schedule.

- ``wide`` trains the wide single-trunk network from scratch (the paper's pretrained VGG-16); saves ``wide``.
- ``tree`` trains a thin network, initialised from a wide checkpoint by SOMP (``init=somp``) or at random
  (``init=random``). With ``lam > 0`` it is widened top-down during training: after ``widen_after`` epochs
  of training (the affinity of a network that has not learnt its tasks yet is noise), and then after every
  ``widen_every`` epochs, the affinity tracked on the training batches of the last ``widen_every`` epochs
  decides the grouping at the active layer (:func:`~plugins.multitask.widening.decide`); the layer is copied once per group and
  training goes on, until a decision keeps one group or layer 0 has been split. The remaining epochs are
  the final training of the tree. ``lam = 0`` never branches: that is the thin baseline. Saves ``thin``,
  ``thin-random`` or ``branched-l<λ>`` (``-random`` appended for a random start) unless ``name`` says.

Like with like: every ``tree`` run has the same data, epochs, batch and learning-rate schedule, whatever
its λ and initialisation, so thin, thin-random and branched networks differ only in what the method does.
The schedule: SGD with Nesterov momentum, a linear warm-up over the first 3% of the steps, then cosine
decay; binary cross-entropy per attribute, averaged; random shifts and flips. Model selection and the
per-epoch curve use ``val``; ``test`` is the benchmark's.

Every decision is logged as metrics (``widen_layer``, ``widen_groups``, ``widen_cost``) and kept whole
(affinity, candidates with their L_b and L_s, the choice) in the checkpoint card's ``decisions``;
:func:`replay` rebuilds the tree from them. A resumed run rebuilds the tree it had reached from the resume
state's card, so a crash between two widenings loses nothing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.api import ConfigError, Recipe, TrainContext, UserError, config_field, parse_assignments
from app.api.training import TrainLoop, dataclass_from_dict, random_crop_flip
from plugins.multitask.affinity import AffinityTracker
from plugins.multitask.model import (
    THIN_DIVISOR,
    WIDE_WIDTHS,
    BranchedNet,
    TreeConfig,
    count_flops,
    count_params,
    net_from_checkpoint,
)
from plugins.multitask.somp import thin_from_wide
from plugins.multitask.widening import SEPARATIONS, WideningDecision, decide, widen

WARMUP = 0.03  # of the steps


@dataclass
class TrainConfig:
    """What every multitask recipe shares: data, epochs and the optimiser's schedule."""

    dataset: str = config_field("persons", "a registered multi-label dataset (persons, celeba, attributes-csv)")
    dataset_options: list[str] = config_field(
        [], "options of the dataset as key=value, e.g. path=IMAGES_DIR csv=FILE.csv for attributes-csv")
    train_size: int = config_field(15000, "train on the first N training images (0 = the whole split)", min=0)
    val_size: int = config_field(1000, "measure val accuracy on the first N val images (0 = all)", min=0)
    epochs: int = config_field(15, "epochs over the training images", min=1)
    batch_size: int = config_field(64, "batch size", min=2)
    lr: float = config_field(0.05, "peak SGD learning rate (warm-up, then cosine decay)", min=0)
    weight_decay: float = config_field(5e-4, "weight decay", min=0)
    augment: bool = config_field(True, "random shifts (4 px) and horizontal flips")
    seed: int = config_field(0, "random seed (data order, initialisation)")

    def __post_init__(self) -> None:  # a bad value is refused before a run is queued, not when it starts
        parse_dataset_options(self.dataset_options)


@dataclass
class WideConfig(TrainConfig):
    widths: list[int] = config_field(list(WIDE_WIDTHS), "widths of the 7 hidden layers, bottom to top: 5 conv, "
                                     "then 2 fully connected", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.widths) != len(WIDE_WIDTHS):
            raise ConfigError(f"widths: give one per hidden layer ({len(WIDE_WIDTHS)}), got {self.widths}")


@dataclass
class TreeRecipeConfig(TrainConfig):
    init: str = config_field("somp", "thin start: SOMP selection from the wide checkpoint, or random",
                             choices=("somp", "random"))
    wide: str = config_field("multitask/wide", "the wide checkpoint (METHOD/NAME, run:ID/NAME or a file); "
                             "SOMP reads it, and a random start copies its tree", )
    divisor: int = config_field(THIN_DIVISOR, "thin widths = the wide widths / divisor", min=1)
    lam: float = config_field(0.0, "λ, the weight of the separation cost (0 = never branch: the thin baseline; "
                              "larger = more branches)", min=0)
    unit_cost: float = config_field(1.0, "L_0, the cost of one extra branch at a layer with no pooling above", min=0)
    separation: str = config_field(
        "size", "how L_s weights each group's (1 − within affinity): by its share of the branches (size), or "
        "equally, 1/d (mean: it makes splitting off one outlier cheaper than any balanced split; "
        "docs/multitask.md)", choices=SEPARATIONS)
    widen_after: int = config_field(5, "epochs of training of the thin network before the first widening decision "
                                    "(its affinity means little until its tasks are learnt)", min=1)
    widen_every: int = config_field(1, "epochs of training between two widening decisions", min=1)
    name: str = config_field("", "checkpoint name ('' = thin, thin-random or branched-l<λ>[-random])")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name and not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(f"name: letters, digits, '-', '_' and '.' only, got {self.name!r}")


def pooled_affinity(loop: TrainLoop, tracker: AffinityTracker) -> torch.Tensor:
    """The affinity over the training examples of every process of the run (``avstudio train --nproc``;
    one process: its own), so that every rank takes the same widening decision and the ranks keep
    networks of one shape."""
    state = {key: loop.sum_over_ranks(value.to(loop.device, torch.float64)).cpu()
             for key, value in tracker.state().items()}
    pooled = AffinityTracker(tracker.num_tasks)
    pooled.load_state(state)
    return pooled.affinity()


def checkpoint_name(config: TreeRecipeConfig) -> str:
    """``thin``, ``thin-random``, ``branched-l<λ>`` or ``branched-l<λ>-random`` (or the config's ``name``)."""
    if config.name:
        return config.name
    base = f"branched-l{config.lam:g}" if config.lam > 0 else "thin"
    return base + ("-random" if config.init == "random" else "")


# -- data -------------------------------------------------------------------------------------------------


def multilabel_tensors(dataset: Any, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N×C×H×W) and float 0/1 targets (N×T) of a multi-label split (its first ``limit``)."""
    if hasattr(dataset, "images") and hasattr(dataset, "targets"):
        images, targets = dataset.images, dataset.targets
        if limit > 0:
            images, targets = images[:limit], targets[:limit]
    else:
        n = len(dataset) if limit <= 0 else min(limit, len(dataset))
        items = [dataset[i] for i in range(n)]
        if not items:
            raise UserError("the dataset split has no images")
        images = (torch.stack([x for x, _ in items]) * 255).round().to(torch.uint8)
        targets = torch.stack([torch.as_tensor(y, dtype=torch.float32) for _, y in items])
    targets = torch.as_tensor(targets).float()
    if targets.dim() != 2:
        raise UserError("the multitask recipes need a multi-label dataset (a 0/1 vector per image); this one "
                        "has one class per image")
    return images, targets


def parse_dataset_options(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` as a dict; a ConfigError naming an item that is not key=value."""
    try:
        return parse_assignments(items)
    except ConfigError as exc:
        raise ConfigError(f"dataset_options: {exc}") from None


def load_data(ctx: TrainContext, config: TrainConfig, split: str, limit: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images, targets and attribute names of ``split``; a UserError for a dataset that is not multi-label."""
    dataset = ctx.dataset(config.dataset, split, **parse_dataset_options(config.dataset_options))
    images, targets = multilabel_tensors(dataset, limit)
    labels = list(getattr(dataset, "labels", [])) or [f"attribute {i}" for i in range(targets.shape[1])]
    if len(labels) != targets.shape[1]:
        raise UserError(f"{config.dataset}: {len(labels)} attribute names for {targets.shape[1]} targets")
    return images, targets, labels


# -- evaluation -------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(net: BranchedNet, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """N×T logits of ``net`` in eval mode for uint8 images (on the CPU; the mode is restored)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = [net(x.to(device).float() / 255).float().cpu() for x in images.split(batch_size)]
    net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, net.config.num_tasks)


def attribute_accuracy(net: BranchedNet, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-attribute accuracy (T) of thresholding each logit at 0."""
    return ((predict_logits(net, images) > 0).float() == targets.float()).float().mean(0)


# -- the tree's history -------------------------------------------------------------------------------------


def replay(net: BranchedNet, decisions: list[dict[str, Any]]) -> BranchedNet:
    """Apply logged decisions (card ``decisions``) in order to the network they started from; a decision that
    kept one group changes nothing."""
    for record in decisions:
        decision = WideningDecision.from_dict(record)
        if decision.d > 1:
            net = widen(net, decision)
    return net


def _initial_net(config: TrainConfig, ctx: TrainContext, tasks: list[str], input_size: int, channels: int
                 ) -> tuple[BranchedNet, dict[str, Any]]:
    """The starting network and where it came from (``wide_sha256``: the wide checkpoint file's hash)."""
    if isinstance(config, WideConfig):
        try:
            return BranchedNet(TreeConfig.wide(tasks, widths=config.widths, input_size=input_size,
                                               channels=channels)), {}
        except ValueError as exc:
            raise UserError(str(exc)) from None
    assert isinstance(config, TreeRecipeConfig)
    try:
        source = ctx.load_checkpoint(config.wide)
        wide = net_from_checkpoint(source)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UserError(f"wide: cannot load {config.wide!r}: {exc}".splitlines()[0]) from None
    c = wide.config
    if list(c.tasks) != list(tasks) or c.input_size != input_size or c.channels != channels:
        raise UserError(f"wide: {config.wide!r} was trained for {len(c.tasks)} tasks on {c.input_size}×{c.input_size}"
                        f"×{c.channels} images, the dataset has {len(tasks)} on {input_size}×{input_size}×{channels}")
    if any(len(g) > 1 for g in c.branches):
        raise UserError(f"wide: {config.wide!r} is already branched; start from a single-trunk wide network")
    widths = tuple(max(1, w // config.divisor) for w in c.widths)
    origin = {"wide_sha256": hashlib.sha256(Path(source.path).read_bytes()).hexdigest()}
    if config.init == "somp":
        thin, _ = thin_from_wide(wide, widths)
        return thin.train(), origin
    return BranchedNet(TreeConfig(**{**asdict(c), "widths": widths})), origin


# -- the training loop ---------------------------------------------------------------------------------------


def _optimizer(net: BranchedNet, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                           weight_decay=config.weight_decay)


def learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up over the first 3% of the steps, then cosine decay to 0."""
    warmup = max(1, int(WARMUP * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return 0.5 * config.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@dataclass
class _Growth:
    """Where the widening stands; saved in every card so a resumed run continues it."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


def _train(config: TrainConfig, ctx: TrainContext, name: str, lam: float, unit_cost: float, widen_after: int = 1,
           widen_every: int = 1, separation: str = "size") -> dict:
    images, targets, tasks = load_data(ctx, config, "train", config.train_size)
    val_images, val_targets, _ = load_data(ctx, config, "val", config.val_size)
    size, channels = images.shape[-1], images.shape[1]
    if images.shape[-2] != size:
        raise UserError(f"{config.dataset}: square images needed, got {tuple(images.shape[-2:])}")
    loop = TrainLoop(ctx, epochs=config.epochs, seed=config.seed, checkpoint=name)
    saved = TrainLoop.saved_card(ctx)
    growth = _Growth()
    if saved and "net" in saved:  # resumed: the tree this run had reached
        net = BranchedNet.from_config(saved["net"])
        growth = _Growth(list(saved.get("decisions", [])), bool(saved.get("finished", False)))
    else:
        net, origin = _initial_net(config, ctx, tasks, size, channels)
        saved = None
    net = net.to(loop.device).train()
    optimizer = _optimizer(net, config)
    loop.resume(modules={"net": net}, optimizers=[optimizer])
    tracker = AffinityTracker(len(tasks))
    if saved and saved.get("tracker"):
        # float64 as saved: float32 would round the margin sums, and with them the next hard/easy calls
        tracker.load_state({k: torch.tensor(v, dtype=torch.float64) for k, v in saved["tracker"].items()})
    images, targets = loop.to_device(images, targets)
    steps = config.epochs * TrainLoop.num_batches(len(images), config.batch_size)
    widening = lam > 0
    if not widening:
        growth.finished = True
    initial = {"params": count_params(net), "flops": count_flops(net), **origin} if not saved else saved.get("initial", {})
    val_accuracy = torch.zeros(len(tasks))

    def card() -> dict[str, Any]:
        return {"config": asdict(config), "dataset": config.dataset, "eval_split": "val", "net": net.to_config(),
                "tasks": tasks, "train_size": len(images), "decisions": growth.decisions,
                "finished": growth.finished, "tracker": {k: v.tolist() for k, v in tracker.state().items()},
                "affinity": tracker.affinity().tolist() if tracker.count else None,
                "initial": initial, "params": count_params(net), "flops": count_flops(net),
                "val_attribute_accuracy": dict(zip(tasks, [round(a, 4) for a in val_accuracy.tolist()], strict=True)),
                "tree": net.config.describe()}

    def decides_at(epoch: int) -> bool:
        return epoch >= widen_after and (epoch - widen_after) % widen_every == 0

    for epoch in loop.epochs():
        if growth.finished or (decides_at(epoch + widen_every) and not decides_at(epoch)):
            # the card's affinity is this epoch's, and a decision sees only the last widen_every epochs
            tracker.reset()
        if not growth.finished and decides_at(epoch) and tracker.count:
            decision = decide(net.config, pooled_affinity(loop, tracker), lam, unit_cost=unit_cost,
                              separation=separation)
            growth.decisions.append(decision.to_dict())
            best = decision.candidates[decision.chosen]
            # on the epoch axis of the other metrics: at the global step, beyond the last epoch, it made the
            # worker log the final metrics a second time there
            ctx.log_metrics(loop.epoch, widen_layer=decision.layer, widen_groups=decision.d, widen_cost=best.total)
            if decision.d > 1:
                net = widen(net, decision)
                optimizer = _optimizer(net, config)
                loop.rebind(modules={"net": net}, optimizers=[optimizer])
            growth.finished = decision.d == 1 or net.config.active_layer() is None
            tracker.reset()
        forward = loop.compiled(net)  # after a widening: the new network
        for idx in loop.batches(len(images), config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, loop.step, steps)
            batch, y = loop.take(images, idx), loop.take(targets, idx)
            x = random_crop_flip(batch) if config.augment else batch.float() / 255
            with loop.autocast():
                logits = forward(x)
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            loop.minimize(loss, optimizer)
            tracker.update(logits.detach(), y)
            loop.track(len(idx), train_loss=loss,
                       train_batch_accuracy=((logits.detach() > 0).float() == y).float().mean())

        if loop.stopped:
            break
        val_accuracy = attribute_accuracy(net, val_images, val_targets)  # before card(): it goes in the card
        loop.end_epoch(metadata=card(), val_mean_accuracy=float(val_accuracy.mean()),
                       branches=sum(len(g) for g in net.config.branches), params=count_params(net))
    return loop.final_metrics


def train_wide(config: WideConfig, ctx: TrainContext) -> dict:
    """The wide single-trunk network from scratch; saves ``wide``."""
    return _train(config, ctx, "wide", lam=0.0, unit_cost=1.0)


def train_tree(config: TreeRecipeConfig, ctx: TrainContext) -> dict:
    """A thin network (SOMP or random start), widened top-down while λ > 0; saves :func:`checkpoint_name`."""
    return _train(config, ctx, checkpoint_name(config), lam=config.lam, unit_cost=config.unit_cost,
                  widen_after=config.widen_after, widen_every=config.widen_every, separation=config.separation)


def tree_from_card(metadata: dict[str, Any]) -> TreeConfig:
    """The tree stored in a card (``metadata["net"]``)."""
    return dataclass_from_dict(TreeConfig, metadata["net"])


__all__ = ["RECIPES", "TrainConfig", "TreeRecipeConfig", "WideConfig", "attribute_accuracy", "checkpoint_name",
           "learning_rate", "load_data", "multilabel_tensors", "parse_dataset_options", "predict_logits", "replay",
           "train_tree", "train_wide", "tree_from_card"]

RECIPES = [
    Recipe("wide", WideConfig, train_wide,
           "The wide single-trunk multi-task network from scratch (the paper's pretrained VGG-16); saves 'wide'."),
    Recipe("tree", TreeRecipeConfig, train_tree,
           "A thin network from the wide one (SOMP or random), widened top-down by task affinity while λ > 0; "
           "saves 'thin', 'thin-random' or 'branched-l<λ>'."),
]
