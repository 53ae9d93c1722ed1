"""Triton kernels for the VAE's per-frame GroupNorm: partial moments per block, and normalise + SiLU.

Both walk `(B, C, T, H, W)` through its strides, one program per tile of `BLOCK_C` channels x `BLOCK_S` pixels
of one frame. The tile is laid along the memory order: many pixels and few channels for a contiguous tensor,
many channels for a channels-last one, so loads stay coalesced either way. Tiles ignore group boundaries:

- the stats kernel writes each channel's (mean, m2) over the tile's pixels; PyTorch merges them into group
  moments exactly (channels and pixel blocks are disjoint pieces; a few numbers per tile);
- the normalise kernel reads each channel's group statistics, which come in from outside (`GroupStats`), so a
  tiled decoder can normalise a tile with its whole frame's statistics.

Import only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedvr_local.kernels.group_stats import GroupMoments, GroupStats, merge_chunk_moments
from seedvr_local.kernels.reference import as_frames

_TILE = 4096  # elements per program


@triton.jit
def _tile(
    pid, T, C, HW, W, n_cblocks, n_sblocks, sb, sc, st, sh, sw,
    FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Program `pid`'s tile: (offsets, mask, channels, channel mask, frame index b * T + t, pixel block)."""
    sblock = pid % n_sblocks
    cblock = (pid // n_sblocks) % n_cblocks
    frame = pid // n_sblocks // n_cblocks  # b * T + t
    b = (frame // T).to(tl.int64)
    t = (frame % T).to(tl.int64)
    c = cblock * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    s = sblock * BLOCK_S + tl.arange(0, BLOCK_S)
    if FLAT:  # H and W merge into one strided dim (contiguous and channels-last tensors)
        pix = s.to(tl.int64) * sw
    else:  # e.g. a tile cropped out of a bigger frame
        pix = (s // W).to(tl.int64) * sh + (s % W).to(tl.int64) * sw
    offs = b * sb + t * st + c.to(tl.int64)[:, None] * sc + pix[None, :]
    mask = c_ok[:, None] & (s < HW)[None, :]
    return offs, mask, c, c_ok, frame, sblock


@triton.jit
def _moments_kernel(
    x_ptr, mean_ptr, m2_ptr,
    T, C, HW, W, n_cblocks, n_sblocks, sb, sc, st, sh, sw,
    FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    offs, mask, c, c_ok, frame, sblock = _tile(
        tl.program_id(0), T, C, HW, W, n_cblocks, n_sblocks, sb, sc, st, sh, sw, FLAT, BLOCK_C, BLOCK_S
    )
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.sum(mask.to(tl.float32), axis=1)  # the same for every channel of the tile
    mean = tl.sum(x, axis=1) / count
    # Deviations from the tile's own mean: no E[x^2] - E[x]^2 cancellation.
    dev = tl.where(mask, x - mean[:, None], 0.0)
    m2 = tl.sum(dev * dev, axis=1)
    out = (frame.to(tl.int64) * C + c) * n_sblocks + sblock  # partials laid out (B, T, C, pixel blocks)
    tl.store(mean_ptr + out, mean, mask=c_ok)
    tl.store(m2_ptr + out, m2, mask=c_ok)


@triton.jit
def _norm_silu_kernel(
    x_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, out_ptr,
    T, C, G, HW, W, n_cblocks, n_sblocks, sb, sc, st, sh, sw, ob, oc, ot, oh, ow,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, FLAT: tl.constexpr,
    OUT_FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs, mask, c, c_ok, frame, _ = _tile(
        pid, T, C, HW, W, n_cblocks, n_sblocks, sb, sc, st, sh, sw, FLAT, BLOCK_C, BLOCK_S
    )
    out_offs, _, _, _, _, _ = _tile(
        pid, T, C, HW, W, n_cblocks, n_sblocks, ob, oc, ot, oh, ow, OUT_FLAT, BLOCK_C, BLOCK_S
    )
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    stat = frame.to(tl.int64) * G + c // (C // G)
    mean = tl.load(mean_ptr + stat, mask=c_ok, other=0.0)
    rstd = tl.load(rstd_ptr + stat, mask=c_ok, other=0.0)
    y = (x - mean[:, None]) * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    # The model rounds the normalised tensor to the activation dtype, then applies SiLU to that.
    y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def layout(frames: torch.Tensor) -> dict:
    """Tile shape along the memory order, and the launch geometry."""
    b, c, t, h, w = frames.shape
    sb, sc, st, sh, sw = frames.stride()
    if sc == 1 and c > 1:  # channels-last: a tile spans channels first
        block_c = min(triton.next_power_of_2(c), 128)
        block_s = max(1, _TILE // block_c)
    else:
        block_s = min(triton.next_power_of_2(h * w), 1024)
        block_c = min(triton.next_power_of_2(c), max(1, _TILE // block_s))
    n_cblocks, n_sblocks = triton.cdiv(c, block_c), triton.cdiv(h * w, block_s)
    return dict(
        programs=b * t * n_cblocks * n_sblocks, T=t, C=c, HW=h * w, W=w, n_cblocks=n_cblocks, n_sblocks=n_sblocks,
        strides=(sb, sc, st, sh, sw), FLAT=h == 1 or sh == w * sw, BLOCK_C=block_c, BLOCK_S=block_s,
    )  # fmt: skip


def group_norm_moments(x: torch.Tensor, num_groups: int) -> GroupMoments:
    """See `kernels.group_norm_moments`."""
    frames = as_frames(x)
    b, c, t, h, w = frames.shape
    geo = layout(frames)
    partial = (b, t, c, geo["n_sblocks"])
    means, m2s = (torch.empty(partial, dtype=torch.float32, device=x.device) for _ in range(2))
    # No FMA contraction: every product rounds to fp32 as in the op-by-op reference.
    _moments_kernel[(geo["programs"],)](
        frames, means, m2s,
        t, c, geo["HW"], w, geo["n_cblocks"], geo["n_sblocks"], *geo["strides"],
        FLAT=geo["FLAT"], BLOCK_C=geo["BLOCK_C"], BLOCK_S=geo["BLOCK_S"], num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    # Every channel of a group, every pixel block: merge them all into the group's moments.
    counts = torch.full((geo["n_sblocks"],), float(geo["BLOCK_S"]), device=x.device)
    counts[-1] = geo["HW"] - geo["BLOCK_S"] * (geo["n_sblocks"] - 1)
    per_group = (b, t, num_groups, -1)
    mean, m2 = merge_chunk_moments(
        counts.repeat(c // num_groups).expand(b, t, num_groups, -1), means.view(per_group), m2s.view(per_group)
    )
    if x.dim() == 4:
        mean, m2 = mean.squeeze(1), m2.squeeze(1)
    return GroupMoments(c // num_groups * h * w, mean, m2)


def group_norm_silu(
    x: torch.Tensor,
    stats: GroupStats,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    silu: bool = True,
) -> torch.Tensor:
    """See `kernels.group_norm_silu`."""
    frames = as_frames(x)
    num_groups = stats.mean.shape[-1]
    geo = layout(frames)
    out = torch.empty_like(frames)  # keeps a channels-last layout
    out_strides = out.stride()
    out_flat = frames.shape[3] == 1 or out_strides[3] == frames.shape[4] * out_strides[4]
    mean = stats.mean.float().contiguous()
    rstd = stats.rstd.float().contiguous()
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    # No FMA contraction: every product rounds to fp32 as in the op-by-op reference.
    _norm_silu_kernel[(geo["programs"],)](
        frames, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean, out,
        geo["T"], geo["C"], num_groups, geo["HW"], geo["W"], geo["n_cblocks"], geo["n_sblocks"],
        *geo["strides"], *out_strides,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=silu, FLAT=geo["FLAT"], OUT_FLAT=out_flat,
        BLOCK_C=geo["BLOCK_C"], BLOCK_S=geo["BLOCK_S"], num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return out.squeeze(2) if x.dim() == 4 else out
