"""The S3Pool tab: the distortion S3Pool makes (in pixel space and on the shipped network's feature maps),
the predictions of the shipped max-pool and S3Pool networks, and the committed benchmark's figures.

The handlers (:meth:`S3PoolDemo.augment`, :meth:`S3PoolDemo.features`, :meth:`S3PoolDemo.predict`,
:meth:`S3PoolDemo.analyse`) and :func:`plugins.s3pool.report.benchmark_data` are plain functions returning dicts (images as
H×W×3 uint8 arrays), so tests and scripts use them directly; :func:`plugins.s3pool.tab.build_demo` wraps them for Gradio.
Checkpoints are loaded inside the handlers (a ``ModelCache``), never at start-up.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch

from app.api import DemoContext, UserError
from app.api.demo import ModelCache, image_to_tensor, load_rgb_image, viridis
from plugins.s3pool.layer import (
    S3Pool2d,
    s3pool,
    sample_grid,
    sampled_max,
)
from plugins.s3pool.model import PoolingNet, net_from_checkpoint

MAX_NET = "resnet-max"  # the shipped max-pool ResNet (checkpoint slot resnet-*)
S3POOL_NET = "resnet-s3pool"  # the shipped S3Pool ResNet
NETWORKS = (MAX_NET, S3POOL_NET)
INPUT_SIZE = (32, 32)  # (height, width) of the pixel-space panel: the networks' input (shapes, CIFAR)
# The grid size the control opens on: benchmarks/results/s3pool.json ("setup": "default_grid" [16, 8],
# the paper's 16-8 at 32×32) trains S3Pool with 16 in the first layer; its "grid_sweep" compares others.
RECOMMENDED_GRID = 16
GRID_CHOICES = tuple(range(2, 33, 2))  # even grid sizes 2..32
DRAWS = 4  # random draws shown side by side
FEATURE_DRAWS = 3  # random draws of the network's first S3Pool layer
FEATURE_CHANNELS = 8  # channels shown in the feature-map grid
# The draws and the feature maps are each sent as one picture at their real size (the browser enlarges it
# with crisp pixels): one file per panel instead of one per tile, which the server (and a visitor's browser)
# handles once per request instead of ten times. These are the heights they are drawn at.
DRAWS_PX = 150
FEATURES_PX = 300
GAP_PX = 1  # white pixels between the tiles of a picture


def how_to_train(name: str) -> str:
    """The message shown instead of a missing network: the command that trains it and where it goes."""
    downsample = name.split("-", 1)[1] if "-" in name else "s3pool"
    return (f"No `{name}` checkpoint yet. Train it (CPU: a few minutes) with:\n\n"
            f"    avstudio train s3pool classifier --set downsample={downsample}\n\n"
            f"then promote the run's `{name}` checkpoint in the Runs tab (`avstudio runs promote RUN_ID`) "
            f"or place `{name}.safetensors` in assets/s3pool/. See docs/s3pool.md.")


def check_grid_size(grid_size: Any) -> int:
    """An even grid size in 2..32 (a UserError naming the range otherwise)."""
    try:
        value = float(grid_size)
    except (TypeError, ValueError):
        value = float("nan")
    if not value.is_integer() or int(value) not in GRID_CHOICES:
        raise UserError(f"The grid size must be an even number from 2 to 32, got {grid_size!r}.")
    return int(value)


def second_grid(grid_size: int) -> int:
    """The second layer's grid: half the first, kept even (the paper's 16-8)."""
    return max(2, grid_size // 4 * 2)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A 3×H×W (or 1×3×H×W) float tensor in [0, 1] as an H×W×3 uint8 array."""
    image = image.detach().float().cpu().reshape(-1, *image.shape[-2:])
    return image.permute(1, 2, 0).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def tile(images: list[np.ndarray] | list[list[np.ndarray]], gap: int = GAP_PX) -> np.ndarray:
    """Equal-size H×W×3 uint8 tiles as one picture: a list is one row, a list of lists is rows of tiles,
    separated by ``gap`` white pixels."""
    rows = [images] if isinstance(images[0], np.ndarray) else images
    height, width = rows[0][0].shape[:2]
    columns = max(len(row) for row in rows)
    picture = np.full((len(rows) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for k, image in enumerate(row):
            y, x = r * (height + gap), k * (width + gap)
            picture[y: y + height, x: x + width] = image
    return picture


def _fresh_seed(seed: int | None) -> int:
    return secrets.randbits(31) if seed is None else int(seed)


class S3PoolDemo:
    """Answers the tab's requests; networks are loaded in the handlers and cached with their checkpoint."""

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        self._nets: ModelCache[PoolingNet] = ModelCache(ctx, missing=how_to_train)

    # -- networks ----------------------------------------------------------------------------

    def net(self, name: str) -> PoolingNet:
        """The network of checkpoint ``name`` in eval mode, or a UserError saying how to train it."""

        def build(checkpoint: Any) -> PoolingNet:
            try:
                return net_from_checkpoint(checkpoint, self.ctx.device).eval()
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise UserError(f"Checkpoint `{name}` is not an S3Pool-plugin network "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0]}). "
                                + how_to_train(name).split("\n", 1)[1].strip()) from None

        return self._nets.get(name, build=build)

    @staticmethod
    def labels(net: PoolingNet) -> list[str]:
        labels = list(net.config.labels)
        return labels + [f"class {i}" for i in range(len(labels), net.config.num_classes)]

    # -- handlers ----------------------------------------------------------------------------

    @torch.inference_mode()
    def augment(self, image: Any, grid_size: int = RECOMMENDED_GRID, layers: int = 1, draws: int = DRAWS,
                seed: int | None = None) -> dict[str, Any]:
        """The image itself through S3Pool in pixel space (``layers`` 1 or 2): ``draws`` random draws, the
        deterministic (test) path and plain 2×2 max pooling, at the output resolution, and all of them in one
        picture (``strip``)."""
        grid_size = check_grid_size(grid_size)
        if layers not in (1, 2) and str(layers).strip() not in ("1", "2"):
            raise UserError(f"S3Pool layers must be 1 or 2, got {str(layers)[:40]!r}.")
        layers, draws, seed = int(layers), max(1, int(draws)), _fresh_seed(seed)
        h, w = INPUT_SIZE
        x = image_to_tensor(load_rgb_image(image), (w, h))
        grids = [grid_size, second_grid(grid_size)][:layers]
        generator = torch.Generator().manual_seed(seed)
        y = x.expand(draws, *x.shape[1:])  # every draw at once: one draw per "sample" of this batch
        layer_rows, layer_cols = [], []
        for g in grids:
            r, c = sample_grid(y.shape[-2], y.shape[-1], g, draws, generator=generator)
            y = sampled_max(y, r, c)
            layer_rows.append(r.tolist())
            layer_cols.append(c.tolist())
        outs = [to_uint8(y[i: i + 1]) for i in range(draws)]
        rows = [[layer[i] for layer in layer_rows] for i in range(draws)]
        cols = [[layer[i] for layer in layer_cols] for i in range(draws)]
        det = maxed = x
        for _ in grids:
            det = s3pool(det, 2, False, eval_mode="deterministic")
            maxed = torch.nn.functional.max_pool2d(maxed, 2, ceil_mode=True)
        deterministic, max_pool = to_uint8(det), to_uint8(maxed)
        oh, ow = deterministic.shape[:2]
        return {
            "model_input": to_uint8(x),  # H×W×3 uint8: the resized image S3Pool sees
            "input_resolution": (h, w),
            "output_resolution": (oh, ow),
            "grid_sizes": grids,
            "seed": seed,
            "draws": outs,  # each oh×ow×3 uint8
            "deterministic": deterministic,
            "max_pool": max_pool,
            "rows": rows,  # [draw][layer] kept rows (of the stride-1 max-pooled map)
            "cols": cols,
            "strip": tile([*outs, deterministic, max_pool]),  # one picture: the draws, deterministic, max pool
        }

    def _net_or_error(self, name: str) -> PoolingNet | UserError:
        try:
            return self.net(name)
        except UserError as exc:
            return exc

    @torch.inference_mode()
    def features(self, image: Any, draws: int = FEATURE_DRAWS, channels: int = FEATURE_CHANNELS,
                 seed: int | None = None) -> dict[str, Any]:
        """The shipped S3Pool network's first pooled feature maps: ``draws`` random draws of only its first
        S3Pool layer (the rest of the network stays in eval mode) and the deterministic path; the
        ``channels`` most active channels as a normalised grid. A missing network gives ``message``."""
        return self._features(load_rgb_image(image), self._net_or_error(S3POOL_NET), draws, channels, seed)[0]

    def _features(self, pil: Any, net: PoolingNet | UserError, draws: int, channels: int,
                  seed: int | None) -> tuple[dict[str, Any], torch.Tensor | None]:
        """:meth:`features`, and the network's own first pooled map when it pooled deterministically (the
        rest of its forward pass can start there: :meth:`_predict`)."""
        if isinstance(net, UserError):
            return {"message": str(net), "picture": None, "draws": [], "deterministic": None}, None
        pool = net.pools[0]
        if not isinstance(pool, S3Pool2d):
            return {"message": f"Checkpoint `{S3POOL_NET}` downsamples with {net.config.downsample!r}, not S3Pool. "
                               + how_to_train(S3POOL_NET).split("\n", 1)[1].strip(),
                    "picture": None, "draws": [], "deterministic": None}, None
        seed = _fresh_seed(seed)
        h, w = net.config.input_size
        x = image_to_tensor(pil, (w, h)).to(next(net.parameters()).device)
        stage1 = net.stages[0](net.stem((x - net.mean) / net.std))  # eval mode: BatchNorm's running stats
        generator = torch.Generator().manual_seed(seed)
        draws = max(1, int(draws))
        rows, cols = sample_grid(stage1.shape[-2], stage1.shape[-1], pool.grid_size, draws, generator=generator)
        maps = list(sampled_max(stage1.cpu().expand(draws, *stage1.shape[1:]), rows, cols, pool.kernel_size).numpy())
        pooled = s3pool(stage1, pool.grid_size, False, kernel_size=pool.kernel_size, eval_mode="deterministic")
        deterministic = pooled[0].cpu().numpy()
        order = np.argsort(-deterministic.mean((1, 2)), kind="stable")[: max(1, int(channels))]
        stack = np.stack([*maps, deterministic])[:, order]  # (draws + 1, C', H, W)
        lo, hi = stack.min((0, 2, 3), keepdims=True), stack.max((0, 2, 3), keepdims=True)
        coloured = viridis((stack - lo) / np.maximum(hi - lo, 1e-8))  # each channel over all draws: (D, C', H, W, 3)
        lines = [tile(list(draw)) for draw in coloured]  # one row per draw, channels side by side
        mh, mw = deterministic.shape[1:]
        return {
            "message": None,
            "grid_size": pool.grid_size,
            "channels": [int(c) for c in order],  # the channels shown, most active first
            "map_resolution": (mh, mw),
            "input_resolution": (h, w),
            "seed": seed,
            "draws": lines[:-1],  # uint8 rows of channels
            "deterministic": lines[-1],
            "maps": {"draws": [m[order] for m in maps], "deterministic": deterministic[order]},  # raw C'×H×W
            "picture": tile([[line] for line in lines]),  # the rows one under another: draws, then deterministic
        }, (pooled if pool.eval_mode == "deterministic" else None)

    @torch.inference_mode()
    def predict(self, image: Any) -> dict[str, Any]:
        """Top-3 and the class distribution of each shipped network (max pool, S3Pool); a missing or
        unusable checkpoint gives that network a ``message`` saying how to train it instead."""
        return self._predict(load_rgb_image(image), {name: self._net_or_error(name) for name in NETWORKS})

    def _predict(self, pil: Any, nets: dict[str, PoolingNet | UserError],
                 s3pool_pooled: torch.Tensor | None = None) -> dict[str, Any]:
        """:meth:`predict` with the networks looked up; ``s3pool_pooled``: the S3Pool network's first pooled
        map of this image, when :meth:`_features` computed it (its forward pass goes on from there)."""
        out: dict[str, Any] = {}
        for name, net in nets.items():
            if isinstance(net, UserError):
                out[name] = {"message": str(net), "top3": None, "probabilities": None}
                continue
            if name == S3POOL_NET and s3pool_pooled is not None:
                logits = net.classify_from(s3pool_pooled, 1)
            else:
                h, w = net.config.input_size
                logits = net(image_to_tensor(pil, (w, h)).to(next(net.parameters()).device))
            probs = logits.softmax(1)[0].cpu()
            labels = self.labels(net)
            values, idx = probs.topk(min(3, len(probs)))
            out[name] = {
                "message": None,
                "top3": {labels[i]: round(float(v), 4) for v, i in zip(values, idx.tolist(), strict=True)},
                "probabilities": {label: float(p) for label, p in zip(labels, probs.tolist(), strict=True)},
            }
        return out

    def analyse(self, image: Any, grid_size: int = RECOMMENDED_GRID, layers: int = 1,
                seed: int | None = None) -> dict[str, Any]:
        """All three panels for one image (one bad-image error, before anything runs)."""
        pil = load_rgb_image(image)
        seed = _fresh_seed(seed)
        augment = self.augment(pil, grid_size, layers, seed=seed)
        nets = {name: self._net_or_error(name) for name in NETWORKS}  # each looked up once per request
        with torch.inference_mode():
            features, pooled = self._features(pil, nets[S3POOL_NET], FEATURE_DRAWS, FEATURE_CHANNELS, seed)
            return {"augment": augment, "features": features, "predict": self._predict(pil, nets, pooled)}
