"""The core of the multi-task widening method (arXiv:1611.05377; docs/multitask.md): the branched network, SOMP
thinning, task affinity and the widening step. Small networks, no training: fast on a CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from app.api import Checkpoint
from app.api.training import module_tensors
from plugins.multitask.affinity import (
    AffinityTracker,
    branch_affinity,
    error_margins,
    task_affinity,
)
from plugins.multitask.model import (
    WIDE_WIDTHS,
    BranchedNet,
    TreeConfig,
    count_flops,
    count_params,
    net_from_checkpoint,
    recalibrate_batchnorm,
)
from plugins.multitask.somp import somp, thin_from_wide
from plugins.multitask.widening import (
    WideningDecision,
    best_groupings,
    decide,
    make_decision,
    separation_cost,
    set_partitions,
    widen,
)

TASKS = ("a", "b", "c", "d", "e", "f")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_config(**kwargs) -> TreeConfig:
    """4 hidden layers (3 conv, 1 FC) on 16×16 inputs: every code path, at a tiny cost."""
    values = {"tasks": TASKS, "widths": (4, 8, 8, 16), "conv_layers": 3, "input_size": 16}
    values.update(kwargs)
    return TreeConfig(**values)


def randomise_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN parameters and running statistics, so copies and folds are really tested."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


def two_group_affinity(within: float = 0.9, across: float = 0.5) -> torch.Tensor:
    """Tasks 0-2 and 3-5 share their hard examples within each group."""
    a = torch.full((6, 6), across)
    a[:3, :3] = within
    a[3:, 3:] = within
    return a.fill_diagonal_(1.0)


# -- the network -------------------------------------------------------------------------------------------


def test_logits_come_in_task_order_whatever_the_tree():
    branched = ((tuple(range(6)),), ((0, 2, 4, 5), (1, 3)), ((0, 4), (2, 5), (1, 3)), ((4,), (0,), (2, 5), (3, 1)))
    net = BranchedNet(small_config(branches=branched)).eval()
    assert net.config.branches[3] == ((4,), (0,), (2, 5), (1, 3))  # groups are stored ascending
    assert [len(layer) for layer in net.layers] == [1, 2, 3, 4]
    assert net.branch_parents == ((0,), (0, 0), (0, 0, 1), (0, 0, 1, 2))
    with torch.no_grad():
        for head, group in zip(net.heads, net.config.branches[-1], strict=True):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(group, dtype=torch.float32))
    logits = net(torch.rand(3, 3, 16, 16))
    assert logits.shape == (3, 6)
    assert torch.equal(logits, torch.arange(6.0).expand(3, 6))


def test_config_round_trips_through_json_and_checkpoints():
    config = small_config(branches=((tuple(range(6)),),) * 2 + (((0, 1, 2), (3, 4, 5)),) * 2, dropout=0.1)
    net = randomise_batchnorm(BranchedNet(config)).eval()
    data = json.loads(json.dumps(net.to_config()))
    rebuilt = BranchedNet.from_config(data)
    assert rebuilt.config == config
    checkpoint = Checkpoint(Path("net.safetensors"), module_tensors(net, "net"), {"format": 2, "metadata": {"net": data}})
    loaded = net_from_checkpoint(checkpoint)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), net(x))
    with pytest.raises(ValueError, match="no 'net' tree"):
        net_from_checkpoint(Checkpoint(Path("x"), {}, {"format": 2, "metadata": {}}))


ALL = (tuple(range(6)),)


@pytest.mark.parametrize("branches", [
    (((0, 1, 2),),) * 4,  # not every task
    (ALL,) * 3 + (((0, 1), (1, 2, 3, 4, 5)),),  # task 1 twice
    (((0, 1, 2), (3, 4, 5)),) + (((0, 1, 2, 3), (4, 5)),) * 3,  # task 3 changes parent
], ids=["missing", "overlap", "not-nested"])
def test_a_tree_that_is_not_a_tree_is_refused(branches):
    with pytest.raises(ValueError, match="do not partition|not inside one branch"):
        small_config(branches=branches)


def test_wide_and_thin_constructors_and_the_pools_above_each_layer():
    wide, thin = TreeConfig.wide(TASKS), TreeConfig.thin(TASKS)
    assert wide.widths == WIDE_WIDTHS and thin.widths == tuple(w // 4 for w in WIDE_WIDTHS)
    assert wide.branches == thin.branches == ((tuple(range(6)),),) * 7
    assert [wide.pools_above(layer) for layer in range(7)] == [5, 4, 3, 2, 1, 0, 0]
    assert wide.active_layer() == 6 and wide.junction_branches(6) == tuple((t,) for t in range(6))
    assert wide.in_features(5) == 256 * 2 * 2  # the first FC layer flattens 256 maps of 2×2


def expected_cost(config: TreeConfig) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of a tree, by hand."""
    params = macs = 0
    size = config.input_size
    for layer in range(config.num_layers):
        n_in, width, copies = config.in_features(layer), config.widths[layer], len(config.branches[layer])
        if config.is_conv(layer):
            params += copies * (n_in * 9 * width + 2 * width)
            macs += copies * size * size * n_in * 9 * width
            size //= 2 if config.pool[layer] else 1
        else:
            params += copies * (n_in * width + 2 * width)
            macs += copies * n_in * width
    n_in = config.in_features(config.num_layers)
    return params + n_in * config.num_tasks + config.num_tasks, macs + n_in * config.num_tasks


