"""How much of the model lives in host memory, and what each phase then holds on the device; without torch, so
the CLI's flags and `seedvr-local plan` answer at once.

An offload level streams the DiT's last `blocks` blocks from host memory (pinned on CUDA) to the device ahead of
use, one block ahead of the one running, so at most two of them are on the device at any time; `full` also keeps
the VAE and the DiT's other weights in host memory and brings each onto the device only for its phases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: What `--offload` accepts (`blocks:N` with N a number of DiT blocks).
OFFLOAD_CHOICES = ("auto", "none", "blocks:N", "full")
#: Stands for "every block" in `OffloadLevel.blocks`.
ALL_BLOCKS = 1 << 30
#: Streamed blocks on the device at once: the one running and the one being copied for the next.
SWAP_BUFFERS = 2
#: Pipeline phases that run the VAE; the DiT runs in "dit", the colour fix in "color_fix".
VAE_PHASES = ("encode", "decode")


@dataclass(frozen=True)
class OffloadLevel:
    """`blocks`: DiT blocks (the last ones) kept in host memory and streamed in at use; `models`: the VAE and the
    DiT's other weights kept in host memory too and moved onto the device only for their phases."""

    blocks: int = 0
    models: bool = False

    def swapped(self, num_blocks: int) -> int:
        """How many of a DiT's `num_blocks` blocks this level streams."""
        return min(self.blocks, num_blocks)

    def describe(self) -> str:
        if self.models:
            return "full"
        return "none" if self.blocks == 0 else f"blocks:{self.blocks}"

    def __str__(self) -> str:
        return self.describe()


NO_OFFLOAD = OffloadLevel()
FULL_OFFLOAD = OffloadLevel(ALL_BLOCKS, models=True)
Offload = OffloadLevel | Literal["auto"]


def parse_offload(value: "str | OffloadLevel") -> Offload:
    """`auto`, `none`, `blocks:N` (N >= 1) or `full` -> "auto" or the level; ValueError (one line) otherwise."""
    if isinstance(value, OffloadLevel) or value == "auto":
        return value
    if value == "none":
        return NO_OFFLOAD
    if value == "full":
        return FULL_OFFLOAD
    name, _, count = str(value).partition(":")
    if name == "blocks" and count.isdigit() and int(count) >= 1:
        return OffloadLevel(int(count))
    raise ValueError(f"offload must be auto, none, blocks:N (N a number of DiT blocks, 1 or more) or full, got {value!r}")


def check_offload(offload: Offload, num_blocks: int) -> None:
    """A `blocks:N` level names at most the DiT's blocks."""
    if isinstance(offload, OffloadLevel) and not offload.models and offload.blocks > num_blocks:
        raise ValueError(f"offload blocks:{offload.blocks} but the DiT has {num_blocks} blocks")


def candidate_levels(num_blocks: int) -> list[OffloadLevel]:
    """Every level, least offload first: none, blocks:1 .. blocks:<all>, full."""
    return [NO_OFFLOAD] + [OffloadLevel(k) for k in range(1, num_blocks + 1)] + [FULL_OFFLOAD]


@dataclass(frozen=True)
class ModelWeights:
    """Bytes of the weights as they sit on the device, by part, and what using them costs besides.

    `dequant_scratch`: the full-precision copy of the largest quantised DiT layer, made at use (0 when the weights
    are stored in the compute dtype). `host_is_device`: the "device" is the host's memory (the CPU), so weights
    kept "in host memory" still count, and streamed blocks count twice while their copy is in use."""

    block_bytes: tuple[int, ...]
    dit_other_bytes: int
    vae_bytes: int
    dequant_scratch: int = 0
    host_is_device: bool = False

    @property
    def total(self) -> int:
        return sum(self.block_bytes) + self.dit_other_bytes + self.vae_bytes

    def swap_buffers(self, level: OffloadLevel) -> int:
        """Device bytes of the streamed blocks during the DiT phase: the largest `SWAP_BUFFERS` of them."""
        swapped = self._swapped(level)
        return sum(sorted(swapped, reverse=True)[:SWAP_BUFFERS])

    def on_device(self, level: OffloadLevel, phase: str) -> int:
        """Weight bytes (swap buffers and dequantisation scratch included) on the device during `phase`."""
        dit_phase = phase == "dit"
        streamed = self.swap_buffers(level) + self.dequant_scratch if dit_phase else 0
        if self.host_is_device:
            return self.total + streamed
        resident_blocks = sum(self.block_bytes) - sum(self._swapped(level))
        dit = resident_blocks + self.dit_other_bytes
        if level.models:
            dit = dit if dit_phase else 0
            vae = self.vae_bytes if phase in VAE_PHASES else 0
        else:
            vae = self.vae_bytes
        return dit + vae + streamed

    def _swapped(self, level: OffloadLevel) -> tuple[int, ...]:
        count = level.swapped(len(self.block_bytes))
        return self.block_bytes[len(self.block_bytes) - count:]
