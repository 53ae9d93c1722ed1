"""Decoding every image mode, refusing bad or huge inputs, and encoding round trips.

Test images are made on the fly with Pillow; 16-bit colour PNGs (which Pillow cannot write) and
oversized headers are written chunk by chunk.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from seedvr_local.image_io import (
    DecodedImage,
    ImageError,
    ImageTooLargeError,
    InvalidImageError,
    content_type_for,
    decode_image,
    encode_image,
    from_pil,
    to_pil,
    to_uint8,
    upscale_alpha,
)

RNG = np.random.default_rng(0)


def _save(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pixels(height: int, width: int, channels: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def _chw(pixels: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / scale).permute(2, 0, 1)


# --- crafted PNGs -------------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _filter_rows(rows: np.ndarray, bpp: int, rng: np.random.Generator) -> bytes:
    """PNG-filter each scanline (`[H, row_bytes]` uint8) with a random filter type, as an encoder would."""
    out = []
    previous = np.zeros(rows.shape[1], dtype=np.int64)
    for row in rows.astype(np.int64):
        left = np.concatenate([np.zeros(bpp, dtype=np.int64), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, dtype=np.int64), previous[:-bpp]])
        kind = int(rng.integers(0, 5))
        if kind == 0:
            predictor = np.zeros_like(row)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = previous
        elif kind == 3:
            predictor = (left + previous) // 2
        else:  # Paeth
            estimate = left + previous - up_left
            pa, pb, pc = abs(estimate - left), abs(estimate - previous), abs(estimate - up_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, up_left))
        out.append(bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes())
        previous = row
    return b"".join(out)


# Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]


def _png16(values: np.ndarray, color_type: int, interlaced: bool = False, extra: bytes = b"") -> bytes:
    """A 16-bit PNG of `[H, W, C]` uint16 values (colour type 0, 2, 4 or 6), randomly filtered."""
    height, width, channels = values.shape
    bpp = 2 * channels
    rng = np.random.default_rng(1)
    big_endian = values.astype(">u2").view(np.uint8).reshape(height, width * bpp)
    if interlaced:
        parts = []
        for row0, col0, row_step, col_step in _ADAM7:
            sub = big_endian.reshape(height, width, bpp)[row0::row_step, col0::col_step]
            if sub.size:
                parts.append(_filter_rows(sub.reshape(sub.shape[0], -1), bpp, rng))
        raw = b"".join(parts)
    else:
        raw = _filter_rows(big_endian, bpp, rng)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, int(interlaced))
    chunks = _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming `width x height` RGB, with one byte of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0")) + _chunk(b"IEND", b"")


def _values16(height: int, width: int, channels: int) -> np.ndarray:
    values = RNG.integers(0, 65536, size=(height, width, channels), dtype=np.uint16)
    values[0, 0] = 0x12FF  # low and high bytes differ, so dropping either shows
    values[0, 1] = 0x00FF
    return values


# --- decoding -----------------------------------------------------------------------------------------


def test_rgb_png_is_exact():
    pixels = _pixels(7, 9, 3)
    decoded = decode_image(_save(Image.fromarray(pixels, "RGB")))
    assert isinstance(decoded, DecodedImage)
    assert (decoded.width, decoded.height, decoded.format) == (9, 7, "PNG")
    assert decoded.rgb.dtype == torch.float32 and decoded.rgb.shape == (3, 7, 9)
    assert torch.equal(decoded.rgb, _chw(pixels))
    assert decoded.alpha is None


def test_rgba_png_splits_alpha():
    pixels = _pixels(6, 5, 4)
    decoded = decode_image(_save(Image.fromarray(pixels, "RGBA")))
    assert torch.equal(decoded.rgb, _chw(pixels[..., :3]))
    assert torch.equal(decoded.alpha, _chw(pixels[..., 3:]))


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_greyscale_becomes_rgb(mode):
    pixels = _pixels(5, 6, len(mode))
    decoded = decode_image(_save(Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)))
    grey = _chw(pixels[..., :1])
    assert torch.equal(decoded.rgb, grey.expand(3, -1, -1))
    if mode == "LA":
        assert torch.equal(decoded.alpha, _chw(pixels[..., 1:]))
    else:
        assert decoded.alpha is None


def test_16bit_greyscale_png_keeps_16_bits():
    values = _values16(4, 6, 1)
    image = Image.fromarray(values[..., 0])
    assert image.mode == "I;16"
    decoded = decode_image(_save(image))
    assert torch.equal(decoded.rgb, _chw(values, 65535.0).expand(3, -1, -1))


@pytest.mark.parametrize("color_type, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
@pytest.mark.parametrize("interlaced", [False, True])
def test_16bit_pngs_keep_16_bits(color_type, channels, interlaced):
    values = _values16(11, 13, channels)
    decoded = decode_image(_png16(values, color_type, interlaced))
    expected = _chw(values, 65535.0)
    colour, alpha = (expected[:3], expected[3:]) if channels in (3, 4) else (expected[:1], expected[1:])
    assert torch.equal(decoded.rgb, colour.expand(3, -1, -1))
    if channels in (2, 4):
        assert torch.equal(decoded.alpha, alpha)
    else:
        assert decoded.alpha is None


def test_16bit_rgb_png_colour_key_becomes_alpha():
    values = _values16(3, 4, 3)
    key = values[1, 2]
    transparency = _chunk(b"tRNS", struct.pack(">HHH", *key.tolist()))
    decoded = decode_image(_png16(values, 2, extra=transparency))
    expected = np.any(values != key, axis=-1).astype(np.float32)
    assert torch.equal(decoded.alpha[0], torch.from_numpy(expected))


def test_palette_png_with_transparency_gets_alpha():
    indices = RNG.integers(0, 4, size=(6, 8), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]
    image.putpalette(palette)
    decoded = decode_image(_save(image, transparency=2))  # index 2 (blue) fully transparent
    colours = np.array(palette, dtype=np.uint8).reshape(4, 3)[indices]
    assert torch.equal(decoded.rgb, _chw(colours))
    assert torch.equal(decoded.alpha[0], torch.from_numpy((indices != 2).astype(np.float32)))


def test_palette_png_without_transparency_has_no_alpha():
    image = Image.fromarray(_pixels(6, 8, 3), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    decoded = decode_image(_save(image))
    assert decoded.alpha is None
    assert torch.equal(decoded.rgb, _chw(np.array(image.convert("RGB"))))


def test_cmyk_jpeg_becomes_rgb():
    image = Image.fromarray(_pixels(16, 16, 4), "CMYK")
    data = _save(image, "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.rgb.shape == (3, 16, 16) and decoded.format == "JPEG"
    assert torch.equal(decoded.rgb, _chw(np.array(Image.open(io.BytesIO(data)).convert("RGB"))))


def _with_orientation(pixels: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(pixels, "RGB"), fmt, exif=exif)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    data = _with_orientation(_pixels(5, 8, 3), orientation, "PNG")
    decoded = decode_image(data)
    upright = np.array(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    assert (decoded.height, decoded.width) == upright.shape[:2]
    assert torch.equal(decoded.rgb, _chw(upright))


def test_rotated_exif_jpeg_is_turned_upright():
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255  # left half white, right half black
    decoded = decode_image(_with_orientation(pixels, 6, "JPEG"))  # "rotate 90 degrees clockwise to view"
    assert (decoded.width, decoded.height) == (16, 32)
    assert decoded.rgb[:, :12].mean() > 0.9 and decoded.rgb[:, 20:].mean() < 0.1  # white on top now


def test_pixel_cap_is_checked_from_the_header(monkeypatch):
    # 360 MB of RGB if it were ever allocated; between Pillow's bomb warning and error thresholds.
    data = _png_header_only(12_000, 10_000)
    decoded: list[tuple[int, int]] = []  # Pillow decodes pixels in Image.load: the refusal must come before it
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda image: decoded.append(image.size) or real_load(image))
    with pytest.raises(ImageTooLargeError, match="12000x10000"):
        decode_image(data, max_pixels=4096 * 4096)
    assert decoded == []
    # Under the cap the same (truncated) file gets as far as decoding, and fails there.
    with pytest.raises(InvalidImageError):
        decode_image(_png_header_only(64, 64), max_pixels=4096)


def test_pillow_decompression_bomb_limit_is_the_same_error():
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header_only(100_000, 100_000))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"definitely not an image",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        _save(Image.fromarray(_pixels(32, 32, 3), "RGB"))[:120],  # truncated
        _save(Image.fromarray(_pixels(32, 32, 3), "RGB"), "JPEG")[:300],
    ],
    ids=["empty", "text", "broken-header", "truncated-png", "truncated-jpeg"],
)
def test_garbage_is_an_invalid_image(data):
    with pytest.raises(InvalidImageError) as info:
        decode_image(data)
    assert isinstance(info.value, ImageError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value) and str(info.value)


def test_formats_outside_the_allow_list_are_refused():
    with pytest.raises(InvalidImageError, match="supported format"):
        decode_image(_save(Image.fromarray(_pixels(4, 4, 3), "RGB"), "PPM"))


# --- encoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_alpha", [False, True])
def test_png_round_trip_is_lossless(with_alpha):
    pixels = _pixels(9, 7, 4)
    rgb, alpha = _chw(pixels[..., :3]), _chw(pixels[..., 3:]) if with_alpha else None
    decoded = decode_image(encode_image(rgb, alpha, "png"))
    assert torch.equal(decoded.rgb, rgb)
    assert (decoded.alpha is not None) == with_alpha
    if with_alpha:
        assert torch.equal(decoded.alpha, alpha)


@pytest.mark.parametrize("fmt", ["jpg", "jpeg", "webp", "JPG", ".webp"])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_lossy_round_trips(fmt, with_alpha):
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 32), indexing="ij")
    rgb = torch.stack([ys, xs, (ys + xs) / 2])  # smooth, so lossy codecs keep it close
    alpha = (xs > 0.5).float()[None] if with_alpha else None
    decoded = decode_image(encode_image(rgb, alpha, fmt, quality=95))
    assert (decoded.width, decoded.height) == (32, 24)
    assert (decoded.rgb - rgb).abs().mean() < 0.01
    keeps_alpha = "webp" in fmt.lower()
    assert (decoded.alpha is not None) == (with_alpha and keeps_alpha)
    if with_alpha and keeps_alpha:
        assert (decoded.alpha - alpha).abs().max() < 0.05


def test_encode_accepts_uint8_and_checks_its_arguments():
    pixels = _pixels(4, 5, 3)
    rgb = torch.from_numpy(pixels).permute(2, 0, 1)
    assert torch.equal(decode_image(encode_image(rgb, None, "png")).rgb, _chw(pixels))
    with pytest.raises(ValueError, match="png, jpg, jpeg, webp"):
        encode_image(rgb, None, "gif")
    with pytest.raises(ValueError, match="quality"):
        encode_image(rgb, None, "jpg", quality=0)
    with pytest.raises(ValueError, match="alpha"):
        encode_image(rgb, torch.zeros(1, 3, 3), "png")


def test_content_types():
    assert content_type_for("png") == "image/png"
    assert content_type_for("jpg") == content_type_for("jpeg") == "image/jpeg"
    assert content_type_for("webp") == "image/webp"
    with pytest.raises(ValueError):
        content_type_for("bmp")


def test_to_uint8_clamps_and_rounds_half_to_even():
    x = torch.tensor([-0.5, 0.5 / 255, 1.5 / 255, 2.5 / 255, 127.5 / 255, 1.2])
    assert to_uint8(x).tolist() == [0, 0, 2, 2, 128, 255]
    assert to_uint8(x).dtype == torch.uint8
    same = torch.tensor([3, 200], dtype=torch.uint8)
    assert to_uint8(same) is same


def test_upscale_alpha():
    alpha = torch.zeros(1, 6, 8)
    alpha[..., 4:] = 1.0
    out = upscale_alpha(alpha, (12, 16))
    assert out.shape == (1, 12, 16)
    assert out.min() >= 0 and out.max() <= 1  # bicubic overshoot clamped
    assert out[..., :6].max() < 0.05 and out[..., 10:].min() > 0.95
    assert torch.allclose(upscale_alpha(torch.full((1, 5, 5), 0.25), (9, 11)), torch.full((1, 9, 11), 0.25))


def test_pil_round_trip():
    pixels = _pixels(5, 6, 4)
    image = Image.fromarray(pixels, "RGBA")
    decoded = from_pil(image)
    assert decoded.format is None and (decoded.width, decoded.height) == (6, 5)
    back = to_pil(decoded.rgb, decoded.alpha)
    assert back.mode == "RGBA" and np.array_equal(np.array(back), pixels)
    assert to_pil(decoded.rgb).mode == "RGB"


def test_a_truncated_file_opened_by_the_caller_is_an_invalid_image():
    data = _save(Image.fromarray(_pixels(32, 32, 3), "RGB"))[:120]
    with pytest.raises(InvalidImageError):
        from_pil(Image.open(io.BytesIO(data)))
