"""The public kernel ops: each runs its Triton kernel when the backend allows it, else its PyTorch reference.

Both paths take the same arguments and give the same numbers up to fp32 rounding order (see `kernels.reference`
for the exact maths). Cases a kernel does not cover (float64, odd head dims, very wide rows, tensors that need
gradients) quietly use the reference, so callers never need to check.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from seedvr_local.kernels import reference
from seedvr_local.kernels.backend import use_triton
from seedvr_local.kernels.group_stats import GroupMoments, GroupStats

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# A row kernel program holds a whole row: wider rows use the reference rather than spill registers.
MAX_ROW_DIM = 16384


@functools.cache
def _triton_module(name: str) -> ModuleType:
    return importlib.import_module(f"seedvr_local.kernels.triton_{name}")


def _kernel_ok(*tensors: torch.Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False  # the kernels have no backward: anything that needs gradients takes the reference
    return all(t.dtype in _KERNEL_DTYPES for t in present if t.is_floating_point()) and use_triton(*present)


def _row_kernel_ok(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    return 0 < x.shape[-1] <= MAX_ROW_DIM and x.numel() > 0 and _kernel_ok(x, *others)


def _check_modulation(x: torch.Tensor, *mods: torch.Tensor | None, index: torch.Tensor | None) -> None:
    if all(m is None for m in mods):
        return
    if x.dim() != 2:
        raise ValueError(f"modulation needs x of shape (tokens, dim), got {tuple(x.shape)}")
    rows = x.shape[0]
    for mod in mods:
        if mod is None:
            continue
        if mod.shape[-1] != x.shape[-1] or mod.dim() > 2:
            raise ValueError(f"modulation of shape {tuple(mod.shape)} does not match x {tuple(x.shape)}")
        if index is None and mod.dim() == 2 and mod.shape[0] not in (1, rows):
            raise ValueError(f"{mod.shape[0]} modulation rows for {rows} tokens need an index (tokens,)")
    if index is not None and index.shape != (rows,):
        raise ValueError(f"index must have shape ({rows},), got {tuple(index.shape)}")


def _check_scale_shift(scale: torch.Tensor | None, shift: torch.Tensor | None) -> None:
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift go together")


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`x * rsqrt(mean(x^2) + eps) [* weight]` over the last dim, fp32 maths: the model's `rms_norm`."""
    return rms_norm_modulate(x, eps=eps, weight=weight)


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
    """RMSNorm of `x (..., D)`, then AdaSingle "in" modulation `* scale + shift` when given.

    `scale`/`shift` are the summed modulation (embedding slot + learned parameter), per row of a 2-D `x`:
    `(D,)`/`(1, D)`, `(N, D)`, or `(B, D)` with `index (N,)` the sample of each row. Returns `out_dtype`
    (default: x's dtype).
    """
    _check_scale_shift(scale, shift)
    _check_modulation(x, scale, shift, index=index)
    if _row_kernel_ok(x, weight, scale, shift, index):
        return _triton_module("rmsnorm").row_op(
            x, eps=eps, weight=weight, scale=scale, shift=shift, index=index, out_dtype=out_dtype
        )[1]
    return reference.rms_norm_modulate(
        x, scale, shift, eps=eps, weight=weight, index=index, out_dtype=out_dtype
    )


def gated_residual(
    residual: torch.Tensor, h: torch.Tensor, gate: torch.Tensor, *, index: torch.Tensor | None = None
) -> torch.Tensor:
    """`residual + round(h * gate)`: AdaSingle "out" and the residual add in one pass. `gate` as `scale` above."""
    _check_modulation(residual, gate, index=index)
    if h.shape != residual.shape:
        raise ValueError(f"h {tuple(h.shape)} and residual {tuple(residual.shape)} differ")
    if _row_kernel_ok(residual, h, gate, index):
        return _triton_module("rmsnorm").row_op(residual, h=h, gate=gate, norm=False, index=index)[0]
    return reference.gated_residual(residual, h, gate, index=index)


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
    """The seam between two layers of a block: `new = residual + round(h * gate)` and
    `rms_norm_modulate(new, scale, shift)`, in one pass. Returns `(new residual, normalised)`."""
    _check_scale_shift(scale, shift)
    _check_modulation(residual, gate, scale, shift, index=index)
    if h.shape != residual.shape:
        raise ValueError(f"h {tuple(h.shape)} and residual {tuple(residual.shape)} differ")
    if _row_kernel_ok(residual, h, gate, weight, scale, shift, index):
        new_residual, normed = _triton_module("rmsnorm").row_op(
            residual, h=h, gate=gate, eps=eps, weight=weight, scale=scale, shift=shift, index=index,
            out_dtype=out_dtype,
        )  # fmt: skip
        return new_residual, normed
    return reference.gated_residual_rms_norm_modulate(
        residual, h, gate, scale, shift, eps=eps, weight=weight, index=index, out_dtype=out_dtype
    )


