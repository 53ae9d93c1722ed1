# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/video_vae_v3: the causal video VAE's blocks; rewritten for this project (see NOTICE).
"""Building blocks of the SeedVR2 causal video VAE (spec section 3): causal 3-D conv, per-frame GroupNorm,
ResNet block, down/up-samplers and the mid-block attention.

Every block works on `(B, C, T, H, W)` and is causal in time: output frame k depends only on input frames <= k.
Normalisation and attention never mix frames, and each causal conv looks back a fixed number of frames, so a clip
can be processed in temporal chunks with exactly the same result when the convs carry their last input frames
from one chunk to the next (`ChunkMemory`, spec 3.8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from seedvr_local import kernels


@dataclass
class ChunkMemory:
    """What the causal convs carry from one temporal chunk of a clip to the next.

    Run the chunks in order with one `ChunkMemory`, setting `first = False` after the first chunk. Each causal
    conv stores the last `kernel_t - stride_t` frames of its (padded) input and prepends them to its next input,
    in place of the replicated first frame.
    """

    first: bool = True
    tails: dict[nn.Module, torch.Tensor] = field(default_factory=dict)


def cat_frames(clips: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat` along time that keeps the last clip's channels-last layout, which cat alone drops when a
    piece is a broadcast view or empty."""
    last = clips[-1]
    layout = torch.channels_last_3d if last.is_contiguous(memory_format=torch.channels_last_3d) else None
    if layout is None or len(clips) == 1:
        return torch.cat(clips, dim=2)
    shape = (*last.shape[:2], sum(clip.shape[2] for clip in clips), *last.shape[3:])
    out = torch.empty(shape, dtype=last.dtype, device=last.device, memory_format=layout)
    return torch.cat(clips, dim=2, out=out)


class CausalConv3d(nn.Conv3d):
    """The official `InflatedCausalConv3d`: a Conv3d that pads time on the past side only.

    The temporal padding `p_t` is taken out of the conv; instead `2 * p_t` copies of the first frame are put in
    front of the clip (or, for a continuation chunk, the previous chunk's last input frames), so a `k_t = 3`,
    `p_t = 1`, stride 1 conv keeps the frame count. Spatial padding is the usual zero padding, or, while `wraps`
    is set (`wrap_space`), the frame's opposite side: the frame as one period of a torus.
    """

    wraps = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        bias: bool = True,
    ):
        kernel_size, stride, padding = _triple(kernel_size), _triple(stride), _triple(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride, (0, padding[1], padding[2]), bias=bias)
        self.head_frames = 2 * padding[0]
        self.tail_frames = kernel_size[0] - stride[0]

    @property
    def halo(self) -> tuple[int, int]:
        """Rows and columns of input each output pixel reaches beyond its own on every side (the zero padding)."""
        return self.padding[1], self.padding[2]

    def frames_after(self, frames: int) -> int:
        """Output frames of a whole clip of `frames` frames (the head frames in front of it)."""
        return (frames + self.head_frames - self.kernel_size[0]) // self.stride[0] + 1

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        if memory is None and x.shape[2] == 1 and self.kernel_size[0] == self.head_frames + 1:
            return self.single_frame(x)
        if memory is None or memory.first:
            if self.head_frames:
                x = cat_frames([x[:, :, :1].expand(-1, -1, self.head_frames, -1, -1), x])
        elif self.tail_frames > 0:
            x = cat_frames([memory.tails[self], x])
        if memory is not None and self.tail_frames > 0:
            memory.tails[self] = x[:, :, x.shape[2] - self.tail_frames :].detach()
        if self.wraps and any(self.halo):
            return F.conv3d(_wrap_space(x, *self.halo), self.weight, self.bias, self.stride)
        return super().forward(x)

    def single_frame(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        # A lone frame is padded to k_t copies of itself, so every temporal tap sees the same frame: the conv is
        # a 2-D conv with the taps summed (spec 3.7), a third of the work of the 3-D conv. Tiled inference passes
        # the summed `weight` it keeps.
        weight = self.weight.sum(dim=2) if weight is None else weight
        if self.wraps and any(self.halo):
            out = F.conv2d(_wrap_space(x, *self.halo)[:, :, 0], weight, self.bias, self.stride[1:])
        else:
            out = F.conv2d(x[:, :, 0], weight, self.bias, self.stride[1:], self.padding[1:])
        return out.unsqueeze(2)


def _wrap_space(x: torch.Tensor, rows: int, columns: int, after_only: bool = False) -> torch.Tensor:
    """`x (B, C, T, H, W)` padded with `rows` and `columns` from the frame's opposite sides (before and after, or
    only after: bottom and right)."""
    before = 0 if after_only else 1
    return F.pad(x, (columns * before, columns, rows * before, rows, 0, 0), mode="circular")


def wrap_space(module: nn.Module, wraps: bool) -> None:
    """Make every spatial padding of `module`'s VAE blocks wrap around the frame (a torus: what leaves the right
    side enters on the left, the bottom continues into the top), or back to zeros. The convolutions' weights are
    untouched: a tileable image is then encoded and decoded exactly as an endless plane of its tiles would be."""
    for m in module.modules():
        if isinstance(m, (CausalConv3d, Downsample3D)):
            m.wraps = wraps


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame (`(b c t h w) -> ((b t) c h w)`, spec 3.3), computed in float32, the
    result cast back to the input dtype; `silu=True` applies the SiLU that always follows it in the VAE.

    Per-frame statistics are what make temporal chunking exact. It runs as `kernels.group_norm_silu`: one fused
    Triton pass on a GPU (PyTorch's GroupNorm parallelises over groups only, 32 rows for a whole 4K frame), the
    bit-exact PyTorch reference elsewhere.
    """

    def forward(self, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"FrameGroupNorm expects (B, C, T, H, W), got shape {tuple(x.shape)}")
        return kernels.group_norm_silu(x, self.num_groups, self.weight, self.bias, eps=self.eps, silu=silu)


class ResnetBlock3D(nn.Module):
    """`out = shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`; the shortcut is a 1x1x1 conv when the
    channel count changes. `conv1` is 1x3x3 with `time_receptive_field="half"`, else 3x3x3 (SeedVR2)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, full_time_field: bool = True):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=1e-6)
        conv1_kernel = (3, 3, 3) if full_time_field else (1, 3, 3)
        self.conv1 = CausalConv3d(in_channels, out_channels, conv1_kernel, padding=tuple(k // 2 for k in conv1_kernel))
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x, silu=True), memory)
        h = self.conv2(self.norm2(h, silu=True), memory)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x, memory)
        return shortcut + h