@pytest.mark.parametrize("config", [
    TreeConfig.wide(TASKS), TreeConfig.thin(TASKS),
    small_config(branches=((tuple(range(6)),),) * 2 + (((0, 1, 2), (3, 4, 5)),) + (((0,), (1, 2), (3, 4, 5)),)),
], ids=["wide", "thin", "branched"])
def test_parameters_and_flops_match_a_count_by_hand(config):
    net = BranchedNet(config)
    params, macs = expected_cost(config)
    assert count_params(net) == params
    assert count_flops(net) == 2 * macs


def test_the_thin_network_is_a_small_fraction_of_the_wide_one():
    wide, thin = BranchedNet.wide(TASKS), BranchedNet.thin(TASKS)
    assert count_params(thin) < count_params(wide) / 10
    assert count_flops(thin) < count_flops(wide) / 10


def test_batchnorm_recalibration_takes_the_statistics_of_the_data():
    net = randomise_batchnorm(BranchedNet(small_config()))
    images = (torch.rand(48, 3, 16, 16) * 255).to(torch.uint8)
    recalibrate_batchnorm(net, images, batch_size=16)
    first = net.layers[0][0]
    with torch.no_grad():
        pre = first.op((images.float() / 255 - net.mean) / net.std)
    assert torch.allclose(first.bn.running_mean, pre.mean((0, 2, 3)), atol=1e-5)
    assert first.bn.momentum == 0.1 and net.training


# -- SOMP --------------------------------------------------------------------------------------------------


def test_somp_picks_by_the_sum_of_absolute_correlations():
    """Rows (2, 0), (0, 1), (0.6, 0.8); atoms are the unit rows. Sums of |correlations|: atom 0 → 2 + 0 + 0.6
    = 2.6, atom 1 → 0 + 1 + 0.8 = 1.8, atom 2 → 1.2 + 0.8 + 1 = 3.0, so atom 2 first (a sum of squares, or
    unnormalised atoms, would pick row 0). Residuals are then 1.6·u, −0.6·u, 0 with u = (0.8, −0.6): atom 0
    scores 1.28 + 0.48 = 1.76 > atom 1's 0.96 + 0.36 = 1.32."""
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    assert somp(rows, 1).indices == [2]
    result = somp(rows, 2)
    assert result.indices == [2, 0]
    assert result.residual < 1e-12
    assert torch.allclose(result.coefficients @ rows[[2, 0]].double(), rows.double())


def test_somp_finds_rows_that_span_combinations_of_k_rows():
    g = torch.Generator().manual_seed(1)
    known = torch.randn(4, 30, generator=g, dtype=torch.float64)
    rows = torch.cat([torch.randn(12, 4, generator=g, dtype=torch.float64) @ known, known])
    result = somp(rows, 4)
    assert len(set(result.indices)) == 4
    assert result.residual < 1e-10
    assert somp(rows, 3).residual > 0.05  # three rows cannot span a rank-4 set


def test_somp_picks_exactly_one_row_per_direction():
    """Rows that are positive multiples of k known rows, shuffled: SOMP with k picks one row of each
    (a combination of two or more known rows can look better than any of them to a greedy pursuit, so this
    is the form of "picks exactly the known rows" that SOMP guarantees)."""
    g = torch.Generator().manual_seed(2)
    known = torch.randn(5, 20, generator=g, dtype=torch.float64)
    owner = torch.tensor([0, 1, 2, 3, 4] * 4)[torch.randperm(20, generator=g)]
    rows = known[owner] * torch.rand(20, 1, generator=g, dtype=torch.float64).add(0.2)
    result = somp(rows, 5)
    assert sorted(owner[result.indices].tolist()) == [0, 1, 2, 3, 4]
    assert result.residual < 1e-12


