"""BlockDrop recipes on tiny configs, and the pieces of the RL objective."""

from __future__ import annotations

import math

import pytest
import torch

from app.api import ConfigError, UserError, make_config
from app.plugin_manager import load_registry
from plugins.blockdrop import data, rl
from plugins.blockdrop import recipes as R
from plugins.blockdrop.model import backbone_from_checkpoint, build_resnet
from tests.blockdrop_fakes import FakeTrainContext, random_dataset
from tests.trajectories import assert_same_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")  # small nets: one thread is fastest and repeatable


def test_reward_values():
    correct = torch.tensor([True, True, False, True])
    policy = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    r = rl.reward(correct, policy, gamma=5.0)
    assert r.tolist() == pytest.approx([0.0, 0.75, -5.0, 1.0])


def test_alpha_bounding_keeps_exploration():
    probs = torch.tensor([0.0, 0.5, 1.0, 0.9])
    bounded = rl.bound_probs(probs, 0.8)
    assert bounded.tolist() == pytest.approx([0.2, 0.5, 0.8, 0.74])


def test_curriculum_masks_the_first_blocks():
    mask = rl.curriculum_mask(6, 2)
    assert mask.tolist() == [0, 0, 0, 0, 1, 1]
    policy = torch.zeros(3, 6)
    forced = rl.apply_curriculum(policy, mask)
    assert (forced[:, :4] == 1).all() and (forced[:, 4:] == 0).all()
    assert rl.curriculum_mask(6, 99).tolist() == [1] * 6


def test_policy_gradient_step_follows_the_advantage():
    torch.manual_seed(0)
    logits = torch.zeros(4, 3, requires_grad=True)
    sampled = torch.tensor([[1.0, 0, 1]] * 4)
    mask = torch.tensor([0.0, 1, 1])  # block 0 is outside the curriculum: no gradient
    loss = rl.policy_gradient_loss(torch.sigmoid(logits), sampled, torch.ones(4), 0.8, mask, beta=0.0)
    loss.backward()
    grad = logits.grad
    assert (grad[:, 0] == 0).all()
    assert (grad[:, 1] > 0).all()  # dropped with positive advantage → lower keep probability
    assert (grad[:, 2] < 0).all()  # kept with positive advantage → higher keep probability


def test_augment_crops_and_flips_on_tensors():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = data.augment(images, flip=True)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not torch.allclose(out, images.float() / 255)
    # Every output is a shifted (possibly flipped) copy: its pixels come from the source image.
    src = images.float() / 255
    assert all(torch.isin(out[i].flatten(), torch.cat([src[i].flatten(), torch.zeros(1)])).all()
               for i in range(16))


def _datasets():
    return {("shapes", "train"): random_dataset(96, seed=0), ("shapes", "val"): random_dataset(48, seed=1)}


def _check_metrics(ctx: FakeTrainContext, num_blocks: int) -> None:
    assert ctx.metrics, "no metrics logged"
    for _, m in ctx.metrics:
        assert {"accuracy", "reward", "mean_blocks", "unique_policies"} <= set(m)
        assert 0.0 <= m["accuracy"] <= 1.0
        assert 0.0 <= m["mean_blocks"] <= num_blocks
        assert 1 <= m["unique_policies"] <= 48
        assert all(math.isfinite(v) for v in m.values())


