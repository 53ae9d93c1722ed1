"""Weight formats and what each costs in memory: the bytes a model's weights take on the device, predicted from
its shapes alone (before anything is downloaded), for the memory planner and the docs.

A format keeps the weight matrices and convolution kernels (2+ dims) compact and the small 1-D tensors (biases,
norms, modulation) in the compute dtype, as loading does (`weights.checkpoint.read_state_dict(keep_quantized=True)`):

- "float": every tensor in the compute dtype (the official fp32 `.pth`, fp16/bf16 conversions: all are cast);
- "fp8", "int8": one byte per value (a scale or two per weight is negligible and not counted);
- "fp8_mixed_block35": numz's 7B fp8 conversion with the last block (35) kept in fp16, cast to the compute dtype;
- a GGUF type: its GGML block size ("Q8_0", "Q4_0", ..., "Q6_K"); the llama.cpp mix names ("Q4_K_M", "Q5_K_S",
  ...) count as their base type, which is what the published SeedVR2 files use for their weight matrices (their
  sizes agree within 1%).

`models.quantized.weight_bytes(module)` measures a loaded model instead.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import torch

from seedvr_local.kernels.ggml_reference import BLOCK_LAYOUTS, QUANTIZED_TYPES

FLOAT = "float"
EIGHT_BIT = ("fp8", "int8")
MIXED_FP8 = "fp8_mixed_block35"
#: The 7B block numz's mixed fp8 conversion keeps in fp16.
_MIXED_BLOCK = "blocks.35."
_GGUF_MIX = re.compile(r"^(?P<base>Q[2-6]_K)_[SML]$")


def gguf_base_type(weights_format: str) -> str | None:
    """The GGML block type of a GGUF format name ("Q4_K_M" -> "Q4_K", "Q8_0" -> "Q8_0"); None for others."""
    if weights_format in QUANTIZED_TYPES:
        return weights_format
    match = _GGUF_MIX.match(weights_format)
    return match["base"] if match else None


def is_known_format(weights_format: str) -> bool:
    return weights_format in (FLOAT, *EIGHT_BIT, MIXED_FP8) or gguf_base_type(weights_format) is not None


def bytes_per_value(weights_format: str, dtype: torch.dtype, key: str = "") -> float:
    """The bytes one value of a 2+-dim weight `key` takes in `weights_format`, computing in `dtype`."""
    base = gguf_base_type(weights_format)
    if base is not None:
        block_size, type_size = BLOCK_LAYOUTS[base]
        return type_size / block_size
    if weights_format in EIGHT_BIT or (weights_format == MIXED_FP8 and not key.startswith(_MIXED_BLOCK)):
        return 1.0
    if weights_format in (FLOAT, MIXED_FP8):
        return torch.empty((), dtype=dtype).element_size()
    raise ValueError(f"unknown weights format {weights_format!r}")


def estimated_weight_bytes(shapes: Mapping[str, Sequence[int]], weights_format: str, dtype: torch.dtype) -> int:
    """The bytes weights of these shapes take loaded in `weights_format` with compute dtype `dtype`."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0.0
    for key, shape in shapes.items():
        values = math.prod(shape)
        total += values * (bytes_per_value(weights_format, dtype, key) if len(shape) >= 2 else itemsize)
    return int(total)
