"""PyTorch reference dequantisers for GGML's quantised block types (the GGUF files' weights).

Each type packs a run of `block_size` consecutive values of a row into `type_size` bytes: fp16 scale(s), then
small integers (2 to 8 bits each). The "K" types group 256 values into a super-block of 8 or 16 sub-blocks,
each with its own 4-, 6- or 8-bit scale (and min) relative to the super-block's fp16 scale(s).

`dequantize_blocks(blocks, type_name)` takes `(n_blocks, type_size)` uint8 and returns `(n_blocks, block_size)`
float32. The arithmetic is done in float32 in the same order as GGML's own (`x = d * q [+ m]`, or
`(d * sc) * q - (dmin * m)`), one rounding per operation, so the results are bit-identical to llama.cpp's
`gguf.quants.dequantize` (the tests check that) and to the Triton kernels beside this module.
"""

from __future__ import annotations

from typing import Callable

import torch

#: Values per super-block of the K types.
QK_K = 256

#: type name -> (values per block, bytes per block): GGML's block layouts.
BLOCK_LAYOUTS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    "Q2_K": (QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    "Q3_K": (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    "Q4_K": (QK_K, 2 + 2 + 12 + QK_K // 2),
    "Q5_K": (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    "Q6_K": (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
}
QUANTIZED_TYPES = tuple(BLOCK_LAYOUTS)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at byte `start` of every block, as float32 `(n, 1)`."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """`(n, g, 16|...)` bytes -> `(n, g, 2 * ...)`: every low nibble of the group first, then every high one."""
    return torch.cat((packed & 0x0F, packed >> 4), dim=-1)


def _bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """`(n, B)` bytes -> `(n, count)` bits 0..count-1 of the little-endian integer they form."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    return ((packed[:, :, None] >> shifts) & 1).reshape(packed.shape[0], -1)[:, :count]


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 2:18]).to(torch.int16) - 8
    return d * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 4:20]).float()
    return d * q + m


def _q5_low_high(b: torch.Tensor, qh_at: int) -> torch.Tensor:
    low = _nibbles(b[:, qh_at + 4 : qh_at + 20])
    high = _bits(b[:, qh_at : qh_at + 4], 32)
    return (low | (high << 4)).to(torch.int16)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return d * (_q5_low_high(b, 2) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    return d * _q5_low_high(b, 4).float() + m


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return b[:, 2:34].contiguous().view(torch.int8).float() * d


def _crumbs(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """2-bit fields: `(n, groups * 32)` bytes -> `(n, groups * 4, 32)`; field k of each 32-byte group holds bits
    2k..2k+1, and the fields of a group come one after another."""
    shifts = torch.tensor([0, 2, 4, 6], device=packed.device, dtype=torch.uint8)
    grouped = packed.reshape(packed.shape[0], groups, 1, 32) >> shifts[None, None, :, None]
    return (grouped & 3).reshape(packed.shape[0], groups * 4, 32)


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _crumbs(qs, 2).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b, 108)
    # 16 6-bit scales: low 4 bits are the nibbles of bytes 0..7 (all low nibbles first), high 2 bits the
    # crumbs of bytes 8..11 (crumb k of all four bytes, then k+1).
    low = _nibbles(packed[:, :8].reshape(n, 1, 8)).reshape(n, 16)
    shifts = torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8)
    high = ((packed[:, 8:12].reshape(n, 1, 4) >> shifts[None, :, None]) & 3).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int16) - 32).float()
    dl = (d * scales).reshape(n, 16, 1)
    q_low = _crumbs(qs, 2).reshape(n, 16, 16).to(torch.int16)
    bit = torch.arange(8, device=b.device, dtype=torch.uint8)
    q_high = ((hmask.reshape(n, 1, 32) >> bit[None, :, None]) & 1).reshape(n, 16, 16).to(torch.int16)
    # A set high bit means no offset; a clear one subtracts 4.
    q = (q_low - ((q_high ^ 1) << 2)).float()
    return (dl * q).reshape(n, QK_K)


def k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 6-bit scales and mins of a Q4_K/Q5_K super-block from its 12 packed bytes `(n, 12)`: bytes 0..3 and
    4..7 hold the low 6 bits of scales 0..3 and mins 0..3, whose top 2 bits hold the high bits of scales and
    mins 4..7, whose low 4 bits are the nibbles of bytes 8..11."""
    s, m, mixed = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat((s & 0x3F, (mixed & 0x0F) | ((s >> 2) & 0x30)), dim=1)
    mins = torch.cat((m & 0x3F, (mixed >> 4) | ((m >> 2) & 0x30)), dim=1)
    return scales, mins


def _k_scaled(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    scales, mins = k_scales_mins(b[:, 4:16])
    ds = (d * scales.float()).reshape(n, 8, 1)
    dm = (dmin * mins.float()).reshape(n, 8, 1)
    return (ds * q.float() - dm).reshape(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    return _k_scaled(b, _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    low = _nibbles(b[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
    bit = torch.arange(8, device=b.device, dtype=torch.uint8)
    high = ((b[:, 16:48].reshape(n, 1, 32) >> bit[None, :, None]) & 1).reshape(n, 8, 32)
    return _k_scaled(b, low | (high << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b, 208)
    ds = (d * scales.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    low = _nibbles(ql.reshape(n, 2, 64)).reshape(n, 8, 32)
    high = _crumbs(qh, 2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int16) - 32).reshape(n, 16, 16).float()
    return (ds * q).reshape(n, QK_K)


_DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q2_K": _q2_k,
    "Q3_K": _q3_k,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def dequantize_blocks(blocks: torch.Tensor, type_name: str) -> torch.Tensor:
    """`(n_blocks, type_size)` uint8 -> `(n_blocks, block_size)` float32."""
    block_size, type_size = BLOCK_LAYOUTS[type_name]
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] != type_size:
        raise ValueError(f"{type_name} blocks must be uint8 of shape (n, {type_size}), got {blocks.dtype} "
                         f"{tuple(blocks.shape)}")  # fmt: skip
    return _DEQUANTIZERS[type_name](blocks)
