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


def _periodic_cuts(size: int, window: int) -> list[Interval]:
    """The regular cuts of an axis that wraps around: `round(size / window)` windows (at least one) of nearly equal
    size, the official ones when `window` divides `size`. No window is partial, so shifting the image by a window
    maps the layout onto itself."""
    count = max(1, round(size / window))
    base, extra = divmod(size, count)
    cuts, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        cuts.append((start, stop))
        start = stop
    return cuts


def _periodic_shifted_cuts(size: int, window: int) -> list[Interval]:
    """The shifted cuts of an axis that wraps around: from the middle of each regular window to the middle of the
    next, the last one running past `size` into the first (the cyclic shift of a periodic layout). Every boundary
    of the regular layout, the wrap-around included, lies inside a shifted window."""
    middles = [a + (b - a) // 2 for a, b in _periodic_cuts(size, window)]
    return list(zip(middles, middles[1:] + [middles[0] + size]))


def _boxes(
    grid: tuple[int, int, int],
    sizes: tuple[int, int, int],
    cut: Callable[[int, int], list[Interval]],
    cut_plane: Callable[[int, int], list[Interval]] | None = None,
) -> list[Box]:
    """Boxes of the cuts of every axis: `cut` in time, `cut_plane` (default `cut`) in height and width."""
    cut_plane = cut_plane or cut
    t_cuts = cut(grid[0], sizes[0])
    h_cuts, w_cuts = (cut_plane(n, ws) for n, ws in zip(grid[1:], sizes[1:]))
    # Official enumeration order: w outermost, then h, then t innermost.
    return [(tc, hc, wc) for wc in w_cuts for hc in h_cuts for tc in t_cuts]


#: Each layout method's cuts of an axis: as the official model makes them, and on a torus (`periodic`).
_CUTS: dict[str, tuple[Callable[[int, int], list[Interval]], Callable[[int, int], list[Interval]]]] = {
    "720pwin_by_size_bysize": (_regular_cuts, _periodic_cuts),  # windows tiled from the origin, the last partial
    "720pswin_by_size_bysize": (_shifted_cuts, _periodic_shifted_cuts),  # shifted by half a window
}
WINDOW_METHODS = tuple(_CUTS)


def window_boxes(
    grid: tuple[int, int, int], num_windows: tuple[int, int, int], method: str, periodic: bool = False
) -> list[Box]:
    """The windows of one sample, in the official order, as `((t0, t1), (h0, h1), (w0, w1))` boxes.

    `periodic`: the frame is one period of a tileable image (a torus). Height and width are then cut into whole
    windows only (`_periodic_cuts`), the shifted layout being their cyclic shift; a box may run past the grid,
    its rows and columns there standing for the opposite side. Time is cut as usual."""
    if method not in _CUTS:
        raise ValueError(f"unknown window method {method!r}; known: {', '.join(WINDOW_METHODS)}")
    plain, on_torus = _CUTS[method]
    sizes = window_size(tuple(grid), tuple(num_windows))
    return _boxes(tuple(grid), sizes, plain, on_torus if periodic else None)
