"""app/images.py: any upload (path, bytes, PIL image, array, sketchpad) → a clean 8-bit RGB image, or a UserError."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.images import image_to_tensor, load_rgb_image
from trainer.errors import UserError

ORIENTATION = 0x0112  # the EXIF tag


def _gradient(width: int = 60, height: int = 40) -> Image.Image:
    """A smooth RGB image with no symmetry (red grows left→right, green top→bottom): JPEG keeps it closely."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], axis=2).round().astype(np.uint8))


def _encode(image: Image.Image, format: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=format, **save)
    return buf.getvalue()


def _rgb(source) -> np.ndarray:
    image = load_rgb_image(source)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    return np.asarray(image).astype(int)


# -- EXIF orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize("orientation, transpose", [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_270),  # "rotate 90° clockwise to display" (phones held upright)
    (8, Image.Transpose.ROTATE_90),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
])
def test_exif_orientation_is_honoured(tmp_path, orientation, transpose):
    source = _gradient(60, 40)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = _encode(source, "JPEG", quality=95, exif=exif)
    expected = np.asarray(source.transpose(transpose)).astype(int)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)  # as the pixels lie in the file
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    for given in (data, path, str(path), Image.open(path)):
        got = _rgb(given)
        assert got.shape == expected.shape
        assert np.abs(got - expected).mean() < 3, "the EXIF orientation was not applied"
    if stored.shape == expected.shape:
        assert np.abs(stored - expected).mean() > 30  # (the check above can tell the two apart)


def test_upright_and_broken_exif_are_left_alone():
    source = _gradient(60, 40)
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    assert _rgb(_encode(source, "JPEG", quality=95, exif=exif)).shape == (40, 60, 3)
    exif[ORIENTATION] = 99  # not a valid orientation: the image is still usable
    assert _rgb(_encode(source, "JPEG", quality=95, exif=exif)).shape == (40, 60, 3)


# -- transparency -------------------------------------------------------------------------------


def test_rgba_is_composited_onto_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = [[0, 128, 255], [255, 64, 0]]
    alpha = rgba[..., 3:4] / 255.0
    expected = np.asarray((10, 200, 30)) * alpha + 255 * (1 - alpha)
    for given in (Image.fromarray(rgba, "RGBA"), rgba, _encode(Image.fromarray(rgba, "RGBA"))):
        got = _rgb(given)
        assert np.abs(got - expected).max() <= 1
    assert _rgb(rgba)[0, 0].tolist() == [255, 255, 255] and _rgb(rgba)[0, 2].tolist() == [10, 200, 30]


def test_grey_with_alpha_is_composited_onto_white():
    la = Image.fromarray(np.stack([np.zeros((1, 3), np.uint8), np.asarray([[0, 128, 255]], np.uint8)], 2), "LA")
    got = _rgb(la)
    assert got[0, 0].tolist() == [255, 255, 255]  # fully transparent black → white
    assert got[0, 2].tolist() == [0, 0, 0]  # opaque black stays black
    assert np.abs(got[0, 1] - 127).max() <= 1  # half transparent black → mid grey
    assert _rgb(_encode(la)).tolist() == got.tolist()


@pytest.mark.parametrize("format", ["PNG", "GIF"])
def test_palette_transparency_is_composited_onto_white(format):
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 10, 200] + [0] * (256 * 3 - 9))
    palette.putdata([0, 1, 2])
    palette.info["transparency"] = 0  # index 0 (black) is transparent
    for given in (palette, _encode(palette, format, transparency=0)):
        assert _rgb(given)[0].tolist() == [[255, 255, 255], [200, 10, 10], [10, 10, 200]]


# -- modes and bit depths -----------------------------------------------------------------------


