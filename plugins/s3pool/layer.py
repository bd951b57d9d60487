"""S3Pool: pooling with stochastic spatial sampling (Zhai et al., CVPR 2017, arXiv:1611.05138).

The paper splits ordinary 2x2 max pooling into two steps: (1) a 2x2 max window slides over the map with
stride 1, which keeps the resolution; (2) the map is downsampled by keeping one pixel per non-overlapping
window in a fixed pattern (the top-left one). S3Pool keeps step 1 and randomises step 2 ("stochastic
spatial sampling"): the rows are cut into strips of ``g`` rows (the *grid size*), ``g/2`` rows of every
strip are drawn uniformly without replacement and kept in order, and the same is done for the columns.
The paper reads the random, non-uniform stretching and squeezing of the feature map as a strong
regulariser and as implicit data augmentation; ``g`` sets how much distortion there is (``g = 2`` is a
one-pixel jitter, ``g = H`` may keep any ``H/2`` of the ``H`` rows).

The layer needs only torch. Everything is vectorised: no Python loop runs over strips or samples.

Cost. Computing step 1 over the whole map and then throwing three quarters of it away costs several
times a plain max pool. The layer therefore samples first and pools second: the draw fixes which
``ceil(H/2) x ceil(W/2)`` windows survive, their ``kernel_size x kernel_size`` pixels are gathered in one
index operation into a ``k*Ho x k*Wo`` map, and one stride-``k`` max pool of that map gives the output
(:func:`sampled_max`). The result is exactly the max of each surviving stride-1 window, the same as
pooling everything and then gathering (:func:`gather_positions` over :func:`stride1_max_pool`), which
stays as the reference and for the visualisations that show the whole stride-1 map.

Sizes. The stride-1 max pool pads the right and bottom with -inf (``kernel_size - 1`` rows/columns), so it
keeps the input size ``H x W`` and negative inputs are handled correctly (the official code drops that
border instead). Every path then returns ``ceil(H/2) x ceil(W/2)``, the size of
``nn.MaxPool2d(2, ceil_mode=True)`` (for even sizes exactly ``nn.MaxPool2d(2)``). A map of length ``L``
along an axis is cut into ``L // g`` full strips of ``g`` positions, which keep ``g/2`` each, and, when
``g`` does not divide ``L``, one last short strip of ``r = L % g`` positions, which keeps ``ceil(r/2)`` of
them drawn the same way. A grid larger than the map is therefore one short strip over the whole axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

EVAL_MODES = ("deterministic", "uniform", "ensemble")

__all__ = [
    "EVAL_MODES",
    "S3Pool2d",
    "deterministic_downsample",
    "gather_positions",
    "s3pool",
    "s3pool_with_indices",
    "sample_grid",
    "sampled_max",
    "sample_indices",
    "stride1_max_pool",
]


def _check_grid_size(grid_size: int) -> None:
    if not isinstance(grid_size, int) or grid_size < 2 or grid_size % 2:
        raise ValueError(f"grid_size must be an even integer >= 2, got {grid_size!r}")


def _check_kernel_size(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be an integer >= 1, got {kernel_size!r}")


def stride1_max_pool(x: Tensor, kernel_size: int = 2) -> Tensor:
    """Step 1: ``kernel_size`` max pooling with stride 1 that keeps the size ``H x W`` of ``x``.

    Output ``[.., r, c]`` is the max of ``x[.., r:r+k, c:c+k]``; windows running off the right or bottom edge
    see only the pixels inside (the pad is -inf). ``kernel_size = 1`` switches the max pool off (the
    official ``maxpool=False``)."""
    _check_kernel_size(kernel_size)
    if kernel_size == 1:
        return x
    padded = F.pad(x, (0, kernel_size - 1, 0, kernel_size - 1), value=float("-inf"))
    return F.max_pool2d(padded, kernel_size, stride=1)


def sample_indices(length: int, grid_size: int, n: int = 1, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """``n`` independent draws of the positions kept along one axis of length ``length``.

    Returns a long tensor ``(n, ceil(length / 2))``; each row is sorted. Every full strip
    ``[s*g, (s+1)*g)`` contributes ``g/2`` positions drawn uniformly without replacement; a last short strip
    of ``r = length % g`` positions contributes ``ceil(r/2)``. The random keys are drawn on the generator's
    device when ``generator`` is given (else on ``device``) and the result is moved to ``device``."""
    _check_grid_size(grid_size)
    if length < 1 or n < 1:
        raise ValueError(f"length and n must be >= 1, got length={length}, n={n}")
    key_device = generator.device if generator is not None else device
    n_full, rest = divmod(length, grid_size)
    parts = []
    if n_full:
        keys = torch.rand(n, n_full, grid_size, generator=generator, device=key_device)
        picked = keys.argsort(-1)[..., : grid_size // 2].sort(-1).values  # (n, n_full, g/2)
        offsets = torch.arange(n_full, device=picked.device).mul_(grid_size).view(1, n_full, 1)
        parts.append((picked + offsets).flatten(1))
    if rest:
        keys = torch.rand(n, rest, generator=generator, device=key_device)
        parts.append(keys.argsort(-1)[:, : (rest + 1) // 2].sort(-1).values + n_full * grid_size)
    indices = torch.cat(parts, dim=1)
    return indices if device is None else indices.to(device)


def sample_grid(height: int, width: int, grid_size: int, n: int = 1, *,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """One S3Pool draw for an ``height x width`` map: ``(rows (n, ceil(H/2)), cols (n, ceil(W/2)))``.

    Rows are drawn before columns (this fixes the sequence a seeded generator yields)."""
    rows = sample_indices(height, grid_size, n, generator=generator, device=device)
    cols = sample_indices(width, grid_size, n, generator=generator, device=device)
    return rows, cols


def gather_positions(pooled: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``pooled[b, c, rows[b, i], cols[b, j]]`` for a map ``(N, C, H, W)``.

    ``rows`` ``(n, Ho)`` and ``cols`` ``(n, Wo)`` with ``n = 1`` (one draw shared by the batch) or ``n = N``
    (one draw per sample); with a leading ensemble axis, ``(K, n, Ho)`` and ``(K, n, Wo)`` give
    ``(K, N, C, Ho, Wo)``. All channels share the positions. Differentiable with respect to ``pooled``."""
    if rows.dim() == 2 and rows.shape[0] == 1:  # the paper's case: plain index_select, cheapest
        return pooled.index_select(-2, rows[0]).index_select(-1, cols[0])
    batch, channels, _, width = pooled.shape
    lead = rows.shape[:-2]  # () or (K,)
    ho, wo = rows.shape[-1], cols.shape[-1]
    source = pooled.expand(*lead, *pooled.shape)
    row_index = rows[..., :, None, :, None].expand(*lead, batch, channels, ho, width)
    picked = source.gather(-2, row_index)
    col_index = cols[..., :, None, None, :].expand(*lead, batch, channels, ho, wo)
    return picked.gather(-1, col_index)


