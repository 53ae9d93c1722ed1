"""Exact spatial tiling of the causal video VAE: the tiled result equals the untiled one (spec section 3).

A tile pushed through the whole network on its own (numz's tiled VAE, spec 3.11) is not exact: every GroupNorm
normalises with statistics of the *whole frame* and the mid-block attention mixes every position of a frame, so
per-tile runs give seams and colour drift. Here instead:

* **Convs** see exactly what the untiled network sees. A tile is cut from its input with a halo equal to the
  receptive field of the convs up to the point where it is needed, and is zero padded only on the sides that lie
  on the frame border, where the untiled conv pads too.
* **Each GroupNorm is a barrier.** Its statistics (per sample, frame and group) are gathered from the tiles'
  non-overlapping cores (`kernels.group_norm_moments`, merged with Chan's parallel variance) before any tile is
  normalised with them (`kernels.group_norm_silu`: one Triton pass per tile on a GPU).
* **The attention** runs on the whole frame at the lowest resolution, a few query rows at a time.
* **On a torus** (`periodic=True`, a tileable image: the convs' padding wraps around, `vae_blocks.wrap_space`)
  no side is a frame border: every tile takes its halo from the opposite side where it runs off the frame, and
  every conv drops the rows and columns its own padding reached on all four sides.

Between two barriers every tile has to be computed, so the activations there are either kept for the whole frame
or recomputed. The network is cut into *segments*: the output of a segment is a full-frame tensor (a "cut"), and
inside a segment each GroupNorm's statistics come from a pass over all tiles that recomputes the segment up to
that norm from the segment's input; a last pass writes the output. `VAETiling.store_scale` decides where cuts are:

* `store_scale=1`: a cut after every block (ResNet, downsampler), except where recomputation is nearly free or
  saves a large tensor. Each ResNet's second conv input is recomputed once (about 1.4x the work of an untiled
  run). Memory is about two full-frame activations at the finest level, roughly half of an untiled run.
* `store_scale=8`: cuts only at 1/8 resolution (512 channels there, 8 values per image pixel); everything finer
  is recomputed per norm. Memory stays flat as the image grows, apart from those 1/8-resolution buffers and the
  input/output, at several times the work. `2` and `4` lie in between.

With `offload=True` the cuts live in CPU memory while the tiles run on the accelerator.

Tiles process every frame of a clip at once (the untiled VAE slices long clips in time instead), so their memory
grows with the frame count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from seedvr_local import kernels
from seedvr_local.kernels import GroupStats
from seedvr_local.models.vae_blocks import (
    ATTENTION_CHUNK_BYTES,
    CausalConv3d,
    Downsample3D,
    FrameAttention,
    FrameGroupNorm,
    ResnetBlock3D,
    Upsample3D,
    query_chunks,
)

#: Tile cores are multiples of this many image pixels, so that every level of a VAE with up to three 2x
#: downsamplers (SeedVR2's: spatial factor 8) cuts them at whole pixels. `VideoAutoencoder` checks its factor.
ALIGN = 8
STORE_SCALES = (1, 2, 4, 8)

Region = tuple[int, int, int, int]  # rows [r0, r1), columns [c0, c1) of a frame
Size = tuple[int, int]  # (rows, columns)


@dataclass(frozen=True)
class VAETiling:
    """How to tile the VAE: square tile cores of `tile` image pixels (rounded up to a multiple of 8; edge tiles
    are balanced, not ragged), full-frame intermediates kept at `1 / store_scale` resolution and coarser (finer
    ones are recomputed), and with `offload` those intermediates kept in CPU memory."""

    tile: int = 512
    store_scale: int = 1
    offload: bool = False

    def __post_init__(self):
        if self.tile < ALIGN:
            raise ValueError(f"the VAE tile must be at least {ALIGN} pixels, got {self.tile}")
        if self.store_scale not in STORE_SCALES:
            raise ValueError(f"store_scale must be one of {STORE_SCALES}, got {self.store_scale}")

    @property
    def core(self) -> int:
        return -(-self.tile // ALIGN) * ALIGN


# --------------------------------------------------------------------------------------------------- programs


@dataclass(frozen=True, eq=False)
class Op:
    """One step of a tile program. `kind`: "conv" (a stride-1 CausalConv3d), "norm" (FrameGroupNorm + SiLU,
    with whole-frame statistics), "push" (keep the ResNet input), "add" (pop it, through `module` if that is the
    shortcut conv, and add), "down" (Downsample3D), "up" (Upsample3D).

    The methods below are the op's geometry as its module states it: what the memory model needs to follow a
    tensor through the program without looking inside the modules."""

    kind: str
    module: nn.Module | None = None

    @property
    def conv(self) -> CausalConv3d | None:
        """The causal conv the op runs on its tile (a sampler's own conv), if any; the shortcut is not counted."""
        if self.kind == "conv":
            return self.module
        return self.module.conv if self.kind in ("down", "up") else None

    def size_after(self, size: Size) -> Size:
        return self.module.size_after(size) if self.kind in ("down", "up") else size

    def frames_after(self, frames: int) -> int:
        return self.module.frames_after(frames) if self.kind in ("down", "up") else frames

    def channels_after(self, channels: int) -> int:
        conv = self.conv
        return channels if conv is None else conv.out_channels

    @property
    def weight_numel(self) -> int:
        conv = self.conv
        return 0 if conv is None else conv.weight.numel()

    @property
    def image_weight_numel(self) -> int:
        """Values of the summed 2-D weight a tile run keeps for a single frame (`CausalConv3d.single_frame`)."""
        conv = self.conv
        return 0 if conv is None else conv.weight.numel() // conv.kernel_size[0]

    @property
    def head_frames(self) -> int:
        """Frames a causal conv puts in front of a clip (copies of its first frame)."""
        conv = self.conv
        return 0 if conv is None else conv.head_frames


@dataclass(eq=False)
class Block:
    """A unit whose output may be kept as a cut. `ops` is its tile program; `whole` runs it on a whole frame
    (the module's own forward); attention blocks have no program and always sit between two cuts. `name` is
    `container.part` for the parts of a container module (`down1.res0`), whose input the module's forward keeps
    alive while they run."""

    name: str
    ops: tuple[Op, ...]
    whole: Callable[[torch.Tensor], torch.Tensor]
    attention: FrameAttention | None = None
    cut_after: bool = True  # whether its output may be a cut (False where recomputing it is cheaper)


def conv_block(name: str, conv: CausalConv3d, cut_after: bool = True) -> Block:
    return Block(name, (Op("conv", conv),), conv, cut_after=cut_after)


def resnet_block(name: str, res: ResnetBlock3D, cut_after: bool = True) -> Block:
    ops = (
        Op("push"),
        Op("norm", res.norm1),
        Op("conv", res.conv1),
        Op("norm", res.norm2),
        Op("conv", res.conv2),
        Op("add", res.conv_shortcut),
    )
    return Block(name, ops, res, cut_after=cut_after)


def sampler_block(name: str, sampler: Downsample3D | Upsample3D, cut_after: bool = True) -> Block:
    kind = "down" if isinstance(sampler, Downsample3D) else "up"
    return Block(name, (Op(kind, sampler),), sampler, cut_after=cut_after)


def out_block(name: str, norm: FrameGroupNorm, conv: CausalConv3d, extra: CausalConv3d | None) -> Block:
    ops = (Op("norm", norm), Op("conv", conv)) + ((Op("conv", extra),) if extra is not None else ())

    def whole(x: torch.Tensor) -> torch.Tensor:
        x = conv(norm(x, silu=True))
        return x if extra is None else extra(x)

    return Block(name, ops, whole)


def attention_block(name: str, attention: FrameAttention) -> Block:
    return Block(name, (), attention, attention=attention)


@dataclass(eq=False)
class Segment:
    """Blocks between two cuts (or one attention block), with the frame size at every op boundary:
    `sizes[i]` is the input size of `ops[i]`, `sizes[-1]` the output size."""

    blocks: list[Block]
    ops: tuple[Op, ...]
    sizes: list[Size]

    @classmethod
    def of(cls, blocks: list[Block], size: Size) -> "Segment":
        """`blocks` run in one segment from an input frame of `size`."""
        ops = tuple(op for block in blocks for op in block.ops)
        sizes = [size]
        for op in ops:
            sizes.append(op.size_after(sizes[-1]))
        return cls(blocks, ops, sizes)

    @property
    def attention(self) -> FrameAttention | None:
        return self.blocks[0].attention


def segments(blocks: list[Block], size: Size, image_size: Size, store_scale: int) -> list[Segment]:
    """Split `blocks` (input frame `size`) at the cuts that `store_scale` allows: after a block whose output may
    be a cut and is at `1 / store_scale` of `image_size` or coarser, around attention, and at the end."""
    out, current = [], []
    start = size
    for i, block in enumerate(blocks):
        for op in block.ops:
            size = op.size_after(size)
        current.append(block)
        last = i == len(blocks) - 1
        scale = image_size[0] // size[0]
        cut = (
            last
            or block.attention is not None
            or blocks[i + 1].attention is not None
            or (block.cut_after and scale >= store_scale)
        )
        if cut:
            out.append(Segment.of(current, start))
            current, start = [], size
    return out


# --------------------------------------------------------------------------------------------------- geometry


def _grow(a: int, b: int, halo: int, n: int | None) -> tuple[int, int]:
    """[a, b) grown by `halo`, within [0, n); on a torus (`n` None) it may run past either side."""
    return (a - halo, b + halo) if n is None else (max(a - halo, 0), min(b + halo, n))


def _input_region(op: Op, need: Region, size_in: Size | None) -> Region:
    """The region of `op`'s input that its output region `need` depends on, within a frame of `size_in`; on a
    torus (`size_in` None) there are no bounds: coordinates past the frame stand for its opposite side."""
    r0, r1, c0, c1 = need
    periodic = size_in is None
    rows, cols = (None, None) if periodic else size_in
    if op.kind == "conv":
        ph, pw = op.module.halo
        return (*_grow(r0, r1, ph, rows), *_grow(c0, c1, pw, cols))
    if op.kind == "down":  # output i reads rows 2i .. 2i + 2; row `rows` is the pad
        return (2 * r0, _end(2 * r1 + 1, rows), 2 * c0, _end(2 * c1 + 1, cols))
    if op.kind == "up":  # the conv at twice the size, then the pixel shuffle
        ph, pw = op.module.conv.halo
        doubled = (None, None) if periodic else (2 * rows, 2 * cols)
        a0, a1, b0, b1 = (*_grow(r0, r1, ph, doubled[0]), *_grow(c0, c1, pw, doubled[1]))
        return (a0 // 2, -(-a1 // 2), b0 // 2, -(-b1 // 2))
    return need  # norm, push, add: pointwise


def _end(stop: int, n: int | None) -> int:
    return stop if n is None else min(stop, n)


def _hull(a: Region, b: Region) -> Region:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def required_regions(
    ops: tuple[Op, ...], sizes: list[Size], target: Region, periodic: bool = False
) -> list[Region]:
    """`regions[i]`: the region of `ops[i]`'s input needed to compute `target` at the end of `ops`
    (`regions[-1] == target`). A ResNet input must also cover what its residual connection adds."""
    regions: list[Region] = [target] * (len(ops) + 1)
    residuals: list[Region] = []
    need = target
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if op.kind == "add":
            residuals.append(need)  # the shortcut is 1x1: it needs the region it adds to
        elif op.kind == "push":
            if residuals:  # else its "add" lies beyond `ops` (a statistics pass that stops inside a ResNet)
                need = _hull(need, residuals.pop())
        else:
            need = _input_region(op, need, None if periodic else sizes[i])
        regions[i] = need
    return regions


def tile_spans(length: int, core: int) -> list[tuple[int, int]]:
    """One axis of the tile grid: as few spans as `core` allows, nearly equal multiples of `ALIGN` (so no thin
    edge tile pays a full halo)."""
    units, per_tile = length // ALIGN, core // ALIGN
    count = -(-units // per_tile)
    base, extra = divmod(units, count)
    spans, start = [], 0
    for i in range(count):
        stop = start + (base + (i < extra)) * ALIGN
        spans.append((start, stop))
        start = stop
    return spans


def tile_grid(image_size: Size, core: int) -> list[Region]:
    """Tile cores in image pixels, row-major."""
    columns = tile_spans(image_size[1], core)
    return [(r0, r1, c0, c1) for r0, r1 in tile_spans(image_size[0], core) for c0, c1 in columns]


def scaled_region(core: Region, image_size: Size, size: Size) -> Region:
    s = image_size[0] // size[0]
    return (core[0] // s, core[1] // s, core[2] // s, core[3] // s)


# ------------------------------------------------------------------------------------------------ execution


class _TileRun:
    """Runs a segment's ops on one tile, given the whole-frame statistics of the norms it passes. Keeps the summed
    2-D weights of the single-frame conv shortcut for the segment's duration. `periodic`: the frame is a torus."""

    def __init__(self, segment: Segment, stats: dict[nn.Module, GroupStats], periodic: bool = False):
        self.segment = segment
        self.stats = stats
        self.periodic = periodic
        self.image_weights: dict[nn.Module, torch.Tensor] = {}

    def __call__(self, source: torch.Tensor, stop: int, target: Region, device: torch.device) -> torch.Tensor:
        """`ops[:stop]` on `source` (the segment input, a whole frame), for `target` at the size after them."""
        ops, sizes = self.segment.ops[:stop], self.segment.sizes[: stop + 1]
        regions = required_regions(ops, sizes, target, self.periodic)
        region = regions[0]
        x = _take(source, region).to(device)
        residuals: list[tuple[torch.Tensor, Region]] = []
        for i, op in enumerate(ops):
            if op.kind == "push":
                residuals.append((x, region))
            elif op.kind == "add":
                skip, skip_region = residuals.pop()
                skip = _crop(skip, skip_region, region)
                x = (skip if op.module is None else op.module(skip)) + x
            elif op.kind == "norm":
                norm = op.module
                x = kernels.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, stats=self.stats[norm])
            elif op.kind == "conv":
                x, region = self.conv(op.module, x, region, sizes[i])
            elif op.kind == "down":
                x, region = self.down(op.module, x, region, sizes[i])
            elif op.kind == "up":
                r0, r1, c0, c1 = region
                region, size = (2 * r0, 2 * r1, 2 * c0, 2 * c1), (2 * sizes[i][0], 2 * sizes[i][1])
                x, region = self.conv(op.module.conv, op.module.shuffle(x), region, size)
            else:
                raise AssertionError(f"unknown op {op.kind}")
            x, region = _crop(x, region, regions[i + 1]), regions[i + 1]
        return x

    def conv(self, conv: CausalConv3d, x: torch.Tensor, region: Region, size: Size) -> tuple[torch.Tensor, Region]:
        """A stride-1 conv with its own padding; the output rows and columns next to an inner tile side saw the
        padding instead of their neighbours and are dropped, so the tile shrinks by the padding there. On a torus
        every side is inner."""
        ph, pw = conv.halo
        r0, r1, c0, c1 = region
        if self.periodic:
            top = bottom = ph
            left = right = pw
        else:
            top, bottom, left, right = ph * (r0 > 0), ph * (r1 < size[0]), pw * (c0 > 0), pw * (c1 < size[1])
        y = self.run_conv(conv, x)
        y = y[..., top : y.shape[-2] - bottom, left : y.shape[-1] - right]
        return y, (r0 + top, r1 - bottom, c0 + left, c1 - right)

    def down(self, down: Downsample3D, x: torch.Tensor, region: Region, size: Size) -> tuple[torch.Tensor, Region]:
        """Downsample3D: the right/bottom zero pad only on the frame border (none on a torus, where the tile
        already holds the wrapped column and row), then the stride-2 conv."""
        r0, r1, c0, c1 = region
        if r0 % 2 or c0 % 2:
            raise AssertionError(f"a downsampler tile must start on even coordinates, got {region}")
        right, bottom = (0, 0) if self.periodic else (int(c1 == size[1]), int(r1 == size[0]))
        y = self.run_conv(down.conv, F.pad(x, (0, right, 0, bottom)) if right or bottom else x)
        return y, (r0 // 2, r0 // 2 + y.shape[-2], c0 // 2, c0 // 2 + y.shape[-1])

    def run_conv(self, conv: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == 1 and conv.kernel_size[0] == conv.head_frames + 1:
            weight = self.image_weights.get(conv)  # the single-frame shortcut's summed taps, once per segment
            if weight is None:
                weight = self.image_weights[conv] = conv.weight.sum(dim=2)
            return conv.single_frame(x, weight)
        return conv(x)


def _take(source: torch.Tensor, region: Region) -> torch.Tensor:
    """`region` of the frames of `source (B, C, T, H, W)`; coordinates past the frame wrap around (a torus)."""
    r0, r1, c0, c1 = region
    rows, cols = source.shape[-2:]
    if 0 <= r0 and r1 <= rows and 0 <= c0 and c1 <= cols:
        return source[:, :, :, r0:r1, c0:c1]
    source = source.index_select(-2, torch.arange(r0, r1, device=source.device) % rows)
    return source.index_select(-1, torch.arange(c0, c1, device=source.device) % cols)


def _crop(x: torch.Tensor, region: Region, want: Region) -> torch.Tensor:
    if region == want:
        return x
    if not (region[0] <= want[0] and want[1] <= region[1] and region[2] <= want[2] and want[3] <= region[3]):
        raise AssertionError(f"tile region {region} does not cover {want}")
    r, c = want[0] - region[0], want[2] - region[2]
    return x[..., r : r + want[1] - want[0], c : c + want[3] - want[2]]


def run_blocks(
    blocks: list[Block],
    x: torch.Tensor,
    image_size: Size,
    tiling: VAETiling,
    device: torch.device,
    periodic: bool = False,
) -> torch.Tensor:
    """Run `blocks` on `x (B, C, T, H, W)` tile by tile; the result is on `device`. `periodic`: the frame is a
    torus, and the blocks' convs wrap around (`vae_blocks.wrap_space`)."""
    store = torch.device("cpu") if tiling.offload else device
    cores = tile_grid(image_size, tiling.core)
    parts = segments(blocks, tuple(x.shape[-2:]), image_size, tiling.store_scale)
    for k, segment in enumerate(parts):
        last = k == len(parts) - 1
        where = device if last else store
        if segment.attention is not None:
            x = attention_in_place_(segment.attention, x, device)
        elif len(cores) == 1:
            x = _whole(segment, x, device)
        else:
            x = _tiled(segment, x, cores, image_size, device, where, periodic)
        x = x.to(where)
    return x


def _whole(segment: Segment, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device)
    for block in segment.blocks:
        x = block.whole(x)
    return x


def _tiled(
    segment: Segment,
    x: torch.Tensor,
    cores: list[Region],
    image_size: Size,
    device: torch.device,
    store: torch.device,
    periodic: bool,
) -> torch.Tensor:
    stats: dict[nn.Module, GroupStats] = {}
    run = _TileRun(segment, stats, periodic)
    for j, op in enumerate(segment.ops):
        if op.kind != "norm":
            continue
        groups = op.module.num_groups
        parts = [
            kernels.group_norm_moments(run(x, j, scaled_region(core, image_size, segment.sizes[j]), device), groups)
            for core in cores
        ]
        stats[op.module] = kernels.merge_moments(parts).stats(op.module.eps)

    out = None
    stop = len(segment.ops)
    for core in cores:
        r0, r1, c0, c1 = target = scaled_region(core, image_size, segment.sizes[-1])
        y = run(x, stop, target, device)
        if out is None:
            shape = (*y.shape[:3], *segment.sizes[-1])
            out = torch.empty(shape, dtype=y.dtype, device=store)
        out[:, :, :, r0:r1, c0:c1] = y
    return out


#: Float32 bytes of the token blocks from which the attention's statistics, keys and values are computed.
ATTENTION_KV_BLOCK_BYTES = ATTENTION_CHUNK_BYTES // 8


def _row_blocks(rows: int, per_row_bytes: int, budget: int) -> Iterator[slice]:
    step = max(1, min(rows, budget // max(per_row_bytes, 1)))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def attention_in_place_(attention: FrameAttention, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x + attention(x)` written into the contiguous `x (B, C, T, h, w)` (which may live on another device),
    exactly, with memory for the keys and values plus one block of queries.

    The statistics, keys and values are computed from the whole of `x` first; each block of queries is then read
    before it is overwritten, and no later block reads it again.
    """
    b, c, t, h, w = x.shape
    tokens_per_frame = h * w
    norm = attention.group_norm
    row_bytes = 4 * b * c * t * w  # float32 copy of one row of every frame
    block_bytes = ATTENTION_KV_BLOCK_BYTES
    parts = [kernels.group_norm_moments(x[:, :, :, rows].to(device), norm.num_groups)
             for rows in _row_blocks(h, row_bytes, block_bytes)]  # fmt: skip
    stats = kernels.merge_moments(parts).stats(norm.eps)
    flat = x.view(b, c, t, tokens_per_frame)  # raster order, as the tokens

    def tokens(span: slice) -> torch.Tensor:
        piece = flat[..., span, None].to(device)  # (B, C, T, n, 1)
        normed = kernels.group_norm_silu(piece, norm.num_groups, norm.weight, norm.bias, stats=stats, silu=False)
        return normed[..., 0].permute(0, 2, 3, 1).reshape(b * t, 1, -1, c)

    keys = torch.empty(b * t, 1, tokens_per_frame, c, dtype=x.dtype, device=device)
    values = torch.empty_like(keys)
    for rows in _row_blocks(h, row_bytes, block_bytes):  # ~4 float32 copies of a block are alive here
        span = slice(rows.start * w, rows.stop * w)
        block = tokens(span)
        keys[:, :, span], values[:, :, span] = attention.to_k(block), attention.to_v(block)
        del block

    for span in query_chunks(tokens_per_frame, keys):
        out = attention.attend(tokens(span), keys, values)  # (BT, 1, n, C)
        flat[..., span] += out.reshape(b, t, -1, c).permute(0, 3, 1, 2).to(x.device)
    return x