def rotate_pairs(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """RoPE: rotate adjacent pairs `(x[2j], x[2j+1])`, `j < P`, of every head by the angles of `cos, sin (S, P)`
    (or the model's `(S, 1, P)`); head dims past `2P` are copied. fp32 maths, result in x's dtype.

    `x` is `(..., S, heads, D)`, or flat tokens `(N, heads, D)` with `index (..., S)` choosing each sequence's
    tokens (a window gather fused into the rotation). `out`, if given, receives the result (it may be a slice of
    a bigger buffer, e.g. the video part of a window's q).
    """
    if cos.shape != sin.shape or cos.dim() not in (2, 3):
        raise ValueError(f"cos and sin must both be (S, P) or (S, 1, P), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    if index is not None and (x.dim() != 3 or index.dim() < 1 or index.is_floating_point()):
        raise ValueError("a gathering rotate_pairs needs flat tokens x (N, heads, D) and an integer index (..., S)")
    seq, pairs = cos.shape[0], cos.shape[-1]
    tokens = index.shape[-1] if index is not None else x.shape[-3] if x.dim() >= 3 else -1
    if tokens != seq or 2 * pairs > x.shape[-1]:
        raise ValueError(f"a rope table of {seq} tokens x {pairs} pairs does not fit x {tuple(x.shape)}")
    shape = (*index.shape, *x.shape[1:]) if index is not None else tuple(x.shape)
    if out is not None and (tuple(out.shape) != shape or out.dtype != x.dtype):
        raise ValueError(f"out must be {x.dtype} of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    if x.numel() > 0 and x.shape[-1] % 2 == 0 and _kernel_ok(x, cos, sin, out, index):
        return _triton_module("rope").rotate_pairs(x, cos, sin, index=index, out=out)
    result = reference.rotate_pairs(x, cos, sin, index=index)
    if out is None:
        return result
    out.copy_(result)
    return out


def _check_groups(x: torch.Tensor, num_groups: int) -> None:
    if x.dim() not in (4, 5):
        raise ValueError(f"GroupNorm expects (B, C, H, W) or (B, C, T, H, W), got shape {tuple(x.shape)}")
    if num_groups <= 0 or x.shape[1] % num_groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {num_groups} groups")


def _group_kernel_ok(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    return x.numel() > 0 and _kernel_ok(x, *others)


def group_norm_moments(x: torch.Tensor, num_groups: int) -> GroupMoments:
    """Per-frame, per-group (count, mean, m2) of `x (B, C, [T,] H, W)`; merge tiles' moments with
    `merge_moments`, turn them into statistics with `.stats(eps)`."""
    _check_groups(x, num_groups)
    if _group_kernel_ok(x):
        return _triton_module("groupnorm").group_norm_moments(x, num_groups)
    return reference.group_norm_moments(x, num_groups)


def group_norm_stats(x: torch.Tensor, num_groups: int, eps: float) -> GroupStats:
    """Per-frame GroupNorm statistics `(mean, rstd)` of `x`, fp32, shaped `(B, [T,] G)`."""
    return group_norm_moments(x, num_groups).stats(eps)


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    eps: float = 1e-6,
    stats: GroupStats | None = None,
    silu: bool = True,
) -> torch.Tensor:
    """The VAE's per-frame GroupNorm, then SiLU (unless `silu=False`), on `x (B, C, [T,] H, W)`.

    With `stats` (e.g. whole-frame statistics gathered over tiles) `x` is normalised with those; without, with
    its own (`eps` is used only then). Contiguous and channels-last inputs keep their layout.
    """
    _check_groups(x, num_groups)
    if stats is None:
        if not _group_kernel_ok(x, weight, bias):
            return reference.frame_group_norm_silu(x, num_groups, weight, bias, eps=eps, silu=silu)
        stats = group_norm_stats(x, num_groups, eps)
    frames_shape = (x.shape[0], x.shape[2], num_groups) if x.dim() == 5 else (x.shape[0], num_groups)
    if tuple(stats.mean.shape) != frames_shape or tuple(stats.rstd.shape) != frames_shape:
        raise ValueError(f"GroupNorm statistics must be shaped {frames_shape}, got {tuple(stats.mean.shape)}")
    if _group_kernel_ok(x, weight, bias, stats.mean, stats.rstd):
        return _triton_module("groupnorm").group_norm_silu(x, stats, weight, bias, silu=silu)
    return reference.group_norm_silu(x, stats, weight, bias, silu=silu)


def unnormalized_softmax(
    scores: torch.Tensor, scale: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax without the division, for attention as two GEMMs: `exp(scale * (s - rowmax(s)))` of float32
    `scores (n, N)` rounded to `out_dtype` (the second GEMM's input), and the float32 row sums `(n, 1)` to divide
    its output by."""
    if scores.dim() != 2 or scores.dtype != torch.float32:
        raise ValueError(f"scores must be float32 (n, N), got {scores.dtype} {tuple(scores.shape)}")
    if scores.numel() > 0 and scores.stride(-1) == 1 and out_dtype in _KERNEL_DTYPES and _kernel_ok(scores):
        return _triton_module("softmax").unnormalized_softmax(scores, scale, out_dtype)
    return reference.unnormalized_softmax(scores, scale, out_dtype)
