"""Preview grids of dataset samples, for the Datasets tab and ``avstudio datasets show NAME --out grid.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image


def preview_images(dataset: Any, n: int = 64) -> torch.Tensor:
    """The first ``n`` images of ``dataset`` as float N×3×H×W in [0, 1] (grey images repeated to RGB)."""
    count = min(n, len(dataset))
    if count == 0:
        raise ValueError("the dataset is empty: nothing to preview")
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        batch = images[:count].float() / 255
    else:
        batch = torch.stack([dataset[i][0] for i in range(count)])
    return batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch


def _grid(dataset: Any, n: int, nrow: int, upscale: int) -> torch.Tensor:
    grid = make_grid(preview_images(dataset, n), nrow=nrow, padding=2, pad_value=1.0)
    if upscale > 1:
        grid = grid.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)  # crisp pixels
    return grid


def save_preview_grid(dataset: Any, path: Path | str, n: int = 64, nrow: int = 8, upscale: int = 2) -> Path:
    """Write a PNG grid of the first ``n`` images (``nrow`` per row, each pixel ``upscale``×) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(_grid(dataset, n, nrow, upscale), path)
    return path


def preview_grid_image(dataset: Any, n: int = 64, nrow: int = 8, upscale: int = 2) -> Image.Image:
    """The same grid as :func:`save_preview_grid`, as a PIL image (for the UI)."""
    grid = _grid(dataset, n, nrow, upscale)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)