def test_three_stage_pipeline_on_a_tiny_config(tmp_path):
    ctx = FakeTrainContext(tmp_path, datasets=_datasets())
    R.train_backbone(make_config(R.BackboneConfig, {"depth": 8, "epochs": 2, "batch_size": 32}), ctx)
    assert ctx.saved["backbone"].is_file()
    card = ctx.load_checkpoint("blockdrop/backbone").metadata
    assert card["kind"] == "backbone" and card["epoch"] == 2 and card["dataset"] == "shapes"
    assert card["eval_split"] == "val" and card["config"]["depth"] == 8
    assert card["backbone"] == {"depth": 8, "num_classes": 10, "width": 16, "input_size": [32, 32],
                                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                "labels": [f"c{i}" for i in range(10)]}
    assert backbone_from_checkpoint(ctx.load_checkpoint("blockdrop/backbone")).num_blocks == 3
    _check_metrics(ctx, 3)
    assert sum(bar.count for bar in ctx.bars) == 2 * 3  # 96 images / 32 per batch, 2 epochs

    ctx.metrics.clear()
    R.train_policy(make_config(R.PolicyConfig, {"epochs": 2, "batch_size": 32, "cl_step_iters": 2}), ctx)
    policy = ctx.load_checkpoint("blockdrop/policy")
    assert {k.split(".")[0] for k in policy.tensors} == {"backbone", "policy"}
    assert policy.metadata["free_blocks"] == 3 and policy.metadata["gamma"] == 1.0
    assert policy.metadata["policy"]["num_blocks"] == 3 and policy.metadata["policy"]["input_size"] == 32
    assert policy.metadata["policy"]["arch"] == "strided"  # the default policy network (docs/blockdrop.md)
    assert policy.metadata["backbone"]["depth"] == 8
    _check_metrics(ctx, 3)
    assert [m["free_blocks"] for _, m in ctx.metrics] == [2.0, 3.0]  # one more block every 2 iterations

    ctx.metrics.clear()
    final = R.train_finetune(make_config(R.FinetuneConfig, {"epochs": 1, "batch_size": 32, "gamma": 2}), ctx)
    assert ctx.saved["policy-g2"].is_file()
    tuned = ctx.load_checkpoint(str(ctx.saved["policy-g2"]))
    assert tuned.metadata["gamma"] == 2.0 and tuned.metadata["kind"] == "finetune"
    assert tuned.metadata["metrics"]["accuracy"] == pytest.approx(final["accuracy"])
    assert tuned.metadata["policy"] == policy.metadata["policy"] and tuned.metadata["free_blocks"] == 3
    _check_metrics(ctx, 3)
    # The backbone was trained jointly: its weights changed.
    before = policy.tensors["backbone.blocks.0.conv1.weight"]
    assert not torch.equal(before, tuned.tensors["backbone.blocks.0.conv1.weight"])


def test_masked_training_forward_and_adam_backbone_also_work(tmp_path):
    ctx = FakeTrainContext(tmp_path, datasets=_datasets())
    R.train_backbone(make_config(R.BackboneConfig, {"depth": 8, "epochs": 1, "batch_size": 48}), ctx)
    R.train_policy(make_config(R.PolicyConfig, {"epochs": 1, "batch_size": 48}), ctx)
    before = ctx.load_checkpoint("blockdrop/policy").tensors["backbone.blocks.0.conv1.weight"]
    R.train_finetune(make_config(R.FinetuneConfig, {"epochs": 1, "batch_size": 48, "train_forward": "masked",
                                                    "backbone_optimizer": "adam", "backbone_lr": 1e-3}), ctx)
    after = ctx.load_checkpoint("blockdrop/policy-g1").tensors["backbone.blocks.0.conv1.weight"]
    assert not torch.equal(before, after)
    assert ctx.saved["policy-g1"].is_file()  # the default γ


def test_finetune_backbone_optimizer_follows_the_config():
    net = build_resnet(8, 4)
    sgd = R.finetune_backbone_optimizer(make_config(R.FinetuneConfig, {}), net)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 5e-4
    adam = R.finetune_backbone_optimizer(make_config(R.FinetuneConfig, {"backbone_optimizer": "adam",
                                                                        "backbone_lr": 1e-4}), net)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-4


def test_backbone_learns_something(tmp_path):
    torch.manual_seed(0)
    data = {("shapes", "train"): random_dataset(256, num_classes=4, seed=0),
            ("shapes", "val"): random_dataset(128, num_classes=4, seed=1)}
    ctx = FakeTrainContext(tmp_path, datasets=data)
    final = R.train_backbone(make_config(R.BackboneConfig, {"depth": 8, "epochs": 4, "batch_size": 32,
                                                            "lr": 0.05}), ctx)
    assert final["accuracy"] > 0.5  # 4 classes by mean colour: chance is 0.25


def test_backbone_init_continues_from_a_checkpoint(tmp_path):
    data = {("shapes", "train"): random_dataset(256, num_classes=4, seed=0),
            ("shapes", "val"): random_dataset(128, num_classes=4, seed=1)}
    first = FakeTrainContext(tmp_path / "a", datasets=data)
    trained = R.train_backbone(make_config(R.BackboneConfig, {"depth": 8, "epochs": 4, "batch_size": 32,
                                                              "lr": 0.05}), first)
    assert trained["accuracy"] > 0.5
    second = FakeTrainContext(tmp_path / "b", datasets=data, refs={"start": first.saved["backbone"]})
    # lr 0: no step changes the weights, so the run keeps (and evaluates) the initial ones.
    again = R.train_backbone(make_config(R.BackboneConfig, {"depth": 20, "epochs": 1, "batch_size": 32,
                                                            "lr": 0.0, "init": "start"}), second)
    saved, source = second.load_checkpoint("blockdrop/backbone"), first.load_checkpoint("blockdrop/backbone")
    assert saved.metadata["backbone"]["depth"] == 8  # from the checkpoint, not the config
    assert torch.equal(saved.tensors["backbone.blocks.0.conv1.weight"],
                       source.tensors["backbone.blocks.0.conv1.weight"])
    assert again["accuracy"] > 0.5  # a random init with lr 0 stays near chance (0.25)
    wrong = {**data, ("shapes", "train"): random_dataset(64, num_classes=6, seed=2)}
    with pytest.raises(ConfigError, match="6"):
        R.train_backbone(make_config(R.BackboneConfig, {"epochs": 1, "init": "start"}),
                         FakeTrainContext(tmp_path / "c", datasets=wrong, refs={"start": first.saved["backbone"]}))


