"""Triton kernels dequantising GGML's Q8_0 and Q4_K blocks (the common GGUF weight types) straight into the
compute dtype.

One program handles `BLOCKS` blocks; every output value reads its block's fp16 scale(s) and its own packed
integer, so the whole tensor is one pass over the raw bytes. The maths is `kernels.ggml_reference`'s, in
float32 and in the same order; fp-fusion is off at launch so that `a * b - c` is not contracted into an FMA and
the results stay bit-identical to the reference. Import only where triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from seedvr_local.kernels.ggml_reference import BLOCK_LAYOUTS

BLOCKS = 8


@triton.jit
def _q8_0_kernel(raw_ptr, out_ptr, n_blocks, BLOCKS: tl.constexpr):
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    ok = blocks < n_blocks
    base = blocks.to(tl.int64) * 34
    low = tl.load(raw_ptr + base, mask=ok, other=0).to(tl.uint16)
    high = tl.load(raw_ptr + base + 1, mask=ok, other=0).to(tl.uint16)
    d = (low | (high << 8)).to(tl.float16, bitcast=True).to(tl.float32)
    cols = tl.arange(0, 32)
    mask = ok[:, None]
    q = tl.load(raw_ptr + base[:, None] + 2 + cols[None, :], mask=mask, other=0).to(tl.int8, bitcast=True)
    value = q.to(tl.float32) * d[:, None]
    tl.store(out_ptr + blocks.to(tl.int64)[:, None] * 32 + cols[None, :], value.to(out_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip


@triton.jit
def _q4_k_kernel(raw_ptr, out_ptr, n_blocks, BLOCKS: tl.constexpr):
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    ok = blocks < n_blocks
    base = blocks.to(tl.int64) * 144
    mask = ok[:, None]
    d_low = tl.load(raw_ptr + base, mask=ok, other=0).to(tl.uint16)
    d_high = tl.load(raw_ptr + base + 1, mask=ok, other=0).to(tl.uint16)
    d = (d_low | (d_high << 8)).to(tl.float16, bitcast=True).to(tl.float32)
    m_low = tl.load(raw_ptr + base + 2, mask=ok, other=0).to(tl.uint16)
    m_high = tl.load(raw_ptr + base + 3, mask=ok, other=0).to(tl.uint16)
    dmin = (m_low | (m_high << 8)).to(tl.float16, bitcast=True).to(tl.float32)

    # Value c of 256 belongs to sub-block c // 32 and reads byte (c // 64) * 32 + c % 32 of the packed nibbles,
    # the low nibble for even sub-blocks. Its sub-block's 6-bit scale and min come from the 12 scale bytes as in
    # ggml_reference.k_scales_mins (the scale bytes are re-read per value: they sit in cache).
    cols = tl.arange(0, 256)
    c_sub = cols // 32
    k = (c_sub % 4)[None, :]
    first = (c_sub < 4)[None, :]
    s_k = tl.load(raw_ptr + base[:, None] + 4 + k, mask=mask, other=0)
    m_k = tl.load(raw_ptr + base[:, None] + 8 + k, mask=mask, other=0)
    mixed = tl.load(raw_ptr + base[:, None] + 12 + k, mask=mask, other=0)
    scale = tl.where(first, s_k & 0x3F, (mixed & 0x0F) | ((s_k >> 2) & 0x30))
    minimum = tl.where(first, m_k & 0x3F, (mixed >> 4) | ((m_k >> 2) & 0x30))
    ds_c = d[:, None] * scale.to(tl.float32)
    dm_c = dmin[:, None] * minimum.to(tl.float32)
    byte = (cols // 64) * 32 + cols % 32
    packed = tl.load(raw_ptr + base[:, None] + 16 + byte[None, :], mask=mask, other=0)
    q = ((packed >> ((c_sub % 2) * 4).to(tl.uint8)[None, :]) & 0x0F).to(tl.float32)
    value = ds_c * q - dm_c
    tl.store(out_ptr + blocks.to(tl.int64)[:, None] * 256 + cols[None, :], value.to(out_ptr.dtype.element_ty),
             mask=mask)  # fmt: skip


#: The types dequantised here (`kernels.dequant.TRITON_TYPES` routes them; the tests check the two agree).
_KERNELS = {"Q8_0": _q8_0_kernel, "Q4_K": _q4_k_kernel}
KERNEL_TYPES = tuple(_KERNELS)


def dequantize_blocks(blocks: torch.Tensor, type_name: str, dtype: torch.dtype) -> torch.Tensor:
    """`(n_blocks, type_size)` uint8 -> `(n_blocks, block_size)` in `dtype` (the reference's float32 values,
    rounded once)."""
    block_size, _ = BLOCK_LAYOUTS[type_name]
    blocks = blocks.contiguous()
    n_blocks = blocks.shape[0]
    out = torch.empty((n_blocks, block_size), dtype=dtype, device=blocks.device)
    if n_blocks:
        grid = (triton.cdiv(n_blocks, BLOCKS),)
        _KERNELS[type_name][grid](blocks, out, n_blocks, BLOCKS=BLOCKS, enable_fp_fusion=False)
    return out
