"""BlockDrop models: a CIFAR-style ResNet whose residual blocks can really be skipped, per sample,
and the policy network that decides which blocks to keep (arXiv:1711.08393): the paper's ResNet-8
(``arch="resnet8"``) or three strided convolutions (``arch="strided"``, the default: at batch 1 its time follows its FLOPs; docs/blockdrop.md).

Backbone: depth 6n+2 (20/32/56/110), K = 3n BasicBlocks in three stages of 16/32/64 channels.
The shortcut of the first block of stages 2 and 3 is the paper's parameter-free ``DownsampleB``
(2×2 average pooling, then zero channels appended), so a dropped block costs nothing at all and
its shortcut (identity, or the cheap downsample) still runs. Inputs are float N×3×H×W in [0, 1];
normalisation (the config's ``mean``/``std``) happens inside the model.

A checkpoint's card records both architectures as dataclasses (``metadata["backbone"]`` =
``asdict(ResNetConfig)``, ``metadata["policy"]`` = ``asdict(PolicyNetConfig)``), and
:func:`backbone_from_checkpoint` / :func:`policy_from_checkpoint` rebuild the models from them; the
flat cards written before (the shipped assets) go through :func:`legacy_configs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from app.api import Checkpoint
from app.api.training import dataclass_from_dict, load_module_tensors

MEAN = (0.5, 0.5, 0.5)  # the normalisation every model of the flat (legacy) cards was trained with
STD = (0.25, 0.25, 0.25)


@dataclass
class ResNetConfig:
    """The backbone's architecture, and what it expects of its input."""

    depth: int = 32  # 6n+2
    num_classes: int = 10
    width: int = 16  # channels of stage 1; stages 2 and 3 double it
    input_size: tuple[int, int] = (32, 32)  # H, W of the images it was trained on
    mean: tuple[float, float, float] = MEAN  # per-channel normalisation of [0, 1] inputs
    std: tuple[float, float, float] = STD
    labels: tuple[str, ...] = ()  # class names, in output order


@dataclass
class PolicyNetConfig:
    """The policy network's architecture."""

    num_blocks: int = 15  # K: one keep/drop output per backbone block
    input_size: int = 32  # the policy looks at the image resized to input_size × input_size
    width: int = 16  # resnet8: channels of its first stage
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    # "resnet8": the paper's ResNet-8 (cards written before this field have it). "strided": conv 2×2 → conv
    # 3×3 → conv 3×3, each stride 2 with batch norm and ReLU, then pooled → linear. At batch 1 a small
    # network's time is per-layer overhead, not FLOPs; three wide layers run in 0.13 ms where the ResNet-8's
    # eight small ones took 0.33 ms on a 2-core CPU (docs/blockdrop.md, "The policy network").
    arch: str = "resnet8"
    channels: tuple[int, ...] = (32, 64, 128)  # strided: output channels of its three layers


