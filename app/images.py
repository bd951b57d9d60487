"""Turn whatever a user uploads or draws into a clean RGB image, or a clear UserError."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trainer.errors import UserError

MAX_PIXELS = 40_000_000  # refuse decompression bombs before they eat the server's memory


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype == np.uint16 or array.dtype.kind == "f" and array.max(initial=0) > 1.0:
        array = (array.astype(np.float64) / max(float(array.max()), 1.0) * 255.0).astype(np.uint8)
    elif array.dtype.kind == "f":
        array = (np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def _open(source: Any) -> Image.Image:
    if source is None:
        raise UserError("No image given: upload one, draw one, or click an example.")
    if isinstance(source, dict):  # gr.ImageEditor / Sketchpad value
        layers = [source.get("composite"), source.get("background")]
        source = next((layer for layer in layers if layer is not None), None)
        if source is None:
            raise UserError("The sketchpad is empty: draw something first.")
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise UserError(f"No image file at {source}.")
    try:
        image = Image.open(source)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"This file is not a readable image ({exc.__class__.__name__}); "
                        "upload a PNG, JPEG, WebP, BMP or GIF.") from None
    return image


def load_rgb_image(source: Any) -> Image.Image:
    """Any upload (path, bytes, PIL image, numpy array, sketchpad dict) as an 8-bit RGB PIL image.

    Honours EXIF rotation, composites transparency onto white, converts palette, grayscale,
    CMYK and 16-bit images. Raises UserError with a clear message for anything unreadable.
    """
    image = _open(source)
    if image.width * image.height > MAX_PIXELS:
        raise UserError(f"Image too large ({image.width}×{image.height}); keep it under 40 megapixels.")
    if image.width == 0 or image.height == 0:
        raise UserError("The image is empty (zero width or height).")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not make an otherwise fine image unusable
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _from_array(np.asarray(image))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> Any:
    """An RGB PIL image resized to ``size`` (width, height) as a float tensor 1×3×H×W in [0, 1]."""
    import torch

    resized = image.resize(size, Image.Resampling.BILINEAR)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def lenient_upload(component: Any) -> Any:
    """Make a ``gr.Image`` hand an undecodable upload's path to the handler, so the user (UI and API) gets
    :func:`load_rgb_image`'s clear UserError instead of Gradio's generic preprocessing failure."""
    strict = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return strict(payload)
        except Exception:
            return getattr(payload, "path", None) or "(unreadable upload)"

    component.preprocess = preprocess
    return component
