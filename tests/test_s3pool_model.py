"""S3Pool networks and recipe: every downsampling in both architectures, stochastic pooling's two
modes, the recipe through the studio's own path (fixed steps, exact checkpoints, a rebuild from the card)."""

from __future__ import annotations

import pytest
import torch

from app.api import ConfigError, DatasetSpec, hookimpl
from app.api.training import ImageTensorDataset, load_checkpoint
from app.testing import open_test_studio
from plugins.s3pool import model as M
from plugins.s3pool.layer import S3Pool2d
from tests.trajectories import assert_same_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", M.ARCHITECTURES)
@pytest.mark.parametrize("downsample", M.DOWNSAMPLING)
def test_every_network_classifies_and_halves_its_maps_twice(arch, downsample):
    if (arch, downsample) == ("nin", "strided"):
        with pytest.raises(ValueError, match="no strided variant"):
            M.NetConfig(arch=arch, downsample=downsample)
        return
    config = M.NetConfig(arch=arch, downsample=downsample, depth=8, width=12, num_classes=5)
    net = M.build_net(config)
    x = torch.rand(3, 3, 32, 32)
    assert net(x).shape == (3, 5)
    maps = net.eval().forward_features(x)
    sizes = [m.shape[-1] for m in maps]
    if downsample == "strided":  # the stride-2 convolutions halve inside the stages
        assert sizes[-1] == 8
    else:
        assert sizes[:2] == [16, 8] and sizes[-1] == 8
    kinds = {type(p) for p in net.pools}
    expected = {"strided": torch.nn.Identity, "max": torch.nn.MaxPool2d, "s3pool": S3Pool2d,
                "stochastic": M.StochasticPool2d}[downsample]
    assert kinds == {expected}
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules()) == (arch == "nin" and downsample == "max")


def test_s3pool_layers_get_their_grid_sizes():
    net = M.build_net(M.NetConfig(downsample="s3pool", grid_sizes=(8, 4), depth=8))
    assert [p.grid_size for p in net.pools] == [8, 4]
    with pytest.raises(ValueError, match="one grid size per downsampling layer"):
        M.NetConfig(downsample="s3pool", grid_sizes=(8,))


def test_stochastic_pooling_samples_by_activation_and_averages_at_test():
    x = torch.tensor([[[[0.0, 3.0], [1.0, 0.0]]]])  # one window: P(3) = 3/4, P(1) = 1/4
    pool = M.StochasticPool2d()
    assert pool.eval()(x).item() == pytest.approx((3 * 3 + 1 * 1) / 4)
    torch.manual_seed(0)
    draws = torch.stack([pool.train()(x) for _ in range(2000)]).flatten()
    assert set(draws.tolist()) == {1.0, 3.0}
    assert (draws == 3).float().mean().item() == pytest.approx(0.75, abs=0.04)
    zeros = torch.zeros(1, 1, 4, 5)
    assert pool.train()(zeros).shape == (1, 1, 2, 3) and pool.eval()(zeros).abs().sum() == 0


# -- the recipe through the studio --------------------------------------------------------------------

def _tiny(split: str, root, **options) -> ImageTensorDataset:
    g = torch.Generator().manual_seed({"train": 0, "val": 1, "test": 2}[split])
    n = 96 if split == "train" else 48
    targets = torch.randint(0, 3, (n,), generator=g)
    images = (targets.view(n, 1, 1, 1) * 80 + torch.randint(0, 40, (n, 3, 16, 16), generator=g)).to(torch.uint8)
    return ImageTensorDataset(images, targets, ["a", "b", "c"], "classification", name="tiny")


@hookimpl
def register_datasets(register) -> None:
    register(DatasetSpec(name="tiny-s3", title="tiny", task="classification", description="-", load=_tiny,
                         labels=["a", "b", "c"], image_size=(16, 16)))


def test_the_recipe_trains_a_fixed_number_of_steps_and_checkpoints(tmp_path):
    import plugins.s3pool as plugin
    import tests.test_s3pool_model as this

    with open_test_studio(tmp_path, [plugin, this]) as studio:
        config = {"dataset": "tiny-s3", "depth": 8, "width": 8, "grid_sizes": "8,4", "train_size": 64,
                  "steps": 10, "batch_size": 16, "lr": 0.05}
        result = studio.train("s3pool", "classifier", config)
        assert result.status == "succeeded", result.error
        assert [step for step, _ in result.metrics["val_error"]] == [1, 2, 3]  # 4 steps/epoch: 4 + 4 + 2
        checkpoint = load_checkpoint(result.checkpoints["resnet-s3pool"])
        assert checkpoint.metadata["train_size"] == 64 and checkpoint.metadata["net"]["grid_sizes"] == [8, 4]
        net = M.net_from_checkpoint(checkpoint).eval()
        assert net.config.labels == ("a", "b", "c") and net(torch.rand(2, 3, 16, 16)).shape == (2, 3)
        studio.promote(result.run_id, "resnet-s3pool")  # the slot's check rebuilds the network
        with pytest.raises(ConfigError, match="grid_sizes: must be even"):
            studio.train("s3pool", "classifier", {**config, "grid_sizes": "7,4"})
        with pytest.raises(ConfigError, match="no strided variant"):
            studio.train("s3pool", "classifier", {**config, "arch": "nin", "downsample": "strided"})


def test_a_resumed_run_continues_the_same_trajectory(tmp_path):
    import plugins.s3pool as plugin
    import tests.test_s3pool_model as this

    with open_test_studio(tmp_path, [plugin, this]) as studio:
        config = {"dataset": "tiny-s3", "depth": 8, "width": 8, "grid_sizes": "8,4", "train_size": 64,
                  "steps": 12, "batch_size": 16}
        straight = studio.train("s3pool", "classifier", config)
        killed = studio.train("s3pool", "classifier", config, interrupt_after=6)  # mid-epoch 2
        assert killed.status == "interrupted"
        resumed = studio.resume(killed.run_id)
        assert resumed.status == "succeeded"
        for key in ("val_error", "train_loss"):
            assert_same_trajectory(resumed.metrics[key], straight.metrics[key], rel=1e-5, label=key)
