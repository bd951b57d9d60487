"""The deployed inference path (plugins/blockdrop/inference.py) computes what the training modules do:
folded batch norm, channels-last, batch-1 block skipping without index work, curriculum blocks kept."""

from __future__ import annotations

import pytest
import torch

from plugins.blockdrop import analysis
from plugins.blockdrop.inference import FastResNet, fast_blockdrop, fast_full, fold_bn, keep_tensor, prepare
from plugins.blockdrop.model import build_policy, build_resnet


def _randomise_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial eval statistics, so folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


@pytest.fixture(scope="module", params=["resnet8", "strided"])
def nets(request):
    torch.manual_seed(0)
    policy = build_policy(6, input_size=16, arch=request.param)  # 16: the 32×32 inputs are resized first
    return _randomise_bn(build_resnet(14, 5), 1), _randomise_bn(policy, 2)


def test_folding_batch_norm_keeps_the_function():
    conv, bn = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4)
    _randomise_bn(torch.nn.Sequential(conv, bn), 3)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("free_blocks", [None, 3])
def test_the_inference_path_matches_the_modules_at_batch_1_and_in_a_batch(nets, channels_last, free_blocks):
    backbone, policy = nets
    fast, fast_policy = prepare(backbone, policy, channels_last=channels_last)
    x = torch.rand(9, 3, 32, 32)
    with torch.inference_mode():
        ref_logits, ref_policy = analysis.blockdrop_forward(backbone, policy, x, free_blocks)
        logits, keep = fast_blockdrop(fast, fast_policy, x, free_blocks)
        assert torch.equal(keep, ref_policy) and torch.allclose(logits, ref_logits, atol=1e-4)
        for i in range(3):  # one image at a time: the policy as a list of booleans, no index tensors
            one, keep_one = fast_blockdrop(fast, fast_policy, x[i:i + 1], free_blocks)
            assert torch.equal(keep_one, ref_policy[i:i + 1]) and torch.allclose(one, ref_logits[i:i + 1], atol=1e-4)
        assert torch.allclose(fast_full(fast, x), backbone(x), atol=1e-4)
        assert torch.allclose(fast_policy(x), policy(x), atol=1e-5)
        assert 0 < int(ref_policy.sum()) < ref_policy.numel() or free_blocks is not None  # not all one way
        if free_blocks is not None:  # blocks outside the curriculum are always kept
            assert bool((keep[:, : backbone.num_blocks - free_blocks] == 1).all())


def test_at_batch_1_only_the_kept_blocks_run(nets):
    backbone, _ = nets
    fast = FastResNet(backbone)
    calls = []
    for k, conv in enumerate(fast.conv1):
        conv.register_forward_hook(lambda *_, k=k: calls.append(k))
    keep = [k % 2 == 0 for k in range(fast.num_blocks)]
    with torch.inference_mode():
        out = fast(torch.rand(1, 3, 32, 32), keep)
    assert calls == [k for k in range(fast.num_blocks) if keep[k]] and out.shape == (1, 5)
    assert keep_tensor(torch.tensor([[0.9, 0.2, 0.6]]), 1).tolist() == [[1.0, 1.0, 1.0]]
