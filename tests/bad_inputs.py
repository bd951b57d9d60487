"""A corpus of malformed and unusual image files, generated deterministically (no binary file is committed).

``write_corpus(directory)`` writes every case and returns them; each ``Case`` says whether a demo must
accept the file (``"ok"``: an unusual but valid image), must refuse it with a clear message (``"error"``),
or may do either (``"any"``: a damaged file that a decoder may still read, such as a bit-flipped JPEG).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 14
EXTENSIONS = ("png", "jpg", "jpeg", "gif", "webp", "bmp", "tif")


@dataclass(frozen=True)
class Case:
    name: str  # the file name, extension included
    kind: str  # what it exercises, e.g. "truncated", "bit-flipped", "renamed", "unusual-mode"
    expect: str  # "ok", "error" or "any"
    path: Path


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth, deterministic picture (compresses well, decodes to something non-trivial)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) * 127 // max(width + height - 2, 1))], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header declares ``width × height`` but whose data is a few bytes (a decompression bomb's
    header, or a 0-sized image)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def _png_bomb(width: int, height: int) -> bytes:
    """A real, valid greyscale PNG of ``width × height`` zeros, compressed into a small file."""
    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _gif_declaring(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"
            + b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00" + b"\x02\x02\x44\x01\x00" + b"\x3b")


def _bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 12, 0, 0, 14 + len(info)) + info + b"\x00" * 12


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG with its frame header (SOF0) rewritten to declare ``width × height``."""
    data = bytearray(_encode(_gradient(16, 16), "JPEG", quality=80))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(_gradient(8, 8), "TIFF"))
    # rewrite the ImageWidth (256) and ImageLength (257) entries, stored as SHORT or LONG
    count = struct.unpack_from("<H", data, struct.unpack_from("<I", data, 4)[0])[0]
    start = struct.unpack_from("<I", data, 4)[0] + 2
    for i in range(count):
        tag, kind = struct.unpack_from("<HH", data, start + 12 * i)
        if tag in (256, 257):
            struct.pack_into("<HHII", data, start + 12 * i, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def _exif_rotated(orientation: int, broken: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = exif.tobytes()
    if broken:
        raw = raw[:len(raw) // 2] + b"\xff" * 7
    return _encode(_gradient(40, 24), "JPEG", quality=85, exif=raw)


def _animated(format: str, frames: int = 4, size: tuple[int, int] = (24, 16), **options) -> bytes:
    images = [_gradient(*size).rotate(90 * i) for i in range(frames)]
    return _encode(images[0], format, save_all=True, append_images=images[1:], duration=80, loop=0, **options)


def _palette_with_transparency(format: str) -> bytes:
    image = _gradient(20, 20).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encode(image, format, transparency=0)


def _valid_images() -> list[tuple[str, str, bytes]]:
    """(name, kind, bytes) of unusual but valid images: every one must give a result."""
    rng = np.random.default_rng(SEED)
    grey16 = Image.fromarray((np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80), "I;16")
    floats = Image.fromarray(rng.random((24, 32), dtype=np.float32) * 3.0 - 1.0, "F")
    int32 = Image.fromarray((np.arange(24 * 32, dtype=np.int32).reshape(24, 32) * 1000), "I")
    la = Image.merge("LA", (_gradient(20, 20, "L"), Image.new("L", (20, 20), 128)))
    rgba = _gradient(20, 20, "RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((20, 20)))
    cases = [
        ("one-pixel.png", "tiny", _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
        ("one-pixel.jpg", "tiny", _encode(Image.new("RGB", (1, 1), (10, 200, 10)), "JPEG")),
        ("one-pixel.gif", "tiny", _encode(Image.new("P", (1, 1)), "GIF")),
        ("one-pixel-grey.bmp", "tiny", _encode(Image.new("L", (1, 1), 77), "BMP")),
        ("one-pixel-transparent.png", "tiny", _encode(Image.new("RGBA", (1, 1), (0, 0, 0, 0)), "PNG")),
        ("wide-10000x10.png", "extreme-aspect", _encode(_gradient(10000, 10), "PNG")),
        ("tall-10x10000.png", "extreme-aspect", _encode(_gradient(10, 10000), "PNG")),
        ("line-4000x1.jpg", "extreme-aspect", _encode(_gradient(4000, 1), "JPEG")),
        ("at-the-limit-4000x4000.png", "large", _png_bomb(4000, 4000)),
        ("animated.gif", "animated", _animated("GIF")),
        ("animated.webp", "animated", _animated("WEBP", lossless=True)),
        ("animated-apng.png", "animated", _animated("PNG")),
        ("grey-16bit.png", "16-bit", _encode(grey16, "PNG")),
        ("grey-16bit.tif", "16-bit", _encode(grey16, "TIFF")),
        ("float32.tif", "float", _encode(floats, "TIFF")),
        ("int32.tif", "32-bit", _encode(int32, "TIFF")),
        ("cmyk.jpg", "cmyk", _encode(_gradient(32, 24, "CMYK"), "JPEG")),
        ("cmyk.tif", "cmyk", _encode(_gradient(32, 24, "CMYK"), "TIFF")),
        ("ycbcr.jpg", "colour-space", _encode(_gradient(32, 24, "YCbCr"), "JPEG")),
        ("lab.tif", "colour-space", _encode(Image.merge("LAB", _gradient(32, 24).split()), "TIFF")),
        ("palette-transparency.png", "palette", _palette_with_transparency("PNG")),
        ("palette-transparency.gif", "palette", _palette_with_transparency("GIF")),
        ("palette.bmp", "palette", _encode(_gradient(20, 20).convert("P"), "BMP")),
        ("grey-alpha.png", "grey-alpha", _encode(la, "PNG")),
        ("rgba-gradient-alpha.png", "alpha", _encode(rgba, "PNG")),
        ("rgba.webp", "alpha", _encode(rgba, "WEBP")),
        ("rgba.tif", "alpha", _encode(rgba, "TIFF")),
        ("fully-transparent.png", "alpha", _encode(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG")),
        ("bilevel.png", "1-bit", _encode(_gradient(32, 32, "L").convert("1"), "PNG")),
        ("bilevel.tif", "1-bit", _encode(_gradient(32, 32, "L").convert("1"), "TIFF", compression="group4")),
        ("grey.jpg", "grey", _encode(_gradient(32, 32, "L"), "JPEG")),
        ("progressive.jpg", "jpeg-variant", _encode(_gradient(64, 48), "JPEG", progressive=True)),
        ("jpeg-quality-1.jpg", "jpeg-variant", _encode(_gradient(64, 48), "JPEG", quality=1)),
        ("icc-profile.png", "metadata", _encode(_gradient(16, 16), "PNG", icc_profile=b"\x00" * 128)),
        ("lossless.webp", "webp", _encode(_gradient(32, 32), "WEBP", lossless=True)),
        ("multipage.tif", "multipage", _animated("TIFF")),
        ("lzw.tif", "tiff-variant", _encode(_gradient(32, 32), "TIFF", compression="tiff_lzw")),
        ("image.ico", "other-format", _encode(_gradient(32, 32), "ICO")),
        ("image.tga", "other-format", _encode(_gradient(32, 32), "TGA")),
        ("image.ppm", "other-format", _encode(_gradient(32, 32), "PPM")),
        ("jpeg-named.png", "wrong-extension", _encode(_gradient(32, 32), "JPEG")),
        ("png-named.jpg", "wrong-extension", _encode(_gradient(32, 32), "PNG")),
        ("gif-named.webp", "wrong-extension", _encode(_gradient(32, 32), "GIF")),
        ("no-extension", "wrong-extension", _encode(_gradient(32, 32), "PNG")),
        ("trailing-garbage.png", "trailing-data", _encode(_gradient(32, 32), "PNG") + bytes(range(256)) * 4),
        ("exif-broken.jpg", "exif-rotated", _exif_rotated(6, broken=True)),
    ]
    cases += [(f"exif-orientation-{o}.jpg", "exif-rotated", _exif_rotated(o)) for o in range(1, 9)]
    cases += [(f"exif-orientation-bad-{o}.jpg", "exif-rotated", _exif_rotated(o)) for o in (0, 9, 65535)]
    return cases


def _base_images() -> dict[str, bytes]:
    """One small, valid file per format: what the damaged cases start from."""
    picture = _gradient(48, 32)
    return {
        "png": _encode(picture, "PNG"),
        "jpg": _encode(picture, "JPEG", quality=90),
        "gif": _encode(picture.convert("P"), "GIF"),
        "webp": _encode(picture, "WEBP", quality=80),
        "bmp": _encode(picture, "BMP"),
        "tif": _encode(picture, "TIFF", compression="tiff_lzw"),
    }


def _damaged_images(rng: random.Random) -> list[tuple[str, str, str, bytes]]:
    """(name, kind, expect, bytes): zero bytes, truncated, bit-flipped and header-only files."""
    cases: list[tuple[str, str, str, bytes]] = []
    for ext in EXTENSIONS:
        cases.append((f"zero-bytes.{ext}", "zero-bytes", "error", b""))
    for ext, data in _base_images().items():
        cases.append((f"magic-only.{ext}", "header-only", "error", data[:8]))
        for fraction in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95):
            cut = max(1, int(len(data) * fraction))
            cases.append((f"truncated-{int(fraction * 100)}pct.{ext}", "truncated", "any", data[:cut]))
        cases.append((f"truncated-last-byte.{ext}", "truncated", "any", data[:-1]))
        for i in range(8):
            flipped = bytearray(data)
            for _ in range(1 + i * 3):  # from one flipped bit to 22
                at = rng.randrange(len(flipped))
                flipped[at] ^= 1 << rng.randrange(8)
            cases.append((f"bit-flipped-{i}.{ext}", "bit-flipped", "any", bytes(flipped)))
        header_flip = bytearray(data)
        header_flip[rng.randrange(min(24, len(data)))] ^= 0xFF
        cases.append((f"header-byte-flipped.{ext}", "bit-flipped", "any", bytes(header_flip)))
    return cases


def _not_images(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(name, kind, bytes) of files that are no image at all, named as images: each must be refused."""
    pdf = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] "
           b"/Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    svg = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
           b'<rect width="32" height="32" fill="red"/></svg>\n')
    svg_bomb = (b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000">'
                b'<!DOCTYPE lol [<!ENTITY a "aaaaaaaaaa">]><text>&a;&a;&a;</text></svg>')
    html = b"<!doctype html><html><body><img src=x onerror=alert(1)><h1>not an image</h1></body></html>"
    documents = {
        "text": b"this is a plain text file, not an image\n" * 20,
        "html": html,
        "pdf": pdf,
        "svg": svg,
        "svg-bomb": svg_bomb,
        "json": b'{"image": "no", "width": 100000, "height": 100000}',
        "python": b"import os\nos.system('echo pwned')\n",
        "zip": _zip_bytes(),
        "gzip": zlib.compress(b"\x89PNG" * 1000),
        "elf": b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
        "utf16-text": "not an image ✓".encode("utf-16"),
        "null-bytes": b"\x00" * 1024,
        "ff-bytes": b"\xff" * 1024,
    }
    cases = []
    for kind, data in documents.items():
        for ext in ("png", "jpg", "webp"):
            cases.append((f"{kind}-renamed.{ext}", "renamed", data))
    cases.append(("drawing.svg", "svg", svg))
    for i in range(24):
        size = [1, 2, 7, 64, 512, 4096, 65536, 300_000][i % 8]
        data = bytes(rng.getrandbits(8) for _ in range(min(size, 4096))) * max(1, size // 4096)
        cases.append((f"random-{i}-{size}b.{EXTENSIONS[i % len(EXTENSIONS)]}", "random-bytes", data[:size]))
    # random bytes behind a real signature: a decoder gets past the magic number
    for i, magic in enumerate([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 ",
                               b"BM", b"II*\x00", b"MM\x00*"]):
        data = magic + bytes(rng.getrandbits(8) for _ in range(2048))
        cases.append((f"magic-then-random-{i}.{EXTENSIONS[i % len(EXTENSIONS)]}", "random-bytes", data))
    return cases


def _zip_bytes() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("image.png", date_time=(2024, 1, 1, 0, 0, 0)), b"not really")
    return buffer.getvalue()


def _too_large() -> list[tuple[str, str, bytes]]:
    """(name, kind, bytes) over the upload limits: declared sizes far beyond what the bytes hold, real
    decompression bombs, zero-sized images. Each must be refused with a clear message."""
    cases = [
        ("declares-100000x100000.png", "huge-declared", _png_declaring(100_000, 100_000)),
        ("declares-2147483647x1.png", "huge-declared", _png_declaring(2**31 - 1, 1)),
        ("declares-5000x5000.png", "huge-declared", _png_declaring(5000, 5000)),
        ("declares-0x0.png", "zero-sized", _png_declaring(0, 0)),
        ("declares-0x10.png", "zero-sized", _png_declaring(0, 10)),
        ("declares-65535x65535.gif", "huge-declared", _gif_declaring(65535, 65535)),
        ("declares-65535x65535.jpg", "huge-declared", _jpeg_declaring(65535, 65535)),
        ("declares-0x0.jpg", "zero-sized", _jpeg_declaring(0, 0)),
        ("declares-100000x100000.bmp", "huge-declared", _bmp_declaring(100_000, 100_000)),
        ("declares-100000x100000.tif", "huge-declared", _tiff_declaring(100_000, 100_000)),
        ("bomb-5000x5000.png", "decompression-bomb", _png_bomb(5000, 5000)),
        ("bomb-20000x20000.png", "decompression-bomb", _png_bomb(20000, 20000)),
        ("bomb-16001x1000.png", "decompression-bomb", _png_bomb(16001, 1000)),
    ]
    return cases


OVERSIZED_BYTES = 11_000_000  # over the default 10 MB upload limit


def _oversized_file() -> list[tuple[str, str, bytes]]:
    rng = np.random.default_rng(SEED)
    return [("eleven-megabytes.png", "over-size-limit", rng.integers(0, 256, OVERSIZED_BYTES, np.uint8).tobytes())]


def write_corpus(directory: Path, include_oversized: bool = True) -> list[Case]:
    """Write the whole corpus into ``directory`` (created if needed); the same bytes on every call."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    entries: list[tuple[str, str, str, bytes]] = [(n, k, "ok", d) for n, k, d in _valid_images()]
    entries += _damaged_images(rng)
    entries += [(n, k, "error", d) for n, k, d in _not_images(rng)]
    entries += [(n, k, "error", d) for n, k, d in _too_large()]
    if include_oversized:
        entries += [(n, k, "error", d) for n, k, d in _oversized_file()]
    cases = []
    for name, kind, expect, data in entries:
        path = directory / name
        path.write_bytes(data)
        cases.append(Case(name, kind, expect, path))
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "corpus file names must be unique"
    return cases