def _window_positions(starts: Tensor, kernel_size: int, length: int) -> Tensor:
    """``(..., L) -> (..., L * k)``: every window start followed by its ``k - 1`` next positions.

    Positions past the end are clamped to the last one: a repeated pixel of the same window does not
    change its max, which is exactly what the stride-1 pool's -inf pad gives."""
    offsets = torch.arange(kernel_size, device=starts.device)
    return (starts[..., :, None] + offsets).clamp_max_(length - 1).flatten(-2)


class _SampledMax2x2(torch.autograd.Function):
    """The 2x2 max of the windows whose 4 pixels ``flat`` lists (flat positions in the ``H*W`` plane).

    ``flat`` is ``(n, L, 4)`` (``n = 1`` shared by the batch, or ``N``), the 4 pixels of each window in
    row-major order. The max is three elementwise maxima, not a pooling kernel (which is slow on CPU), and
    the gradient goes to the first maximal pixel of each window, as ``nn.MaxPool2d``'s does."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, flat: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        windows = flat.shape[1]
        index = flat.view(flat.shape[0], 1, windows * 4).expand(batch, channels, windows * 4)
        a, b, c, d = x.reshape(batch, channels, height * width).gather(-1, index).view(
            batch, channels, windows, 4).unbind(-1)
        first_row, second_row = a >= b, c >= d
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        upper = top >= bottom
        out = torch.maximum(top, bottom)
        pa, pb, pc, pd = flat.view(flat.shape[0], 1, windows, 4).unbind(-1)
        argmax = torch.where(upper, torch.where(first_row, pa, pb), torch.where(second_row, pc, pd))
        ctx.save_for_backward(argmax.expand(batch, channels, windows))
        ctx.input_shape = x.shape  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (argmax,) = ctx.saved_tensors  # type: ignore[attr-defined]
        batch, channels, height, width = ctx.input_shape  # type: ignore[attr-defined]
        grad_x = grad.new_zeros(batch, channels, height * width)
        grad_x.scatter_add_(-1, argmax, grad.reshape(batch, channels, -1))
        return grad_x.view(batch, channels, height, width), None


def sampled_max(x: Tensor, rows: Tensor, cols: Tensor, kernel_size: int = 2) -> Tensor:
    """The stride-1 max-pooled map at the sampled positions only, without computing the rest of it.

    Equal to ``gather_positions(stride1_max_pool(x, kernel_size), rows, cols)`` (same shapes: ``rows``
    ``(n, Ho)``/``(K, n, Ho)``, ``cols`` likewise, ``n = 1`` or ``N``), at a fraction of the cost: the
    ``k x k`` window under every kept position is gathered from the flattened map in one operation, then
    reduced. For ``k = 2`` without an ensemble axis (training draws) the reduction is elementwise maxima
    with a hand-written gradient (:class:`_SampledMax2x2`); otherwise a stride-``k`` max pool over the
    gathered ``(.., k*Ho, k*Wo)`` windows. Differentiable with respect to ``x``; the gradient reaches each
    window's max, as in max pooling."""
    _check_kernel_size(kernel_size)
    batch, channels, height, width = x.shape
    window_rows = _window_positions(rows, kernel_size, height)  # (.., n, k*Ho)
    window_cols = _window_positions(cols, kernel_size, width)  # (.., n, k*Wo)
    out_rows, out_cols = rows.shape[-1], cols.shape[-1]
    if kernel_size == 2 and rows.dim() == 2:
        flat = (window_rows.view(-1, out_rows, 1, 2, 1) * width  # (n, Ho, Wo, 2, 2): each window's pixels
                + window_cols.view(-1, 1, out_cols, 1, 2))
        flat = flat.reshape(-1, out_rows * out_cols, 4)  # window-major, its 4 pixels row-major
        return _SampledMax2x2.apply(x, flat).view(batch, channels, out_rows, out_cols)
    flat = (window_rows[..., :, None] * width + window_cols[..., None, :]).flatten(-2)  # (.., n, k*Ho*k*Wo)
    lead = rows.shape[:-2]  # () or (K,)
    source = x.reshape(batch, channels, height * width).expand(*lead, batch, channels, height * width)
    index = flat[..., :, None, :].expand(*lead, batch, channels, flat.shape[-1])
    windows = source.gather(-1, index).view(-1, channels, window_rows.shape[-1], window_cols.shape[-1])
    if kernel_size > 1:
        windows = F.max_pool2d(windows, kernel_size)
    return windows.view(*lead, batch, channels, out_rows, out_cols)


