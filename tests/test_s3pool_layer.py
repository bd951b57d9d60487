"""S3Pool layer (plugins/s3pool/layer.py): sizes, where the samples come from, the three eval paths,
batch sharing, gradients. References are computed here independently of the layer's own helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plugins.s3pool.layer import (
    S3Pool2d,
    gather_positions,
    s3pool,
    s3pool_with_indices,
    sample_grid,
    sample_indices,
)

GRIDS = (2, 4, 8, 16, 64)  # 64 is larger than every map below


def reference_stride1_max(x: torch.Tensor) -> torch.Tensor:
    """2x2 max with stride 1, size kept: the last row/column takes the max over what is inside."""
    return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, stride=1)


def strip_counts(indices: torch.Tensor, length: int, grid: int) -> list[int]:
    starts = range(0, length, grid)
    return [int(((indices >= s) & (indices < min(s + grid, length))).sum()) for s in starts]


def expected_counts(length: int, grid: int) -> list[int]:
    return [math.ceil(min(grid, length - s) / 2) for s in range(0, length, grid)]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid", GRIDS)
def test_output_shape_matches_maxpool_ceil_mode_for_every_size_and_mode(grid):
    for height in range(4, 34):
        for width in (height, 37 - height):
            x = torch.randn(2, 3, height, width)
            expected = nn.MaxPool2d(2, ceil_mode=True)(x).shape
            for training in (True, False):
                for eval_mode in ("deterministic", "uniform", "ensemble"):
                    for per_sample in (False, True):
                        out = s3pool(x, grid, training, eval_mode=eval_mode, per_sample=per_sample)
                        assert out.shape == expected, (height, width, grid, training, eval_mode, per_sample)
            if height % 2 == 0 and width % 2 == 0:
                assert expected == nn.MaxPool2d(2)(x).shape


def test_tiny_maps_and_unbatched_input():
    for height, width in [(1, 1), (1, 6), (3, 2), (2, 3)]:
        x = torch.randn(4, height, width)
        for training in (True, False):
            assert S3Pool2d(grid_size=4).train(training)(x).shape == (4, math.ceil(height / 2),
                                                                      math.ceil(width / 2))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("length", [1, 2, 5, 8, 13, 16, 31, 32, 33])
def test_sampled_indices_sorted_inside_their_strips_half_per_strip(length, grid):
    indices = sample_indices(length, grid, n=50, generator=seeded(length * 100 + grid))
    assert indices.shape == (50, math.ceil(length / 2)) and indices.dtype == torch.long
    assert (indices >= 0).all() and (indices < length).all()
    assert (indices[:, 1:] > indices[:, :-1]).all()  # sorted and no repeats
    for row in indices:
        assert strip_counts(row, length, grid) == expected_counts(length, grid)


def test_each_position_of_a_strip_is_kept_about_half_of_the_time():
    # uniform without replacement: every position of a full strip is kept with probability 1/2, and each
    # of the 3 positions of a short strip with probability 2/3 (ceil(3/2) of 3)
    draws = sample_indices(11, 8, n=4000, generator=seeded(1))
    frequency = torch.zeros(11)
    frequency.scatter_add_(0, draws.flatten(), torch.ones(draws.numel()))
    frequency /= 4000
    assert torch.allclose(frequency[:8], torch.full((8,), 0.5), atol=0.04), frequency
    assert torch.allclose(frequency[8:], torch.full((3,), 2 / 3), atol=0.04), frequency


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("size", [(7, 7), (8, 12), (17, 10), (32, 32)])
def test_every_output_value_is_the_stride1_max_at_the_returned_position(size, grid):
    x = torch.randn(1, 2, *size)
    pooled = reference_stride1_max(x)
    out, rows, cols = s3pool_with_indices(x, grid, generator=seeded(grid))
    assert rows.shape == (1, out.shape[-2]) and cols.shape == (1, out.shape[-1])
    for i, r in enumerate(rows[0].tolist()):
        for j, c in enumerate(cols[0].tolist()):
            assert torch.equal(out[0, :, i, j], pooled[0, :, r, c])
            assert torch.equal(out[0, :, i, j], x[0, :, r:r + 2, c:c + 2].amax(dim=(-2, -1)))


def test_negative_inputs_never_see_the_padding():
    x = -1.0 - torch.rand(1, 1, 9, 9)  # all negative: a zero pad would leak zeros into the last row/col
    for training in (True, False):
        for eval_mode in ("deterministic", "uniform", "ensemble"):
            out = s3pool(x, 4, training, eval_mode=eval_mode)
            assert (out < -1).all(), (training, eval_mode)


def test_eval_deterministic_is_repeatable_and_training_is_stochastic():
    x = torch.randn(2, 3, 32, 32)
    layer = S3Pool2d(grid_size=16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))  # C(16,8)^4 possible draws per axis pair: no chance of a tie


def test_deterministic_eval_is_the_official_test_path():
    # Lasagne: MaxPool2DLayer(2, stride=1, ignore_border=True) -> Pool2DLayer(2, stride=2, pad=1,
    # mode='average_exc_pad'); for even and odd sizes
    for height, width in [(32, 32), (16, 10), (9, 7), (2, 5)]:
        x = torch.randn(2, 3, height, width)
        official = F.avg_pool2d(F.max_pool2d(x, 2, stride=1), 2, stride=2, padding=1, count_include_pad=False)
        out = s3pool(x, 8, training=False, eval_mode="deterministic")
        assert out.shape[-2:] == (math.ceil(height / 2), math.ceil(width / 2))
        assert torch.allclose(out, official, atol=1e-6), (height, width)


def test_deterministic_eval_averages_the_candidate_positions_written_out():
    x = torch.randn(1, 1, 7, 6)
    pooled = reference_stride1_max(x)[0, 0]
    height, width = pooled.shape
    out = s3pool(x, 4, training=False)[0, 0]
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            rows = [r for r in (2 * i - 1, 2 * i) if 0 <= r <= height - 2]
            cols = [c for c in (2 * j - 1, 2 * j) if 0 <= c <= width - 2]
            assert torch.isclose(out[i, j], pooled[rows][:, cols].mean(), atol=1e-6), (i, j)


def test_uniform_eval_is_every_second_row_and_column_of_the_stride1_map():
    x = torch.randn(2, 3, 13, 16)
    out = s3pool(x, 4, training=False, eval_mode="uniform")
    assert torch.equal(out, reference_stride1_max(x)[..., ::2, ::2])
    assert torch.equal(out, nn.MaxPool2d(2, ceil_mode=True)(x))


def test_per_batch_mode_shares_one_draw_and_per_sample_mode_does_not():
    image = torch.randn(1, 3, 32, 32)
    batch = image.repeat(6, 1, 1, 1)
    shared, rows, cols = s3pool_with_indices(batch, 16)
    assert rows.shape == (1, 16) and cols.shape == (1, 16)
    assert all(torch.equal(shared[0], sample) for sample in shared)
    own, rows, cols = s3pool_with_indices(batch, 16, per_sample=True)
    assert rows.shape == (6, 16) and cols.shape == (6, 16)
    assert len({tuple(r.tolist()) for r in rows}) > 1 and len({tuple(c.tolist()) for c in cols}) > 1
    assert not all(torch.equal(own[0], sample) for sample in own)
    pooled = reference_stride1_max(batch)
    for b in range(6):  # and each sample really used its own indices
        assert torch.equal(own[b], pooled[b][:, rows[b]][:, :, cols[b]])


def test_module_per_sample_flag_reaches_the_forward_pass():
    batch = torch.randn(1, 2, 16, 16).repeat(8, 1, 1, 1)
    out = S3Pool2d(grid_size=8)(batch)
    assert all(torch.equal(o, out[0]) for o in out)
    out = S3Pool2d(grid_size=8, per_sample=True)(batch)
    assert not all(torch.equal(o, out[0]) for o in out)


@pytest.mark.parametrize("eval_mode", ["deterministic", "uniform", "ensemble"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_reach_the_input(training, eval_mode):
    x = torch.randn(3, 2, 11, 16, requires_grad=True)
    layer = S3Pool2d(grid_size=4, per_sample=True, eval_mode=eval_mode).train(training)
    (layer(x) * torch.randn(3, 2, 6, 8)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_grid_two_is_a_local_jitter_of_maxpool_offsets():
    x = torch.randn(1, 3, 12, 10)
    offsets_seen = set()
    generator = seeded(3)
    for _ in range(20):
        out, rows, cols = s3pool_with_indices(x, 2, generator=generator)
        # each output row i keeps row 2i or 2i+1 of its 2-row strip (the same for columns) ...
        row_offsets = rows[0] - 2 * torch.arange(6)
        col_offsets = cols[0] - 2 * torch.arange(5)
        assert set(row_offsets.tolist()) <= {0, 1} and set(col_offsets.tolist()) <= {0, 1}
        offsets_seen |= set(row_offsets.tolist()) | set(col_offsets.tolist())
        # ... so it is max pooling at a random one of the two offsets: the 2x2 window at (2i + a, 2j + b)
        for i in range(6):
            for j in range(5):
                a, b = int(row_offsets[i]), int(col_offsets[j])
                window = x[0, :, 2 * i + a: 2 * i + a + 2, 2 * j + b: 2 * j + b + 2]
                assert torch.equal(out[0, :, i, j], window.amax(dim=(-2, -1)))
    assert offsets_seen == {0, 1}


@pytest.mark.parametrize("per_sample", [False, True])
def test_ensemble_is_the_mean_of_k_seeded_draws(per_sample):
    x = torch.randn(3, 2, 15, 16)
    k = 5
    out = s3pool(x, 8, training=False, eval_mode="ensemble", ensemble_k=k, per_sample=per_sample,
                 generator=seeded(7))
    n = 3 if per_sample else 1
    rows, cols = sample_grid(15, 16, 8, k * n, generator=seeded(7))
    pooled = reference_stride1_max(x)
    draws = []
    for pass_rows, pass_cols in zip(rows.view(k, n, -1), cols.view(k, n, -1), strict=True):
        draws.append(torch.stack([pooled[b][:, pass_rows[b % n]][:, :, pass_cols[b % n]] for b in range(3)]))
    draws = torch.stack(draws)
    assert torch.allclose(out, draws.mean(0), atol=1e-6)
    assert (out >= draws.amin(0) - 1e-6).all() and (out <= draws.amax(0) + 1e-6).all()
    assert not torch.equal(draws[0], draws[1])  # really K different passes


def test_ensemble_of_one_pass_is_a_training_pass_and_module_ensemble_uses_k():
    x = torch.randn(2, 2, 16, 16)
    single = s3pool(x, 8, False, eval_mode="ensemble", ensemble_k=1, generator=seeded(4))
    assert torch.equal(single, s3pool(x, 8, True, generator=seeded(4)))
    layer = S3Pool2d(grid_size=8, eval_mode="ensemble", ensemble_k=64).eval()
    # the mean of many passes is close to neither a single pass nor the uniform pattern
    averaged = layer(x)
    assert not torch.equal(averaged, s3pool(x, 8, True))
    assert not torch.equal(averaged, s3pool(x, 8, False, eval_mode="uniform"))


def test_seeded_generator_makes_training_reproducible():
    x = torch.randn(2, 2, 16, 16)
    first = S3Pool2d(grid_size=8, generator=seeded(11))(x)
    second = S3Pool2d(grid_size=8, generator=seeded(11))(x)
    assert torch.equal(first, second)


def test_gather_positions_with_ensemble_axis():
    pooled = torch.randn(2, 3, 6, 6)
    rows = torch.tensor([[[0, 3, 5]], [[1, 2, 4]]])  # (K=2, n=1, 3)
    cols = torch.tensor([[[1, 2, 5]], [[0, 3, 4]]])
    out = gather_positions(pooled, rows, cols)
    assert out.shape == (2, 2, 3, 3, 3)
    assert torch.equal(out[1], pooled[:, :, [1, 2, 4]][:, :, :, [0, 3, 4]])


def test_kernel_size_one_switches_the_max_pool_off_and_three_widens_it():
    x = torch.randn(1, 1, 8, 8)
    out, rows, cols = s3pool_with_indices(x, 4, kernel_size=1)
    assert torch.equal(out[0, 0], x[0, 0][rows[0]][:, cols[0]])
    out, rows, cols = s3pool_with_indices(x, 4, kernel_size=3)
    r, c = int(rows[0, 0]), int(cols[0, 0])
    assert out[0, 0, 0, 0] == x[0, 0, r:r + 3, c:c + 3].max()


def test_bad_arguments_are_refused():
    for grid in (0, 1, 3, 5):
        with pytest.raises(ValueError, match="grid_size"):
            S3Pool2d(grid_size=grid)
    with pytest.raises(ValueError, match="eval_mode"):
        S3Pool2d(grid_size=4, eval_mode="average")
    with pytest.raises(ValueError, match="kernel_size"):
        S3Pool2d(0, grid_size=4)
    with pytest.raises(ValueError, match="ensemble_k"):
        S3Pool2d(grid_size=4, ensemble_k=0)


def test_drops_in_for_maxpool_and_says_what_it_is():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), S3Pool2d(grid_size=8), nn.Conv2d(4, 4, 3, padding=1))
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 4, 8, 8)
    text = repr(S3Pool2d(grid_size=8, per_sample=True, eval_mode="ensemble", ensemble_k=3))
    for part in ("kernel_size=2", "grid_size=8", "per_sample=True", "eval_mode='ensemble'", "ensemble_k=3"):
        assert part in text
    assert S3Pool2d.output_size(33, 8) == (17, 4)
    assert "1611.05138" in (S3Pool2d.__doc__ or "")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_shapes_values_and_gradients():
    x = torch.randn(4, 3, 33, 20, device="cuda", requires_grad=True)
    expected = nn.MaxPool2d(2, ceil_mode=True)(x).shape
    for per_sample in (False, True):
        for training in (True, False):
            for eval_mode in ("deterministic", "uniform", "ensemble"):
                layer = S3Pool2d(grid_size=8, per_sample=per_sample, eval_mode=eval_mode).train(training)
                out = layer(x)
                assert out.shape == expected and out.device.type == "cuda"
                out.sum().backward()
                assert torch.isfinite(x.grad).all()
        out, rows, cols = s3pool_with_indices(x, 8, per_sample=per_sample)
        assert rows.device.type == "cuda" and cols.device.type == "cuda"
        pooled = reference_stride1_max(x)
        assert torch.equal(out[0], pooled[0][:, rows[0]][:, :, cols[0]])
    generator = torch.Generator(device="cuda").manual_seed(0)
    assert sample_indices(20, 8, 3, generator=generator, device="cuda").device.type == "cuda"
    cpu_draw = sample_indices(20, 8, 3, generator=seeded(0), device="cuda")
    assert cpu_draw.device.type == "cuda"


# -- sample first, then pool: the same answers as pooling everything and then sampling ------------------

def _pool_then_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The layer's old order, written out: the whole stride-1 max pool (-inf pad), then the drawn positions."""
    k = kernel_size
    full = x if k == 1 else F.max_pool2d(F.pad(x, (0, k - 1, 0, k - 1), value=float("-inf")), k, stride=1)
    if rows.dim() == 2:  # (n, Ho): shared (n = 1) or one draw per sample
        picked = [full[b if rows.shape[0] > 1 else slice(None)] for b in range(rows.shape[0])]
        out = [p[..., r, :][..., c] for p, r, c in zip(picked, rows, cols, strict=True)]
        return out[0] if rows.shape[0] == 1 else torch.stack(out)
    return torch.stack([_pool_then_sample(x, r, c, k) for r, c in zip(rows, cols, strict=True)])