class Downsample3D(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 causal conv (also stride 2 in time when temporal).

    Spatial sizes halve (rounding up); in time `T -> (T - 1) / 2 + 1`. While `wraps` is set (`wrap_space`) the
    pad is the frame's first column and row instead of zeros.
    """

    wraps = False

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(
            channels,
            channels,
            kernel_size=(3 if temporal else 1, 3, 3),
            stride=(2 if temporal else 1, 2, 2),
            padding=(1 if temporal else 0, 0, 0),
        )

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        if self.wraps:
            return self.conv(_wrap_space(x, 1, 1, after_only=True), memory)
        return self.conv(F.pad(x, (0, 1, 0, 1)), memory)

    def frames_after(self, frames: int) -> int:
        return self.conv.frames_after(frames)

    @staticmethod
    def size_after(size: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) after the right/bottom pad and the stride-2 3x3 conv: halved, rounding up."""
        return (size[0] - 2) // 2 + 1, (size[1] - 2) // 2 + 1


class Upsample3D(nn.Module):
    """A 1x1x1 conv to `C * r` channels, a pixel shuffle to `(2T or T, 2H, 2W)`, then a causal 3x3x3 conv.

    The shuffle is `"b (x y z c) f h w -> b c (f z) (h x) (w y)"`. When temporal, the second copy of the clip's
    first frame is dropped (`2T -> 2T - 1`), except in continuation chunks, whose first frame is not the clip's.
    """

    def __init__(self, channels: int, temporal: bool):
        super().__init__()
        self.temporal_ratio = 2 if temporal else 1
        self.conv = CausalConv3d(channels, channels, 3, padding=1)
        self.upscale_conv = nn.Conv3d(channels, channels * 4 * self.temporal_ratio, kernel_size=1)

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        return self.conv(self.shuffle(x, memory), memory)

    def frames_after(self, frames: int) -> int:
        """A whole clip's frames: each frame becomes `temporal_ratio`, less the dropped copies of the first."""
        return self.temporal_ratio * (frames - 1) + 1

    @staticmethod
    def size_after(size: tuple[int, int]) -> tuple[int, int]:
        return 2 * size[0], 2 * size[1]

    def shuffle(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        """Everything before the 3x3x3 conv: `upscale_conv`, the pixel shuffle and the head-frame drop."""
        b, c, t, h, w = x.shape
        z = self.temporal_ratio
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d)
        x = self.upscale_conv(x).view(b, 2, 2, z, c, t, h, w)  # dims: b x y z c t h w
        if channels_last:  # the one copy writes the channels-last layout
            x = x.permute(0, 5, 3, 6, 1, 7, 2, 4).reshape(b, t * z, h * 2, w * 2, c).permute(0, 4, 1, 2, 3)
        else:
            x = x.permute(0, 4, 5, 3, 6, 1, 7, 2).reshape(b, c, t * z, h * 2, w * 2)
        if z == 2 and (memory is None or memory.first):
            x = x[:, :, :1] if x.shape[2] == 2 else cat_frames([x[:, :, :1], x[:, :, 2:]])  # no copy for a lone frame
        return x


class FrameAttention(nn.Module):
    """The mid-block self-attention (diffusers `Attention`, one head of width C, residual), applied to each frame
    separately over its `h * w` positions. Key names are diffusers' current ones (`to_q`, ..., `to_out.0`)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = FrameGroupNorm(groups, channels, eps=1e-6)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.group_norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)  # one head
        keys, values = self.to_k(tokens), self.to_v(tokens)
        out = torch.empty_like(tokens)
        for rows in query_chunks(h * w, keys):
            out[:, :, rows] = self.attend(tokens[:, :, rows], keys, values)
        return x + out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)

    def attend(self, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """`to_out(softmax(q k^T / sqrt(C)) v)` for the normalised query `tokens (BT, 1, n, C)` against every key.

        Softmax rows are independent, so attending a few queries at a time is exact, and the score matrix is
        `n x (h w)` instead of `(h w)^2`: SDPA's CPU math path materialises the whole matrix (16 GiB in float32
        for a 2048 x 2048 image).
        """
        q = self.to_q(tokens)
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            return self.to_out[0](gemm_attention(q, keys, values))
        return self.to_out[0](F.scaled_dot_product_attention(q, keys, values))


def gemm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention `(BT, 1, n, C)` in half precision on CUDA as two GEMMs with float32 scores, the
    way flash attention rounds: products accumulated in float32, unnormalised probabilities rounded to the
    input dtype for the second GEMM, the row sums kept in float32.

    The VAE's head is 512 wide. Flash attention stops at 256, and SDPA's memory-efficient kernel ran it at
    ~3 TFLOP/s on an H100 (20 of 27 seconds of a 4K restore; benchmarks/RESULTS.md); cuBLAS runs these GEMMs
    near its peak, leaving the softmax passes over the float32 scores (`kernels.unnormalized_softmax`) as the
    cost.
    """
    scale = q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    for i in range(q.shape[0]):
        scores = torch.mm(q[i, 0], k[i, 0].t(), out_dtype=torch.float32)  # (n, N)
        probs, row_sum = kernels.unnormalized_softmax(scores, scale, q.dtype)
        del scores
        out[i, 0] = (torch.mm(probs, v[i, 0], out_dtype=torch.float32) / row_sum).to(q.dtype)
    return out


