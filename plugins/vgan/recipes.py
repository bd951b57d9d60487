"""VGAN recipes: Algorithm 1 (``vgan``), Algorithm 2 (``vcd``) and the plain GAN baseline (``gan``),
one training loop with the same networks, data, steps and batch for all three.

One *step* is one iteration of the paper's loop: ``k`` generator updates, then one energy update
(the reverse of the original GAN's k discriminator steps; the paper trains G towards convergence
for a fixed E). Each step reads one real batch for the energy network; VCD reads a second real
batch to transition from, as the official code does (it splits each loaded batch of 200 in two).

The paper's optimiser is Adadelta (lr 0.1, ρ 0.95, ε 1e-6, Lasagne's defaults) for 100 epochs, i.e.
~40k steps. At a CPU budget of a few thousand steps Adadelta's slow warm-up leaves the networks
under-trained, so the default here is Adam (lr 2e-4, β = (0.5, 0.999), the DCGAN setting);
``optimizer=adadelta`` gives the paper's choice (with ``lr`` 0 meaning that optimiser's default).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from app.api import ConfigError, Recipe, TrainContext, UserError, config_field
from app.api.training import TrainLoop, split_tensors
from plugins.vgan.model import GanConfig, build_models, energy, entropy_proxy
from plugins.vgan.visuals import image_grid

DEFAULT_LR = {"adam": 2e-4, "adadelta": 0.1}
ENERGY_SAMPLES = 512  # real and generated images whose energies the card keeps (the demo's histograms)
GRID = 64  # samples in the grids saved during training


@dataclass
class GanTrainConfig:
    dataset: str = config_field("shapes", "a registered image dataset (MNIST/CIFAR-10/SVHN/imagefolder with files)")
    train_size: int = config_field(0, "train on the first N training images (0 = the whole split)", min=0)
    steps: int = config_field(3000, "iterations (k generator updates + 1 energy update each); paper: ~40k",
                              min=1)
    batch_size: int = config_field(64, "images per batch (paper's code: 100)", min=2)
    k: int = config_field(1, "generator updates per energy update (paper: 1 or 3; VCD 1)", min=1, max=10)
    experts: int = config_field(64, "K, the energy's binary experts (paper: 100; code: 128); the GAN uses 1",
                                min=1)
    latent_dim: int = config_field(128, "noise / bottleneck dimension (paper: 256 MNIST, 2048 CIFAR)", min=2)
    width: int = config_field(32, "energy net channels w, 2w (paper: 64 MNIST, 128 CIFAR)", min=2)
    hidden: int = config_field(256, "φ(x) units, the features the linear probe reads (code: 1024)", min=2)
    gen_width: int = config_field(32, "generator channels (2× at quarter size)", min=2)
    rho: float = config_field(0.01, "VCD: weight ρ of the energy term against reconstruction (paper: "
                              "{0, 0.001, 0.01, 0.1, 1}, 0.01 in its figures)", min=0, max=1)
    recon_loss: str = config_field("bce", "VCD reconstruction loss: the official code's binary cross-entropy "
                                   "or the paper's squared error", choices=("bce", "mse"))
    recon_reduction: str = config_field("mean", "VCD: the reconstruction per pixel (mean; the studio's first "
                                        "models) or per image (sum over its pixels, as Eq. 10's squared norm): "
                                        "with sum, ρ weighs the energy against a term ~C·H·W times larger",
                                        choices=("mean", "sum"))
    noise_ratio: float = config_field(0.5, "VCD: fraction of bottleneck units replaced by U[−1,1] noise "
                                      "(paper: 0.5)", min=0, max=1)
    optimizer: str = config_field("adam", "adam (CPU default) or adadelta (the paper's)", choices=("adam", "adadelta"))
    lr: float = config_field(0.0, "learning rate of both networks (0 = the optimiser's default: adam 2e-4, "
                             "adadelta 0.1 as in the paper)", min=0)
    sample_every: int = config_field(500, "save a grid of samples every N steps (and at the end)", min=1)
    seed: int = config_field(0, "random seed (initialisation, data order, noise)")

    def __post_init__(self) -> None:
        if self.latent_dim < 2:
            raise ConfigError("latent_dim: must be at least 2")


def model_config(config: GanTrainConfig, kind: str, image_shape: tuple[int, ...], labels: list[str]) -> GanConfig:
    channels, height, width = image_shape
    if height != width:
        raise UserError(f"dataset {config.dataset!r}: VGAN networks take square images, got {height}×{width}")
    try:
        return GanConfig(kind=kind, image_size=height, channels=channels, width=config.width, hidden=config.hidden,
                         experts=1 if kind == "gan" else config.experts, latent_dim=config.latent_dim,
                         gen_width=config.gen_width, noise_ratio=config.noise_ratio, labels=tuple(labels))
    except ValueError as exc:
        raise UserError(f"dataset {config.dataset!r}: {exc}") from None


def _optimizer(config: GanTrainConfig, params: Any) -> torch.optim.Optimizer:
    lr = config.lr or DEFAULT_LR[config.optimizer]
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=0.95, eps=1e-6)
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def _recon(config: GanTrainConfig, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The reconstruction term, per pixel (``recon_reduction=mean``) or per image (``sum`` over C·H·W),
    averaged over the batch."""
    if config.recon_loss == "bce":
        loss = F.binary_cross_entropy(recon.clamp(1e-4, 1 - 1e-4), x, reduction="none")
    else:
        loss = F.mse_loss(recon, x, reduction="none")
    return loss.mean() if config.recon_reduction == "mean" else loss.flatten(1).sum(1).mean()


