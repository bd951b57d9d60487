"""Branched multi-task networks (arXiv:1611.05377; docs/multitask.md, "The method"): a VGG-style tree for 64×64 inputs.

The network is a stack of hidden layers, bottom (0) to top (L−1), then one logit per task:

- the first ``conv_layers`` hidden layers are conv3×3-BN-ReLU, each followed by a 2×2 max-pool where
  ``pool`` says so (default: every one, VGG's stage ends);
- the others are fully connected: Linear-BN-ReLU (+ dropout), the analogue of VGG's fc6/fc7;
- the output layer is one linear unit per task (with bias), attached to the top hidden layer.

Every hidden layer may be split into *branches*: copies of the layer, each serving a group of
tasks. :class:`TreeConfig` stores, per layer, its branches as groups of task indices; the groups of a
layer partition the tasks and refine (going up) those of the layer below, so every branch has exactly
one parent (the branch below holding its tasks). A branch has the layer's width whatever its tasks.

The paper widens a thin network top-down: the output layer is per task from the start, so
the first *active layer* (the highest layer that is still one shared trunk, where the next branching
decision is made) is the top hidden layer, and the branches at the junction above it are the tasks.
:meth:`TreeConfig.wide` is a single trunk at full width (the analogue of the paper's pretrained
VGG-16), :meth:`TreeConfig.thin` the same depth at a quarter of the widths, also one trunk.

Cost: parameters, and FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` for one image
(1 multiply-add = 2 FLOPs; convolutions and linear layers only, as the rest of the studio counts).
The architecture is a dataclass stored in checkpoint cards (``metadata["net"]``) and rebuilt from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from app.api import Checkpoint
from app.api.training import dataclass_from_dict, load_module_tensors

Group = tuple[int, ...]  # task indices, ascending
Groups = tuple[Group, ...]  # the branches of one layer

WIDE_WIDTHS = (32, 64, 128, 128, 256, 256, 256)  # 5 conv stages, then 2 FC layers (VGG's fc6, fc7)
THIN_DIVISOR = 4  # thin widths: a quarter of the wide ones
CONV_LAYERS = 5
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _groups(value: Iterable[Iterable[int]]) -> Groups:
    return tuple(tuple(sorted(int(t) for t in group)) for group in value)


@dataclass
class TreeConfig:
    """Everything needed to rebuild a branched network: tasks, widths, layer kinds and the tree."""

    tasks: tuple[str, ...] = ()  # task (attribute) names, in the order of the logits
    widths: tuple[int, ...] = WIDE_WIDTHS  # per hidden layer, bottom to top: conv channels, then FC units
    conv_layers: int = CONV_LAYERS  # the first ``conv_layers`` hidden layers are convolutions
    pool: tuple[bool, ...] = ()  # per conv layer: followed by a 2×2 max-pool; () = every one
    branches: tuple[Groups, ...] = ()  # per hidden layer: its branches as task groups; () = one trunk
    input_size: int = 64  # square inputs
    channels: int = 3
    dropout: float = 0.0  # after every FC hidden layer
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.widths = tuple(int(w) for w in self.widths)
        self.pool = tuple(bool(p) for p in self.pool) or (True,) * self.conv_layers
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        n, t = len(self.widths), len(self.tasks)
        if not self.branches:
            self.branches = ((tuple(range(t)),),) * n
        self.branches = tuple(_groups(layer) for layer in self.branches)
        if t < 1:
            raise ValueError("a multi-task network needs at least one task")
        if n < 1 or min(self.widths) < 1:
            raise ValueError(f"widths must be positive, one per hidden layer, got {list(self.widths)}")
        if not 1 <= self.conv_layers <= n:
            raise ValueError(f"conv_layers must be in 1..{n} (the number of hidden layers), got {self.conv_layers}")
        if len(self.pool) != self.conv_layers:
            raise ValueError(f"pool needs one flag per conv layer ({self.conv_layers}), got {len(self.pool)}")
        if self.input_size % 2 ** sum(self.pool):
            raise ValueError(f"input_size {self.input_size} is not divisible by 2^{sum(self.pool)} (the pools)")
        if len(self.branches) != n:
            raise ValueError(f"branches needs one list of groups per hidden layer ({n}), got {len(self.branches)}")
        for layer, groups in enumerate(self.branches):
            flat = sorted(i for g in groups for i in g)
            if flat != list(range(t)) or not all(groups):
                raise ValueError(f"layer {layer}: the branches {groups} do not partition the {t} tasks")
            if layer:
                self.parents(layer)  # raises unless every group lies inside one group of the layer below

    # -- constructors ---------------------------------------------------------------------------------

    @classmethod
    def wide(cls, tasks: Sequence[str], widths: Sequence[int] = WIDE_WIDTHS, **kwargs: Any) -> TreeConfig:
        """A single trunk at full width, all tasks on one head layer (the paper's pretrained VGG-16)."""
        return cls(tasks=tuple(tasks), widths=tuple(widths), **kwargs)

    @classmethod
    def thin(cls, tasks: Sequence[str], widths: Sequence[int] | None = None, *,
             wide_widths: Sequence[int] = WIDE_WIDTHS, divisor: int = THIN_DIVISOR, **kwargs: Any) -> TreeConfig:
        """The same depth as :meth:`wide` at thin widths (default: ``wide_widths`` / ``divisor``), one trunk."""
        if widths is None:
            widths = tuple(max(1, w // divisor) for w in wide_widths)
        return cls(tasks=tuple(tasks), widths=tuple(widths), **kwargs)

    # -- the tree -------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(self.widths)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def is_conv(self, layer: int) -> bool:
        return layer < self.conv_layers

    def parents(self, layer: int) -> tuple[int, ...]:
        """For each branch of ``layer``, the index of its parent branch at ``layer − 1`` (0 at layer 0)."""
        if layer == 0:
            return (0,) * len(self.branches[0])
        below = self.branches[layer - 1]
        found = []
        for group in self.branches[layer]:
            owners = [p for p, parent in enumerate(below) if set(group) <= set(parent)]
            if not owners:
                raise ValueError(f"layer {layer}: branch {group} is not inside one branch of layer {layer - 1} "
                                 f"{below}")
            found.append(owners[0])
        return tuple(found)

    def junction_branches(self, layer: int) -> Groups:
        """The branches that hang on ``layer`` from above: the groups of ``layer + 1``, or one per task on top."""
        if layer == self.num_layers - 1:
            return tuple((t,) for t in range(self.num_tasks))
        return self.branches[layer + 1]

    def active_layer(self) -> int | None:
        """The highest hidden layer that is still one shared trunk (None once layer 0 is branched)."""
        single = [layer for layer, groups in enumerate(self.branches) if len(groups) == 1]
        return max(single) if single else None

    def pools_above(self, layer: int) -> int:
        """p_l of the branch-creation cost (docs/multitask.md, "The method"): the pooling layers above ``layer`` (its own included)."""
        return sum(self.pool[layer:]) if self.is_conv(layer) else 0

    def feature_size(self, layer: int) -> int:
        """The spatial size of the output of conv ``layer`` (after its pool)."""
        return self.input_size // 2 ** sum(self.pool[: layer + 1])

    def in_features(self, layer: int) -> int:
        """Input channels (conv) or input features (FC, or the heads at ``layer == num_layers``)."""
        if layer == 0:
            return self.channels
        if layer <= self.conv_layers - 1:
            return self.widths[layer - 1]
        if layer == self.conv_layers:  # the first FC layer (or the heads) flattens the last conv output
            return self.widths[layer - 1] * self.feature_size(layer - 1) ** 2
        return self.widths[layer - 1]

    def widened(self, layer: int, groups: Sequence[Sequence[int]]) -> TreeConfig:
        """This tree with ``layer`` split into ``groups`` (task groups; the layers above are reattached)."""
        branches = list(self.branches)
        branches[layer] = _groups(groups)
        return dataclasses.replace(self, branches=tuple(branches))

    def describe(self) -> str:
        """The tree, top layer first: ``L6 fc×2: [hat glasses][skirt bag]`` (task names, else indices)."""
        def name(t: int) -> str:
            return self.tasks[t] if self.tasks[t] else str(t)

        lines = []
        for layer in reversed(range(self.num_layers)):
            kind = "conv" if self.is_conv(layer) else "fc"
            groups = " ".join("[" + " ".join(name(t) for t in g) + "]" for g in self.branches[layer])
            lines.append(f"L{layer} {kind}{self.widths[layer]}×{len(self.branches[layer])}: {groups}")
        return "\n".join(lines)


class HiddenLayer(nn.Module):
    """One branch of one hidden layer: conv3×3 (or linear) without bias, BN, ReLU, then max-pool / dropout."""

    def __init__(self, in_features: int, width: int, conv: bool, pool: bool, dropout: float) -> None:
        super().__init__()
        self.conv = conv
        if conv:
            self.op: nn.Conv2d | nn.Linear = nn.Conv2d(in_features, width, 3, padding=1, bias=False)
            self.bn: nn.BatchNorm2d | nn.BatchNorm1d = nn.BatchNorm2d(width)
            self.post: nn.Module = nn.MaxPool2d(2) if pool else nn.Identity()
            nn.init.kaiming_normal_(self.op.weight, mode="fan_out", nonlinearity="relu")
        else:
            self.op = nn.Linear(in_features, width, bias=False)
            self.bn = nn.BatchNorm1d(width)
            self.post = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.conv:
            x = torch.flatten(x, 1)
        return self.post(torch.relu(self.bn(self.op(x))))


class BranchedNet(nn.Module):
    """The tree :class:`TreeConfig` describes; ``forward`` gives N×T logits, in the order of ``config.tasks``.

    Modules: ``layers[l][b]`` is branch ``b`` of hidden layer ``l`` (:class:`HiddenLayer`), ``heads[b]`` the
    output units of the tasks of top branch ``b`` (one row per task, in the group's order).
    """

    mean: torch.Tensor  # buffers: per-channel normalisation (1×C×1×1) and each task's column among the heads
    std: torch.Tensor
    position: torch.Tensor

    def __init__(self, config: TreeConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.register_buffer("mean", torch.tensor(c.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(c.std).view(1, -1, 1, 1), persistent=False)
        self.layers = nn.ModuleList(
            nn.ModuleList(HiddenLayer(c.in_features(layer), c.widths[layer], c.is_conv(layer),
                                      c.is_conv(layer) and c.pool[layer], c.dropout)
                          for _ in c.branches[layer])
            for layer in range(c.num_layers))
        self.branch_parents = tuple(c.parents(layer) for layer in range(c.num_layers))
        top = c.branches[-1]
        self.heads = nn.ModuleList(nn.Linear(c.in_features(c.num_layers), len(g)) for g in top)
        position = torch.empty(c.num_tasks, dtype=torch.long)  # task t's column among the concatenated heads
        position[torch.tensor([t for g in top for t in g])] = torch.arange(c.num_tasks)
        self.register_buffer("position", position, persistent=False)

    @classmethod
    def from_config(cls, config: TreeConfig | Mapping[str, Any]) -> BranchedNet:
        """A freshly initialised network from a config or its dict (``to_config()``, a card's ``metadata["net"]``)."""
        return cls(config if isinstance(config, TreeConfig) else dataclass_from_dict(TreeConfig, config))

    @classmethod
    def wide(cls, tasks: Sequence[str], **kwargs: Any) -> BranchedNet:
        return cls(TreeConfig.wide(tasks, **kwargs))

    @classmethod
    def thin(cls, tasks: Sequence[str], **kwargs: Any) -> BranchedNet:
        return cls(TreeConfig.thin(tasks, **kwargs))

    def branch(self, layer: int, b: int) -> HiddenLayer:
        """Branch ``b`` of hidden layer ``layer`` (``layers[layer][b]``, typed)."""
        return cast(HiddenLayer, cast(nn.ModuleList, self.layers[layer])[b])

    def head(self, b: int) -> nn.Linear:
        """The output units of top branch ``b`` (``heads[b]``, typed)."""
        return cast(nn.Linear, self.heads[b])

    def to_config(self) -> dict[str, Any]:
        """The architecture as JSON-ready data (store it in the card's ``metadata["net"]``)."""
        return dataclasses.asdict(self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N×T for images N×C×H×W in [0, 1]."""
        outputs = [(x - self.mean) / self.std]
        for branches, parents in zip(cast(list[nn.ModuleList], self.layers), self.branch_parents, strict=True):
            outputs = [branch(outputs[p]) for branch, p in zip(branches, parents, strict=True)]
        logits = torch.cat([head(torch.flatten(h, 1)) for head, h in zip(self.heads, outputs, strict=True)], 1)
        return logits[:, self.position]


# -- cost ----------------------------------------------------------------------------------------------


def count_params(net: nn.Module) -> int:
    """Trainable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in net.parameters())


def count_flops(net: BranchedNet) -> int:
    """FLOPs of one forward pass on one image (2 per multiply-add; convolutions and linear layers only)."""
    c = net.config
    device = next(net.parameters()).device
    x = torch.zeros(1, c.channels, c.input_size, c.input_size, device=device)
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    net.train(was_training)
    return int(counter.get_total_flops())


# -- checkpoints and batch norm ----------------------------------------------------------------------------


def net_from_checkpoint(checkpoint: Checkpoint, device: Any = "cpu") -> BranchedNet:
    """Rebuild a network saved by this plugin (tree from ``metadata["net"]``, weights under ``net.*``), in eval mode."""
    if "net" not in checkpoint.metadata:
        raise ValueError("the checkpoint's card has no 'net' tree: not a multitask-plugin checkpoint")
    net = BranchedNet.from_config(checkpoint.metadata["net"])
    return load_module_tensors(net, checkpoint.tensors, "net").to(device).eval()


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BN layer's running statistics on ``images`` (uint8 or float in [0, 1]), e.g. after
    thinning; the exact average over the batches (a last batch of one image is skipped: BN cannot train
    on it), the network's mode and the BN momenta restored afterwards."""
    was_training = net.training
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    net.train()
    device = next(net.parameters()).device
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        if len(batch) > 1:
            net(batch.float() / 255 if batch.dtype == torch.uint8 else batch)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    net.train(was_training)
