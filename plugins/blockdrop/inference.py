"""The inference path a deployment would use, for the full ResNet and for BlockDrop alike.

- Batch norm folded into the convolutions (eval-mode statistics; exact up to float rounding), and the
  input normalisation folded into a per-channel affine op: fewer, larger kernels.
- ``torch.inference_mode`` throughout (no autograd bookkeeping); channels-last at batch size 1
  (:func:`deployed_layout`).
- At batch size 1 the policy of the single image is known before the backbone runs: one host read of K
  booleans, then only the kept blocks are called — no gathers, scatters or index tensors. Larger
  batches run each block on the sub-batch that keeps it (gather → block → scatter), as
  :meth:`BlockDropResNet.forward` does, with the folded layers.

:class:`FastResNet` (from a :class:`BlockDropResNet`), :class:`FastPolicy` (from a ResNet-8
:class:`PolicyNet`) and :class:`FastStridedPolicy` (from a :class:`StridedPolicyNet`) compute the same
function as the modules they are built from; the tests check it.
"""

from __future__ import annotations

from typing import TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from plugins.blockdrop.model import (
    BasicBlock,
    BlockDropResNet,
    DownsampleB,
    PolicyModule,
    PolicyNet,
    ResNetTrunk,
    StridedPolicyNet,
    policy_input,
)


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    return value[0], value[1]


def fold_bn(conv: nn.Module, bn: nn.Module) -> nn.Conv2d:
    """A convolution with bias equal to ``bn(conv(x))`` in eval mode."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_bn folds a BatchNorm2d into a Conv2d, not {type(bn).__name__} into {type(conv).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn needs a BatchNorm2d that tracks running statistics")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, _pair(conv.kernel_size), _pair(conv.stride), padding,
                      _pair(conv.dilation), conv.groups, bias=True).to(conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight.detach() * scale.view(-1, 1, 1, 1))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        cast(torch.Tensor, fused.bias).copy_((bias - bn.running_mean) * scale + bn.bias.detach())
    return fused.eval().requires_grad_(False)


InferenceT = TypeVar("InferenceT", bound="_Inference")


class _Inference(nn.Module):
    """A network on the inference path, which may keep its weights and activations channels-last."""

    channels_last = False

    def use_channels_last(self: InferenceT, enabled: bool = True) -> InferenceT:
        """Keep weights and activations channels-last (NHWC): oneDNN's preferred layout on CPU."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)