@torch.no_grad()
def generate(cfg: GanConfig, generator: Any, n: int, *, seed: int = 0, source: torch.Tensor | None = None,
             device: Any = "cpu", batch_size: int = 256) -> torch.Tensor:
    """``n`` generated images in [0, 1]: decoded noise (VGAN, GAN) or transitions of ``source`` (VCD).

    VCD is a transition operator: its samples are transitions of real images (``source``, uint8 or
    float), as in the paper's figures; without a source it decodes pure noise codes.
    """
    rng = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        if cfg.kind == "vcd" and source is not None:
            x = source[torch.arange(start, start + m) % len(source)].to(device)  # cycles a short source
            x = x.float() / 255 if x.dtype == torch.uint8 else x
            code = generator.mix(generator.encode(x), rng)
        else:
            code = generator.latent(m, generator=rng).to(device)
        out.append(generator.decode(code).cpu())
    return torch.cat(out) if out else torch.empty(0, cfg.channels, cfg.image_size, cfg.image_size)


@torch.no_grad()
def energies(cfg: GanConfig, energy_net: Any, images: torch.Tensor, batch_size: int = 256,
             device: Any = "cpu") -> torch.Tensor:
    """Per-image energy (Eq. 8; −log D for the GAN) of images in [0, 1] or uint8."""
    out = []
    for x in images.split(batch_size):
        x = x.to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        out.append(energy(cfg, energy_net(x)).cpu())
    return torch.cat(out) if out else torch.empty(0)


