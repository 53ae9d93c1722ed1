"""Dequantising GGML blocks: the Triton kernel where the calling model runs the triton backend and one exists
for the type (`triton_dequant.KERNEL_TYPES`), else the PyTorch reference (`ggml_reference`), which covers
every type. Both give the same float32 values, rounded once to the requested dtype."""

from __future__ import annotations

import torch

from seedvr_local.kernels import ggml_reference
from seedvr_local.kernels.backend import use_triton

#: The GGML types a Triton kernel dequantises (kept here so that importing this module needs no triton).
TRITON_TYPES = ("Q8_0", "Q4_K")


def dequantize_ggml(blocks: torch.Tensor, type_name: str, dtype: torch.dtype) -> torch.Tensor:
    """`(n_blocks, type_size)` uint8 -> `(n_blocks, block_size)` values in `dtype`."""
    if type_name in TRITON_TYPES and blocks.numel() and use_triton(blocks):
        from seedvr_local.kernels import triton_dequant

        return triton_dequant.dequantize_blocks(blocks, type_name, dtype)
    return ggml_reference.dequantize_blocks(blocks, type_name).to(dtype)