@pytest.mark.parametrize("kernel_size", [1, 2, 3])
@pytest.mark.parametrize("per_sample", [False, True])
def test_sampling_first_gives_the_same_outputs_and_gradients_on_many_sizes_and_grids(kernel_size, per_sample):
    from plugins.s3pool.layer import sampled_max

    torch.manual_seed(0)
    checked = 0
    for height in (1, 2, 3, 5, 8, 15, 32):
        for width in (1, 4, 7, 32):
            for grid in (2, 4, 8, 16, 32):
                x = torch.randn(3, 2, height, width, requires_grad=True)
                rows, cols = sample_grid(height, width, grid, 3 if per_sample else 1)
                reference = _pool_then_sample(x, rows, cols, kernel_size)
                new = sampled_max(x, rows, cols, kernel_size)
                assert torch.equal(new, reference), (height, width, grid)
                weights = torch.randn_like(reference)
                expected, = torch.autograd.grad((reference * weights).sum(), x)
                got, = torch.autograd.grad((new * weights).sum(), x)
                assert torch.equal(got, expected), (height, width, grid)
                checked += 1
    assert checked == 7 * 4 * 5


def test_sampling_first_breaks_ties_as_max_pooling_does():
    """After a ReLU many windows hold equal values: the gradient goes to the first maximal pixel."""
    from plugins.s3pool.layer import sampled_max

    x = torch.randn(4, 3, 16, 16).relu().round().requires_grad_()
    assert (x == 0).float().mean() > 0.3
    rows, cols = sample_grid(16, 16, 8, generator=seeded(1))
    reference = _pool_then_sample(x, rows, cols, 2)
    new = sampled_max(x, rows, cols)
    assert torch.equal(new, reference)
    assert torch.equal(torch.autograd.grad(new.sum(), x)[0], torch.autograd.grad(reference.sum(), x)[0])


def test_sampling_first_with_an_ensemble_axis_matches_pooling_first():
    from plugins.s3pool.layer import sampled_max

    x = torch.randn(2, 3, 12, 10)
    for per_sample in (False, True):
        n = 2 if per_sample else 1
        rows, cols = sample_grid(12, 10, 4, 3 * n, generator=seeded(2))
        rows, cols = rows.view(3, n, -1), cols.view(3, n, -1)
        assert torch.equal(sampled_max(x, rows, cols), _pool_then_sample(x, rows, cols, 2))


@pytest.mark.parametrize("size", [(2, 2), (5, 7), (32, 32)])
def test_the_cheaper_eval_paths_equal_the_stride1_map_they_stand_for(size):
    x = torch.randn(2, 3, *size)
    full = reference_stride1_max(x)
    expected = F.avg_pool2d(full[..., : size[0] - 1, : size[1] - 1], 2, stride=2, padding=1, count_include_pad=False)
    assert torch.allclose(s3pool(x, 4, training=False, eval_mode="deterministic"), expected, atol=1e-6)
    assert torch.equal(s3pool(x, 4, training=False, eval_mode="uniform"), full[..., ::2, ::2])
