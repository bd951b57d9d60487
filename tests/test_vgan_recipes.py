"""VGAN networks, the energy of Eq. 8, the entropy proxy of Eq. 9, the VCD transition, and the three
recipes through the studio (checkpoints, cards, sample grids as run artifacts, exact resume, slots)."""

from __future__ import annotations

import math

import pytest
import torch

from app.api import DatasetSpec, UserError, hookimpl
from app.api.training import ImageTensorDataset, load_checkpoint
from app.testing import open_test_studio
from plugins.vgan.model import (
    GanConfig,
    build_models,
    energy,
    entropy_proxy,
    expert_energy,
    models_from_checkpoint,
)
from plugins.vgan.recipes import generate
from tests.trajectories import assert_same_trajectory

TINY_NET = {"width": 4, "hidden": 16, "experts": 6, "latent_dim": 8, "gen_width": 4}


def test_the_energy_is_bounded_and_lowest_where_every_expert_is_sure():
    logits = torch.randn(50, 7) * 5
    e = expert_energy(logits)
    assert e.shape == (50,) and bool((e >= 0).all()) and bool((e <= 7 * math.log(2) + 1e-6).all())
    assert expert_energy(torch.zeros(1, 7)).item() == pytest.approx(7 * math.log(2), rel=1e-5)  # all unsure: max
    sure = torch.tensor([[20.0, -20.0, 20.0]])
    assert expert_energy(sure).item() < 0.01  # saturated either way: one of the 2^K minima
    assert expert_energy(-sure).item() == pytest.approx(expert_energy(sure).item(), rel=1e-3)


def test_the_entropy_proxy_rewards_experts_that_fire_for_half_of_the_batch():
    collapsed = torch.full((8, 4), 20.0)  # every sample activates every expert: the proxy ~0
    diverse = torch.cat([torch.full((4, 4), 20.0), torch.full((4, 4), -20.0)])  # each expert on for half
    assert entropy_proxy(collapsed).item() < 0.01
    assert entropy_proxy(diverse).item() == pytest.approx(4 * math.log(2), rel=1e-3)
    # ... while the per-sample energy cannot tell them apart: the proxy is what fights collapse
    assert expert_energy(collapsed).mean().item() == pytest.approx(expert_energy(diverse).mean().item(), abs=1e-6)


def test_the_gan_energy_is_minus_log_d_of_its_one_output():
    cfg = GanConfig(kind="gan", experts=1)
    logits = torch.tensor([[0.0], [3.0]])
    assert energy(cfg, logits).tolist() == pytest.approx([math.log(2), -math.log(torch.sigmoid(torch.tensor(3.0)))])
    with pytest.raises(ValueError, match="one output"):
        GanConfig(kind="gan", experts=4)


def test_networks_map_images_and_codes_of_any_multiple_of_four():
    for size, channels in ((32, 3), (28, 1)):
        cfg = GanConfig(kind="vcd", image_size=size, channels=channels, **TINY_NET)
        energy_net, generator = build_models(cfg)
        x = torch.rand(3, channels, size, size)
        assert energy_net(x).shape == (3, 6) and energy_net.features(x).shape == (3, 16)
        assert generator(generator.latent(3)).shape == x.shape
        assert generator.transition(x).shape == x.shape
    with pytest.raises(ValueError, match="multiple of 4"):
        GanConfig(image_size=30)


def test_vcd_replaces_the_chosen_fraction_of_the_code_by_noise():
    cfg = GanConfig(kind="vcd", noise_ratio=0.5, **TINY_NET)
    _, generator = build_models(cfg)
    generator.eval()
    h = torch.full((200, 8), 0.25)
    mixed = generator.mix(h, torch.Generator().manual_seed(0))
    kept = (mixed == 0.25).float().mean().item()
    assert 0.4 < kept < 0.6 and bool((mixed.abs() <= 1).all())
    x = torch.rand(4, 3, 32, 32)
    generator.cfg.noise_ratio = 0.0  # no noise: the transition is the reconstruction
    assert torch.allclose(generator.transition(x), generator.reconstruct(x))
    with pytest.raises(ValueError, match="no encoder"):
        build_models(GanConfig(kind="vgan", **TINY_NET))[1].encode(x)


# -- the recipes through the studio -------------------------------------------------------------------------

def _blobs(split: str, root, **options) -> ImageTensorDataset:
    """Two classes of 16×16 images: a bright or a dark square on noise."""
    g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
    n = 64 if split == "train" else 32
    targets = torch.randint(0, 2, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 16, 16), generator=g)
    images[:, :, 4:12, 4:12] += (targets * 150 + 40).view(n, 1, 1, 1)
    return ImageTensorDataset(images.to(torch.uint8), targets, ["dark", "bright"], "classification", name="blobs")


@hookimpl
def register_datasets(register) -> None:
    register(DatasetSpec(name="blobs", title="blobs", task="classification", description="-", load=_blobs,
                         labels=["dark", "bright"], image_size=(16, 16)))


CONFIG = {"dataset": "blobs", "steps": 10, "batch_size": 16, "sample_every": 5, **TINY_NET}


