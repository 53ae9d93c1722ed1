"""Reading GGUF checkpoints (the layout of ComfyUI-GGUF conversions, as the published SeedVR2 `.gguf` files use).

Tensor names are the state_dict keys (wrappers' prefixes are stripped by the caller, as for every format). GGUF
lists dimensions innermost first, so the logical shape is the reverse; a tensor stored reshaped (the 5-D VAE
convolutions are stored flattened to 2-D) has its logical shape in the INT32 array field
`comfy.gguf.orig_shape.<name>`. F32/F16/BF16 tensors are plain values; the others are GGML quantised blocks,
kept packed (`models.quantized.QuantizedTensor`) or dequantised, as the caller asks.

Read with llama.cpp's own `gguf` package: the file is memory-mapped, so shapes are read without touching the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seedvr_local.kernels.ggml_reference import BLOCK_LAYOUTS, QUANTIZED_TYPES
from seedvr_local.models.quantized import QuantizedTensor
from seedvr_local.weights.manifest import Shape

GGUF_SUFFIXES = (".gguf",)
ORIG_SHAPE_FIELD = "comfy.gguf.orig_shape."
#: GGUF's plain float types -> torch dtype.
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class GGUFFormatError(ValueError):
    """A .gguf file that cannot be read as a checkpoint."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str  # as stored
    type_name: str  # GGML type: "F16", "Q4_K", ...
    shape: Shape  # logical (state_dict) shape
    data: np.ndarray  # memory-mapped: raw blocks (uint8) or plain values

    @property
    def quantized(self) -> bool:
        return self.type_name in QUANTIZED_TYPES

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def read_gguf(path: str | Path) -> dict[str, GGUFTensor]:
    """Stored name -> tensor description of every tensor in the file (data memory-mapped, not read)."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as exc:  # bad magic, truncated file, unknown enum values
        text = str(exc).strip().splitlines()
        raise GGUFFormatError(f"{path}: not a readable GGUF file ({text[0] if text else type(exc).__name__})") from None
    tensors = {}
    for tensor in reader.tensors:
        type_name = tensor.tensor_type.name
        if type_name not in QUANTIZED_TYPES and type_name not in _FLOAT_TYPES:
            supported = ", ".join((*_FLOAT_TYPES, *QUANTIZED_TYPES))
            raise GGUFFormatError(f"{path}: tensor {tensor.name} is stored as {type_name}, which is not supported "
                                  f"(supported: {supported})")  # fmt: skip
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        field = reader.get_field(ORIG_SHAPE_FIELD + tensor.name)
        if field is not None:
            orig = tuple(int(n) for n in field.contents())
            if int(np.prod(orig)) != int(tensor.n_elements):
                raise GGUFFormatError(f"{path}: {ORIG_SHAPE_FIELD}{tensor.name} {list(orig)} does not hold the "
                                      f"tensor's {tensor.n_elements} values")  # fmt: skip
            shape = orig
        tensors[tensor.name] = GGUFTensor(tensor.name, type_name, shape, tensor.data)
    return tensors


def gguf_shapes(path: str | Path) -> dict[str, Shape]:
    return {name: tensor.shape for name, tensor in read_gguf(path).items()}


def gguf_types(path: str | Path) -> dict[str, str]:
    return {name: tensor.type_name for name, tensor in read_gguf(path).items()}


def read_gguf_state_dict(
    path: str | Path,
    names: Callable[[list[str]], dict[str, str]],
    dtype_of: Callable[[str], torch.dtype | None],
    *,
    skip: Callable[[str], bool] | None = None,
    keep_quantized: bool = False,
) -> dict[str, torch.Tensor]:
    """The file's tensors on the CPU under the names `names(stored names)` gives.

    Plain tensors are cast to `dtype_of(key)` (None keeps them); quantised ones stay packed as
    `QuantizedTensor`s that dequantise to it (float32 for None) when `keep_quantized`, else are dequantised
    now. Keys for which `skip(key)` is true are not read. One tensor at a time is copied out of the mapped file,
    so memory holds the result and one tensor more.
    """
    tensors = read_gguf(path)
    official = names(list(tensors))
    state_dict = {}
    for stored, tensor in tensors.items():
        key = official[stored]
        if not (skip and skip(key)):
            state_dict[key] = _tensor(tensor, dtype_of(key), keep_quantized)
    return state_dict


def _tensor(tensor: GGUFTensor, dtype: torch.dtype | None, keep_quantized: bool) -> torch.Tensor:
    raw = torch.from_numpy(np.array(tensor.data, copy=True))  # out of the mapping: the file may go away
    if tensor.quantized:
        _, type_size = BLOCK_LAYOUTS[tensor.type_name]
        blocks = raw.reshape(-1, type_size)
        packed = QuantizedTensor(blocks, tensor.type_name, tensor.shape, dtype or torch.float32)
        return packed if keep_quantized else packed.dequantize()
    if tensor.type_name == "BF16":  # gguf-py hands bf16 out as raw bytes
        raw = raw.reshape(-1).view(torch.bfloat16)
    values = raw.reshape(tensor.shape)
    return values.to(dtype) if dtype is not None else values
