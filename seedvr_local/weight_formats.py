"""Bytes per weight of each published weights format, and the bytes of a model's weights in one: the one table
the memory planner and `seedvr-local plan` read. Without torch.

Sizes come from the formats' block layouts: a GGUF Q8_0 block is 32 int8 values and one fp16 scale (34 bytes per
32 weights, 8.5 bits); Q4_0 18 bytes per 32 (4.5 bits); Q4_K 144 bytes per 256 (4.5 bits); Q6_K 210 bytes per 256
(6.5625 bits). Q4_K_M is a mix of Q4_K and Q6_K blocks (some projections keep 6 bits): 4.5 to 4.85 bits per weight
overall, counted here at the upper end, 4.85. fp8 and int8 files store one byte per weight (their per-tensor or
per-row scales are a rounding error).

Per-tensor rule: only matrices are stored in the compact format. A one-dimensional tensor (bias, norm weight) or
one of fewer than `SMALL_TENSOR_ELEMENTS` values is kept in float32 in a GGUF file and in 16 bits in an fp8/int8
one; a matrix whose rows (its last dimension) are not whole blocks of its format is kept in 16 bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

Shape = tuple[int, ...]

#: Tensors smaller than this stay unquantised (a block format gains nothing on them).
SMALL_TENSOR_ELEMENTS = 1024
#: Bytes of one value in the compute dtype a dequantised layer is expanded to (bf16/fp16).
COMPUTE_ITEMSIZE = 2


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: float  # per weight of a matrix stored in this format, scales included
    block: int  # values per block along a row (1: no blocks)
    small_bits: int  # bits per value of the tensors the per-tensor rule keeps unquantised
    quantised: bool  # expanded to the compute dtype layer by layer at use
    about: str

    def compact(self, shape: Shape) -> bool:
        """Whether a tensor of `shape` is stored in this format (else the per-tensor rule keeps it whole)."""
        return len(shape) >= 2 and math.prod(shape) >= SMALL_TENSOR_ELEMENTS and shape[-1] % self.block == 0

    def tensor_bytes(self, shape: Shape) -> int:
        """Bytes of one tensor of `shape` stored in this format, by the per-tensor rule above."""
        count = math.prod(shape)
        if self.compact(shape):
            return math.ceil(count * self.bits / 8)
        if len(shape) < 2 or count < SMALL_TENSOR_ELEMENTS:
            return math.ceil(count * self.small_bits / 8)
        return count * 2  # a matrix whose rows are not whole blocks


FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("fp32", 32, 1, 32, False, "float32, as the official checkpoints"),
        WeightFormat("bf16", 16, 1, 16, False, "bfloat16"),
        WeightFormat("fp16", 16, 1, 16, False, "float16"),
        WeightFormat("fp8", 8, 1, 16, True, "float8 e4m3, one byte per weight, up-cast per layer at use"),
        WeightFormat("int8", 8, 1, 16, True, "int8 with scales, one byte per weight, up-cast per layer at use"),
        WeightFormat("Q8_0", 8.5, 32, 32, True, "GGUF: 32 int8 values and an fp16 scale per block"),
        WeightFormat("Q6_K", 6.5625, 256, 32, True, "GGUF k-quant: 210 bytes per 256 weights"),
        WeightFormat("Q5_K_M", 5.69, 256, 32, True, "GGUF: Q5_K (5.5 bits) with some Q6_K blocks"),
        WeightFormat("Q4_K_M", 4.85, 256, 32, True, "GGUF: Q4_K (4.5 bits) with some Q6_K blocks, upper end"),
        WeightFormat("Q4_0", 4.5, 32, 32, True, "GGUF: 32 4-bit values and an fp16 scale per block"),
        WeightFormat("Q3_K_M", 3.91, 256, 32, True, "GGUF: Q3_K (3.44 bits) with some Q4_K/Q5_K blocks"),
    )
}
#: Smallest last: the order `seedvr-local plan` suggests a smaller format in.
FORMAT_NAMES = tuple(FORMATS)
#: The VAE's weights in `seedvr-local plan`: the published VAE files are 16-bit (and 0.5 GB; the DiT is the rest).
VAE_FORMAT = "bf16"


def weight_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weights format {name!r}; known: {', '.join(FORMAT_NAMES)}") from None


def weights_bytes(shapes: Iterable[Shape], fmt: WeightFormat) -> int:
    return sum(fmt.tensor_bytes(shape) for shape in shapes)


def dequant_scratch(shapes: Iterable[Shape], fmt: WeightFormat) -> int:
    """Bytes of the compute-dtype copy of the largest compact tensor: what expanding one layer at use needs."""
    if not fmt.quantised:
        return 0
    return max((math.prod(s) * COMPUTE_ITEMSIZE for s in shapes if fmt.compact(s)), default=0)


def dit_block_shapes(shapes: Mapping[str, Shape], num_blocks: int) -> tuple[list[list[Shape]], list[Shape]]:
    """A DiT state dict's shapes split into each block's (`blocks.<i>.`) and the rest."""
    blocks: list[list[Shape]] = [[] for _ in range(num_blocks)]
    other: list[Shape] = []
    for key, shape in shapes.items():
        head, index, *_ = key.split(".") + [""]
        (blocks[int(index)] if head == "blocks" and index.isdigit() else other).append(shape)
    return blocks, other