def duplicated_wide(thin_config: TreeConfig, disguise: bool = False) -> BranchedNet:
    """A network twice as wide as ``thin_config`` whose units k + d/2 compute what units k compute (same
    weights over every input, BN parameters and statistics): its function is a thin network's. ``disguise``
    makes the copies' weights −2× the originals' and undoes that in their BN (mean ×−2, variance ×4, γ ×−1):
    the same function, which only a selection that reads the rows with their BN can see."""
    wide = randomise_batchnorm(BranchedNet(dataclasses.replace(thin_config, widths=tuple(
        2 * w for w in thin_config.widths))))
    with torch.no_grad():
        for layer in wide.layers:
            for unit in layer:
                half, bn = unit.op.weight.shape[0] // 2, unit.bn
                unit.op.weight[half:] = unit.op.weight[:half]
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensor = getattr(bn, name)
                    tensor[half:] = tensor[:half]
                if disguise:
                    unit.op.weight[half:] *= -2
                    bn.running_mean[half:] *= -2
                    bn.running_var[half:] = 4 * bn.running_var[half:] + 3 * bn.eps
                    bn.weight[half:] *= -1
    return wide.eval()


@pytest.mark.parametrize("branches, disguise", [((), False), ((), True),
                                                ((ALL,) * 2 + (((0, 1, 2), (3, 4, 5)),) * 2, False)],
                         ids=["trunk", "trunk-disguised", "tree"])
def test_thinning_a_network_with_duplicated_filters_keeps_its_function(branches, disguise):
    config = small_config(branches=branches)
    wide = duplicated_wide(config, disguise)
    x = torch.rand(8, 3, 16, 16)
    thin, selections = thin_from_wide(wide, config.widths)
    assert thin.config == config and not thin.training
    assert [len(s.indices) for s in selections] == [w for layer, w in enumerate(config.widths)
                                                    for _ in config.branches[layer]]
    for s in selections:  # one unit of each duplicated pair
        width = config.widths[s.layer]
        assert sorted(i % width for i in s.indices) == list(range(width)) and s.residual < 1e-6
    reference = wide(x)
    assert torch.allclose(thin(x), reference, atol=1e-5), (thin(x) - reference).abs().max()
    # Keeping only the columns of the kept units (the paper's plain selection) loses the duplicates' share.
    plain, _ = thin_from_wide(wide, config.widths, fold=False)
    assert (plain(x) - reference).abs().max() > 1e-2


def test_thinning_to_the_full_width_changes_nothing_and_wider_is_refused():
    wide = randomise_batchnorm(BranchedNet(small_config())).eval()
    x = torch.rand(4, 3, 16, 16)
    same, _ = thin_from_wide(wide, wide.config.widths)
    assert torch.allclose(same(x), wide(x), atol=1e-5)
    default, _ = thin_from_wide(wide)
    assert default.config.widths == (1, 2, 2, 4)
    with pytest.raises(ValueError, match="thin widths"):
        thin_from_wide(wide, (4, 8, 8, 32))


# -- affinity ----------------------------------------------------------------------------------------------


def test_affinity_by_hand():
    margins = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.9], [0.0, 0.0, 0.8]])
    # means 0.3, 0.4, 0.5 → hard: task 0 {0}, task 1 {0, 1}, task 2 {2, 3}
    expected = torch.tensor([[1.0, 0.75, 0.25], [0.75, 1.0, 0.0], [0.25, 0.0, 1.0]])
    assert torch.allclose(task_affinity(margins), expected)
    # Ã_b({0,1}, {2}) = mean(0.25, 0.0) = 0.125; Ã_b({2}, {0,1}) = min(0.25, 0.0) = 0: A_b = 0.0625
    between = branch_affinity(expected, [[0, 1], [2]])
    assert torch.allclose(between, torch.tensor([[0.75, 0.0625], [0.0625, 1.0]]))


