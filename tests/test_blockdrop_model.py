"""BlockDrop models: real skipping is exact, skipped blocks never run, FLOPs follow the policy."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from app.api.training import load_module_tensors, module_tensors
from plugins.blockdrop import analysis
from plugins.blockdrop.model import (
    MEAN,
    STD,
    BlockDropResNet,
    PolicyNet,
    PolicyNetConfig,
    ResNetConfig,
    backbone_from_checkpoint,
    build_policy,
    build_resnet,
    greedy_policy,
    legacy_configs,
    model_configs,
    policy_from_checkpoint,
)
from trainer.checkpoints import load_checkpoint, make_card, read_card, save_checkpoint

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "blockdrop"


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = build_resnet(20, 10)
    # Non-trivial BN statistics, so eval mode is not the identity.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, 32, 32))
    return model.eval()


def test_all_ones_policy_equals_full_forward(net):
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        full = net(x)
        ones = net(x, torch.ones(6, net.num_blocks))
    assert net.num_blocks == 9
    assert torch.allclose(full, ones, atol=1e-5)


def test_per_sample_policy_equals_running_each_sample_alone(net):
    torch.manual_seed(1)
    x = torch.rand(8, 3, 32, 32)
    policy = (torch.rand(8, net.num_blocks) > 0.5).float()
    with torch.no_grad():
        batched = net(x, policy)
        alone = torch.cat([net(x[i:i + 1], policy[i:i + 1]) for i in range(8)])
        masked = net.forward_masked(x, policy)
    assert torch.allclose(batched, alone, atol=1e-4)
    assert torch.allclose(batched, masked, atol=1e-4)
    # Dropping blocks changes the answer (the policy is not ignored).
    assert not torch.allclose(batched, net(x), atol=1e-3)


def test_skipped_blocks_are_not_executed(net):
    seen: dict[int, list[int]] = {k: [] for k in range(net.num_blocks)}
    hooks = [block.register_forward_hook(lambda m, inp, out, k=k: seen[k].append(inp[0].shape[0]))
             for k, block in enumerate(net.blocks)]
    policy = torch.ones(5, net.num_blocks)
    policy[:, 2] = 0  # nobody keeps block 2
    policy[1:, 4] = 0  # only sample 0 keeps block 4
    policy[:3, 6] = 0  # samples 3 and 4 keep block 6 (first block of stage 3: downsampling)
    try:
        with torch.no_grad():
            out = net(torch.rand(5, 3, 32, 32), policy)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape == (5, 10)
    assert seen[2] == []
    assert seen[4] == [1]
    assert seen[6] == [2]
    assert seen[0] == [5]


def test_skipping_is_differentiable_for_the_backbone():
    torch.manual_seed(0)
    model = build_resnet(8, 4).train()
    policy = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss = model(torch.rand(3, 3, 32, 32), policy).logsumexp(1).sum()
    loss.backward()
    assert all(block.conv1.weight.grad is not None and block.conv1.weight.grad.abs().sum() > 0
               for block in model.blocks)


def test_policy_net_outputs_probabilities_and_resizes_input():
    policy = build_policy(15, input_size=16).eval()
    with torch.no_grad():
        probs = policy(torch.rand(4, 3, 32, 32))
    assert probs.shape == (4, 15)
    assert ((probs > 0) & (probs < 1)).all()
    assert set(greedy_policy(probs).unique().tolist()) <= {0.0, 1.0}


def test_bad_depth_is_rejected():
    with pytest.raises(ValueError, match="6n\\+2"):
        build_resnet(30, 10)


def test_prefixed_state_round_trips():
    a, b = build_resnet(8, 3), build_resnet(8, 3)
    load_module_tensors(b, module_tensors(a, "backbone"), "backbone")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="policy"):
        load_module_tensors(b, module_tensors(a, "backbone"), "policy")


def test_flops_follow_the_policy(net):
    policy_net = build_policy(net.num_blocks).eval()
    table = analysis.flop_table(net, policy_net, (32, 32))
    sparse = torch.zeros(1, net.num_blocks)
    sparse[0, [0, 4, 8]] = 1
    x = torch.rand(1, 3, 32, 32)
    counted = analysis.count_flops(lambda: net(x, sparse))
    assert table.backbone(sparse).item() == pytest.approx(counted)
    assert table.full == analysis.count_flops(lambda: net(x))
    ratio = table.blockdrop(sparse).item() / table.full
    assert 0.2 < ratio < 1.0
    # A ResNet-20 on 32×32 is ~82 MFLOPs (2 FLOPs per MAC); each block costs millions.
    assert 7e7 < table.full < 9e7
    assert min(table.blocks) > 1e6


def test_spearman_and_budget_baselines():
    assert analysis.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert analysis.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert analysis.spearman([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(0.894427, abs=1e-5)
    assert analysis.spearman([3, 3, 3], [1, 2, 3]) == 0.0
    first = analysis.firstk_policy(1000, 15, 7.4)
    rand = analysis.randomk_policy(1000, 15, 7.4)
    assert first.sum(1).mean().item() == pytest.approx(7.4, abs=1e-3)
    assert rand.sum(1).mean().item() == pytest.approx(7.4, abs=1e-3)
    assert (first[:, :7] == 1).all() and (first[:, 8:] == 0).all()
    assert rand[:, 10:].sum() > 0  # random blocks, not the first ones


def test_card_records_the_architectures_and_models_are_rebuilt_from_them(tmp_path):
    torch.manual_seed(0)
    backbone = BlockDropResNet(ResNetConfig(depth=8, num_classes=3, width=8, input_size=(24, 24),
                                            mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), labels=("a", "b", "c")))
    policy = PolicyNet(PolicyNetConfig(num_blocks=3, input_size=12, width=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4)))
    metadata = {"kind": "finetune", "backbone": asdict(backbone.config), "policy": asdict(policy.config)}
    path = save_checkpoint(tmp_path / "p.safetensors", {**module_tensors(backbone, "backbone"), **module_tensors(policy, "policy")},
                           make_card({"method": "blockdrop"}, metadata))
    checkpoint = load_checkpoint(path)
    rebuilt, rebuilt_policy = backbone_from_checkpoint(checkpoint).eval(), policy_from_checkpoint(checkpoint).eval()
    assert rebuilt.config == backbone.config and rebuilt_policy.config == policy.config  # lists back to tuples
    assert rebuilt.mean.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])  # the model uses its own mean/std
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), backbone.eval()(x)) and torch.allclose(rebuilt_policy(x), policy.eval()(x))
    with pytest.raises(ValueError, match="no field 'colour'"):
        model_configs({"backbone": {**asdict(backbone.config), "colour": "red"}})
    backbone_only = load_checkpoint(save_checkpoint(tmp_path / "b.safetensors", module_tensors(backbone, "backbone"),
                                                    make_card({}, {"backbone": asdict(backbone.config)})))
    with pytest.raises(ValueError, match="no policy"):
        policy_from_checkpoint(backbone_only)


def test_the_flat_card_of_the_shipped_backbone_still_loads():
    card = read_card(ASSETS / "backbone.safetensors")
    backbone, policy = legacy_configs(card)
    assert model_configs(card) == (backbone, None) and policy is None
    assert backbone == ResNetConfig(depth=32, num_classes=10, width=16, input_size=(32, 32), mean=MEAN, std=STD,
                                    labels=tuple(card["labels"]))
    assert backbone_from_checkpoint(load_checkpoint(ASSETS / "backbone.safetensors")).num_blocks == 15


def test_a_flat_policy_card_loads_as_the_resnet8_it_was(tmp_path):
    """The policies shipped before the strided ones had flat cards (these keys) and a 16×16 ResNet-8."""
    backbone, policy_net = build_resnet(8, 10), build_policy(3, input_size=16)
    flat = {"kind": "finetune", "depth": 8, "num_classes": 10, "num_blocks": 3, "policy_input_size": 16,
            "free_blocks": 3, "image_size": [32, 32], "labels": [f"c{i}" for i in range(10)], "gamma": 1.0}
    path = save_checkpoint(tmp_path / "policy-g1.safetensors",
                           {**module_tensors(backbone, "backbone"), **module_tensors(policy_net, "policy")}, flat)
    card = read_card(path)
    assert model_configs(card)[1] == PolicyNetConfig(num_blocks=3, input_size=16, width=16) == legacy_configs(card)[1]
    loaded = policy_from_checkpoint(load_checkpoint(path))
    assert loaded.config.arch == "resnet8" and loaded.config.input_size == 16
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), policy_net.eval()(x))


@pytest.mark.parametrize("gamma", ["0.5", "1", "2"])
def test_the_shipped_policies_are_strided(gamma):
    checkpoint = load_checkpoint(ASSETS / f"policy-g{gamma}.safetensors")
    policy = policy_from_checkpoint(checkpoint)
    assert policy.config.arch == "strided" and policy.config.input_size == 32 and policy.num_blocks == 15
