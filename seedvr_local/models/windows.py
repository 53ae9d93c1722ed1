# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/dit_v2 (3B) and models/dit (7B): the window layouts; rewritten for this project (see NOTICE).
"""Window layouts of the NaDiT's window attention (spec 2.9.2).

Windows live on the post-patch token grid `(t, h, w)` of one sample. Their size is chosen so that a window holds
about as many tokens as one cell of a 720p frame split `num_windows` ways, whatever the resolution; so their
count grows with the resolution. Even layers use the regular layout, odd layers the half-shifted one.
"""

from __future__ import annotations

import math
from typing import Callable

Interval = tuple[int, int]  # half-open [start, stop)
Box = tuple[Interval, Interval, Interval]  # (t, h, w) ranges

# The token grid of a 720p frame (720/16 x 1280/16) that the window sizes are scaled from.
_REFERENCE_TOKENS = 45 * 80
# Temporal windows are sized as if a clip had at most this many latent frames.
_MAX_FRAMES = 30


def window_size(grid: tuple[int, int, int], num_windows: tuple[int, int, int]) -> tuple[int, int, int]:
    """Window extent `(wt, wh, ww)` in tokens for a sample's token grid."""
    t, h, w = grid
    nt, nh, nw = num_windows
    scale = math.sqrt(_REFERENCE_TOKENS / (h * w))
    # Python's round (half to even) and float maths, exactly as the official code, so edge cases agree.
    resized_h, resized_w = round(h * scale), round(w * scale)
    return math.ceil(min(t, _MAX_FRAMES) / nt), math.ceil(resized_h / nh), math.ceil(resized_w / nw)


def _regular_cuts(size: int, window: int) -> list[Interval]:
    cuts = [(i * window, min((i + 1) * window, size)) for i in range(math.ceil(size / window))]
    return [(a, b) for a, b in cuts if b > a]


def _shifted_cuts(size: int, window: int) -> list[Interval]:
    # Shift by half a window when the axis holds more than one window; the borders become partial windows.
    shift = 0.5 if window < size else 0
    count = math.ceil((size - shift) / window) + 1 if shift > 0 else 1
    cuts = [(max(int((i - shift) * window), 0), min(int((i - shift + 1) * window), size)) for i in range(count)]
    return [(a, b) for a, b in cuts if b > a]


def _boxes(grid: tuple[int, int, int], sizes: tuple[int, int, int], cut: Callable[[int, int], list[Interval]]):
    t_cuts, h_cuts, w_cuts = (cut(n, ws) for n, ws in zip(grid, sizes))
    # Official enumeration order: w outermost, then h, then t innermost.
    return [(tc, hc, wc) for wc in w_cuts for hc in h_cuts for tc in t_cuts]


def regular_windows(grid: tuple[int, int, int], num_windows: tuple[int, int, int]) -> list[Box]:
    """`720pwin_by_size_bysize`: windows tiled from the origin, the last ones partial."""
    return _boxes(grid, window_size(grid, num_windows), _regular_cuts)


def shifted_windows(grid: tuple[int, int, int], num_windows: tuple[int, int, int]) -> list[Box]:
    """`720pswin_by_size_bysize`: windows shifted by half a window on every axis that has more than one."""
    return _boxes(grid, window_size(grid, num_windows), _shifted_cuts)


WINDOW_METHODS: dict[str, Callable[[tuple[int, int, int], tuple[int, int, int]], list[Box]]] = {
    "720pwin_by_size_bysize": regular_windows,
    "720pswin_by_size_bysize": shifted_windows,
}


def window_boxes(grid: tuple[int, int, int], num_windows: tuple[int, int, int], method: str) -> list[Box]:
    """The windows of one sample, in the official order, as `((t0, t1), (h0, h1), (w0, w1))` boxes."""
    if method not in WINDOW_METHODS:
        raise ValueError(f"unknown window method {method!r}; known: {', '.join(WINDOW_METHODS)}")
    return WINDOW_METHODS[method](tuple(grid), tuple(num_windows))
