"""Triton kernel for the softmax step of the VAE attention's two-GEMM path (`kernels.unnormalized_softmax`).

PyTorch needs five passes over the float32 score matrix for it (max, shift, exp, sum, cast): at 4K they took
0.3 s of 1.45 s of GPU time (benchmarks/RESULTS.md). Here one program walks one row twice: once for its maximum,
once to write the rounded exponentials and add up the unrounded ones; two float32 reads and one half-precision
write. Import only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 2048  # row elements per loop step


@triton.jit
def _unnormalized_softmax_kernel(
    scores_ptr, out_ptr, sums_ptr, n_cols, row_stride, out_stride, scale, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    src = scores_ptr + row * row_stride
    dst = out_ptr + row * out_stride
    cols = tl.arange(0, BLOCK)
    peak = tl.full((BLOCK,), float("-inf"), tl.float32)
    for start in range(0, n_cols, BLOCK):
        x = tl.load(src + start + cols, mask=start + cols < n_cols, other=float("-inf"))
        peak = tl.maximum(peak, x)
    shift = tl.max(peak, axis=0) * scale
    total = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(src + start + cols, mask=mask, other=0.0)
        e = tl.where(mask, tl.exp(x * scale - shift), 0.0)
        total += e
        tl.store(dst + start + cols, e.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(sums_ptr + row, tl.sum(total, axis=0))


def unnormalized_softmax(
    scores: torch.Tensor, scale: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `kernels.unnormalized_softmax`. `scores` is float32 `(n, N)` with unit column stride."""
    rows, cols = scores.shape
    out = torch.empty((rows, cols), dtype=out_dtype, device=scores.device)
    sums = torch.empty((rows, 1), dtype=torch.float32, device=scores.device)
    # No FMA contraction: `x * scale - shift` rounds like the reference's two ops.
    _unnormalized_softmax_kernel[(rows,)](
        scores, out, sums, cols, scores.stride(0), out.stride(0), scale,
        BLOCK=_BLOCK, num_warps=8, enable_fp_fusion=False,
    )  # fmt: skip
    return out, sums
