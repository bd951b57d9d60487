"""VGAN networks (arXiv:1611.01799, §5–7 and the official code's ``configs/``), at CPU size.

- :class:`EnergyNet`: conv5×5-ReLU → max-pool → conv5×5-ReLU → max-pool → FC-ReLU (the features
  φ(x) the linear probe reads) → FC to ``experts`` logits. No batch norm, as in the paper. With one
  expert it is the GAN baseline's discriminator (one sigmoid output, the paper's Table 1 baseline).
- :class:`Generator`: a decoder from a ``latent_dim`` code in [−1, 1] (FC-BN-ReLU → two stride-2
  5×5 deconvolutions, BN-ReLU then sigmoid) used by VGAN and GAN on uniform noise, plus — for VCD —
  an encoder (conv5×5-BN-ReLU-pool ×2 → FC-BN-tanh) whose code has half of its units replaced by
  U[−1, 1] noise before decoding (the transition of Algorithm 2, Fig. 1).

Images are in [0, 1] (sigmoid output), as in the paper. The architecture is a dataclass stored in
every checkpoint card and rebuilt from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from app.api import Checkpoint
from app.api.training import dataclass_from_dict, load_module_tensors

KINDS = ("vgan", "vcd", "gan")
EPS = 1e-4  # sigmoid outputs are clipped to [EPS, 1 − EPS] before logs, as the official code does


@dataclass
class GanConfig:
    """Everything needed to rebuild the two networks of one model."""

    kind: str = "vgan"  # vgan | vcd | gan
    image_size: int = 32
    channels: int = 3
    width: int = 32  # energy net: conv channels w, 2w (paper: 64 MNIST, 128 CIFAR)
    hidden: int = 256  # φ(x) dimension (paper's code: 1024)
    experts: int = 64  # K (paper: 100 in §7.1, code: 128); the GAN has 1
    latent_dim: int = 128  # z / bottleneck (paper: 256 MNIST, 2048 CIFAR/SVHN)
    gen_width: int = 32  # generator channels: 2·gw at 1/4 size, gw at 1/2 size
    noise_ratio: float = 0.5  # VCD: fraction of bottleneck units replaced by noise (paper: 0.5, "critical")
    labels: tuple[str, ...] = ()  # the training set's class names (for the demo's captions)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two 2× up-samplings), got {self.image_size}")
        if self.kind == "gan" and self.experts != 1:
            raise ValueError("the GAN baseline has one output (experts=1)")
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio must be in [0, 1], got {self.noise_ratio}")

    @property
    def name(self) -> str:
        """The checkpoint name of this kind of model."""
        return self.kind


class EnergyNet(nn.Module):
    """The energy network (VGAN, VCD) or discriminator (GAN): ``forward`` gives the expert logits."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        w, s = cfg.width, cfg.image_size // 4
        self.trunk = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * s * s, cfg.hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(cfg.hidden, cfg.experts)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): the penultimate layer (what the paper's linear probe classifies)."""
        return self.trunk(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Generator(nn.Module):
    """Decoder from codes in [−1, 1]; with ``encoder`` also the VCD transition from a real image."""

    def __init__(self, cfg: GanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        g, s, d = cfg.gen_width, cfg.image_size // 4, cfg.latent_dim
        self.fc = nn.Sequential(nn.Linear(d, 2 * g * s * s), nn.BatchNorm1d(2 * g * s * s), nn.ReLU(inplace=True),
                                nn.Unflatten(1, (2 * g, s, s)))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(2 * g, g, 5, stride=2, padding=2, output_padding=1), nn.BatchNorm2d(g),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(g, cfg.channels, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid())
        self.encoder = None
        if cfg.kind == "vcd":
            self.encoder = nn.Sequential(
                nn.Conv2d(cfg.channels, g, 5, padding=2), nn.BatchNorm2d(g), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Conv2d(g, 2 * g, 5, padding=2), nn.BatchNorm2d(2 * g), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(2 * g * s * s, d), nn.BatchNorm1d(d), nn.Tanh())

    def latent(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
               ) -> torch.Tensor:
        """``n`` codes from U[−1, 1]^d (the range of the VCD bottleneck's tanh), drawn on the CPU (so a CPU
        ``generator`` seeds them whatever the device) and moved to ``device``."""
        return (torch.rand(n, self.cfg.latent_dim, generator=generator) * 2 - 1).to(device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError(f"a {self.cfg.kind} generator has no encoder (only VCD transitions images)")
        return self.encoder(x * 2 - 1)

    def mix(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """h̃ = m·u + (1 − m)·h with m ~ Bernoulli(noise_ratio), u ~ U[−1, 1] per unit (drawn on the CPU,
        so a CPU ``generator`` seeds it whatever the device)."""
        mask = torch.rand(h.shape, generator=generator) < self.cfg.noise_ratio
        noise = torch.rand(h.shape, generator=generator) * 2 - 1
        return torch.where(mask.to(h.device), noise.to(h.device, h.dtype), h)

    def transition(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x̃ ~ p_g(x̃ | x): encode, replace half of the code by noise, decode."""
        return self.decode(self.mix(self.encode(x), generator))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x̄ = Decode(Encode(x)), the noise-free path of the reconstruction term."""
        return self.decode(self.encode(x))


# -- the energy of Eq. 8 and the entropy proxy of Eq. 9 ---------------------------------------------------


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = −p log p − (1 − p) log(1 − p), with p clipped to [EPS, 1 − EPS]."""
    p = p.clamp(EPS, 1 - EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def expert_energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = Σ_j H(σ(W_jᵀφ(x) + b_j)) per sample (Eq. 8): bounded in [0, K log 2], 2^K minima."""
    return binary_entropy(torch.sigmoid(logits)).sum(1)


def entropy_proxy(logits: torch.Tensor) -> torch.Tensor:
    """H̃ = Σ_j H(mean_i σ(logit_ij)) over a batch (Eq. 9): largest when every expert fires half the time."""
    return binary_entropy(torch.sigmoid(logits).mean(0)).sum()


def energy(cfg: GanConfig, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample energy: Eq. 8 for VGAN/VCD; −log D(x) for the GAN's one sigmoid output."""
    if cfg.kind == "gan":
        return nn.functional.softplus(-logits[:, 0])
    return expert_energy(logits)


# -- checkpoints -------------------------------------------------------------------------------------------


def build_models(cfg: GanConfig) -> tuple[EnergyNet, Generator]:
    return EnergyNet(cfg), Generator(cfg)


def models_from_checkpoint(checkpoint: Checkpoint) -> tuple[GanConfig, EnergyNet, Generator]:
    """Rebuild (config, energy net, generator) from a checkpoint saved by a VGAN-plugin recipe (eval mode)."""
    cfg = dataclass_from_dict(GanConfig, checkpoint.metadata["net"])
    energy_net, generator = build_models(cfg)
    load_module_tensors(energy_net, checkpoint.tensors, "energy")
    load_module_tensors(generator, checkpoint.tensors, "generator")
    return cfg, energy_net.eval(), generator.eval()