def deterministic_downsample(pooled: Tensor) -> Tensor:
    """The official test path on a stride-1 max-pooled map ``P`` of size ``H x W``; returns ceil(H/2) x ceil(W/2).

    ``out[i, j]`` is the mean of ``P[r, c]`` over ``r in {2i-1, 2i}`` and ``c in {2j-1, 2j}``, leaving out
    positions outside ``[0, H-2] x [0, W-2]`` (``[0, 0]`` for a length-1 axis). This is Lasagne's
    ``Pool2DLayer(pool_size=2, stride=2, pad=1, mode='average_exc_pad')`` applied to the border-less
    stride-1 max pool of the official code (for ``kernel_size = 2``, rows ``0..H-2`` of ``P`` are exactly
    that map)."""
    height, width = pooled.shape[-2:]
    kept = pooled[..., : max(height - 1, 1), : max(width - 1, 1)]
    return F.avg_pool2d(kept, 2, stride=2, padding=1, count_include_pad=False)


def s3pool_with_indices(x: Tensor, grid_size: int, *, kernel_size: int = 2, per_sample: bool = False,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One stochastic (training-mode) S3Pool pass that also returns where it sampled.

    Returns ``(out, rows, cols)``: ``out`` ``(N, C, ceil(H/2), ceil(W/2))``; ``rows`` ``(n, ceil(H/2))`` and
    ``cols`` ``(n, ceil(W/2))`` index the stride-1 max-pooled map, ``n = 1`` (shared) or ``N`` (per sample).
    For a visualisation: output pixel ``(i, j)`` of sample ``b`` is the max of the ``kernel_size`` window
    of ``x`` whose top-left corner is ``(rows[b or 0, i], cols[b or 0, j])``."""
    _check_kernel_size(kernel_size)
    batch, _, height, width = x.shape
    rows, cols = sample_grid(height, width, grid_size, batch if per_sample else 1,
                             generator=generator, device=x.device)
    return sampled_max(x, rows, cols, kernel_size), rows, cols


def s3pool(x: Tensor, grid_size: int, training: bool, *, kernel_size: int = 2, per_sample: bool = False,
           eval_mode: str = "deterministic", ensemble_k: int = 4,
           generator: torch.Generator | None = None) -> Tensor:
    """Functional S3Pool on ``x`` ``(N, C, H, W)`` (or ``(C, H, W)``); output ``ceil(H/2) x ceil(W/2)``.

    ``training=True``: stride-1 max pool, then one random draw of rows and columns per strip (shared by
    the batch, or one per sample with ``per_sample=True``). ``training=False`` follows ``eval_mode``:

    - ``"deterministic"``: the official test path, :func:`deterministic_downsample` (the average of the
      candidate positions);
    - ``"uniform"``: the regular pattern, ``stride1_max_pool(x)[..., ::2, ::2]`` (equal to
      ``MaxPool2d(2, ceil_mode=True)`` for ``kernel_size = 2``);
    - ``"ensemble"``: the mean of ``ensemble_k`` stochastic passes (rows for all K passes are drawn before
      the columns, through :func:`sample_grid` with ``n = ensemble_k`` or ``ensemble_k * N``).
    """
    if eval_mode not in EVAL_MODES:
        raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
    _check_grid_size(grid_size)
    if x.dim() == 3:
        return s3pool(x.unsqueeze(0), grid_size, training, kernel_size=kernel_size, per_sample=per_sample,
                      eval_mode=eval_mode, ensemble_k=ensemble_k, generator=generator).squeeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected a (N, C, H, W) or (C, H, W) tensor, got shape {tuple(x.shape)}")
    if training:
        return s3pool_with_indices(x, grid_size, kernel_size=kernel_size, per_sample=per_sample,
                                   generator=generator)[0]
    _check_kernel_size(kernel_size)
    batch, _, height, width = x.shape
    if eval_mode == "uniform":  # every 2nd window of the stride-1 pool
        if kernel_size == 2:  # = a stride-2 pool; ceil_mode keeps the last, partial window of odd sizes
            return F.max_pool2d(x, 2, ceil_mode=True)
        return stride1_max_pool(x, kernel_size)[..., ::2, ::2]
    if eval_mode == "deterministic":
        if kernel_size == 2 and height > 1 and width > 1:  # rows/cols 0..L-2 of the stride-1 map: no pad needed
            pairs = torch.maximum(x[..., :-1, :], x[..., 1:, :])  # two elementwise maxima: cheaper than a pool
            pooled = torch.maximum(pairs[..., :-1], pairs[..., 1:])
            return F.avg_pool2d(pooled, 2, stride=2, padding=1, count_include_pad=False)
        return deterministic_downsample(stride1_max_pool(x, kernel_size))
    if ensemble_k < 1:
        raise ValueError(f"ensemble_k must be >= 1, got {ensemble_k}")
    n = batch if per_sample else 1
    rows, cols = sample_grid(height, width, grid_size, ensemble_k * n, generator=generator, device=x.device)
    passes = sampled_max(x, rows.view(ensemble_k, n, -1), cols.view(ensemble_k, n, -1), kernel_size)
    return passes.mean(0)


class S3Pool2d(nn.Module):
    """S3Pool, pooling with stochastic spatial sampling (arXiv:1611.05138); a drop-in for ``nn.MaxPool2d(2)``.

    Training: ``kernel_size`` max pooling with stride 1, then per strip of ``grid_size`` rows ``grid_size/2``
    rows drawn uniformly without replacement and sorted, and the same for the columns; one draw per forward
    pass shared by the whole batch and all channels (as in the paper's code), or one per sample with
    ``per_sample=True``. The paper calls this stochastic spatial sampling and reads it as a regulariser that
    does implicit data augmentation (random distortions of the feature maps); it adds no parameters.

    Evaluation (``eval_mode``): ``"deterministic"`` is the official test path, a 2x2/stride-2 average
    (pad 1, padding excluded) of the stride-1 max-pooled map, i.e. the average of the candidate positions;
    ``"uniform"`` keeps every 2nd row and column; ``"ensemble"`` averages ``ensemble_k`` stochastic passes.

    Output: ``ceil(H/2) x ceil(W/2)`` in every mode, like ``nn.MaxPool2d(2, ceil_mode=True)``; a last strip
    shorter than ``grid_size`` (``r = L % grid_size`` positions) keeps ``ceil(r/2)`` of them. See the module
    docstring. ``generator`` (optional) makes the draws reproducible; otherwise torch's global RNG is used.
    """

    def __init__(self, kernel_size: int = 2, *, grid_size: int, per_sample: bool = False,
                 eval_mode: str = "deterministic", ensemble_k: int = 4,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        _check_grid_size(grid_size)
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {EVAL_MODES}, got {eval_mode!r}")
        if ensemble_k < 1:
            raise ValueError(f"ensemble_k must be >= 1, got {ensemble_k}")
        self.kernel_size = kernel_size
        self.grid_size = grid_size
        self.per_sample = per_sample
        self.eval_mode = eval_mode
        self.ensemble_k = ensemble_k
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return s3pool(x, self.grid_size, self.training, kernel_size=self.kernel_size,
                      per_sample=self.per_sample, eval_mode=self.eval_mode, ensemble_k=self.ensemble_k,
                      generator=self.generator)

    def forward_with_indices(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A stochastic pass (whatever the mode) returning ``(out, rows, cols)``; see :func:`s3pool_with_indices`."""
        return s3pool_with_indices(x, self.grid_size, kernel_size=self.kernel_size,
                                   per_sample=self.per_sample, generator=self.generator)

    @staticmethod
    def output_size(height: int, width: int) -> tuple[int, int]:
        """The output's spatial size for an ``height x width`` input: ``(ceil(H/2), ceil(W/2))``."""
        return math.ceil(height / 2), math.ceil(width / 2)

    def extra_repr(self) -> str:
        text = (f"kernel_size={self.kernel_size}, grid_size={self.grid_size}, per_sample={self.per_sample}, "
                f"eval_mode={self.eval_mode!r}")
        return text + (f", ensemble_k={self.ensemble_k}" if self.eval_mode == "ensemble" else "")