class _Folded(_Inference):
    """A ResNet trunk with folded batch norm: stem, residual branches, shortcuts, head."""

    in_scale: torch.Tensor  # buffers: the input normalisation as one affine op
    in_shift: torch.Tensor

    def __init__(self, trunk: ResNetTrunk) -> None:
        super().__init__()
        trunk = trunk.eval()
        self.register_buffer("in_scale", (1.0 / trunk.std).clone())
        self.register_buffer("in_shift", (-trunk.mean / trunk.std).clone())
        self.stem = fold_bn(trunk.conv1, trunk.bn1)
        blocks = cast(list[BasicBlock], list(trunk.blocks))
        self.conv1 = nn.ModuleList(fold_bn(b.conv1, b.bn1) for b in blocks)
        self.conv2 = nn.ModuleList(fold_bn(b.conv2, b.bn2) for b in blocks)
        self.down = [s.extra if isinstance(s, DownsampleB) else None for s in trunk.shortcuts]
        self.fc = trunk.fc
        self.requires_grad_(False)

    @property
    def num_blocks(self) -> int:
        return len(self.conv1)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.relu(self.stem(torch.addcmul(self.in_shift, x, self.in_scale)))

    def _shortcut(self, k: int, x: torch.Tensor) -> torch.Tensor:
        extra = self.down[k]
        return x if extra is None else F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 0, extra))

    def _branch(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return self.conv2[k](F.relu(self.conv1[k](x)))

    def _block(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self._shortcut(k, x) + self._branch(k, x))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class FastResNet(_Folded):
    """:class:`BlockDropResNet` for inference: ``forward(x, keep)`` with ``keep`` a list of K booleans
    (batch 1: only the kept blocks run), an N×K 0/1 tensor (each block on the samples that keep it),
    or None (every block)."""

    def __init__(self, backbone: BlockDropResNet) -> None:
        super().__init__(backbone)

    def forward(self, x: torch.Tensor, keep: list[bool] | torch.Tensor | None = None) -> torch.Tensor:
        x = self._stem(x)
        if keep is None:
            for k in range(self.num_blocks):
                x = self._block(k, x)
        elif isinstance(keep, list):  # one image: its policy decides which blocks are called at all
            for k, kept in enumerate(keep):
                x = self._block(k, x) if kept else self._shortcut(k, x)
        else:
            x = self._batched(x, keep)
        return self._head(x)

    def _batched(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        keep = policy.detach().to("cpu") > 0.5  # one host read for the whole forward
        n = keep.shape[0]
        counts = keep.sum(0).tolist()
        for k in range(self.num_blocks):
            residual = self._shortcut(k, x)
            if counts[k] == n:
                x = F.relu(residual + self._branch(k, x))
            elif counts[k] == 0:
                x = residual
            else:
                idx = keep[:, k].nonzero().flatten().to(x.device)
                out = F.relu(residual.index_select(0, idx) + self._branch(k, x.index_select(0, idx)))
                x = residual.index_copy(0, idx, out)
        return x


class FastPolicy(_Folded):
    """:class:`PolicyNet` for inference: keep probabilities N×K (the same resize, folded layers)."""

    def __init__(self, policy: PolicyNet) -> None:
        super().__init__(policy)
        self.input_size = policy.config.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = policy_input(x, self.input_size)
        x = self._stem(x)
        for k in range(self.num_blocks):
            x = self._block(k, x)
        return torch.sigmoid(self._head(x))


class FastStridedPolicy(_Inference):
    """:class:`StridedPolicyNet` for inference: normalisation as one affine op, batch norm folded."""

    in_scale: torch.Tensor  # buffers: the input normalisation as one affine op
    in_shift: torch.Tensor

    def __init__(self, policy: StridedPolicyNet) -> None:
        super().__init__()
        policy = policy.eval()
        self.input_size = policy.config.input_size
        self.register_buffer("in_scale", (1.0 / policy.std).clone())
        self.register_buffer("in_shift", (-policy.mean / policy.std).clone())
        self.convs = nn.ModuleList(fold_bn(c, b) for c, b in zip(policy.convs, policy.bns, strict=True))
        self.fc = policy.fc
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = policy_input(x, self.input_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = torch.addcmul(self.in_shift, x, self.in_scale)
        for conv in self.convs:
            x = F.relu(conv(x))
        return torch.sigmoid(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def fast_policy(policy: PolicyModule) -> FastPolicy | FastStridedPolicy:
    """The inference-path version of either policy architecture."""
    return FastStridedPolicy(policy) if isinstance(policy, StridedPolicyNet) else FastPolicy(policy)


# The deployed layout, from the benchmark's per-step measurements (docs/blockdrop.md): channels-last
# speeds up both networks at batch 1 (oneDNN's preferred layout, fewer reorders), but in a batch it slows
# BlockDrop's per-block gathers and scatters more than it speeds up the convolutions, so batches stay NCHW.
CHANNELS_LAST_UP_TO_BATCH = 1


def deployed_layout(batch_size: int) -> bool:
    """Whether the deployed path runs channels-last for batches of ``batch_size``."""
    return batch_size <= CHANNELS_LAST_UP_TO_BATCH


def prepare(backbone: BlockDropResNet, policy: PolicyModule | None = None, *, channels_last: bool = True
            ) -> tuple[FastResNet, FastPolicy | FastStridedPolicy | None]:
    """The inference-path versions of a backbone (and policy network), on the backbone's device."""
    fast = FastResNet(backbone).use_channels_last(channels_last)
    fast_pol = fast_policy(policy).use_channels_last(channels_last) if policy is not None else None
    return fast, fast_pol


def keep_list(probs: torch.Tensor, free_blocks: int | None) -> list[bool]:
    """The greedy policy of one image as K booleans; blocks outside the curriculum's last ``free_blocks``
    are kept, as at training time."""
    keep = (probs[0] > 0.5).tolist()
    k = len(keep)
    if free_blocks is not None and free_blocks < k:
        keep = [True] * (k - free_blocks) + keep[k - free_blocks:]
    return keep


def keep_tensor(probs: torch.Tensor, free_blocks: int | None) -> torch.Tensor:
    """The greedy policies of a batch (N×K, 1 = keep), the curriculum applied."""
    keep = (probs > 0.5).to(probs.dtype)
    k = keep.shape[1]
    if free_blocks is not None and free_blocks < k:
        keep[:, : k - free_blocks] = 1
    return keep


@torch.inference_mode()
def fast_blockdrop(backbone: FastResNet, policy: FastPolicy | FastStridedPolicy, x: torch.Tensor,
                   free_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockDrop at test time on the inference path: logits and the N×K policy that produced them."""
    probs = policy(x)
    if len(x) == 1:
        keep = keep_list(probs, free_blocks)
        return backbone(x, keep), torch.tensor([keep], dtype=probs.dtype)
    keeps = keep_tensor(probs, free_blocks)
    return backbone(x, keeps), keeps


@torch.inference_mode()
def fast_full(backbone: FastResNet, x: torch.Tensor) -> torch.Tensor:
    """The full ResNet on the same inference path (every block)."""
    return backbone(x)
