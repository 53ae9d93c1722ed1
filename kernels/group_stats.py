"""Per-group GroupNorm statistics as mergeable moments, so that a tiled VAE can normalise with whole-frame stats.

A tile's moments are `(count, mean, m2)` per (sample, frame, group), where `m2` is the sum of squared deviations
from the tile's own mean. Moments of disjoint pieces merge exactly (Chan et al.'s parallel formula), without the
cancellation of the `E[x^2] - E[x]^2` shortcut, so the statistics of a frame can be gathered from the tiles that
cover it (each tile contributing only the pixels it owns) and then fed to `group_norm_silu`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class GroupStats(NamedTuple):
    """fp32 `(B, T, G)` for a `(B, C, T, H, W)` input (per frame, as the VAE normalises), `(B, G)` for 4-D."""

    mean: torch.Tensor
    rstd: torch.Tensor  # 1 / sqrt(var + eps), the biased variance as GroupNorm uses


class GroupMoments(NamedTuple):
    """Moments of one piece of a frame: the same `count` elements in every group."""

    count: int
    mean: torch.Tensor  # fp32, shaped like GroupStats
    m2: torch.Tensor  # fp32 sum of squared deviations from `mean`

    def stats(self, eps: float) -> GroupStats:
        if self.count <= 0:
            raise ValueError("GroupNorm statistics of an empty tensor")
        return GroupStats(self.mean, torch.rsqrt(self.m2 / self.count + eps))


def merge_moments(parts: Sequence[GroupMoments]) -> GroupMoments:
    """Moments of the union of disjoint pieces."""
    parts = [p for p in parts if p.count > 0]
    if not parts:
        raise ValueError("merge_moments needs at least one non-empty piece")
    count = sum(p.count for p in parts)
    means = torch.stack([p.mean for p in parts])
    weights = torch.tensor([p.count / count for p in parts], dtype=torch.float32, device=means.device)
    weights = weights.view(-1, *([1] * (means.dim() - 1)))
    mean = (weights * means).sum(0)
    counts = weights * count
    m2 = torch.stack([p.m2 for p in parts]).sum(0) + (counts * (means - mean) ** 2).sum(0)
    return GroupMoments(count, mean, m2)


def merge_chunk_moments(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Merge along the last dim: per-chunk `counts, means, m2s (..., chunks)` -> `(mean, m2)` of shape `(...)`.

    The same formula as `merge_moments`, for the per-block partial moments of the Triton stats kernel.
    """
    total = counts.sum(-1, keepdim=True)
    mean = (counts * means).sum(-1, keepdim=True) / total
    m2 = m2s.sum(-1) + (counts * (means - mean) ** 2).sum(-1)
    return mean.squeeze(-1), m2
