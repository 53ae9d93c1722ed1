"""The parallel PNG writer: lossless, a valid file for any decoder, the same bytes on any number of threads."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from seedvr_local import png


def _pixels(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-3, 4, size=(height, width, channels)), axis=1)  # photo-like, compressible
    return (smooth % 256).astype(np.uint8)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking each CRC on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


@pytest.mark.parametrize(
    "shape", [(1, 1, 3), (1, 37, 4), (45, 1, 3), (61, 45, 4), (700, 600, 3)]  # the last: two deflate blocks
)
def test_round_trip_is_lossless(shape):
    pixels = _pixels(*shape)
    data = png.encode_png(pixels)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == ("RGBA" if shape[2] == 4 else "RGB")
    assert np.array_equal(np.asarray(decoded), pixels)
    kinds = [kind for kind, _ in _chunks(data)]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    stream = b"".join(payload for kind, payload in _chunks(data) if kind == b"IDAT")
    assert len(zlib.decompress(stream)) == shape[0] * (shape[1] * shape[2] + 1)  # one zlib stream, checksum ok


def test_bytes_do_not_depend_on_the_thread_count():
    pixels = _pixels(900, 500, 3, seed=1)  # three blocks
    assert png.encode_png(pixels, threads=1) == png.encode_png(pixels, threads=3)


def test_long_streams_are_split_into_several_idat_chunks(monkeypatch):
    monkeypatch.setattr(png, "_IDAT_BYTES", 1000)
    pixels = _pixels(120, 90, 4, seed=2)
    data = png.encode_png(pixels)
    assert sum(kind == b"IDAT" for kind, _ in _chunks(data)) > 3
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_parallel_blocks_compress_about_as_well_as_one_stream():
    pixels = _pixels(900, 500, 3, seed=3)
    whole = len(zlib.compress(png._average_filtered(pixels).tobytes(), 1))
    assert len(png.encode_png(pixels)) < 1.01 * whole + 200


@pytest.mark.parametrize(
    "pixels", [np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.uint16), np.zeros((0, 4, 3), np.uint8)]
)
def test_unsupported_pixels_are_refused(pixels):
    with pytest.raises(ValueError, match="expected"):
        png.encode_png(pixels)