def test_resume_continues_from_the_last_epoch(tmp_path):
    ctx = FakeTrainContext(tmp_path, datasets=_datasets())
    config = {"depth": 8, "batch_size": 48}
    R.train_backbone(make_config(R.BackboneConfig, {**config, "epochs": 1}), ctx)
    ctx.resuming = True
    ctx.metrics.clear()
    R.train_backbone(make_config(R.BackboneConfig, {**config, "epochs": 3}), ctx)
    assert [step for step, _ in ctx.metrics] == [2, 3]
    assert ctx.load_checkpoint("blockdrop/backbone").metadata["epoch"] == 3


def test_cancel_stops_within_a_batch(tmp_path):
    ctx = FakeTrainContext(tmp_path, datasets=_datasets(), stop_after=1)
    R.train_backbone(make_config(R.BackboneConfig, {"depth": 8, "epochs": 5, "batch_size": 16}), ctx)
    assert ctx.stop_calls == 2
    assert "backbone" not in ctx.saved and ctx.metrics == []


def test_plugin_registers_the_recipes():
    registry = load_registry()
    method = registry.method("blockdrop")
    assert [r.name for r in method.recipes] == ["backbone", "policy", "finetune"]
    config = make_config(registry.recipe("blockdrop", "finetune").config_cls, {"gamma": "10"})
    assert config.gamma == 10.0 and R.finetune_name(config.gamma) == "policy-g10"
    with pytest.raises(ConfigError):
        make_config(R.FinetuneConfig, {"train_forward": "sometimes"})


def test_model_selection_never_falls_back_to_the_test_split(tmp_path):
    splits = {("nodev", "train"): random_dataset(32, seed=0), ("nodev", "test"): random_dataset(16, seed=1)}
    ctx = FakeTrainContext(tmp_path, datasets=splits)
    with pytest.raises(UserError, match="dataset 'nodev' has no 'val' split to select models on"):
        data.eval_split(ctx, "nodev")
    with pytest.raises(UserError, match="never fall back to 'test'"):
        R.train_backbone(make_config(R.BackboneConfig, {"dataset": "nodev", "depth": 8, "epochs": 1}), ctx)
    assert ctx.saved == {} and ctx.metrics == []


@pytest.mark.parametrize("recipe", ["policy", "finetune"])
def test_policy_recipes_resume_exactly(tmp_path, recipe):
    """Stopped mid-epoch and resumed, a policy run ends where an uninterrupted one does."""
    setup = FakeTrainContext(tmp_path / "setup", datasets=_datasets())
    R.train_backbone(make_config(R.BackboneConfig, {"depth": 8, "epochs": 1, "batch_size": 32}), setup)
    R.train_policy(make_config(R.PolicyConfig, {"epochs": 1, "batch_size": 32}), setup)
    refs = {"blockdrop/backbone": setup.saved["backbone"], "blockdrop/policy": setup.saved["policy"]}
    cls, train = {"policy": (R.PolicyConfig, R.train_policy), "finetune": (R.FinetuneConfig, R.train_finetune)}[recipe]
    config = make_config(cls, {"epochs": 3, "batch_size": 32})

    straight = FakeTrainContext(tmp_path / "straight", datasets=_datasets(), refs=refs)
    expected = train(config, straight)
    stopped = FakeTrainContext(tmp_path / "stopped", datasets=_datasets(), refs=refs, stop_after=5)  # in epoch 2
    train(config, stopped)
    assert [step for step, _ in stopped.metrics] == [1]
    stopped.resuming, stopped.stop_after = True, None
    assert train(config, stopped) == pytest.approx(expected, rel=1e-5)
    assert_same_trajectory(stopped.metrics, straight.metrics, rel=1e-5)  # each (step, metrics) point, key by key
    name = "policy" if recipe == "policy" else "policy-g1"
    a, b = straight.load_checkpoint(str(straight.saved[name])), stopped.load_checkpoint(str(stopped.saved[name]))
    assert all(torch.allclose(a.tensors[k], b.tensors[k], atol=1e-6) for k in a.tensors)
