"""Triton kernel for RoPE on q/k: adjacent-pair rotation of the first `2 * pairs` head dims (the model's
`rope.rotate_pairs`), optionally gathering the token rows (a window's tokens) in the same pass.

One program handles one token: it loads that token's cos/sin row once and rotates every head with it, reading
and writing whole head rows (the pairs are split apart in registers, so memory accesses stay contiguous; loading
the even and odd dims separately ran at 197 GB/s on an H100). The dims past the rotated ones are copied, so the
output is a complete q or k and can be written straight into a slice of a preallocated attention input (`out=`).
Import only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(
    x_ptr, idx_ptr, cos_ptr, sin_ptr, out_ptr,
    seq, heads, dim, pairs,
    x_sb, x_ss, x_sh, idx_sb, idx_ss, cos_ss, sin_ss, out_sb, out_ss, out_sh,
    HAS_INDEX: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = (pid // seq).to(tl.int64)
    s = (pid % seq).to(tl.int64)
    if HAS_INDEX:
        token = tl.load(idx_ptr + b * idx_sb + s * idx_ss).to(tl.int64)
        x_base = x_ptr + token * x_ss
    else:
        x_base = x_ptr + b * x_sb + s * x_ss
    out_base = out_ptr + b * out_sb + s * out_ss

    d = tl.arange(0, BLOCK_D)
    j = tl.arange(0, BLOCK_D // 2)
    rotated = j < pairs
    cos = tl.load(cos_ptr + s * cos_ss + j, mask=rotated, other=1.0).to(tl.float32)
    sin = tl.load(sin_ptr + s * sin_ss + j, mask=rotated, other=0.0).to(tl.float32)
    for h0 in range(0, heads, BLOCK_H):
        hh = h0 + tl.arange(0, BLOCK_H)
        mask = (hh < heads)[:, None] & (d < dim)[None, :]
        # Whole head rows in and out (contiguous, vectorised accesses), split into pairs in registers.
        x = tl.load(x_base + hh[:, None] * x_sh + d[None, :], mask=mask, other=0.0).to(tl.float32)
        even, odd = tl.split(tl.reshape(x, (BLOCK_H, BLOCK_D // 2, 2)))
        # `where`, not cos=1/sin=0, on the copied dims: inf * 0 would turn a copied inf into nan.
        new_even = tl.where(rotated[None, :], even * cos[None, :] - odd * sin[None, :], even)
        new_odd = tl.where(rotated[None, :], odd * cos[None, :] + even * sin[None, :], odd)
        y = tl.reshape(tl.join(new_even, new_odd), (BLOCK_H, BLOCK_D))
        tl.store(out_base + hh[:, None] * out_sh + d[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _table(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 3:  # the model's per-head form (S, 1, P)
        t = t.squeeze(1)
    return t if t.stride(-1) == 1 else t.contiguous()


def launch_config(heads: int, dim: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_D): a block of heads x a whole head per loop step."""
    block_d = max(2, triton.next_power_of_2(dim))
    return max(1, min(triton.next_power_of_2(heads), 4096 // block_d)), block_d


def _as_4d(t: torch.Tensor, seq: int) -> torch.Tensor:
    """`(..., S, heads, D)` -> `(batch, S, heads, D)`, a view whenever the leading dims allow one."""
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        return t.unsqueeze(0)
    return t.reshape(-1, seq, *t.shape[-2:])


def rotate_pairs(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    index: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """See `kernels.rotate_pairs`. `x` needs an even head dim."""
    if out is not None and out.stride(-1) != 1:
        # The kernel writes head dims contiguously: go through a temporary for an exotic `out`.
        return out.copy_(rotate_pairs(x, cos, sin, index=index))
    cos, sin = _table(cos), _table(sin)
    seq, pairs = cos.shape
    heads, dim = x.shape[-2], x.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if index is not None:
        # x: flat tokens (N, heads, D); index (..., S) picks the tokens of each sequence.
        shape = (*index.shape, heads, dim)
        idx = index.reshape(-1, seq)
        batch = idx.shape[0]
        x_sb, x_ss, x_sh = 0, x.stride(0), x.stride(1)
        idx_sb, idx_ss = idx.stride(0), idx.stride(1)
    else:
        shape = x.shape
        x3 = _as_4d(x, seq)
        batch = x3.shape[0]
        x, (x_sb, x_ss, x_sh) = x3, x3.stride()[:3]
        idx, idx_sb, idx_ss = x, 0, 0
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    out4 = _as_4d(out, seq) if out.dim() <= 4 else out.view(-1, seq, heads, dim)  # view: the kernel writes out
    block_h, block_d = launch_config(heads, dim)
    # No FMA contraction: every product rounds to fp32 as in the op-by-op reference.
    _rope_kernel[(batch * seq,)](
        x, idx, cos, sin, out4,
        seq, heads, dim, pairs,
        x_sb, x_ss, x_sh, idx_sb, idx_ss, cos.stride(0), sin.stride(0), *out4.stride()[:3],
        HAS_INDEX=index is not None, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4, enable_fp_fusion=False,
    )  # fmt: skip
    return out
