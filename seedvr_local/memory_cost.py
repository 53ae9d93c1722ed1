"""How much memory each phase of a restoration needs, predicted from the models' own geometry.

The model predicts the peak memory *above what is already allocated* (the weights) of each pipeline phase for an
output of `width x height` and `frames` frames, on a device, in the VAE's dtype, with a VAE tiling:

* **encode / decode**: the VAE. Its peak is computed by walking the very tile programs that the tiled VAE runs
  (`VideoAutoencoder.tile_blocks`, `seedvr_local/models/vae_tiling.py`), reading each op's geometry from the op:
  the full-frame tensors kept between segments ("cuts"), plus the largest set of tensors alive at any op of the
  biggest tile (halos included), plus the attention's keys and values. One factor per execution path (`_KAPPA`)
  covers the allocator and temporaries the walk does not name; it is fitted to the CPU measurements in
  `memory_calibration.json` (CPU RSS, float32, full-size VAE with random weights), which
  `python -m benchmarks.memory` re-measures and prints next to the model's prediction. The few CUDA
  measurements there (CUDA's max allocated, `benchmarks/memory.py --device cuda`) are predicted on the safe side.
* **dit**: `_DIT_VALUES_PER_TOKEN` values of the DiT's width per token (window attention keeps attention linear
  in the token count), measured.
* **color_fix**: `_COLOR_FIX_VALUES_PER_PIXEL` float32 values per output pixel, measured.

A tileable image (`periodic`, the seamless upscale) runs at the same size; what it adds is in the VAE: each conv
that pads copies its input with the wrapped rows and columns around it (`vae_blocks.wrap_space`), and a tile on a
torus has a halo on every side.

On the CPU the model counts on `device_memory.use_mmap_for_large_cpu_tensors()` (the `Upscaler` calls it).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

import torch

from seedvr_local.models.vae_blocks import attention_chunk_bytes
from seedvr_local.models.vae_tiling import (
    ATTENTION_KV_BLOCK_BYTES,
    Block,
    Segment,
    VAETiling,
    required_regions,
    scaled_region,
    segments,
    tile_spans,
)

if TYPE_CHECKING:
    from seedvr_local.models.vae import VideoAutoencoder
    from seedvr_local.pipeline import RestorationPipeline

Phase = Literal["encode", "dit", "decode", "color_fix"]
PHASES: tuple[Phase, ...] = ("encode", "dit", "decode", "color_fix")

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
#: Estimates a `PhaseCosts` remembers (the planner's searches ask for the same sizes again and again).
_CACHED_ESTIMATES = 4096




def calibration() -> dict:
    """The measurements the VAE model is fitted to and checked against (`seedvr_local/memory_calibration.json`:
    a "cpu" and a "cuda" series, each with its machine and a list of `{phase, side, tiling, peak_bytes, seconds}`)."""
    return json.loads(resources.files("seedvr_local").joinpath("memory_calibration.json").read_text())


# ---------------------------------------------------------------------------------------------- the VAE walk


@dataclass
class _Shape:
    channels: int
    frames: int


def _op_shapes(segment: Segment, channels: int, frames: int) -> list[_Shape]:
    """Channels and frames at every op boundary of `segment` (`shapes[i]` is the input of op i)."""
    shapes = [_Shape(channels, frames)]
    for op in segment.ops:
        shapes.append(_Shape(op.channels_after(shapes[-1].channels), op.frames_after(shapes[-1].frames)))
    return shapes


def _segment_output(segment: Segment, channels: int, frames: int) -> _Shape:
    if segment.attention is not None:
        return _Shape(channels, frames)
    return _op_shapes(segment, channels, frames)[-1]


def _extents(
    segment: Segment,
    rows: list[tuple[int, int]],
    columns: list[tuple[int, int]],
    image_size: tuple[int, int],
    periodic: bool,
) -> list[tuple[int, int]]:
    """The largest (rows, columns) of any tile's region at every op boundary of the final pass. Regions are
    separable, so the row extents come from one column of tiles and the column extents from one row."""
    best = [(0, 0)] * (len(segment.ops) + 1)
    for r, c in [(r, columns[0]) for r in rows] + [(rows[0], c) for c in columns]:
        target = scaled_region((*r, *c), image_size, segment.sizes[-1])
        regions = required_regions(segment.ops, segment.sizes, target, periodic)
        best = [
            (max(b[0], reg[1] - reg[0]), max(b[1], reg[3] - reg[2])) for b, reg in zip(best, regions)
        ]
    return best


def _walk_bytes(
    segment: Segment,
    shapes: list[_Shape],
    extents: list[tuple[int, int]],
    itemsize: int,
    tiled: bool,
    periodic: bool = False,
) -> int:
    """The most bytes alive at any op of one run of `segment` over tensors of the given extents: the op's input
    and output, its temporaries, and the ResNet input kept for the residual connection (`periodic`: and the
    wrapped copy of a padding conv's input)."""
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
            live = 2 * x + y + op.weight_numel * itemsize
            if periodic and any(op.module.halo):
                live += x
            if frames > 1 and op.head_frames:
                live += x * (frames + op.head_frames) // frames  # causal head frames (torch.cat)
        elif op.kind == "add":
            live = x + y
            if op.module is not None:  # the shortcut conv's output, its input reordered (and, cropped, copied)
                live += y + residual * (2 if tiled else 1)
            residual = 0
        elif op.kind == "down":
            live = 3 * x + y  # input, its right/bottom pad, the conv's reordered input, output
        elif op.kind == "up":
            live = x + 3 * y  # input, the shuffled upscale_conv output, the conv's reordered input, output
            live += y if periodic else 0  # the shuffled output, wrapped
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


def _image_weight_bytes(segment: Segment, itemsize: int) -> int:
    """The summed 2-D weights a tiled segment keeps for single-frame convs (`vae_tiling._TileRun.run_conv`)."""
    return sum(op.image_weight_numel for op in segment.ops) * itemsize


def _full_bytes(shape: _Shape, size: tuple[int, int], itemsize: int) -> int:
    return shape.channels * shape.frames * size[0] * size[1] * itemsize


class VAEMemoryModel:
    """Predicted peak bytes of one encode or decode of `vae` (its weights may be on "meta") on `device`, on top
    of the weights (see the module docstring)."""

    def __init__(self, vae: "VideoAutoencoder", device: torch.device | str = "cpu"):
        self.vae = vae
        self.attention_chunk = attention_chunk_bytes(torch.device(device))

    def bytes(
        self,
        phase: str,
        frames: int,
        height: int,
        width: int,
        tiling: VAETiling | None,
        itemsize: int,
        periodic: bool = False,
    ) -> int:
        """Peak bytes of `phase` ("encode" or "decode") of a `frames x height x width` video (height and width
        multiples of the VAE's spatial factor, frames already padded as `VideoAutoencoder.padded_frames`), its
        input and output included; `periodic`: of a tileable image, its paddings wrapping around."""
        cfg = self.vae.config
        channels, latent_frames, *latent_size = self.vae.latent_shape(frames, height, width)
        image_size = (height, width)
        pixels = cfg.out_channels * frames * height * width * itemsize
        latent = channels * latent_frames * latent_size[0] * latent_size[1] * itemsize
        if phase == "encode":
            size, shape, outside = image_size, _Shape(cfg.in_channels, frames), pixels + 2 * latent
        else:
            size, shape, outside = tuple(latent_size), _Shape(channels, latent_frames), latent + pixels
        blocks = self.vae.tile_blocks(phase)
        if tiling is None:
            # Temporal slicing: the first chunk is the largest (5 frames in, 2 latent frames); the chunks'
            # outputs are concatenated at the end (one more output).
            split = cfg.slicing_sample_min_size // (1 if phase == "encode" else self.vae.temporal_factor)
            chunk = _Shape(shape.channels, min(shape.frames, split + 1))
            concatenation = (2 * latent if phase == "encode" else pixels) if shape.frames > chunk.frames else 0
            work = self._untiled(blocks, size, chunk, itemsize, periodic)
            return outside + concatenation + int(_KAPPA["untiled"] * work)
        return outside + self._tiled(blocks, size, image_size, shape, itemsize, tiling, periodic)

    def _untiled(
        self, blocks: list[Block], size: tuple[int, int], shape: _Shape, itemsize: int, periodic: bool,
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
            segment = Segment.of([block], size)
            if block.attention is not None:  # a single-tile run uses the in-place attention too
                work = _attention_bytes(shape, size, itemsize, group is not None, self.attention_chunk)
            else:
                shapes = _op_shapes(segment, shape.channels, shape.frames)
                work = _walk_bytes(segment, shapes, segment.sizes, itemsize, tiled=False, periodic=periodic)
            peak = max(peak, held + work)
            shape, size = _segment_output(segment, shape.channels, shape.frames), segment.sizes[-1]
        return peak

    def _tiled(
        self, blocks: list[Block], size: tuple[int, int], image_size: tuple[int, int], shape: _Shape,
        itemsize: int, tiling: VAETiling, periodic: bool,
    ) -> int:  # fmt: skip
        rows, columns = tile_spans(image_size[0], tiling.core), tile_spans(image_size[1], tiling.core)
        parts = segments(blocks, size, image_size, tiling.store_scale)
        if len(rows) * len(columns) == 1:  # every segment runs whole, as untiled but without temporal slicing
            group = {block.name: k for k, part in enumerate(parts) for block in part.blocks}
            return int(_KAPPA["untiled"] * self._untiled(blocks, size, shape, itemsize, periodic, group))
        peak = 0
        for segment in parts:
            out = _segment_output(segment, shape.channels, shape.frames)
            if segment.attention is not None:
                total = _attention_bytes(shape, segment.sizes[0], itemsize, True, self.attention_chunk)
            else:
                cuts = _full_bytes(shape, segment.sizes[0], itemsize) + _full_bytes(out, segment.sizes[-1], itemsize)
                shapes = _op_shapes(segment, shape.channels, shape.frames)
                extents = _extents(segment, rows, columns, image_size, periodic)
                work = _walk_bytes(segment, shapes, extents, itemsize, tiled=True, periodic=periodic)
                if shape.frames == 1:
                    work += _image_weight_bytes(segment, itemsize)
                total = cuts + int(_KAPPA["tile"] * work)
            peak = max(peak, total)
            shape = out
        return peak


# ---------------------------------------------------------------------------------------------- every phase


class PhaseCosts:
    """Predicted peak bytes above the weights of each phase of one restoration by `pipeline`, run on `device`
    (default: the pipeline's; the models may live on "meta"), in the VAE's dtype. Sizes are padded as the
    pipeline pads them: width and height to `pipeline.size_multiple`, frames to `pipeline.padded_frames`."""

    def __init__(self, pipeline: "RestorationPipeline", device: torch.device | str | None = None):
        self.pipeline = pipeline
        self.device = pipeline.device if device is None else torch.device(device)
        self.vae = VAEMemoryModel(pipeline.vae, self.device)
        self.dtype = next(pipeline.vae.parameters()).dtype
        self.size_multiple = pipeline.size_multiple
        self._estimates: OrderedDict[tuple, dict[str, int]] = OrderedDict()

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def padded(self, width: int, height: int, frames: int) -> tuple[int, int, int]:
        """`(width, height, frames)` as the pipeline runs them."""
        m = self.size_multiple
        return -(-width // m) * m, -(-height // m) * m, self.pipeline.padded_frames(frames)

    def estimate(
        self, width: int, height: int, frames: int = 1, tiling: VAETiling | None = None, periodic: bool = False
    ) -> dict[str, int]:
        """Predicted peak bytes above the weights of each phase (`PHASES`) for an output of `width x height` and
        `frames` frames (padded as the pipeline pads them); `periodic`: of a tileable image (the seamless upscale)."""
        key = (*self.padded(width, height, frames), tiling, periodic)
        if key in self._estimates:
            self._estimates.move_to_end(key)
        else:
            self._estimates[key] = self._estimate(*key)
            if len(self._estimates) > _CACHED_ESTIMATES:
                self._estimates.popitem(last=False)
        return dict(self._estimates[key])

    def _estimate(self, w: int, h: int, t: int, tiling: VAETiling | None, periodic: bool) -> dict[str, int]:
        size = self.itemsize
        float_copy = 3 * t * h * w * 4 if size < 4 else 0  # the pipeline's float32 copy of the decoded video
        untileable = self.untileable(w, h, t)
        return {
            "encode": self.vae.bytes("encode", t, h, w, tiling, size, periodic),
            "dit": untileable["dit"],
            "decode": self.vae.bytes("decode", t, h, w, tiling, size, periodic) + float_copy,
            "color_fix": untileable["color_fix"],
        }

    def untileable(self, width: int, height: int, frames: int) -> dict[str, int]:
        """The phases VAE tiling cannot shrink: when one of them does not fit, no tiling needs to be tried."""
        w, h, t = self.padded(width, height, frames)
        return {"dit": self.dit_bytes(t, h, w), "color_fix": _COLOR_FIX_VALUES_PER_PIXEL * t * h * w * 4}

    def dit_bytes(self, frames: int, height: int, width: int) -> int:
        """The DiT phase of a `frames x height x width` input (already padded)."""
        tokens = self.pipeline.dit_tokens(frames, height, width)
        return int(_DIT_VALUES_PER_TOKEN * tokens * self.pipeline.dit.config.vid_dim * self.itemsize)