@pytest.mark.parametrize("kind", ["vgan", "vcd", "gan"])
def test_each_recipe_trains_its_steps_and_saves_a_model_its_slot_takes(tmp_path, one_thread, kind):
    import plugins.vgan as plugin
    import tests.test_vgan_recipes as this

    with open_test_studio(tmp_path, [plugin, this]) as studio:
        result = studio.train("vgan", kind, CONFIG)
        assert result.status == "succeeded", result.error
        assert [step for step, _ in result.metrics["val_energy_real"]] == [1, 2, 3]  # 4 steps/epoch: 4 + 4 + 2
        assert ("reconstruction" in result.metrics) == (kind == "vcd")
        checkpoint = load_checkpoint(result.checkpoints[kind])
        meta = checkpoint.metadata
        assert meta["kind"] == kind and meta["budget"] == {"steps": 10, "batch_size": 16, "k": 1}
        assert len(meta["energies"]["real"]) == 32 and len(meta["energies"]["generated"]) == 32
        cfg, energy_net, generator = models_from_checkpoint(checkpoint)
        assert cfg.labels == ("dark", "bright") and cfg.experts == (1 if kind == "gan" else 6)
        images = generate(cfg, generator, 5, seed=3, source=torch.zeros(5, 3, 16, 16, dtype=torch.uint8))
        assert images.shape == (5, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1
        # sample grids are run artifacts (kind "image"), one per sample_every steps and one at the end
        grids = sorted(a.name for a in studio.store.artifacts(result.run_id, kind="image"))
        name = "transitions" if kind == "vcd" else "samples"
        assert grids == [f"{name}-000005", f"{name}-000010"]
        studio.promote(result.run_id, kind)  # the slot's check rebuilds both networks
        other = "gan" if kind != "gan" else "vgan"
        with pytest.raises(UserError, match=f"this is a {kind} model"):
            studio.promote(result.run_id, kind, slot=other)


def test_a_resumed_vcd_run_continues_the_same_trajectory(tmp_path, one_thread):
    import plugins.vgan as plugin
    import tests.test_vgan_recipes as this

    with open_test_studio(tmp_path, [plugin, this]) as studio:
        config = {**CONFIG, "steps": 12}
        straight = studio.train("vgan", "vcd", config)
        killed = studio.train("vgan", "vcd", config, interrupt_after=6)  # mid-epoch 2
        assert killed.status == "interrupted"
        resumed = studio.resume(killed.run_id)
        assert resumed.status == "succeeded"
        for key in ("loss_energy", "reconstruction", "val_energy_generated"):
            assert_same_trajectory(resumed.metrics[key], straight.metrics[key], rel=1e-4, label=key)


def test_bad_configs_are_refused_before_a_run_is_queued(tmp_path):
    import plugins.vgan as plugin
    import tests.test_vgan_recipes as this
    from app.api import ConfigError

    with open_test_studio(tmp_path, [plugin, this]) as studio:
        with pytest.raises(ConfigError, match="rho"):
            studio.train("vgan", "vcd", {**CONFIG, "rho": 1.5})
        with pytest.raises(ConfigError, match="optimizer"):
            studio.train("vgan", "vgan", {**CONFIG, "optimizer": "sgd"})
        with pytest.raises(ConfigError, match="recon_reduction"):
            studio.train("vgan", "vcd", {**CONFIG, "recon_reduction": "max"})
        assert studio.store.list_runs() == []


def _digits(split: str, root, **options) -> ImageTensorDataset:
    """MNIST-like: 28×28 grey images, and like torchvision's MNIST no val split."""
    if split not in ("train", "test"):
        raise UserError(f"dataset 'digits' has no split {split!r}")
    g = torch.Generator().manual_seed({"train": 0, "test": 2}[split])
    n = 48 if split == "train" else 24
    images = torch.randint(0, 255, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ImageTensorDataset(images, torch.zeros(n, dtype=torch.long), ["0"], "classification", name="digits")


@hookimpl(specname="register_datasets")
def register_digits(register) -> None:
    register(DatasetSpec(name="digits", title="digits", task="classification", description="-", load=_digits,
                         labels=["0"], image_size=(28, 28), channels=1, splits=("train", "test")))


def test_grey_28px_datasets_without_a_val_split_train_too(tmp_path, one_thread):
    """MNIST's shape (1×28×28, train/test only): the networks follow the data, the card's energies come
    from the test split (never used to select a model)."""
    import plugins.vgan as plugin
    import tests.test_vgan_recipes as this

    with open_test_studio(tmp_path, [plugin, this]) as studio:
        result = studio.train("vgan", "vcd", {**CONFIG, "dataset": "digits", "steps": 3})
        assert result.status == "succeeded", result.error
        cfg, _, generator = models_from_checkpoint(load_checkpoint(result.checkpoints["vcd"]))
        assert (cfg.channels, cfg.image_size) == (1, 28)
        assert len(load_checkpoint(result.checkpoints["vcd"]).metadata["energies"]["real"]) == 24
        assert generate(cfg, generator, 2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_the_reconstruction_is_per_pixel_or_per_image_as_configured(loss):
    from plugins.vgan.recipes import GanTrainConfig, _recon

    torch.manual_seed(0)
    x, recon = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    per_pixel = _recon(GanTrainConfig(recon_loss=loss), recon, x)
    per_image = _recon(GanTrainConfig(recon_loss=loss, recon_reduction="sum"), recon, x)
    assert per_image.item() == pytest.approx(per_pixel.item() * 3 * 8 * 8, rel=1e-5)
