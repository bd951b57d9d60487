"""What the procedural datasets share: the splits, one seed stream per split, chunked rendering, the cache.

A procedural dataset module is its generator: ``sample_params(n, rng)`` draws every per-sample value
for a whole split from :func:`split_rng`, ``render(params, size)`` draws a chunk of them, and
:func:`load_generated` caches the generated splits under ``root/<dataset>``. Chunks are rendered in
worker processes (see :func:`plugins.datasets.raster.map_chunks`); each image draws its own noise,
so the chunking never changes the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.api.training import Arrays, cached_splits
from plugins.datasets.raster import map_chunks

SPLITS = ("train", "val", "test")


def split_rng(seed: int, split: str, version: int, *salt: int) -> np.random.Generator:
    """The seed stream of one split: different for every split, seed and generator version (and salt)."""
    return np.random.default_rng([seed, SPLITS.index(split), version, *salt])


def _render_chunk(job: tuple[Callable[[Arrays, int], Any], Arrays, int]) -> Any:
    render, params, size = job
    return render(params, size)


def render_chunks(render: Callable[[Arrays, int], Any], params: Arrays, n: int, size: int, chunk: int,
                  workers: int | None = None) -> list[Any]:
    """``render`` over ``params`` (every array N long) in chunks of ``chunk`` samples, in order.

    ``render`` must be a module-level function (it is sent to worker processes).
    """
    jobs = [(render, {k: v[i:i + chunk] for k, v in params.items()}, size) for i in range(0, n, chunk)]
    return map_chunks(_render_chunk, jobs, workers)


def load_generated(dataset: str, version: int, generate: Callable[..., Arrays], split: str, root: Path | str, *,
                   size: int, num_train: int, num_val: int, num_test: int, seed: int) -> Arrays:
    """The arrays of ``split``, from the cache ``root/<dataset>`` or generated (every split) on a miss.

    ``generate(split, n, size=, seed=)`` makes one split; the cache key holds ``version`` and every argument.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    key = f"v{version}_s{size}_n{num_train}-{num_val}-{num_test}_seed{seed}"
    return cached_splits(Path(root) / dataset, key, split, SPLITS,
                         lambda name: generate(name, counts[name], size=size, seed=seed))