POLICY_ARCHS = ("strided", "resnet8")


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn: the residual branch only (the add and ReLU happen in the ResNet)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class DownsampleB(nn.Module):
    """Parameter-free shortcut: 2×2 average pooling, then zero channels up to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class ResNetTrunk(nn.Module):
    """Normalise → 3×3 stem → stages of BasicBlocks → pooled features → linear head."""

    mean: torch.Tensor  # buffers (per-channel normalisation, 1×3×1×1)
    std: torch.Tensor

    def __init__(self, blocks_per_stage: int, num_outputs: int, width: int,
                 mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        self.stage_of_block: list[int] = []
        in_ch = width
        for stage in range(3):
            out_ch = width * 2**stage
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                self.blocks.append(BasicBlock(in_ch, out_ch, stride))
                self.shortcuts.append(DownsampleB(in_ch, out_ch) if stride == 2 else nn.Identity())
                self.stage_of_block.append(stage)
                in_ch = out_ch
        self.fc = nn.Linear(in_ch, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BlockDropResNet(ResNetTrunk):
    """A CIFAR ResNet whose forward takes a per-sample keep/drop policy over its K blocks."""

    def __init__(self, config: ResNetConfig):
        if (config.depth - 2) % 6 or config.depth < 8:
            raise ValueError(f"ResNet depth must be 6n+2 (20, 32, 56, 110), got {config.depth}")
        super().__init__((config.depth - 2) // 6, config.num_classes, config.width, config.mean, config.std)
        self.config = config

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """Logits N×classes. ``policy`` (N×K, 1 = keep) really skips: each block runs only on the
        samples that keep it (gathered into a sub-batch and scattered back); a block nobody keeps
        costs nothing. ``policy=None`` runs every block for every sample."""
        x = self.stem(x)
        if policy is None:
            for block, shortcut in zip(self.blocks, self.shortcuts, strict=True):
                x = F.relu(shortcut(x) + block(x))
            return self.head(x)
        keep_lists = _keep_indices(policy, x.device)
        for block, shortcut, keep in zip(self.blocks, self.shortcuts, keep_lists, strict=True):
            residual = shortcut(x)
            if keep is None:  # every sample keeps this block: no gather needed
                x = F.relu(residual + block(x))
            elif keep.numel() == 0:  # nobody keeps it: the shortcut alone
                x = residual
            else:
                out = F.relu(residual.index_select(0, keep) + block(x.index_select(0, keep)))
                x = residual.index_copy(0, keep, out)
        return self.head(x)

    def forward_masked(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """The paper's training forward: every block runs for every sample and its output is mixed
        with the shortcut by the (float) policy, ``x = mask·block_out + (1−mask)·shortcut``.
        Differentiable w.r.t. the backbone; computes everything, so it saves no time."""
        x = self.stem(x)
        mask = policy.to(x.dtype)
        for k, (block, shortcut) in enumerate(zip(self.blocks, self.shortcuts, strict=True)):
            residual = shortcut(x)
            out = F.relu(residual + block(x))
            m = mask[:, k].view(-1, 1, 1, 1)
            x = m * out + (1 - m) * residual
        return self.head(x)


def _keep_indices(policy: torch.Tensor, device: torch.device) -> list[torch.Tensor | None]:
    """Per block: None (all keep) or the indices of the samples that keep it, on ``device``.

    The policy goes to the host once (one sync for the whole forward, not one per block) and all
    index lists travel back to the device in one copy."""
    keep = policy.detach().to("cpu") > 0.5
    n, k = keep.shape
    counts = keep.sum(0).tolist()
    lists: list[torch.Tensor | None] = [None] * k
    partial = [j for j in range(k) if 0 < counts[j] < n]
    if partial:
        flat = torch.cat([keep[:, j].nonzero().flatten() for j in partial]).to(device, non_blocking=True)
        for j, part in zip(partial, flat.split([counts[j] for j in partial]), strict=True):
            lists[j] = part
    empty = torch.empty(0, dtype=torch.long, device=device)
    for j in range(k):
        if counts[j] == 0:
            lists[j] = empty
    return lists


def policy_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """The image as a policy network sees it: resized to size × size (antialiased bilinear) if it is not."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class PolicyNet(ResNetTrunk):
    """ResNet-8 (one BasicBlock per stage) with K sigmoid outputs: the keep probability per block."""

    def __init__(self, config: PolicyNetConfig):
        super().__init__(1, config.num_blocks, config.width, config.mean, config.std)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Keep probabilities N×K in (0, 1)."""
        return torch.sigmoid(self.logits(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = policy_input(x, self.config.input_size)
        x = self.stem(x)
        for block, shortcut in zip(self.blocks, self.shortcuts, strict=True):
            x = F.relu(shortcut(x) + block(x))
        return self.head(x)


class StridedPolicyNet(nn.Module):
    """Keep probabilities from a few wide strided convolutions (``PolicyNetConfig.arch == "strided"``)."""

    mean: torch.Tensor  # buffers (per-channel normalisation, 1×3×1×1)
    std: torch.Tensor

    def __init__(self, config: PolicyNetConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        in_ch = 3
        for i, out_ch in enumerate(config.channels):
            kernel, padding = (2, 0) if i == 0 else (3, 1)  # the first layer halves the image without overlap
            self.convs.append(nn.Conv2d(in_ch, out_ch, kernel, 2, padding, bias=False))
            self.bns.append(nn.BatchNorm2d(out_ch))
            in_ch = out_ch
        self.fc = nn.Linear(in_ch, config.num_blocks)
        for conv in self.convs:
            nn.init.kaiming_normal_(cast(nn.Conv2d, conv).weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Keep probabilities N×K in (0, 1)."""
        return torch.sigmoid(self.logits(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = policy_input(x, self.config.input_size)
        x = (x - self.mean) / self.std
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = F.relu(bn(conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


PolicyModule = PolicyNet | StridedPolicyNet


def make_policy(config: PolicyNetConfig) -> PolicyModule:
    """The policy network a config describes (its ``arch``)."""
    if config.arch == "resnet8":
        return PolicyNet(config)
    if config.arch == "strided":
        if len(config.channels) < 1:
            raise ValueError("a strided policy needs at least one layer (channels)")
        return StridedPolicyNet(config)
    raise ValueError(f"unknown policy architecture {config.arch!r}; expected one of {POLICY_ARCHS}")


def build_resnet(depth: int, num_classes: int, width: int = 16) -> BlockDropResNet:
    """A CIFAR-style ResNet-``depth`` (6n+2) with ``num_classes`` outputs, ready for BlockDrop."""
    return BlockDropResNet(ResNetConfig(depth=depth, num_classes=num_classes, width=width))


def build_policy(num_blocks: int, input_size: int = 32, width: int = 16, arch: str = "resnet8") -> PolicyModule:
    """A policy network (ResNet-8 unless ``arch`` says otherwise) for a backbone with ``num_blocks`` blocks."""
    return make_policy(PolicyNetConfig(num_blocks=num_blocks, input_size=input_size, width=width, arch=arch))


def greedy_policy(probs: torch.Tensor) -> torch.Tensor:
    """Test-time policy: keep a block iff its probability is at least 0.5 (float 0/1, N×K)."""
    return (probs >= 0.5).float()


# --------------------------------------------------------------------------------------------
# Rebuilding models from a checkpoint's card
# --------------------------------------------------------------------------------------------


def model_configs(metadata: Mapping[str, Any]) -> tuple[ResNetConfig, PolicyNetConfig | None]:
    """The architectures a card records (the policy's is None for a backbone-only checkpoint).

    Raises ValueError (or KeyError) when the card describes no BlockDrop model."""
    if isinstance(metadata.get("backbone"), Mapping):
        policy = metadata.get("policy")
        return (dataclass_from_dict(ResNetConfig, metadata["backbone"]),
                dataclass_from_dict(PolicyNetConfig, policy) if isinstance(policy, Mapping) else None)
    return legacy_configs(metadata)


def legacy_configs(card: Mapping[str, Any]) -> tuple[ResNetConfig, PolicyNetConfig | None]:
    """The architectures of a flat card written before the typed configs (keys ``depth``, ``num_classes``,
    ``num_blocks``, ``policy_input_size``, ``labels``, ``image_size``): width 16, MEAN/STD."""
    backbone = ResNetConfig(depth=int(card["depth"]), num_classes=int(card["num_classes"]),
                            input_size=tuple(card.get("image_size") or (32, 32)),
                            labels=tuple(card.get("labels") or ()))
    policy = None
    if "num_blocks" in card and card.get("kind") != "backbone":
        policy = PolicyNetConfig(num_blocks=int(card["num_blocks"]), input_size=int(card.get("policy_input_size", 32)))
    return backbone, policy


def backbone_from_checkpoint(checkpoint: Checkpoint, device: Any = "cpu") -> BlockDropResNet:
    """The ResNet stored (``backbone.*``) in a checkpoint, built from the config its card records."""
    config, _ = model_configs(checkpoint.metadata)
    return load_module_tensors(BlockDropResNet(config), checkpoint.tensors, "backbone").to(device)


def policy_from_checkpoint(checkpoint: Checkpoint, device: Any = "cpu") -> PolicyModule:
    """The policy network stored (``policy.*``) in a checkpoint, built from the config its card records."""
    _, config = model_configs(checkpoint.metadata)
    if config is None:
        raise ValueError(f"{checkpoint.path.name or 'the checkpoint'} holds no policy network (a backbone?)")
    return load_module_tensors(make_policy(config), checkpoint.tensors, "policy").to(device)
