"""Writing state_dicts as GGUF files in ComfyUI-GGUF's layout, with llama.cpp's `gguf.GGUFWriter`, and
quantisers for the K types gguf-py cannot quantise (it only dequantises them).

Layout: names `<prefix><key>`; 1-D tensors F32; each other tensor in the type `type_for(key, shape)` picks, F16
where its size is not a whole number of blocks; a tensor whose last dim is not a multiple of the block is stored
as rows of one block, its logical shape in `comfy.gguf.orig_shape.<name>`.

The K quantisers here are the plain min/max kind (one pass, no search for the best scales), so their error is
somewhat above llama.cpp's optimising quantiser: a pessimistic stand-in for the published files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch

#: (values, type name) -> the blocks of `values` (rows of whole blocks) in that type's byte shape.
BlockMaker = Callable[[np.ndarray, str], np.ndarray]
COMFY_PREFIX = "model.diffusion_model."


def write_gguf(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    type_for: Callable[[str, tuple[int, ...]], str],
    make_blocks: BlockMaker,
    *,
    prefix: str = COMFY_PREFIX,
) -> dict[str, tuple[str, np.ndarray]]:
    """Write the file; returns key -> (stored type, stored array: the blocks, or the F32/F16 values)."""
    writer = gguf.GGUFWriter(path, arch="seedvr2")
    stored = {}
    for key, tensor in state_dict.items():
        values = tensor.detach().float().numpy()
        name = prefix + key
        type_name = type_for(key, values.shape) if values.ndim >= 2 else "F32"
        if type_name not in ("F32", "F16") and values.size % block_size(type_name):
            type_name = "F16"
        if type_name in ("F32", "F16"):
            array = values.astype(np.float32 if type_name == "F32" else np.float16)
            writer.add_tensor(name, array)
        else:
            size = block_size(type_name)
            rows = values if values.shape[-1] % size == 0 else values.reshape(-1, size)
            if rows.shape != values.shape:
                writer.add_array(f"comfy.gguf.orig_shape.{name}", list(values.shape))
            array = make_blocks(rows, type_name)
            writer.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType[type_name])
        stored[key] = (type_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def block_size(type_name: str) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def quantize_blocks(values: np.ndarray, type_name: str) -> np.ndarray:
    """gguf-py's quantiser where it has one, else this module's K quantisers."""
    if type_name == "Q4_K":
        blocks = quantize_q4_k(values.reshape(-1, 256))
    elif type_name == "Q6_K":
        blocks = quantize_q6_k(values.reshape(-1, 256))
    else:
        return gguf.quants.quantize(values.astype(np.float32), gguf.GGMLQuantizationType[type_name])
    return blocks.reshape(*values.shape[:-1], -1)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """`(n, 256)` float -> `(n, 144)` Q4_K blocks: per 32-value sub-block `x ~ d*sc*q - dmin*m`, q in 0..15."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32).astype(np.float32)
    low = np.minimum(sub.min(axis=2), 0.0)  # the offset is a non-negative multiple of dmin
    step = (sub.max(axis=2) - low) / 15
    d = _fp16_exact(step.max(axis=1) / 63)
    dmin = _fp16_exact(-low.min(axis=1) / 63)
    sc = np.clip(np.round(step / np.where(d > 0, d, 1)[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.round(-low / np.where(dmin > 0, dmin, 1)[:, None]), 0, 63).astype(np.uint8)
    scale = (d[:, None] * sc)[:, :, None]
    offset = (dmin[:, None] * m)[:, :, None]
    q = np.clip(np.round((sub + offset) / np.where(scale > 0, scale, 1)), 0, 15).astype(np.uint8)
    packed_scales = np.zeros((n, 12), dtype=np.uint8)
    packed_scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed_scales[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    packed_scales[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(n, 128)  # sub-blocks 2j (low) and 2j+1 (high)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed_scales, qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """`(n, 256)` float -> `(n, 210)` Q6_K blocks: per 16-value sub-block `x ~ d*sc*q`, q in -32..31."""
    n = x.shape[0]
    sub = x.reshape(n, 16, 16).astype(np.float32)
    step = np.abs(sub).max(axis=2) / 31
    d = _fp16_exact(step.max(axis=1) / 127)
    sc = np.clip(np.round(step / np.where(d > 0, d, 1)[:, None]), -128, 127).astype(np.int8)
    scale = (d[:, None] * sc)[:, :, None]
    q = (np.clip(np.round(sub / np.where(scale != 0, scale, 1)), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)
    # Per half of 128 values, 4 groups of 32: groups 0/1 in the low nibbles of ql bytes 0..63, groups 2/3 in the
    # high nibbles; the top 2 bits of group g in bits 2g..2g+1 of qh bytes 0..31.
    ql = ((q[:, :, 0:2, :] & 15) | ((q[:, :, 2:4, :] & 15) << 4)).reshape(n, 128)
    top = q >> 4
    qh = (top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d)], axis=1)


def _fp16_exact(values: np.ndarray) -> np.ndarray:
    """Values as the fp16 the block will store, so the integers are chosen against the stored scale."""
    return values.astype(np.float16).astype(np.float32)