def shared_difficulty(n: int = 4000, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of 6 tasks: tasks 0-2 are hard on the same examples (a hard "head"), tasks 3-5 on
    others (a hard "body"), drawn independently."""
    g = torch.Generator().manual_seed(seed)
    hard = torch.rand(n, 2, generator=g) < 0.4
    region = hard[:, [0, 0, 0, 1, 1, 1]].float()
    targets = (torch.rand(n, 6, generator=g) < 0.5).float()
    confidence = 3.0 - 3.5 * region + 0.7 * torch.randn(n, 6, generator=g)
    return (2 * targets - 1) * confidence, targets


def test_tasks_that_share_hard_examples_have_high_affinity():
    logits, targets = shared_difficulty()
    affinity = task_affinity(error_margins(logits, targets))
    within = [affinity[i, j] for g in ((0, 1, 2), (3, 4, 5)) for i in g for j in g if i < j]
    across = affinity[:3, 3:].flatten()
    assert min(within) > 0.8 and across.max() < 0.6 and across.min() > 0.4
    between = branch_affinity(affinity, [[0, 1, 2], [3, 4, 5]])
    assert between[0, 1] < 0.6 and between[0, 0] > 0.8 and between[1, 1] > 0.8


def test_the_tracker_estimates_the_affinity_from_batches():
    logits, targets = shared_difficulty()
    exact = task_affinity(error_margins(logits, targets))
    one = AffinityTracker(6)
    one.update(logits, targets)
    assert torch.allclose(one.affinity(), exact, atol=1e-6)
    batched = AffinityTracker(6)
    for start in range(0, len(logits), 64):
        batched.update(logits[start:start + 64], targets[start:start + 64])
    assert batched.count == len(logits)
    assert (batched.affinity() - exact).abs().max() < 0.03
    restored = AffinityTracker(6)
    restored.load_state(batched.state())
    assert torch.equal(restored.affinity(), batched.affinity())
    batched.reset()
    with pytest.raises(ValueError, match="no examples"):
        batched.affinity()
    with pytest.raises(ValueError, match="N×6"):
        one.update(logits[:, :5], targets[:, :5])


# -- widening ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam, groups", [
    (0.0, [[0, 1, 2, 3, 4, 5]]),  # no separation cost: never branch
    (2.4, [[0, 1, 2, 3, 4, 5]]),  # splitting pays once λ > L_0·2^0 / (0.9 − 0.5) = 2.5
    (2.6, [[0, 1, 2], [3, 4, 5]]),
    (26.0, [[0, 1, 2], [3, 4, 5]]),  # peeling 3 singletons off (d = 4, L_s = 0.1/4) pays above λ = 80/3
    (27.0, [[0, 1, 2], [3], [4], [5]]),
    (1000.0, [[0], [1], [2], [3], [4], [5]]),  # L_s dominates: every task its own branch
])
def test_the_decision_follows_the_cost_from_one_end_to_the_other(lam, groups):
    decision = decide(TreeConfig.thin(TASKS), two_group_affinity(), lam)
    assert decision.layer == 6 and decision.pools_above == 0 and decision.search == "exhaustive"
    assert decision.task_groups == tuple(tuple(g) for g in groups)
    assert [c.d for c in decision.candidates] == [1, 2, 3, 4, 5, 6]
    expected_ls = [0.5, 0.1, 0.2 / 3, 0.1 / 4, 0.1 / 5, 0.0]
    assert [c.separation_cost for c in decision.candidates] == pytest.approx(expected_ls)
    assert [c.branch_cost for c in decision.candidates] == [0, 1, 2, 3, 4, 5]
    assert all(c.total == pytest.approx(c.branch_cost + lam * c.separation_cost) for c in decision.candidates)


def test_branching_lower_costs_more():
    """At a conv layer with 3 pools above, L_b is 8× larger: the same tasks split only for λ > 8 / 0.4 = 20."""
    branches = [[t] for t in range(6)]
    low = make_decision(branches, two_group_affinity(), 10.0, layer=2, pools_above=3)
    assert low.d == 1 and low.candidates[1].branch_cost == 8.0
    assert make_decision(branches, two_group_affinity(), 21.0, layer=2, pools_above=3).d == 2


def test_greedy_grouping_matches_exhaustive_on_clear_groups():
    affinity = two_group_affinity().double().tolist()
    exhaustive, how = best_groupings(affinity)
    greedy, how_greedy = best_groupings(affinity, exhaustive_limit=0)
    assert (how, how_greedy) == ("exhaustive", "greedy")
    assert greedy[:2] == exhaustive[:2] == [[[0, 1, 2, 3, 4, 5]], [[0, 1, 2], [3, 4, 5]]]
    assert [len(g) for g in greedy] == [1, 2, 3, 4, 5, 6]
    assert [sum(1 for _ in set_partitions(n)) for n in range(1, 7)] == [1, 2, 5, 15, 52, 203]  # Bell numbers


def blocks_with_outlier_affinity() -> torch.Tensor:
    """Two blocks of 4 tasks (0.8 inside, 0.55 across) and task 8, an outlier (0.45 with everyone)."""
    a = torch.full((9, 9), 0.55)
    a[:4, :4] = a[4:8, 4:8] = 0.8
    a[8, :] = a[:, 8] = 0.45
    a.fill_diagonal_(1.0)
    return a


def test_separation_weighted_by_size_groups_blocks_where_the_mean_peels_off_the_outlier():
    """L_s as the method describes it, (1/d)·Σ(1 − within), charges a singleton nothing and averages over d: the best
    2-grouping splits off the outlier alone; weighted by group size it finds the blocks."""
    affinity = blocks_with_outlier_affinity()
    blocks = [[0, 1, 2, 3, 8], [4, 5, 6, 7]]
    outlier = [list(range(8)), [8]]
    rows = affinity.double().tolist()
    assert separation_cost(rows, outlier, "mean") == pytest.approx((1 - 0.55) / 2)
    # within [0, 1, 2, 3, 8]: every task's least affinity in it is 0.45 (with or of the outlier)
    assert separation_cost(rows, blocks, "mean") == pytest.approx((0.55 + 0.2) / 2)
    assert separation_cost(rows, outlier, "size") == pytest.approx(8 * (1 - 0.55) / 9)
    assert separation_cost(rows, blocks, "size") == pytest.approx((5 * 0.55 + 4 * 0.2) / 9)
    branches = [[t] for t in range(9)]
    mean = make_decision(branches, affinity, 5.0, layer=6, pools_above=0, exhaustive_limit=0, separation="mean")
    size = make_decision(branches, affinity, 5.0, layer=6, pools_above=0, exhaustive_limit=0, separation="size")
    assert mean.candidates[1].groups == outlier and size.separation == "size"
    assert size.candidates[1].groups == blocks  # the blocks (the outlier joins one of them)
    assert mean.candidates[2].groups == size.candidates[2].groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    with pytest.raises(ValueError, match="separation"):
        separation_cost(rows, blocks, "median")


def head_body_net() -> BranchedNet:
    return randomise_batchnorm(BranchedNet(small_config())).eval()


def test_widening_keeps_the_function_and_adds_one_copy_per_extra_group():
    """λ = 6 on two groups of tasks: split at the top (d = 2: L = 1.6 < 3), again at layer 2 (one pool above:
    L_b = 2 < λ·0.5 = 3), not at layer 1 (two pools above: L_b = 4 > 3)."""
    net = head_body_net()
    x = torch.rand(5, 3, 16, 16)
    reference = net(x)
    for layer, d in [(3, 2), (2, 2), (1, 1)]:
        decision = decide(net.config, two_group_affinity(), 6.0)
        assert (decision.layer, decision.d) == (layer, d)
        grown = widen(net, decision)
        assert torch.allclose(grown(x), reference, atol=1e-6)
        assert grown.config.active_layer() == (layer - 1 if d > 1 else layer)
        assert count_params(grown) - count_params(net) == (d - 1) * count_params(net.layers[layer][0])
        params, macs = expected_cost(grown.config)
        assert (count_params(grown), count_flops(grown)) == (params, 2 * macs)
        net = grown
    assert net.config.branches == (ALL, ALL, ((0, 1, 2), (3, 4, 5)), ((0, 1, 2), (3, 4, 5)))


def test_a_split_at_every_layer_down_to_the_bottom_keeps_the_function():
    net = head_body_net()
    x = torch.rand(4, 3, 16, 16)
    reference = net(x)
    for layer in reversed(range(net.config.num_layers)):
        decision = decide(net.config, two_group_affinity(), 1000.0)
        assert decision.layer == layer
        net = widen(net, decision)
    assert net.config.active_layer() is None
    assert all(len(groups) == 6 for groups in net.config.branches)  # λ = 1000: six separate networks
    assert torch.allclose(net(x), reference, atol=1e-6)
    with pytest.raises(ValueError, match="no active layer"):
        decide(net.config, two_group_affinity(), 1.0)


def test_a_logged_decision_replays_to_the_same_network():
    net = head_body_net()
    decision = decide(net.config, two_group_affinity(), 10.0)
    text = json.dumps(decision.to_dict())
    replayed = WideningDecision.from_json(text)
    assert replayed == decision
    a, b = widen(net, decision), widen(net, replayed)
    assert a.config == b.config and a.config.branches[3] == ((0, 1, 2), (3, 4, 5))
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.allclose(torch.tensor(decision.branch_affinity).double(), two_group_affinity().double())  # A_b = A
    # the next decision is made one layer down, on the two branches, and refuses the old network
    below = decide(a.config, two_group_affinity(), 10.0)
    assert below.layer == 2 and below.branches == [[0, 1, 2], [3, 4, 5]] and below.pools_above == 1
    with pytest.raises(ValueError, match="junction"):
        widen(net, below)
    with pytest.raises(ValueError, match="already branched"):
        widen(a, decision)