def test_sixteen_bit_grey_is_scaled_to_8_bit():
    values = np.asarray([[0, 16384, 32768, 65535]], np.uint16)
    expected = (values / 65535 * 255).astype(int)  # [0, 63, 127, 255]
    sixteen = Image.fromarray(values)
    assert sixteen.mode == "I;16"
    for given in (sixteen, _encode(sixteen), values):
        got = _rgb(given)
        assert np.abs(got[..., 0] - expected).max() <= 1, "16-bit values were clipped, not scaled"
        assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    # a 16-bit image that only uses the low range is stretched to full range, not crushed to black
    low = np.asarray([[0, 500, 1000]], np.uint16)
    assert _rgb(Image.fromarray(low))[0, :, 0].tolist() == [0, 127, 255]


def test_float_images_and_arrays_are_scaled_to_8_bit():
    unit = np.asarray([[0.0, 0.5, 1.0]], np.float32)  # already 0..1
    assert _rgb(unit)[0, :, 0].tolist() == [0, 127, 255]
    assert _rgb(Image.fromarray(unit))[0, :, 0].tolist() == [0, 127, 255]  # mode "F"
    wide = np.asarray([[0.0, 500.0, 1000.0]], np.float64)  # any other range: scaled by its maximum
    assert _rgb(wide)[0, :, 0].tolist() == [0, 127, 255]
    assert _rgb(Image.fromarray(wide.astype(np.float32)))[0, :, 0].tolist() == [0, 127, 255]
    assert _rgb(np.asarray([[-0.5, 0.25, 1.0]]))[0, :, 0].tolist() == [0, 63, 255]  # clipped below 0
    assert _rgb(np.asarray([[-5, 100, 300]], np.int64))[0, :, 0].tolist() == [0, 100, 255]  # ints clipped


def test_grey_cmyk_and_palette_become_rgb():
    source = _gradient(8, 6)
    grey = source.convert("L")
    assert (_rgb(grey) == np.asarray(grey).astype(int)[..., None]).all()
    assert (_rgb(source.convert("CMYK")) == np.asarray(source)).all()
    palette = source.convert("P")
    assert (_rgb(palette) == np.asarray(palette.convert("RGB"))).all()
    assert np.abs(_rgb(_encode(source.convert("CMYK"), "JPEG", quality=95)) - np.asarray(source)).mean() < 3
    assert _rgb(_encode(Image.new("1", (4, 2), 1))).tolist() == [[[255] * 3] * 4] * 2


def test_numpy_arrays():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert (_rgb(rgb) == rgb).all()
    assert (_rgb(rgb[..., 0]) == rgb[..., :1]).all()  # H×W grey
    assert (_rgb(rgb[..., :1]) == rgb[..., :1]).all()  # H×W×1 grey
    assert np.abs(_rgb(rgb.astype(np.float32) / 255) - rgb).max() <= 1  # float 0..1
    wide = rgb.astype(np.uint16) * 257  # uint16: scaled by its maximum
    assert np.abs(_rgb(wide) - rgb.astype(int) * 255 // int(rgb.max())).max() <= 1


# -- sources ------------------------------------------------------------------------------------


def test_sketchpad_values():
    drawn = np.zeros((4, 4, 4), np.uint8)
    drawn[1:3, 1:3] = (0, 0, 0, 255)  # a black square on a transparent canvas
    background = np.full((4, 4, 3), 50, np.uint8)
    got = _rgb({"composite": drawn, "background": background, "layers": []})
    assert got[0, 0].tolist() == [255, 255, 255] and got[1, 1].tolist() == [0, 0, 0]  # composite wins, on white
    assert (_rgb({"composite": None, "background": background, "layers": []}) == 50).all()
    for empty in ({"composite": None, "background": None, "layers": []}, {}):
        with pytest.raises(UserError, match="sketchpad is empty"):
            load_rgb_image(empty)


def test_bytes_paths_and_pil_images(tmp_path):
    source = _gradient(9, 5)
    data = _encode(source)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for given in (data, bytearray(data), path, str(path), source, Image.open(path)):
        assert (_rgb(given) == np.asarray(source)).all()


def test_missing_or_no_image_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="No image given"):
        load_rgb_image(None)
    missing = tmp_path / "nowhere.png"
    with pytest.raises(UserError, match=f"No image file at {missing}"):
        load_rgb_image(missing)
    with pytest.raises(UserError, match="No image file at"):
        load_rgb_image(str(tmp_path))  # a folder is not an image file


