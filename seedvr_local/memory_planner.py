"""How much memory a restoration needs, per phase, and the VAE tiling that makes it fit.

The model predicts the peak memory *above what is already allocated* (the weights) of each pipeline phase for an
output of `width x height` and `frames` frames, a model size, a dtype and a VAE tiling:

* **encode / decode**: the VAE. Its peak is computed by walking the very op lists that the tiled VAE executes
  (`seedvr_local/vae_tiling.py`): the full-frame tensors kept between segments ("cuts"), plus the largest set of
  tensors alive at any op of the biggest tile (halos included), plus the attention's keys and values. One factor
  per execution path (`_KAPPA`) covers the allocator and temporaries the walk does not name; it is fitted to the
  measurements in `CALIBRATION` (CPU RSS, float32, full-size VAE with random weights), which
  `python -m benchmarks.memory` re-measures and prints next to the model's prediction.
* **dit**: `_DIT_VALUES_PER_TOKEN` values of width `vid_dim` per latent token (window attention keeps attention
  linear in the token count), measured.
* **color_fix**: `_COLOR_FIX_VALUES_PER_PIXEL` float32 values per output pixel, measured.

On the CPU the model counts on `use_mmap_for_large_cpu_tensors()` (the `Upscaler` calls it); CUDA predictions
use the same walk in the model's dtype, checked against the few GPU measurements in `CUDA_CALIBRATION` (CUDA's
max allocated, which `benchmarks/memory.py --device cuda` measures): they err on the safe side there.

`MemoryPlanner.plan` picks the VAE tiling for a request: untiled when that fits, otherwise the least recomputation
that fits (`store_scale` 1, 2, 4, then 8) with the largest tile that fits, and refuses up front with a one-line
`MemoryPlanError` that names the largest output that would fit.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.models.vae_blocks import CausalConv3d, attention_chunk_bytes
from seedvr_local.vae_tiling import (
    ATTENTION_KV_BLOCK_BYTES,
    STORE_SCALES,
    Block,
    Segment,
    VAETiling,
    decoder_blocks,
    encoder_blocks,
    required_regions,
    scaled_region,
    segments,
    size_after as _size_after,
    tile_spans,
)

if TYPE_CHECKING:
    from seedvr_local.models.nadit import DiTConfig
    from seedvr_local.pipeline import RestorationPipeline

GiB = 1024**3
MiB = 1024**2
PAD = 16  # the pipeline pads the output to a multiple of 16 (VAE 8 x DiT patch 2)

VaeTile = int | Literal["auto"]
Phase = Literal["encode", "dit", "decode", "color_fix"]
PHASES: tuple[Phase, ...] = ("encode", "dit", "decode", "color_fix")

#: Tile sizes `auto` tries, largest first. Below 128 pixels the halos cost more than the tile.
AUTO_TILES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128)

#: Multipliers on the op-walk's byte count for what it does not name (oneDNN's layout copies of some convs,
#: allocator rounding): whole frames, and the working set of one tile (cuts are exact and not multiplied).
_KAPPA = {"untiled": 1.0, "tile": 1.2}
#: DiT activations per latent token (after the 2x2 patch), in values of width `vid_dim`. Measured with the 3B
#: width and random weights on the CPU (`python -m benchmarks.memory --dit-layers N`): 13.1 values in float32
#: (0.15 / 0.53 / 2.05 GiB at 512^2 / 1024^2 / 2048^2, 2 layers) and 14.3 in bfloat16 (0.28 GiB at 1024^2); the
#: same 0.53 / 0.54 GiB with 1 and 3 layers at 1024^2, so nothing is kept across layers. The SwiGLU MLP's two
#: 4x-wide projections and their product are the peak: the packed window layout of the CUDA attention stays
#: below it (`--attention per_window`, which packs the same way: 0.53 GiB at 1024^2 with 2 layers, as SDPA's).
_DIT_VALUES_PER_TOKEN = 15.0
#: Colour fix working set, float32 values per output pixel and frame, measured at 1024^2 with content and style
#: allocated inside the window: lab 39.6, wavelet 34.6, adain 12.5, none 9.0 (the largest is used).
_COLOR_FIX_VALUES_PER_PIXEL = 40


@dataclass(frozen=True)
class Measurement:
    """One measured peak (bytes above the weights) of the full-size VAE, float32, square image, on the CPU."""

    phase: str  # "encode" or "decode"
    side: int  # pixels
    tiling: str  # "untiled" or "TILE/STORE_SCALE"
    measured: int
    seconds: float


#: The measurements behind `_KAPPA`: `python -m benchmarks.memory` (the default series) on `CALIBRATION_MACHINE`,
#: peak resident memory above the weights of each phase in a fresh process, and its seconds. With the factors
#: above the model predicts each within `CALIBRATION_TOLERANCE` (tested); it errs on the high side for tiles.
CALIBRATION: tuple[Measurement, ...] = (
    Measurement("decode", 256, "untiled", 277_368_832, 5.9),
    Measurement("encode", 256, "untiled", 213_413_888, 2.6),
    Measurement("decode", 256, "256/8", 261_332_992, 12.0),
    Measurement("encode", 256, "256/8", 180_699_136, 5.4),
    Measurement("decode", 512, "untiled", 1_028_030_464, 22.0),
    Measurement("encode", 512, "untiled", 821_190_656, 10.0),
    Measurement("decode", 512, "256/8", 425_947_136, 264.1),
    Measurement("encode", 512, "256/8", 308_293_632, 66.2),
    Measurement("decode", 512, "512/1", 1_026_736_128, 22.2),
    Measurement("encode", 512, "512/1", 686_383_104, 9.8),
    Measurement("decode", 1024, "untiled", 4_049_227_776, 97.3),
    Measurement("encode", 1024, "untiled", 3_245_932_544, 44.4),
    Measurement("decode", 1024, "256/8", 488_386_560, 1102.4),
    Measurement("encode", 1024, "256/8", 402_305_024, 261.6),
    Measurement("decode", 1024, "512/1", 2_042_138_624, 173.7),
    Measurement("encode", 1024, "512/1", 1_239_662_592, 101.0),
    Measurement("decode", 2048, "untiled", 16_132_644_864, 649.9),
    Measurement("encode", 2048, "untiled", 12_947_431_424, 230.1),
)
CALIBRATION_TOLERANCE = (0.10, 0.25)  # at most 10% under a measurement (unsafe) and 25% over it (wasteful)
CALIBRATION_MACHINE = "AMD EPYC, 2 threads (shared), 23 GiB, torch 2.13.0+cpu, float32"

#: CUDA max allocated above the weights, bfloat16, the same VAE with random weights, each phase in a fresh
#: process (`python -m benchmarks.memory --device cuda --sizes 2048 --tilings untiled,512/1`, cut off by the
#: lease after three rows). The model, fitted on the CPU, predicts 13-47% above these (tested: never under
#: them): safe but conservative on a GPU; more CUDA measurements would let it fit its own factors.
CUDA_CALIBRATION: tuple[Measurement, ...] = (
    Measurement("encode", 2048, "untiled", 7_541_948_928, 1.15),
    Measurement("decode", 2048, "untiled", 10_240_524_288, 1.23),
    Measurement("encode", 2048, "512/1", 1_726_065_152, 0.85),
)
CUDA_CALIBRATION_MACHINE = "NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, bfloat16, 2026-11-26"


class MemoryPlanError(ValueError):
    """A request that cannot run in the memory available at any VAE tile size. `str()` is one line that names
    the largest output (same aspect ratio) that would fit; `largest` is that `(width, height)`, or None."""

    def __init__(self, message: str, needed: int, available: int, largest: tuple[int, int] | None):
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.largest = largest


class RunOutOfMemoryError(RuntimeError):
    """The device ran out of memory although the plan predicted a fit, and the retry with a more frugal plan
    did too (or there was none). One line; the process is left clean for the next job."""

    @classmethod
    def after(cls, plan: "RunPlan", retry: "RunPlan | None", device: torch.device) -> "RunOutOfMemoryError":
        tried = plan.describe_tiling() + ("" if retry is None else f", then {retry.describe_tiling()}")
        return cls(
            f"ran out of memory on {device.type} for a {plan.width}x{plan.height} output ({tried}); other "
            "processes may be using the memory: try again, or ask for a smaller output"
        )


@dataclass(frozen=True)
class RunPlan:
    """What to run a request with, and the predicted peak memory above the weights of each phase."""

    width: int
    height: int
    frames: int
    vae_tiling: VAETiling | None  # None: untiled
    phase_bytes: dict[str, int] = field(compare=False)
    budget: int  # bytes the plan had to fit in

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_bytes.values())

    def describe_tiling(self) -> str:
        tiling = self.vae_tiling
        if tiling is None:
            return "untiled VAE"
        return f"VAE tiles of {tiling.core} px, store scale {tiling.store_scale}" + (", offloaded" * tiling.offload)

    def describe(self) -> str:
        return f"{self.describe_tiling()}; peak about {self.peak_bytes / GiB:.2f} GiB of {self.budget / GiB:.2f} GiB"


def available_memory(device: torch.device | str) -> int:
    """Bytes this process can still allocate on `device`: on CUDA the driver's free memory plus what PyTorch's
    cache holds unused; on the CPU `MemAvailable` (and the cgroup limit, when lower)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
