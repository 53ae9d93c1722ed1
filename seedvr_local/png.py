"""A PNG writer that compresses on every CPU core.

PIL's PNG encoder runs on one core and tries every row filter: at 4K it took 1.23 s of a 2.85 s restore on the
H100 server (benchmarks/RESULTS.md), longer than the whole DiT step. Here every row gets the "Average" filter
(a few vectorised uint8 operations over the whole image; on smooth photographic content it compresses as well as
PIL's per-row choice), and the data is cut into 1 MiB blocks deflated in parallel, each ended on a byte boundary
(a sync flush) so that they join into one ordinary zlib stream, as pigz does. (pigz also primes each block with
the 32 KiB before it; at 1 MiB blocks that saves 0.02%.) The cuts depend on the image only, so the bytes do not
depend on the number of threads.
"""

from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {3: 2, 4: 6}  # channels -> PNG colour type (RGB, RGBA)
_AVERAGE = 3  # PNG filter type
_BLOCK_BYTES = 1024 * 1024  # filtered bytes per independently compressed block
_IDAT_BYTES = 1 << 24  # compressed bytes per IDAT chunk
_MAX_THREADS = 16


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + bytes(data) + struct.pack(">I", crc)


def _average_filtered(pixels: np.ndarray) -> np.ndarray:
    """Rows of `[filter type, bytes...]` under PNG's "Average" filter: each byte minus the floor of the mean of
    the byte one pixel to the left and the byte above (0 past the edges). uint8 arithmetic wraps modulo 256 as
    PNG's does, and `(a & b) + ((a ^ b) >> 1)` is that floored mean without widening."""
    height, width, channels = pixels.shape
    raw = pixels.reshape(height, width * channels)
    out = np.empty((height, raw.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = _AVERAGE
    body = out[:, 1:]
    body[0, :channels] = raw[0, :channels]
    body[0, channels:] = raw[0, channels:] - (raw[0, :-channels] >> 1)
    body[1:, :channels] = raw[1:, :channels] - (raw[:-1, :channels] >> 1)
    left, above = raw[1:, :-channels], raw[:-1, channels:]
    body[1:, channels:] = raw[1:, channels:] - ((left & above) + ((left ^ above) >> 1))
    return out


def _deflate_block(data: memoryview, start: int, stop: int, level: int) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: the zlib framing is added once
    flush = zlib.Z_FINISH if stop == len(data) else zlib.Z_SYNC_FLUSH
    return compressor.compress(data[start:stop]) + compressor.flush(flush)


def encode_png(pixels: np.ndarray, level: int = 1, threads: int | None = None) -> bytes:
    """`pixels (H, W, 3 or 4)` uint8 (RGB or RGBA) -> PNG bytes, compressed at zlib `level` on `threads`
    threads (default: the CPU count, at most 16)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in _COLOR_TYPES or 0 in pixels.shape:
        raise ValueError(f"expected (H, W, 3 or 4) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    data = memoryview(_average_filtered(np.ascontiguousarray(pixels))).cast("B")
    row = width * channels + 1
    step = max(1, _BLOCK_BYTES // row) * row  # whole rows: the cuts depend on the image only
    cuts = [(start, min(start + step, len(data))) for start in range(0, len(data), step)]
    workers = min(len(cuts), threads or min(os.cpu_count() or 1, _MAX_THREADS))
    if workers > 1:  # zlib releases the GIL while it compresses
        with ThreadPoolExecutor(workers) as pool:
            blocks = list(pool.map(lambda cut: _deflate_block(data, *cut, level), cuts))
    else:
        blocks = [_deflate_block(data, *cut, level) for cut in cuts]
    # zlib header for the fastest levels (CMF 0x78: deflate, 32 KiB window; FLG 0x01), then the checksum.
    stream = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(data))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    idat = [_chunk(b"IDAT", stream[i : i + _IDAT_BYTES]) for i in range(0, len(stream), _IDAT_BYTES)]
    return b"".join([_SIGNATURE, _chunk(b"IHDR", header), *idat, _chunk(b"IEND", b"")])