@pytest.mark.parametrize("data", [
    b"",
    b"hello, this is text",
    b"\x89PNG\r\n\x1a\n this is not really a png",
    _encode(_gradient(), "PNG")[:60],  # truncated
])
def test_corrupt_data_is_a_clear_user_error(tmp_path, data):
    message = r"This file is not a readable image \(\w+\); upload a PNG, JPEG, WebP, BMP or GIF\."
    with pytest.raises(UserError, match=message) as raised:
        load_rgb_image(data)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no traceback chain shown
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(UserError, match=message):
        load_rgb_image(path)


def test_too_many_pixels_is_a_user_error(monkeypatch):
    monkeypatch.setenv("AVSTUDIO_MAX_UPLOAD_MEGAPIXELS", "0.0001")  # 100 pixels
    assert load_rgb_image(Image.new("RGB", (10, 10))).size == (10, 10)
    for too_big in (Image.new("RGB", (11, 10)), np.zeros((101, 1, 3), np.uint8), _encode(Image.new("L", (20, 20)))):
        with pytest.raises(UserError, match=r"Image too large \(\d+×\d+, [\d.]+ megapixels\); keep it under 0.0001 megapixels"):
            load_rgb_image(too_big)


def test_the_default_limits_are_16_megapixels_and_10_megabytes(monkeypatch):
    monkeypatch.delenv("AVSTUDIO_MAX_UPLOAD_MEGAPIXELS", raising=False)
    monkeypatch.delenv("AVSTUDIO_MAX_UPLOAD_MB", raising=False)
    assert load_rgb_image(np.zeros((4000, 4000, 3), np.uint8)).size == (4000, 4000)
    with pytest.raises(UserError, match="keep it under 16 megapixels"):
        load_rgb_image(np.zeros((4001, 4000, 3), np.uint8))
    with pytest.raises(UserError, match=r"File too large \(10.0 MB\); keep uploads under 10 MB"):
        load_rgb_image(b"\x00" * 10_000_001)


@pytest.mark.parametrize("empty", [Image.new("RGB", (0, 5)), Image.new("L", (5, 0)), np.zeros((0, 4, 3), np.uint8)])
def test_zero_size_is_a_user_error(empty):
    with pytest.raises(UserError, match="empty"):
        load_rgb_image(empty)


# -- image_to_tensor ----------------------------------------------------------------------------


def test_image_to_tensor_shape_range_and_channels():
    image = Image.new("RGB", (30, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 10, 30, 20))  # bottom half blue
    tensor = image_to_tensor(image, (16, 8))  # (width, height)
    assert tensor.shape == (1, 3, 8, 16) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert tensor.min() >= 0 and tensor.max() <= 1
    assert tensor[0, 0, 0].tolist() == [1.0] * 16 and tensor[0, 2, 0].tolist() == [0.0] * 16  # red on top
    assert tensor[0, 2, -1].tolist() == [1.0] * 16 and tensor[0, 0, -1].tolist() == [0.0] * 16  # blue below
    assert tensor[0, 1].abs().max() == 0  # no green anywhere


def test_image_to_tensor_matches_the_resized_pixels():
    image = load_rgb_image(np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    tensor = image_to_tensor(image, (32, 24))
    resized = np.asarray(image.resize((32, 24), Image.Resampling.BILINEAR), np.float32) / 255
    assert tensor.shape == (1, 3, 24, 32)
    assert torch.equal(tensor[0], torch.from_numpy(resized).permute(2, 0, 1))
    same = image_to_tensor(image, image.size)
    assert torch.allclose(same[0].permute(1, 2, 0), torch.from_numpy(np.asarray(image, np.float32) / 255))