CPU_MMAP_THRESHOLD = 1 * MiB


def use_mmap_for_large_cpu_tensors(threshold: int = CPU_MMAP_THRESHOLD) -> bool:
    """Make glibc serve every CPU allocation of `threshold` bytes or more with its own mmap, returned to the
    system when freed. By default glibc raises that threshold (up to 32 MiB) as large blocks are freed, so the
    many differently sized tile tensors of a tiled VAE land on the heap and fragment it: measured on a 256 x 256
    tiled encode, 0.39 GiB resident instead of 0.10 GiB, at the same speed. Process-wide; the planner's CPU
    predictions assume it. Returns False where it is not available (not glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- the VAE walk


@dataclass
class _Shape:
    channels: int
    frames: int


def _op_shapes(segment: Segment, channels: int, frames: int) -> list[_Shape]:
    """Channels and frames at every op boundary of `segment` (`shapes[i]` is the input of op i)."""
    shapes = [_Shape(channels, frames)]
    for op in segment.ops:
        c, t = shapes[-1].channels, shapes[-1].frames
        if op.kind == "conv":
            c = op.module.out_channels
        elif op.kind == "down":
            c = op.module.conv.out_channels
            if op.module.conv.stride[0] == 2:
                t = (t - 1) // 2 + 1
        elif op.kind == "up":
            c = op.module.conv.out_channels
            if op.module.temporal_ratio == 2:
                t = 2 * t - 1
        shapes.append(_Shape(c, t))
    return shapes


def _segment_output(segment: Segment, channels: int, frames: int) -> _Shape:
    if segment.attention is not None:
        return _Shape(channels, frames)
    return _op_shapes(segment, channels, frames)[-1]


def _extents(
    segment: Segment, rows: list[tuple[int, int]], columns: list[tuple[int, int]], image_size: tuple[int, int]
) -> list[tuple[int, int]]:
    """The largest (rows, columns) of any tile's region at every op boundary of the final pass. Regions are
    separable, so the row extents come from one column of tiles and the column extents from one row."""
    best = [(0, 0)] * (len(segment.ops) + 1)
    for r, c in [(r, columns[0]) for r in rows] + [(rows[0], c) for c in columns]:
        target = scaled_region((*r, *c), image_size, segment.sizes[-1])
        regions = required_regions(segment.ops, segment.sizes, target)
        best = [
            (max(b[0], reg[1] - reg[0]), max(b[1], reg[3] - reg[2])) for b, reg in zip(best, regions)
        ]
    return best


def _walk_bytes(
    segment: Segment, shapes: list[_Shape], extents: list[tuple[int, int]], itemsize: int, tiled: bool
) -> int:
    """The most bytes alive at any op of one run of `segment` over tensors of the given extents: the op's input
    and output, its temporaries, and the ResNet input kept for the residual connection."""
    n = [s.channels * s.frames * e[0] * e[1] for s, e in zip(shapes, extents)]
    fp32_copy = 4 if itemsize < 4 else 0  # a norm's float32 copy of a half-precision input
    peak, residual, input_is_residual = 0, 0, False
    for i, op in enumerate(segment.ops):
        x, y = n[i] * itemsize, n[i + 1] * itemsize
        frames = shapes[i].frames
        if op.kind == "push":
            residual, input_is_residual = x, True
            continue
        held = 0 if input_is_residual else residual
        input_is_residual = False
        if op.kind == "norm":
            if tiled:  # kernels' reference with given statistics: the output; in half precision also a float
                # copy, the float32 result and its cast (the Triton kernel on a GPU needs the output alone)
                live = x + y + (8 * n[i] + y if itemsize < 4 else 0)
            else:  # FrameGroupNorm: output plus one frame's float32 temporaries, then SiLU out of place
                live = x + 2 * y + n[i] // frames * (fp32_copy + 4)
        elif op.kind == "conv":
            # oneDNN reorders the input (and the weights) into its blocked layout: one more input-sized tensor
            live = 2 * x + y + _weight_bytes(op.module, itemsize)
            if frames > 1 and op.module.head_frames:
                live += x * (frames + op.module.head_frames) // frames  # causal head frames (torch.cat)
        elif op.kind == "add":
            live = x + y
            if op.module is not None:  # the shortcut conv's output, its input reordered (and, cropped, copied)
                live += y + residual * (2 if tiled else 1)
            residual = 0
        elif op.kind == "down":
            live = 3 * x + y  # input, its right/bottom pad, the conv's reordered input, output
        elif op.kind == "up":
            live = x + 3 * y  # input, the shuffled upscale_conv output, the conv's reordered input, output
        else:
            raise AssertionError(op.kind)
        peak = max(peak, held + live)
    return peak


def _attention_bytes(shape: _Shape, size: tuple[int, int], itemsize: int, tiled: bool, chunk_bytes: int) -> int:
    n = _full_bytes(shape, size, itemsize)
    tokens = size[0] * size[1]
    # one block of scores and their softmax (`vae_blocks.query_chunks`; CPU SDPA does not even materialise it) ...
    per_query = 2 * 4 * shape.frames * tokens
    scores = min(tokens, max(1, chunk_bytes // per_query)) * per_query
    if not tiled:  # ... or the float32 normalised tokens of the untiled attention
        return 6 * n + max(scores, 2 * 4 * n // itemsize)
    # ... or four float32 copies of a token block while the keys and values are computed (measured)
    block = 4 * min(ATTENTION_KV_BLOCK_BYTES, 4 * n // itemsize)
    # tiled: the cut (updated in place), keys, values; untiled: x, tokens, keys, values, output, x + output
    return 3 * n + max(scores, block)


def _weight_bytes(conv: CausalConv3d, itemsize: int) -> int:
    return conv.weight.numel() * itemsize


def _image_weight_bytes(segment: Segment, itemsize: int) -> int:
    """The summed 2-D weights a tiled segment keeps for single-frame convs (`_TileRun.padded_conv`)."""
    convs = [op.module for op in segment.ops if op.kind == "conv"]
    convs += [op.module.conv for op in segment.ops if op.kind in ("up", "down")]
    return sum(c.weight.numel() // c.kernel_size[0] for c in convs) * itemsize


def _full_bytes(shape: _Shape, size: tuple[int, int], itemsize: int) -> int:
    return shape.channels * shape.frames * size[0] * size[1] * itemsize


def _single(block: Block, size: tuple[int, int]) -> Segment:
    sizes = [size]
    for op in block.ops:
        sizes.append(_size_after(op, sizes[-1]))
    return Segment([block], block.ops, sizes)


class VAEMemoryModel:
    """Predicted peak bytes of one VAE encode or decode on top of the weights (see the module docstring)."""

    def __init__(self, config: VAEConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.attention_chunk = attention_chunk_bytes(torch.device(device))

    @cached_property
    def _vae(self) -> VideoAutoencoder:
        with torch.device("meta"):
            return VideoAutoencoder.from_vae_config(self.config)

    def blocks(self, phase: str) -> list[Block]:
        return encoder_blocks(self._vae) if phase == "encode" else decoder_blocks(self._vae)

    def bytes(
        self, phase: str, frames: int, height: int, width: int, tiling: VAETiling | None, itemsize: int
    ) -> int:
        """Peak bytes of `phase` ("encode" or "decode") of a `frames x height x width` video (height and width
        multiples of 8, frames 4n + 1), its input and output included."""
        cfg = self.config
        factor = cfg.spatial_downsample_factor
        latent_frames = (frames - 1) // cfg.temporal_downsample_factor + 1
        image_size = (height, width)
        pixels = cfg.out_channels * frames * height * width * itemsize
        latent = cfg.latent_channels * latent_frames * (height // factor) * (width // factor) * itemsize
        if phase == "encode":
            size, shape, outside = image_size, _Shape(cfg.in_channels, frames), pixels + 2 * latent
        else:
            size, shape, outside = (height // factor, width // factor), _Shape(cfg.latent_channels, latent_frames), latent + pixels
        blocks = self.blocks(phase)
        if tiling is None:
            # Temporal slicing: the first chunk is the largest (5 frames in, 2 latent frames); the chunks'
            # outputs are concatenated at the end (one more output).
            split = cfg.slicing_sample_min_size // (1 if phase == "encode" else cfg.temporal_downsample_factor)
            chunk = _Shape(shape.channels, min(shape.frames, split + 1))
            concatenation = (2 * latent if phase == "encode" else pixels) if shape.frames > chunk.frames else 0
            work = self._untiled(blocks, size, chunk, itemsize)
            return outside + concatenation + int(_KAPPA["untiled"] * work)
        return outside + self._tiled(blocks, size, image_size, shape, itemsize, tiling)

    def _untiled(
        self, blocks: list[Block], size: tuple[int, int], shape: _Shape, itemsize: int,
        group: dict[str, int] | None = None,
    ) -> int:  # fmt: skip
        """Whole frames, block after block. In the module forward a container (`down1`, `mid`, `up2`) keeps its
        input alive while its blocks run (the caller's loop variable still refers to it); in a single-tile run
        (`vae_tiling._whole`) a segment does, `group` naming each block's segment."""
        peak, container, container_input = 0, None, 0
        for block in blocks:
            if group is not None:
                name = str(group[block.name])
            else:
                name = block.name.split(".")[0] if "." in block.name else None
            if name != container:
                container, container_input = name, _full_bytes(shape, size, itemsize)
                held = 0
            else:
                held = container_input if name is not None else 0
            segment = _single(block, size)
            if block.attention is not None:  # a single-tile run uses the in-place attention too
                work = _attention_bytes(shape, size, itemsize, group is not None, self.attention_chunk)
            else:
                shapes = _op_shapes(segment, shape.channels, shape.frames)
                work = _walk_bytes(segment, shapes, segment.sizes, itemsize, tiled=False)
            peak = max(peak, held + work)
            shape, size = _segment_output(segment, shape.channels, shape.frames), segment.sizes[-1]
        return peak

    def _tiled(
        self, blocks: list[Block], size: tuple[int, int], image_size: tuple[int, int], shape: _Shape,
        itemsize: int, tiling: VAETiling,
    ) -> int:  # fmt: skip
        rows, columns = tile_spans(image_size[0], tiling.core), tile_spans(image_size[1], tiling.core)
        parts = segments(blocks, size, image_size, tiling.store_scale)
        if len(rows) * len(columns) == 1:  # every segment runs whole, as untiled but without temporal slicing
            group = {block.name: k for k, part in enumerate(parts) for block in part.blocks}
            return int(_KAPPA["untiled"] * self._untiled(blocks, size, shape, itemsize, group))
        peak = 0
        for segment in parts:
            out = _segment_output(segment, shape.channels, shape.frames)
            if segment.attention is not None:
                total = _attention_bytes(shape, segment.sizes[0], itemsize, True, self.attention_chunk)
            else:
                cuts = _full_bytes(shape, segment.sizes[0], itemsize) + _full_bytes(out, segment.sizes[-1], itemsize)
                shapes = _op_shapes(segment, shape.channels, shape.frames)
                work = _walk_bytes(segment, shapes, _extents(segment, rows, columns, image_size), itemsize, tiled=True)
                if shape.frames == 1:
                    work += _image_weight_bytes(segment, itemsize)
                total = cuts + int(_KAPPA["tile"] * work)
            peak = max(peak, total)
            shape = out
        return peak


# ----------------------------------------------------------------------------------------------- the planner


def _padded(n: int) -> int:
    return -(-n // PAD) * PAD


def _frames_padded(frames: int) -> int:
    """The 4n+1 frame count the pipeline pads a clip to (`pipeline.pad_frames`)."""
    if frames == 1:
        return 1
    return 5 if frames <= 4 else frames + (-(frames - 1)) % 4


class MemoryPlanner:
    """Peak memory per phase of one restoration with a given VAE and DiT on one device, and the plan that fits.

    `dit_config=None` leaves the DiT phase out (a VAE-only use). `margin` (a fraction of the available memory)
    and `reserve` (bytes) are kept free for what the model does not see: allocator fragmentation, other
    processes, the CUDA context.
    """

    def __init__(
        self,
        vae_config: VAEConfig,
        dit_config: "DiTConfig | None",
        dtype: torch.dtype,
        device: torch.device | str,
        margin: float = 0.1,
        reserve: int = 512 * MiB,
    ):
        self.vae = VAEMemoryModel(vae_config, device)
        self.dit_config = dit_config
        self.dtype = dtype
        self.device = torch.device(device)
        self.margin = margin
        self.reserve = reserve

    @classmethod
    def for_pipeline(cls, pipeline: "RestorationPipeline", **kwargs) -> "MemoryPlanner":
        dit_config = getattr(pipeline.dit, "config", None)
        vae_dtype = next(pipeline.vae.parameters()).dtype
        return cls(pipeline.vae.vae_config, dit_config, vae_dtype, pipeline.device, **kwargs)

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def budget(self, available: int | None = None) -> int:
        """Bytes a plan may use: the available memory (default: measured now) less the margin and reserve."""
        available = available_memory(self.device) if available is None else available
        return max(0, int(available * (1 - self.margin)) - self.reserve)

    # ---- the model

    def estimate(self, width: int, height: int, frames: int = 1, tiling: VAETiling | None = None) -> dict[str, int]:
        """Predicted peak bytes above the weights of each phase for an output of `width x height` (padded to a
        multiple of 16 as the pipeline does) and `frames` frames (padded to 4n + 1)."""
        return dict(self._estimate(_padded(width), _padded(height), _frames_padded(frames), tiling))

    @functools.lru_cache(maxsize=4096)
    def _estimate(self, w: int, h: int, t: int, tiling: VAETiling | None) -> tuple[tuple[str, int], ...]:
        size = self.itemsize
        float_copy = 3 * t * h * w * 4 if size < 4 else 0  # the pipeline's float32 copy of the decoded video
        untileable = self._untileable(w, h, t)
        return (
            ("encode", self.vae.bytes("encode", t, h, w, tiling, size)),
            ("dit", untileable["dit"]),
            ("decode", self.vae.bytes("decode", t, h, w, tiling, size) + float_copy),
            ("color_fix", untileable["color_fix"]),
        )

    def _untileable(self, width: int, height: int, frames: int) -> dict[str, int]:
        """The phases VAE tiling cannot shrink: when one of them does not fit, no tiling needs to be tried."""
        w, h, t = _padded(width), _padded(height), _frames_padded(frames)
        return {"dit": self.dit_bytes(t, h, w), "color_fix": _COLOR_FIX_VALUES_PER_PIXEL * t * h * w * 4}

    def dit_bytes(self, frames: int, height: int, width: int) -> int:
        if self.dit_config is None:
            return 0
        patch = self.dit_config.patch_size
        cfg = self.vae.config
        latent = ((frames - 1) // cfg.temporal_downsample_factor + 1, height // 8, width // 8)
        tokens = latent[0] * (latent[1] // patch[1]) * (latent[2] // patch[2])
        return int(_DIT_VALUES_PER_TOKEN * tokens * self.dit_config.vid_dim * self.itemsize)

    # ---- planning

    def candidates(self, vae_tile: VaeTile = "auto") -> list[VAETiling | None]:
        """Tilings in order of preference: least recomputation first, then the largest tile."""
        offload = False
        if vae_tile == "auto":
            return [None] + [VAETiling(t, s, offload) for s in STORE_SCALES for t in AUTO_TILES]
        return [VAETiling(int(vae_tile), s, offload) for s in STORE_SCALES]

    def plan(
        self, width: int, height: int, frames: int = 1, vae_tile: VaeTile = "auto", available: int | None = None
    ) -> RunPlan:
        """The first candidate tiling whose every phase fits the budget. Raises `MemoryPlanError` (one line,
        naming the largest output of the same aspect ratio that fits) when none does."""
        check_vae_tile(vae_tile)
        budget = self.budget(available)
        phases = self._untileable(width, height, frames)
        need = max(phases.values())
        if need <= budget:  # else no tiling can help
            tried = []
            for tiling in self.candidates(vae_tile):
                estimate = self.estimate(width, height, frames, tiling)
                if max(estimate.values()) <= budget:
                    return RunPlan(width, height, frames, tiling, estimate, budget)
                tried.append((max(estimate.values()), estimate))
            need, phases = min(tried, key=lambda t: t[0])
        largest = self.largest_fitting(width, height, frames, vae_tile, budget=budget)
        phase = max(phases, key=phases.get)
        fits = f"the largest {_aspect(width, height)} output that fits is {largest[0]}x{largest[1]}" if largest else (
            "nothing fits: free some memory or use a smaller model"
        )
        tiles = "" if vae_tile == "auto" else f" with VAE tiles of {int(vae_tile)} px"
        message = (
            f"a {width}x{height} output needs about {need / GiB:.1f} GiB for the {phase} phase{tiles} but only "
            f"{budget / GiB:.1f} GiB is available on {self.device.type}; {fits}"
        )
        raise MemoryPlanError(message, need, budget, largest)

    def fallback(self, plan: RunPlan) -> RunPlan | None:
        """The plan to retry with after `plan` ran out of memory: the first tiling predicted to need at most half
        of `plan`'s VAE memory, else the one needing the least; None when none needs less than `plan` (tiling
        cannot shrink the DiT phase)."""
        current = _vae_peak(plan.phase_bytes)
        estimates = [
            (t, self.estimate(plan.width, plan.height, plan.frames, t)) for t in self.candidates("auto") if t is not None
        ]
        half = [(t, e) for t, e in estimates if _vae_peak(e) <= current // 2]
        tiling, phases = half[0] if half else min(estimates, key=lambda te: _vae_peak(te[1]))
        if _vae_peak(phases) >= current:
            return None
        return RunPlan(plan.width, plan.height, plan.frames, tiling, phases, plan.budget)

    def fits(self, width: int, height: int, frames: int = 1, vae_tile: VaeTile = "auto", budget: int | None = None) -> bool:
        """Whether some tiling fits; only the most frugal candidates are tried (the smallest tile at every store
        scale, and untiled, which wins for images smaller than a tile)."""
        budget = self.budget() if budget is None else budget
        if max(self._untileable(width, height, frames).values()) > budget:
            return False
        tile = AUTO_TILES[-1] if vae_tile == "auto" else int(vae_tile)
        frugal = [None] * (vae_tile == "auto") + [VAETiling(tile, s) for s in STORE_SCALES]
        return any(max(self.estimate(width, height, frames, t).values()) <= budget for t in frugal)

    def largest_fitting(
        self, width: int, height: int, frames: int = 1, vae_tile: VaeTile = "auto", budget: int | None = None
    ) -> tuple[int, int] | None:
        """The largest `(w, h)` with the aspect ratio of `width x height` (w a multiple of 16) that fits."""
        budget = self.budget() if budget is None else budget
        ratio = height / width

        def size(w: int) -> tuple[int, int]:
            return w, max(PAD, round(w * ratio / PAD) * PAD)

        lo, hi = 0, max(width, PAD) // PAD + 1  # in units of PAD pixels of width
        if self.fits(*size(hi * PAD), frames, vae_tile, budget):
            while self.fits(*size(hi * PAD), frames, vae_tile, budget):
                lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.fits(*size(mid * PAD), frames, vae_tile, budget) else (lo, mid)
        return size(lo * PAD) if lo else None

    def max_output_pixels(self, aspect: tuple[int, int] = (1, 1), budget: int | None = None) -> int:
        """Pixels of the largest output of the given aspect ratio (width, height) that fits: a default for a
        server's output-size limit."""
        largest = self.largest_fitting(aspect[0] * 64, aspect[1] * 64, budget=budget)
        return 0 if largest is None else largest[0] * largest[1]


def _vae_peak(phases: dict[str, int]) -> int:
    return max(phases["encode"], phases["decode"])


def _aspect(width: int, height: int) -> str:
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


def check_vae_tile(vae_tile: VaeTile) -> None:
    if vae_tile == "auto":
        return
    if isinstance(vae_tile, bool) or not isinstance(vae_tile, int) or vae_tile < 8:
        raise ValueError(f"vae_tile must be 'auto' or a tile size of at least 8 pixels, got {vae_tile!r}")
