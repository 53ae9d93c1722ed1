"""PyTorch reference implementations of the kernel ops: the exact maths of the models, rounding included.

Each op computes in fp32 and rounds to the activation dtype exactly where the models do (and the official bf16
run does), so the kernels can be held to them tightly and either path gives the model's numbers:

- `rms_norm_modulate` = `dit_layers.rms_norm` then `AdaSingle.modulate`: the normalised row is rounded to the
  input dtype before it is modulated.
- `gated_residual` = `residual + AdaSingle.gate(h)`: the gated branch is rounded to `h`'s dtype, then added.
- `rotate_pairs` = `rope.rotate_pairs`: adjacent pairs `(x[2j], x[2j+1])`, the first `2 * pairs` dims, fp32.
- `frame_group_norm_silu` = the VAE's per-frame GroupNorm (fp32 `F.group_norm`, rounded) followed by SiLU;
  `group_norm_silu` is the same normalisation with statistics given from outside.
- `unnormalized_softmax` = the softmax step of the VAE attention's two-GEMM path: float32 exponentials of the
  shifted scores, rounded to the second GEMM's dtype, and their float32 row sums.

Modulation vectors (`scale`, `shift`, `gate`) are per row of a 2-D `x (N, D)`: shaped `(D,)` or `(1, D)` (one
sample), `(N, D)` (one per row), or `(B, D)` with `index (N,)` giving each row's sample.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from seedvr_local.kernels.group_stats import GroupMoments, GroupStats

# Largest fp32 copy (bytes) the GroupNorm references make at once: big frames go a few groups at a time.
_GROUPNORM_CHUNK_BYTES = 512 * 1024**2
# The same for the softmax reference's temporary.
_SOFTMAX_CHUNK_BYTES = 64 * 1024**2


def _per_row(mod: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    mod = mod.float()
    return mod[index] if index is not None else mod


def rms_norm_modulate(
    x: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    *,
    eps: float,
    weight: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`x * rsqrt(mean(x^2) + eps) [* weight]` over the last dim, rounded, then `* scale + shift` (if given)."""
    xf = x.float()
    h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        h = h * weight.float()
    h = h.to(x.dtype)
    if scale is not None:
        h = (h.float() * _per_row(scale, index) + _per_row(shift, index)).to(x.dtype)
    return h.to(out_dtype or x.dtype)


def gated_residual(
    residual: torch.Tensor, h: torch.Tensor, gate: torch.Tensor, *, index: torch.Tensor | None = None
) -> torch.Tensor:
    """`residual + (h * gate)`, the product rounded to `h`'s dtype first (the model's `AdaSingle.gate`)."""
    return residual + (h.float() * _per_row(gate, index)).to(h.dtype)