#: Largest attention score block (bytes, float32) that `FrameAttention` computes at once.
ATTENTION_CHUNK_BYTES = 128 * 1024**2
#: The same on CUDA, where each block is one GEMM: small blocks leave most of the GPU idle.
CUDA_ATTENTION_CHUNK_BYTES = 1024**3


def attention_chunk_bytes(device: torch.device) -> int:
    return CUDA_ATTENTION_CHUNK_BYTES if device.type == "cuda" else ATTENTION_CHUNK_BYTES


def query_chunks(tokens: int, keys: torch.Tensor) -> list[slice]:
    """Slices of query positions whose score blocks against all `keys (BT, 1, N, C)` stay within
    `attention_chunk_bytes` (the float32 scores and their softmax, per frame in the batch)."""
    per_query = 2 * 4 * keys.shape[0] * keys.shape[2]
    step = max(1, min(tokens, attention_chunk_bytes(keys.device) // per_query))
    return [slice(start, min(start + step, tokens)) for start in range(0, tokens, step)]


class MidBlock3D(nn.Module):
    """ResNet, attention, ResNet at the lowest resolution (the attention is optional: `attention=False`)."""

    def __init__(self, channels: int, groups: int, attention: bool = True, full_time_field: bool = True):
        super().__init__()
        # Registered before the ResNets, as in the official state_dict order.
        self.attentions = nn.ModuleList([FrameAttention(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList(ResnetBlock3D(channels, channels, groups, full_time_field) for _ in range(2))

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        x = self.resnets[0](x, memory)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x, memory)


def resnet_stack(
    in_channels: int, out_channels: int, num_layers: int, groups: int, full_time_field: bool
) -> nn.ModuleList:
    """`num_layers` ResNet blocks; the first one changes the channel count."""
    return nn.ModuleList(
        ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, full_time_field)
        for i in range(num_layers)
    )


class DownEncoderBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        downsample: bool,
        temporal_down: bool,
        full_time_field: bool = True,
    ):
        super().__init__()
        self.resnets = resnet_stack(in_channels, out_channels, num_layers, groups, full_time_field)
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels, temporal_down)] if downsample else [])

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x, memory)
        return x


class UpDecoderBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        groups: int,
        upsample: bool,
        temporal_up: bool,
        full_time_field: bool = True,
    ):
        super().__init__()
        self.resnets = resnet_stack(in_channels, out_channels, num_layers, groups, full_time_field)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels, temporal_up)] if upsample else [])

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x, memory)
        return x
