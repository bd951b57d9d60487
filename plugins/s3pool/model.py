"""S3Pool networks: a CIFAR ResNet and the official code's NIN, with switchable downsampling.

``downsample`` picks how the feature maps are halved before stages 2 and 3 (ResNet) or after the
first two NIN blocks, as in the paper's comparisons (arXiv:1611.05138, official ``build_net.py``):

- ``strided``: the first block of the stage has a stride-2 convolution (the paper's ResNet baseline);
- ``max``: ``nn.MaxPool2d(2)`` (the NIN baseline also adds dropout 0.5 after each pool);
- ``s3pool``: :class:`~plugins.s3pool.layer.S3Pool2d` with one grid size per layer (``grid_sizes``,
  the paper's 16-8 at 32×32), no dropout;
- ``stochastic``: Zeiler & Fergus stochastic pooling (:class:`StochasticPool2d`).

The architecture is a config dataclass stored in every checkpoint card, and rebuilt from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.api import Checkpoint
from app.api.training import dataclass_from_dict, load_module_tensors
from plugins.s3pool.layer import S3Pool2d

DOWNSAMPLING = ("strided", "max", "s3pool", "stochastic")
ARCHITECTURES = ("resnet", "nin")
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


@dataclass
class NetConfig:
    """Everything needed to rebuild a network: architecture, downsampling, classes, input, normalisation."""

    arch: str = "resnet"
    downsample: str = "s3pool"
    depth: int = 20  # ResNet: 6n+2
    width: int = 16  # ResNet: channels of stage 1 (stages: w, 2w, 4w); NIN: channels of its layers
    grid_sizes: tuple[int, ...] = (16, 8)  # S3Pool: one per downsampling layer
    eval_mode: str = "deterministic"  # S3Pool at test time: deterministic | uniform | ensemble
    num_classes: int = 10
    input_size: tuple[int, int] = (32, 32)
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if self.downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {DOWNSAMPLING}, got {self.downsample!r}")
        if self.arch == "resnet" and ((self.depth - 2) % 6 or self.depth < 8):
            raise ValueError(f"ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {self.depth}")
        if self.arch == "nin" and self.downsample == "strided":
            raise ValueError("the NIN has no strided variant (the paper compares max pooling + dropout with S3Pool)")
        if self.downsample == "s3pool" and len(self.grid_sizes) != 2:
            raise ValueError(f"S3Pool needs one grid size per downsampling layer (2), got {list(self.grid_sizes)}")

    @property
    def name(self) -> str:
        """The checkpoint name of this kind of network, e.g. ``resnet-s3pool``."""
        return f"{self.arch}-{self.downsample}"


class StochasticPool2d(nn.Module):
    """Stochastic pooling (Zeiler & Fergus, 2013) over 2×2 windows of non-negative activations.

    Training: each window outputs one of its values, drawn with probability proportional to the value
    (uniformly when the window is all zero). Test: the probability-weighted average of the window.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = F.pad(x.clamp_min(0), (0, w % 2, 0, h % 2))  # odd sizes: a zero column/row, like ceil_mode
        windows = F.unfold(x, 2, stride=2).view(n, c, 4, -1)  # N×C×4×L
        total = windows.sum(2, keepdim=True)
        probs = torch.where(total > 0, windows / total.clamp_min(1e-12), torch.full_like(windows, 0.25))
        if self.training:
            flat = probs.permute(0, 1, 3, 2).reshape(-1, 4)
            pick = torch.multinomial(flat, 1).view(n, c, -1, 1).permute(0, 1, 3, 2)
            out = windows.gather(2, pick).squeeze(2)
        else:
            out = (probs * windows).sum(2)
        return out.view(n, c, (h + 1) // 2, (w + 1) // 2)


def downsampling_layer(kind: str, grid_size: int, eval_mode: str) -> nn.Module:
    """The layer that halves the feature maps for ``kind`` (``strided`` halves in the conv: identity here)."""
    if kind == "max":
        return nn.MaxPool2d(2, ceil_mode=True)
    if kind == "s3pool":
        return S3Pool2d(2, grid_size=grid_size, eval_mode=eval_mode)
    if kind == "stochastic":
        return StochasticPool2d()
    return nn.Identity()


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus the shortcut (option A: subsample and zero-pad channels), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + shortcut)