def gated_residual_rms_norm_modulate(
    residual: torch.Tensor,
    h: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    *,
    eps: float,
    weight: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's seam: the new residual `residual + gate * h` and the next layer's normalised, modulated input."""
    new_residual = gated_residual(residual, h, gate, index=index)
    normed = rms_norm_modulate(
        new_residual, scale, shift, eps=eps, weight=weight, index=index, out_dtype=out_dtype
    )
    return new_residual, normed


def rope_table_per_head(table: torch.Tensor) -> torch.Tensor:
    """`(S, P)` or `(S, 1, P)` -> `(S, 1, P)`, broadcasting over the heads of `(..., S, heads, D)`."""
    return table.unsqueeze(-2) if table.dim() == 2 else table


def rotate_pairs(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate `x (..., S, heads, D)` (or `x[index]` for flat tokens `x (N, heads, D)` and `index (..., S)`) by the
    per-token angles of `cos, sin (S, P)`: pairs `(2j, 2j+1)` for `j < P`; dims past `2P` are copied."""
    if index is not None:
        x = x[index]
    cos, sin = rope_table_per_head(cos).float(), rope_table_per_head(sin).float()
    rotated = 2 * cos.shape[-1]
    xf = x[..., :rotated].float().unflatten(-1, (-1, 2))
    even, odd = xf.unbind(-1)
    out = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    return torch.cat((out.to(x.dtype), x[..., rotated:]), dim=-1)


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, C, 1, H, W)`; `(B, C, T, H, W)` unchanged: GroupNorm statistics are per frame."""
    if x.dim() == 4:
        return x.unsqueeze(2)
    if x.dim() == 5:
        return x
    raise ValueError(f"GroupNorm expects (B, C, H, W) or (B, C, T, H, W), got shape {tuple(x.shape)}")


def _group_chunks(x: torch.Tensor, num_groups: int) -> Iterator[tuple[int, slice, slice]]:
    """(frame, group slice, channel slice) pieces whose fp32 copy stays under the chunk budget."""
    b, c, t, h, w = x.shape
    if c % num_groups:
        raise ValueError(f"{c} channels do not split into {num_groups} groups")
    group_channels = c // num_groups
    step = max(1, min(num_groups, _GROUPNORM_CHUNK_BYTES // max(1, 4 * b * group_channels * h * w)))
    for frame in range(t):
        for g0 in range(0, num_groups, step):
            g1 = min(num_groups, g0 + step)
            yield frame, slice(g0, g1), slice(g0 * group_channels, g1 * group_channels)


def group_norm_moments(x: torch.Tensor, num_groups: int) -> GroupMoments:
    """Per-frame, per-group moments of `x (B, C, [T,] H, W)`: mean and m2 shaped `(B, [T,] G)`, fp32."""
    frames = as_frames(x)
    b, c, t, h, w = frames.shape
    mean = torch.empty(b, t, num_groups, dtype=torch.float32, device=x.device)
    m2 = torch.empty_like(mean)
    count = c // num_groups * h * w
    for frame, groups, channels in _group_chunks(frames, num_groups):
        piece = frames[:, channels, frame].float().reshape(b, groups.stop - groups.start, -1)
        var, avg = torch.var_mean(piece, dim=-1, correction=0)
        mean[:, frame, groups], m2[:, frame, groups] = avg, var * count
    if x.dim() == 4:
        mean, m2 = mean.squeeze(1), m2.squeeze(1)
    return GroupMoments(count, mean, m2)


def group_norm_stats(x: torch.Tensor, num_groups: int, eps: float) -> GroupStats:
    """Per-frame GroupNorm statistics (mean, 1/sqrt(var + eps)) of `x`."""
    return group_norm_moments(x, num_groups).stats(eps)


def group_norm_silu(
    x: torch.Tensor,
    stats: GroupStats,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    silu: bool = True,
) -> torch.Tensor:
    """`silu(((x - mean) * rstd) * weight + bias)` per frame and group, with the given statistics.

    The normalisation is fp32 and rounded to `x`'s dtype, then SiLU runs on that (the VAE's `FrameGroupNorm` then
    `F.silu`). The number of groups is the last dim of the statistics.
    """
    frames = as_frames(x)
    num_groups = stats.mean.shape[-1]
    mean, rstd = stats.mean, stats.rstd
    if x.dim() == 4:
        mean, rstd = mean.unsqueeze(1), rstd.unsqueeze(1)
    b, c, _, _, _ = frames.shape
    out = torch.empty_like(frames)
    group_channels = c // num_groups
    for frame, groups, channels in _group_chunks(frames, num_groups):
        n_groups = groups.stop - groups.start
        piece = frames[:, channels, frame].float().unflatten(1, (n_groups, group_channels))
        target = out[:, channels, frame].unflatten(1, (n_groups, group_channels))
        # Straight into the output when it is float32 and contiguous (an image): no temporary the size of the
        # chunk. A strided target would change which elements the vectorised loops handle, and with them the
        # last bit of SiLU, breaking tiled == untiled.
        in_place = x.dtype == torch.float32 and target.is_contiguous()
        m = mean[:, frame, groups].view(b, n_groups, 1, 1, 1)
        r = rstd[:, frame, groups].view(b, n_groups, 1, 1, 1)
        y = torch.sub(piece, m, out=target) if in_place else piece - m
        y.mul_(r)
        if weight is not None:
            y.mul_(weight[channels].float().view(n_groups, group_channels, 1, 1))
        if bias is not None:
            y.add_(bias[channels].float().view(n_groups, group_channels, 1, 1))
        y = y.to(x.dtype)
        if silu:
            F.silu(y, inplace=True)
        if not in_place:
            target.copy_(y)
    return out.squeeze(2) if x.dim() == 4 else out


def frame_group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    eps: float,
    silu: bool = True,
) -> torch.Tensor:
    """GroupNorm of each frame with its own statistics: `F.group_norm` in fp32, rounded to x's dtype, then SiLU
    (the VAE's `FrameGroupNorm` then `F.silu`, to the bit)."""
    frames = as_frames(x)
    out = torch.empty_like(frames)
    for frame, groups, channels in _group_chunks(frames, num_groups):
        y = F.group_norm(
            frames[:, channels, frame].float(),
            groups.stop - groups.start,
            weight[channels].float() if weight is not None else None,
            bias[channels].float() if bias is not None else None,
            eps,
        ).to(x.dtype)
        out[:, channels, frame] = F.silu(y) if silu else y
    return out.squeeze(2) if x.dim() == 4 else out


def unnormalized_softmax(
    scores: torch.Tensor, scale: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """`exp(scale * s - max(scale * s))` per row of float32 `scores (n, N)`, rounded to `out_dtype`, and the
    float32 sums of the unrounded rows `(n, 1)`: softmax as flash attention splits it (divide after the second
    GEMM). A few rows at a time, so the float32 temporary stays small next to the scores."""
    rows, cols = scores.shape
    probs = torch.empty((rows, cols), dtype=out_dtype, device=scores.device)
    sums = torch.empty((rows, 1), dtype=torch.float32, device=scores.device)
    step = max(1, _SOFTMAX_CHUNK_BYTES // max(1, 4 * cols))
    for start in range(0, rows, step):
        part = scores[start : start + step].float() * scale
        part.sub_(part.amax(dim=-1, keepdim=True)).exp_()
        sums[start : start + step] = part.sum(dim=-1, keepdim=True)
        probs[start : start + step] = part
    return probs, sums
