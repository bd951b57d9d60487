"""Turn whatever a user uploads or draws into a clean RGB image, or a clear UserError."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFont, ImageOps, UnidentifiedImageError

from app.settings import upload_limits
from trainer.errors import UserError

# What a malformed file makes PIL's decoders raise (bit flips reach zlib, struct and index errors too).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
                 TypeError, ZeroDivisionError, OverflowError, MemoryError, RuntimeError, AttributeError)
UNREADABLE = "This file is not a readable image ({}); upload a PNG, JPEG, WebP, BMP or GIF."
UNREADABLE_UPLOAD = "(unreadable upload)"  # what lenient_upload hands on when an upload has no file at all


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} megapixels"


def check_pixels(width: int, height: int) -> None:
    """Raise UserError when ``width × height`` is over the upload pixel limit (AVSTUDIO_MAX_UPLOAD_MEGAPIXELS)."""
    limit = upload_limits().max_pixels
    if width * height > limit:
        raise UserError(f"Image too large ({width}×{height}, {_megapixels(width * height)}); "
                        f"keep it under {_megapixels(limit)}.")


def check_upload_file(path: str | os.PathLike) -> None:
    """Check an uploaded file against the upload limits without decoding it: its size on disk
    (AVSTUDIO_MAX_UPLOAD_MB), then the pixel count its header declares. Raises UserError when over;
    a file whose header cannot be read passes (decoding it later gives the clear error)."""
    size = os.path.getsize(path)
    check_bytes(size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
    except Image.DecompressionBombError:
        raise UserError(_bomb_message()) from None
    except DECODE_ERRORS:
        return
    check_pixels(width, height)


def check_bytes(size: int) -> None:
    """Raise UserError when a file of ``size`` bytes is over the upload size limit (AVSTUDIO_MAX_UPLOAD_MB)."""
    limit = upload_limits().max_bytes
    if size > limit:
        raise UserError(f"File too large ({size / 1e6:.1f} MB); keep uploads under {limit / 1e6:g} MB.")


def _bomb_message() -> str:
    # PIL raises DecompressionBombError for more than twice its MAX_IMAGE_PIXELS, before our own check
    return (f"Image too large: it declares over {_megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))} (a decompression "
            f"bomb?); keep it under {_megapixels(upload_limits().max_pixels)}.")


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
        check_bytes(len(source))
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        if source == UNREADABLE_UPLOAD:
            raise UserError(UNREADABLE.format("upload"))
        if not Path(source).is_file():
            raise UserError(f"No image file at {source}.")
        check_bytes(os.path.getsize(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit follows
            image = Image.open(source)
        check_pixels(*image.size)  # from the header: before a single pixel is decoded
        image.load()
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(_bomb_message()) from None
    except DECODE_ERRORS as exc:
        raise UserError(UNREADABLE.format(exc.__class__.__name__)) from None
    return image


def load_rgb_image(source: Any) -> Image.Image:
    """Any upload (path, bytes, PIL image, numpy array, sketchpad dict) as an 8-bit RGB PIL image.

    Honours EXIF rotation, composites transparency onto white, converts palette, grayscale,
    CMYK and 16-bit images. Raises UserError with a clear message for anything unreadable.
    """
    image = _open(source)
    check_pixels(image.width, image.height)
    if image.width == 0 or image.height == 0:
        raise UserError("The image is empty (zero width or height).")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not make an otherwise fine image unusable
        pass
    try:
        return _to_rgb(image)
    except DECODE_ERRORS as exc:  # e.g. a LAB TIFF or a mode PIL cannot convert
        raise UserError(UNREADABLE.format(exc.__class__.__name__)) from None


def _to_rgb(image: Image.Image) -> Image.Image:
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


def _upload_paths(payload: Any) -> list[str]:
    """The files of a ``gr.Image`` payload (FileData) or a ``gr.Sketchpad`` / ``gr.ImageEditor`` one (EditorData)."""
    files = [payload, *(getattr(payload, name, None) for name in ("composite", "background"))]
    files += list(getattr(payload, "layers", None) or [])
    return [path for file in files if (path := getattr(file, "path", None))]


def lenient_upload(component: Any) -> Any:
    """Make a ``gr.Image`` (or ``gr.Sketchpad``) hand an oversized or undecodable upload's path to the handler,
    so the user (UI and API) gets :func:`load_rgb_image`'s clear UserError instead of Gradio's generic
    preprocessing failure, and Gradio never decodes a file over the upload limits.

    A ``gr.Image(type="filepath")`` hands the upload as it came: :func:`load_rgb_image` converts every mode
    (transparency onto white, 16-bit, CMYK) better than a plain ``convert("RGB")``.
    """
    strict = component.preprocess

    def preprocess(payload: Any) -> Any:
        paths = _upload_paths(payload) if payload is not None else []
        for path in paths:
            try:
                check_upload_file(path)
            except (UserError, OSError):
                return _handed(payload, path)
        if paths and getattr(component, "type", None) == "filepath" and not hasattr(payload, "layers"):
            return paths[0]
        try:
            return strict(payload)
        except Exception:
            return _handed(payload, paths[0] if paths else UNREADABLE_UPLOAD)

    component.preprocess = preprocess
    return component


def _handed(payload: Any, path: str) -> Any:
    """What the handler gets for a refused upload: the path, shaped like the component's value."""
    return {"composite": path} if hasattr(payload, "layers") else path


def figure_font(size: int) -> Any:
    """DejaVu Sans where the system has it, else Pillow's own font (texts in figures stay ASCII-safe)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
            return ImageFont.load_default()