def train_gan(config: GanTrainConfig, ctx: TrainContext, kind: str) -> dict[str, float]:
    """Train one model of ``kind`` (vgan | vcd | gan) for ``steps`` iterations; saves checkpoint ``kind``."""
    train = ctx.dataset(config.dataset, "train")
    images, _ = split_tensors(train, config.train_size)
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(f"dataset {config.dataset!r}: VGAN trains on uint8 N×C×H×W images")
    val_images, _ = split_tensors(_held_out(ctx, config.dataset), ENERGY_SAMPLES)
    cfg = model_config(config, kind, tuple(images.shape[1:]), list(getattr(train, "labels", [])))
    n, bs = len(images), min(config.batch_size, len(images))
    loop = TrainLoop(ctx, epochs=math.ceil(config.steps / TrainLoop.num_batches(n, bs)), seed=config.seed,
                     checkpoint=cfg.name)
    energy_net, generator = build_models(cfg)
    energy_net, generator = energy_net.to(loop.device), generator.to(loop.device)
    opt_e, opt_g = _optimizer(config, energy_net.parameters()), _optimizer(config, generator.parameters())
    loop.resume(modules={"energy": energy_net, "generator": generator}, optimizers=[opt_e, opt_g])
    images = loop.to_device(images)
    fixed_source = val_images[:GRID]
    card = {"config": asdict(config), "dataset": config.dataset, "net": asdict(cfg), "kind": kind,
            "budget": {"steps": config.steps, "batch_size": bs, "k": config.k}}

    def sample_grid(step: int) -> None:
        generator.eval()
        samples = generate(cfg, generator, GRID, seed=config.seed, source=fixed_source, device=loop.device)
        generator.train()
        rows = [fixed_source.float() / 255, samples] if kind == "vcd" else [samples]
        ctx.save_image("transitions" if kind == "vcd" else "samples", image_grid(torch.cat(rows), nrow=8), step)

    def evaluate() -> dict[str, float]:
        generator.eval()
        fake = generate(cfg, generator, len(val_images), seed=config.seed + 1, source=val_images, device=loop.device)
        generator.train()
        e_real = energies(cfg, energy_net, val_images, device=loop.device)
        e_fake = energies(cfg, energy_net, fake, device=loop.device)
        card["energies"] = {"real": [round(float(v), 4) for v in e_real],
                            "generated": [round(float(v), 4) for v in e_fake]}
        return {"val_energy_real": float(e_real.mean()), "val_energy_generated": float(e_fake.mean()),
                "val_energy_gap": float(e_fake.mean() - e_real.mean())}

    energy_net.train()
    generator.train()
    critic, generate_fn = loop.compiled(energy_net), loop.compiled(generator)
    for _ in loop.epochs():
        for idx in loop.batches(n, bs):
            if loop.step >= config.steps:
                break
            x = loop.take(images, idx).float() / 255
            energy_net.requires_grad_(False)
            for _ in range(config.k):  # (a) k generator steps for the current energy
                if kind == "vcd":
                    source = loop.take(images, torch.randint(n, (bs,), device=loop.device)).float() / 255
                    with loop.autocast():
                        fake = generator.transition(source)
                        logits = critic(fake)
                        reconstruction = generator.reconstruct(source)
                    fake, logits = fake.float(), logits.float()
                    recon = _recon(config, reconstruction.float(), source)
                    loss_g = (config.rho * (energy(cfg, logits).mean() - entropy_proxy(logits))
                              + (1 - config.rho) * recon)
                else:
                    with loop.autocast():
                        fake = generate_fn(generator.latent(bs, device=loop.device))
                        logits = critic(fake)
                    fake, logits = fake.float(), logits.float()
                    if kind == "vgan":  # ascent on −E(G(z)) + H̃(p_g)
                        loss_g = energy(cfg, logits).mean() - entropy_proxy(logits)
                    else:  # the non-saturating GAN generator loss, −log D(G(z))
                        loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                loop.minimize(loss_g, opt_g)
            energy_net.requires_grad_(True)
            fake = fake.detach()  # (b) one energy step on the last samples
            with loop.autocast():
                logits_real, logits_fake = critic(x), critic(fake)
            logits_real, logits_fake = logits_real.float(), logits_fake.float()
            e_real, e_fake = energy(cfg, logits_real).mean(), energy(cfg, logits_fake).mean()
            if kind == "gan":
                loss_e = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                          + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
                extra = {}
            else:  # descent on E(x) − E(G(z)) − H̃(p_data)
                proxy = entropy_proxy(logits_real)
                loss_e = e_real - e_fake - proxy
                per_pixel = {} if kind != "vcd" else {  # logged per pixel whatever the reduction: comparable
                    "reconstruction": recon if config.recon_reduction == "mean" else recon.detach() / x[0].numel()}
                extra = {"entropy_proxy_real": proxy, **per_pixel}
            loop.minimize(loss_e, opt_e)
            loop.track(bs, loss_energy=loss_e, loss_generator=loss_g, energy_real=e_real, energy_generated=e_fake,
                       **extra)
            if (loop.step + 1) % config.sample_every == 0:
                sample_grid(loop.step + 1)
        last = loop.step >= config.steps
        if last and not loop.stopped:
            sample_grid(loop.step)
        loop.end_epoch(evaluate=evaluate, metadata=card)
        if last:
            break
    return loop.final_metrics


def _held_out(ctx: TrainContext, dataset: str) -> Any:
    """The images the card's energies and the grids' VCD sources come from: ``val``, else ``test``
    (MNIST, CIFAR and SVHN have no val split); never used to select a model."""
    try:
        return ctx.dataset(dataset, "val")
    except UserError:
        return ctx.dataset(dataset, "test")


def _recipe(kind: str):
    def train(config: GanTrainConfig, ctx: TrainContext) -> dict[str, float]:
        return train_gan(config, ctx, kind)
    train.__name__ = f"train_{kind}"
    return train


RECIPES = [
    Recipe("vgan", GanTrainConfig, _recipe("vgan"),
           "Algorithm 1: a generator from noise against the bounded multi-modal energy of K experts, with the "
           "entropy proxy; saves 'vgan'."),
    Recipe("vcd", GanTrainConfig, _recipe("vcd"),
           "Algorithm 2 (VCD): an autoencoder whose half-noised code gives transitions of real images, pushed to "
           "low energy with weight rho; saves 'vcd'."),
    Recipe("gan", GanTrainConfig, _recipe("gan"),
           "The baseline: the same networks as a plain GAN (one sigmoid output, non-saturating loss); saves 'gan'."),
]
