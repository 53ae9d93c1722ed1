"""The weights formats: each one's name, block layout and the bytes a model's weights take on the device in it.
The one table the loader (`weights.gguf_reader`, `models.quantized`), the memory planner, `seedvr-local plan`
and the docs read (`plan --weights-format` takes its names). Without torch, so `plan --help` stays light.

GGML's block layouts (the GGUF files' quantised types) are exact: Q8_0 packs 32 int8 values and an fp16 scale
into 34 bytes (8.5 bits a weight), Q4_0 18 bytes per 32 (4.5 bits), Q4_K 144 bytes per 256 (4.5 bits), Q6_K 210
per 256 (6.5625 bits). The llama.cpp mix names ("Q4_K_M", "Q5_K_S", ...) count as their base type, which is what
the published SeedVR2 files use for their weight matrices (their sizes agree within 0.5%). fp8 and int8 weights
take one byte a value (their per-tensor or per-row scales are a rounding error and not counted).

Per-tensor rule, as the converters write the published files and as loading keeps them:

- a tensor is stored compact when it has 2+ dimensions, at least `SMALL_TENSOR_ELEMENTS` values, and rows (its
  last dimension) of whole blocks; numz's mixed fp8 7B keeps its last block (`blocks.35.`) in 16 bits;
- every other tensor is plain, and loading casts it to the compute dtype (the 16- and 32-bit formats: every
  tensor). The DiT's modulation vectors, which loading keeps in float32, are counted in the compute dtype too
  (a few MB of the 7B's 8 billion weights).

`models.quantized.weight_bytes(module)` measures a loaded model instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

Shape = Sequence[int]

#: Values per super-block of GGML's K types.
QK_K = 256
#: GGML type name -> (values per block, bytes per block).
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
#: Tensors smaller than this stay plain (a block format gains nothing on them).
SMALL_TENSOR_ELEMENTS = 1024
#: numz's mixed fp8 7B conversion keeps this block in fp16.
_MIXED_FP8_BLOCK = "blocks.35."


@dataclass(frozen=True)
class WeightFormat:
    """A weights format: `block` values packed into `block_bytes` bytes (None: plain, in the compute dtype)."""

    name: str
    about: str
    block: int = 1
    block_bytes: int | None = None
    plain_keys: str | None = None  # a key prefix the format keeps plain

    @property
    def quantised(self) -> bool:
        """Whether its weights stay packed on the device and are expanded to the compute dtype layer by layer."""
        return self.block_bytes is not None

    @property
    def bits(self) -> float:
        """Bits a compact weight takes (0 for the plain formats: they take the compute dtype's)."""
        return 8 * self.block_bytes / self.block if self.quantised else 0.0

    def compact(self, shape: Shape, key: str = "") -> bool:
        """Whether the tensor `key` of `shape` is stored in this format (else it is plain, by the rule above)."""
        if not self.quantised or (self.plain_keys and key.startswith(self.plain_keys)):
            return False
        return len(shape) >= 2 and math.prod(shape) >= SMALL_TENSOR_ELEMENTS and shape[-1] % self.block == 0

    def tensor_bytes(self, shape: Shape, itemsize: int, key: str = "") -> int:
        """Device bytes of the tensor `key` of `shape` loaded computing in a dtype of `itemsize` bytes."""
        count = math.prod(shape)
        if self.compact(shape, key):
            return count // self.block * self.block_bytes
        return count * itemsize


#: llama.cpp's mixes of a K type ("Q4_K_M": mostly Q4_K blocks), counted as their base type.
_GGUF_MIXES = {"Q5_K": "SM", "Q4_K": "SM", "Q3_K": "SML", "Q2_K": "S"}


def _gguf_types() -> list[WeightFormat]:
    """Every GGML block type and its mixes, the largest first."""
    formats = []
    for base in sorted(QUANTIZED_TYPES, key=lambda t: -BLOCK_LAYOUTS[t][1] / BLOCK_LAYOUTS[t][0]):
        block, block_bytes = BLOCK_LAYOUTS[base]
        about = f"GGUF {base}: {block_bytes} bytes per {block} weights"
        formats.append(WeightFormat(base, about, block, block_bytes))
        mixes = [f"{base}_{size}" for size in _GGUF_MIXES.get(base, "")]
        formats += [WeightFormat(mix, f"GGUF mix counted as {base}", block, block_bytes) for mix in mixes]
    return formats


#: Name -> format, the most precise first: the 16- and 32-bit formats, the 8-bit ones, the GGUF types from the
#: largest to the smallest (the order `seedvr-local plan` suggests a smaller format in).
FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat("fp32", "float32, as the official checkpoints (loaded in the compute dtype)"),
        WeightFormat("bf16", "bfloat16 (loaded in the compute dtype)"),
        WeightFormat("fp16", "float16 (loaded in the compute dtype)"),
        WeightFormat("fp8", "float8 e4m3fn or e5m2, scaled or not: one byte a weight, up-cast per layer", 1, 1),
        WeightFormat("int8", "int8 with scales: one byte a weight, up-cast per layer", 1, 1),
        WeightFormat("fp8_mixed_block35", "numz's 7B fp8 with block 35 in fp16", 1, 1, _MIXED_FP8_BLOCK),
        *_gguf_types(),
    )
}
FORMAT_NAMES = tuple(FORMATS)
#: The VAE's weights in `seedvr-local plan`: the published VAE files are 16-bit (0.5 GB; the DiT is the rest).
VAE_FORMAT = "bf16"


def weight_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weights format {name!r}; known: {', '.join(FORMAT_NAMES)}") from None


def estimated_weight_bytes(shapes: Mapping[str, Shape], weights_format: str, dtype) -> int:
    """The bytes weights of these shapes (key -> shape) take loaded in `weights_format`, computing in `dtype` (a
    torch dtype, or its size in bytes)."""
    fmt, itemsize = weight_format(weights_format), getattr(dtype, "itemsize", dtype)
    return sum(fmt.tensor_bytes(shape, itemsize, key) for key, shape in shapes.items())


def dequant_scratch(shapes: Mapping[str, Shape], weights_format: str, dtype) -> int:
    """Bytes of the compute-dtype copy of the largest compact tensor: what expanding one layer at use takes on a
    GPU, where the dequantising kernels write the compute dtype directly (0 for the plain formats)."""
    fmt, itemsize = weight_format(weights_format), getattr(dtype, "itemsize", dtype)
    return max((math.prod(s) * itemsize for k, s in shapes.items() if fmt.compact(s, k)), default=0)


def dit_block_shapes(shapes: Mapping[str, Shape], num_blocks: int) -> tuple[list[dict[str, Shape]], dict[str, Shape]]:
    """A DiT state dict's shapes split into each block's (`blocks.<i>.`) and the rest."""
    blocks: list[dict[str, Shape]] = [{} for _ in range(num_blocks)]
    other: dict[str, Shape] = {}
    for key, shape in shapes.items():
        head, index, *_ = key.split(".") + [""]
        (blocks[int(index)] if head == "blocks" and index.isdigit() else other)[key] = shape
    return blocks, other