class PoolingNet(nn.Module):
    """A classifier whose downsampling layers are switchable; ``features`` is a list of stages, each
    starting with its downsampling layer (``self.pools[i]``) after the first."""

    mean: torch.Tensor  # buffers (per-channel normalisation, 1×C×1×1)
    std: torch.Tensor

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)
        pools = [downsampling_layer(config.downsample, g, config.eval_mode) for g in config.grid_sizes[:2]]
        if len(pools) < 2:
            pools += [downsampling_layer(config.downsample, 2, config.eval_mode) for _ in range(2 - len(pools))]
        self.pools = nn.ModuleList(pools)
        builder = _resnet_stages if config.arch == "resnet" else _nin_stages
        self.stem, self.stages, out_ch = builder(config)
        self.fc = nn.Linear(out_ch, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N×classes for images N×3×H×W in [0, 1]."""
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.forward_features(x)[-1], 1), 1))

    def classify_from(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Logits from ``x``, the map that enters stage ``stage`` (after its downsampling layer): the rest
        of :meth:`forward`, for a caller that already computed the first stages (the demo does)."""
        for i in range(stage, len(self.stages)):
            if i > stage:
                x = self.pools[i - 1](x)
            x = self.stages[i](x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps after the stem and after each downsampling layer (the demo shows them)."""
        x = self.stem((x - self.mean) / self.std)
        maps = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.pools[i - 1](x)
                maps.append(x)
            x = stage(x)
        maps.append(x)
        return maps


def _resnet_stages(config: NetConfig) -> tuple[nn.Module, nn.ModuleList, int]:
    n, w = (config.depth - 2) // 6, config.width
    stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
    stages, in_ch = [], w
    for stage in range(3):
        out_ch = w * 2**stage
        stride = 2 if stage > 0 and config.downsample == "strided" else 1
        blocks = [BasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1) for i in range(n)]
        stages.append(nn.Sequential(*blocks))
        in_ch = out_ch
    return stem, nn.ModuleList(stages), in_ch


def _conv(in_ch: int, out_ch: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, 1, k // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


def _nin_stages(config: NetConfig) -> tuple[nn.Module, nn.ModuleList, int]:
    """The official NIN scaled by ``width`` (192 in the paper): conv5-w, 1×1-5w/6, 1×1-w/2 | pool |
    conv5-w, 1×1-w, 1×1-w | pool | conv3-w, 1×1-w. The max-pool baseline adds dropout 0.5 after each
    pool (the paper's "standard"); S3Pool replaces both pooling and dropout."""
    w = config.width
    dropout = config.downsample == "max"
    stem = nn.Sequential(_conv(3, w, 5), _conv(w, 5 * w // 6, 1), _conv(5 * w // 6, w // 2, 1))
    drop = [nn.Dropout(0.5)] if dropout else []
    stage2 = nn.Sequential(*drop, _conv(w // 2, w, 5), _conv(w, w, 1), _conv(w, w, 1))
    stage3 = nn.Sequential(*drop, _conv(w, w, 3), _conv(w, w, 1))
    return stem, nn.ModuleList([nn.Identity(), stage2, stage3]), w


def build_net(config: NetConfig) -> PoolingNet:
    """The network ``config`` describes, with freshly initialised weights."""
    return PoolingNet(config)


def net_config(metadata: Mapping[str, Any]) -> NetConfig:
    """The :class:`NetConfig` stored (``metadata["net"]``) in a checkpoint's card."""
    if "net" not in metadata:
        raise ValueError("the checkpoint's card has no 'net' architecture: not an S3Pool-plugin checkpoint")
    return dataclass_from_dict(NetConfig, metadata["net"])


def net_from_checkpoint(checkpoint: Checkpoint, device: Any = "cpu") -> PoolingNet:
    """Rebuild the network stored in a checkpoint (architecture from its card, weights under ``net.*``)."""
    net = build_net(net_config(checkpoint.metadata))
    return load_module_tensors(net, checkpoint.tensors, "net").to(device)
