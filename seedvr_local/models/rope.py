# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/dit_v2 (3B) and models/dit (7B): the rotary embeddings; rewritten for this project (see NOTICE).
"""Rotary position embeddings of the NaDiT windows (spec 2.10).

Both variants rotate adjacent pairs of head dims `(x[2j], x[2j+1])` by an angle `pos * freq`. The head dims are
split into three axial blocks `[t | h | w]`; dims past them are left alone. Positions are local to a window.

- 3B `mmrope3d` ("lang" frequencies): a video token at `(t', h', w')` in its window has positions
  `(txt_len + t', h', w')`; text token `j` has position `j` on all three axes, so text is rotated too.
- 7B ("pixel" frequencies): positions `linspace(-1, 1, n)` over the window's extent `n` on each axis; text is
  not rotated.

The checkpoints store the frequencies as a persistent buffer `rope.freqs`, kept here only so that state dicts
load unchanged. The forward always recomputes them in fp32 from the formula: quantised checkpoints round that
buffer (fp8 loses most of the 3B frequencies), and a low-precision buffer would ruin the angles.
"""

from __future__ import annotations

import math

import torch
from torch import nn

RopeTable = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), fp32, one angle per rotated pair


def _axial_table(positions: list[torch.Tensor], freqs: torch.Tensor) -> RopeTable:
    """Angles for the (t, h, w) grid spanned by per-axis positions, flattened in raster order: `(t*h*w, 3*pairs)`."""
    angles = [p.float()[:, None] * freqs[None, :] for p in positions]
    t, h, w = (len(p) for p in positions)
    grid = torch.cat(
        (
            angles[0][:, None, None, :].expand(t, h, w, -1),
            angles[1][None, :, None, :].expand(t, h, w, -1),
            angles[2][None, None, :, :].expand(t, h, w, -1),
        ),
        dim=-1,
    ).flatten(0, 2)
    return grid.cos(), grid.sin()


class _StoredFrequencies(nn.Module):
    """Holds the checkpoint's `freqs` buffer under the official key `...rope.rope.freqs`. Never read."""

    def __init__(self, freqs: torch.Tensor):
        super().__init__()
        self.register_buffer("freqs", freqs)


class MMRope3d(nn.Module):
    """3B `mmrope3d`: "lang" frequencies `theta^(-2k/axis_dim)` on video and text (spec 2.10, 3B)."""

    rotates_text = True

    def __init__(self, rope_dim: int, theta: float = 10000.0):
        super().__init__()
        self.axis_dim = rope_dim // 3
        self.theta = theta
        self.rope = _StoredFrequencies(self.frequencies())

    @property
    def cache_key(self) -> tuple:
        return ("mmrope3d", self.axis_dim, self.theta)

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.axis_dim, 2, device=device)[: self.axis_dim // 2].float() / self.axis_dim
        return 1.0 / (self.theta**exponents)

    def video_table(self, window: tuple[int, int, int], txt_len: int, device: torch.device) -> RopeTable:
        t, h, w = window
        arange = lambda start, n: torch.arange(start, start + n, device=device)  # noqa: E731
        return _axial_table([arange(txt_len, t), arange(0, h), arange(0, w)], self.frequencies(device))

    def text_table(self, positions: torch.Tensor) -> RopeTable:
        """`positions (L,)`: each text token's index within its own sample's text."""
        angles = positions.float()[:, None] * self.frequencies(positions.device)[None, :]
        angles = angles.repeat(1, 3)  # the same position on the t, h and w axes
        return angles.cos(), angles.sin()


class PixelRope3d(nn.Module):
    """7B rope: "pixel" frequencies `linspace(1, max_freq/2, n) * pi` on window-normalised positions, video only."""

    rotates_text = False

    def __init__(self, dim: int, max_freq: float = 256.0):
        super().__init__()
        self.axis_dim = dim // 3
        self.max_freq = max_freq
        self.rope = _StoredFrequencies(self.frequencies())

    @property
    def cache_key(self) -> tuple:
        return ("pixel3d", self.axis_dim, self.max_freq)

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.linspace(1.0, self.max_freq / 2, self.axis_dim // 2, dtype=torch.float32, device=device) * math.pi

    def video_table(self, window: tuple[int, int, int], txt_len: int, device: torch.device) -> RopeTable:
        positions = [torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=device) for n in window]
        return _axial_table(positions, self.frequencies(device))
