# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# models/video_vae_v3: the causal video VAE; rewritten for this project (see NOTICE).
"""The SeedVR2 causal video VAE (official `models/video_vae_v3`, `VideoAutoencoderKLWrapper`; spec section 3).

An SD3-style 16-channel KL autoencoder inflated to causal 3-D: 8x spatial and 4x temporal compression, a clip of
`T = 4n + 1` frames maps to `n + 1` latent frames (an image, T = 1, to one). State dict keys and shapes are exactly
the official ones (diffusers' current attention names), so `ema_vae.pth` loads with `strict=True` once
`convert_deprecated_attention_keys` has renamed old attention keys.

Clips longer than `slicing_sample_min_size + 1` frames are processed in temporal chunks like the official pipeline
(`split_size = 4`), carrying each causal conv's last input frames across chunks: the result is the same as one
pass, with far less memory. Runs in the dtype of its weights; GroupNorm is computed in float32.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from typing import Any, Callable, Iterator, Mapping

import torch
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from seedvr_local import kernels
from seedvr_local.models.vae_blocks import (
    CausalConv3d,
    ChunkMemory,
    DownEncoderBlock3D,
    FrameGroupNorm,
    MidBlock3D,
    UpDecoderBlock3D,
    cat_frames,
    wrap_space,
)
from seedvr_local.models.vae_tiling import (
    ALIGN,
    Block,
    VAETiling,
    attention_block,
    conv_block,
    out_block,
    resnet_block,
    run_blocks,
    sampler_block,
)

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution

# Official config fields that have no effect at inference (training switches, the diffusers parent's defaults).
_IGNORED_FIELDS = {"sample_size", "scaling_factor", "shifting_factor", "force_upcast", "gradient_checkpoint"}
# Official fields accepted only with the value SeedVR2 uses, because other values change the architecture.
_FIXED_FIELDS = {"slicing_up_num": 0, "extra_cond_dim": None}


class VAEConfig(FrozenDict):
    """A checked VAE architecture, before any module is built: every `VideoAutoencoder` constructor argument
    under its official name (`s8_c16_t4_inflation_sd3.yaml` + `freeze_encoder`), defaults filled in, lists as
    tuples. Read fields as attributes (`config.latent_channels`), as from `VideoAutoencoder.config`.

    The fields and their defaults (SeedVR2's) are listed once, as the constructor's arguments. `inflation_mode`
    and `freeze_encoder` are kept for round trips only: the released weights are already 3-D and nothing is
    trained here.
    """

    def __init__(self, **fields: Any):
        defaults = _constructor_defaults()
        unknown = sorted(set(fields) - set(defaults))
        if unknown:
            raise ValueError(f"unknown field(s) in the VAE config: {', '.join(unknown)}")
        values = {name: fields.get(name, default) for name, default in defaults.items()}
        super().__init__({name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})
        _check_config(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VAEConfig":
        """From an official yaml-style dict (the yaml, case.json, manifests, tiny_model/config.json), `to_dict()`
        or a model's `config`.

        Keys starting with `_` (yaml object markers, diffusers' bookkeeping) and official fields without effect
        at inference are ignored.
        """
        d = {k: v for k, v in d.items() if not k.startswith("_") and k not in _IGNORED_FIELDS}
        for name, value in _FIXED_FIELDS.items():
            given = d.pop(name, value)
            if given != value:
                raise ValueError(f"VAE config field {name} must be {value!r} (SeedVR2), got {given!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Every field under its official name, JSON-friendly."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in self.items()}

    @classmethod
    def seedvr2(cls) -> "VAEConfig":
        """The released SeedVR2 VAE (3B and 7B share it): 250 tensors, 250,648,227 parameters."""
        return cls()


def _constructor_defaults() -> dict[str, Any]:
    parameters = inspect.signature(VideoAutoencoder.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name != "self"}


def _check_config(cfg: VAEConfig) -> None:
    levels = len(cfg.block_out_channels)
    if levels < 1:
        raise ValueError("block_out_channels must list at least one channel count")
    if cfg.down_block_types != ("DownEncoderBlock3D",) * levels:
        raise ValueError(f"down_block_types must be {levels} x 'DownEncoderBlock3D', got {cfg.down_block_types}")
    if cfg.up_block_types != ("UpDecoderBlock3D",) * levels:
        raise ValueError(f"up_block_types must be {levels} x 'UpDecoderBlock3D', got {cfg.up_block_types}")
    if cfg.act_fn not in ("silu", "swish"):
        raise ValueError(f"act_fn must be 'silu', got {cfg.act_fn!r}")
    if cfg.time_receptive_field not in ("full", "half"):
        raise ValueError(f"time_receptive_field must be 'full' or 'half', got {cfg.time_receptive_field!r}")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise ValueError(f"norm_num_groups {cfg.norm_num_groups} must divide every block_out_channels entry")
    if not 0 <= cfg.temporal_scale_num < levels:
        raise ValueError(f"temporal_scale_num must be in [0, {levels - 1}], got {cfg.temporal_scale_num}")
    if cfg.spatial_downsample_factor != 2 ** (levels - 1):
        raise ValueError(f"spatial_downsample_factor must be {2 ** (levels - 1)} for {levels} blocks")
    if ALIGN % cfg.spatial_downsample_factor:
        raise ValueError(f"spatial_downsample_factor must divide {ALIGN} (the tiling's alignment)")
    if cfg.temporal_downsample_factor != 2**cfg.temporal_scale_num:
        raise ValueError(f"temporal_downsample_factor must be 2**temporal_scale_num = {2**cfg.temporal_scale_num}")
    split = cfg.slicing_sample_min_size
    if split < 1 or split % cfg.temporal_downsample_factor:
        raise ValueError(
            f"slicing_sample_min_size must be a positive multiple of {cfg.temporal_downsample_factor}, got {split}"
        )


def _is_temporal_level(cfg: VAEConfig, level: int) -> bool:
    """Whether the downsampler of encoder level `level` is temporal too: the official encoder makes its *last*
    `temporal_scale_num` downsamplers temporal; the decoder mirrors this with its *first* upsamplers."""
    return level >= len(cfg.block_out_channels) - 1 - cfg.temporal_scale_num


class Encoder3D(nn.Module):
    """conv_in, down blocks (the last without downsampler), mid block, GroupNorm, SiLU, conv_out to 2 x latent."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels = cfg.block_out_channels
        levels = len(channels)
        full = cfg.time_receptive_field == "full"
        groups = cfg.norm_num_groups
        self.conv_in = CausalConv3d(cfg.in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock3D(
                in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i],
                num_layers=cfg.layers_per_block,
                groups=groups,
                downsample=i < levels - 1,
                temporal_down=_is_temporal_level(cfg, i),
                full_time_field=full,
            )
            for i in range(levels)
        )
        self.mid_block = MidBlock3D(channels[-1], groups, cfg.attention, full)
        self.conv_norm_out = FrameGroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_out = CausalConv3d(channels[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        x = self.conv_in(x, memory)
        for block in self.down_blocks:
            x = block(x, memory)
        x = self.mid_block(x, memory)
        return self.conv_out(self.conv_norm_out(x, silu=True), memory)

    def tile_blocks(self, quant_conv: CausalConv3d | None) -> list[Block]:
        """The encoder (and quant_conv) as tiling blocks. No cut right after conv_in (it is cheap to recompute)
        nor before a downsampler (its output is 4x smaller and it comes after the segment's last norm)."""
        blocks = [conv_block("conv_in", self.conv_in, cut_after=False)]
        for i, down in enumerate(self.down_blocks):
            for j, res in enumerate(down.resnets):
                before_down = j == len(down.resnets) - 1 and len(down.downsamplers) > 0
                blocks.append(resnet_block(f"down{i}.res{j}", res, cut_after=not before_down))
            blocks += [sampler_block(f"down{i}.down", sampler) for sampler in down.downsamplers]
        blocks += _mid_tile_blocks(self.mid_block)
        blocks.append(out_block("out", self.conv_norm_out, self.conv_out, quant_conv))
        return blocks


class Decoder3D(nn.Module):
    """conv_in, mid block, up blocks (`layers_per_block + 1` ResNets each), GroupNorm, SiLU, conv_out."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        channels = cfg.block_out_channels[::-1]
        full = cfg.time_receptive_field == "full"
        groups = cfg.norm_num_groups
        self.conv_in = CausalConv3d(cfg.latent_channels, channels[0], 3, padding=1)
        # Registered before the mid block, as in the official state_dict order.
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock3D(
                in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i],
                num_layers=cfg.layers_per_block + 1,
                groups=groups,
                upsample=i < len(channels) - 1,
                temporal_up=i < cfg.temporal_scale_num,
                full_time_field=full,
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock3D(channels[0], groups, cfg.attention, full)
        self.conv_norm_out = FrameGroupNorm(groups, channels[-1], eps=1e-6)
        self.conv_out = CausalConv3d(channels[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, memory: ChunkMemory | None = None) -> torch.Tensor:
        x = self.conv_in(z, memory)
        x = self.mid_block(x, memory)
        for block in self.up_blocks:
            x = block(x, memory)
        return self.conv_out(self.conv_norm_out(x, silu=True), memory)

    def tile_blocks(self, post_quant_conv: CausalConv3d | None) -> list[Block]:
        """post_quant_conv and the decoder as tiling blocks. No cut after conv_in, nor right after an upsampler:
        its output is 4x the size of its input, so the following ResNet recomputes it instead."""
        blocks = []
        if post_quant_conv is not None:
            blocks.append(conv_block("post_quant_conv", post_quant_conv, cut_after=False))
        blocks.append(conv_block("conv_in", self.conv_in, cut_after=False))
        blocks += _mid_tile_blocks(self.mid_block)
        for i, up in enumerate(self.up_blocks):
            blocks += [resnet_block(f"up{i}.res{j}", res) for j, res in enumerate(up.resnets)]
            blocks += [sampler_block(f"up{i}.up", sampler, cut_after=False) for sampler in up.upsamplers]
        blocks.append(out_block("out", self.conv_norm_out, self.conv_out, None))
        return blocks


def _mid_tile_blocks(mid: MidBlock3D) -> list[Block]:
    blocks = [resnet_block("mid.res0", mid.resnets[0])]
    blocks += [attention_block("mid.attn", attention) for attention in mid.attentions]
    blocks.append(resnet_block("mid.res1", mid.resnets[1]))
    return blocks


#: One pass of the encoder or decoder over a clip or temporal chunk.
Stage = Callable[[torch.Tensor, ChunkMemory | None], torch.Tensor]


class VideoAutoencoder(kernels.ModelBackends, ModelMixin, ConfigMixin):
    """The SeedVR2 video VAE. The constructor's arguments are its config (official field names, SeedVR2's
    defaults), read back as `self.config`; `VAEConfig` checks a config dict before a model is built.

    `encode` returns the posterior `(mean, logvar)`; sampling and latent scaling (0.9152) are the pipeline's job.
    Set `temporal_slicing = False` to process long clips in one pass (same result, more memory). `channels_last`
    picks the activations' layout (same result either way): None (the default) means channels-last for half
    precision on CUDA, the layout cuDNN's half-precision convolutions work in, which otherwise converts every
    activation to it and back (on an H100: the VAE phases 5-10% faster, their peak memory a quarter lower at 4K,
    benchmarks/RESULTS.md); contiguous elsewhere, where it gained nothing.

    No module has to stay in float32 (diffusers' `_keep_in_fp32_modules` is left unset): every GroupNorm computes
    its statistics and affine in float32 from weights of any dtype.
    """

    _repeated_blocks = ["ResnetBlock3D"]  # regional compilation (seedvr_local/compilation.py)

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        down_block_types: tuple[str, ...] = ("DownEncoderBlock3D",) * 4,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock3D",) * 4,
        temporal_scale_num: int = 2,
        spatial_downsample_factor: int = 8,
        temporal_downsample_factor: int = 4,
        slicing_sample_min_size: int = 4,  # frames per temporal chunk after the first (the pipeline's split_size)
        time_receptive_field: str = "full",  # "half": the ResNets' first conv is 1x3x3
        attention: bool = True,  # mid-block attention
        use_quant_conv: bool = False,
        use_post_quant_conv: bool = False,
        inflation_mode: str = "pad",
        freeze_encoder: bool = False,
    ):
        super().__init__()
        cfg = VAEConfig.from_dict(self.config)
        self.encoder = Encoder3D(cfg)
        self.decoder = Decoder3D(cfg)
        latent = cfg.latent_channels
        self.quant_conv = CausalConv3d(2 * latent, 2 * latent, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = CausalConv3d(latent, latent, 1) if cfg.use_post_quant_conv else None
        self.temporal_slicing = True
        self.channels_last: bool | None = None

    @classmethod
    def from_vae_config(cls, cfg: VAEConfig) -> "VideoAutoencoder":
        return cls(**cfg.to_dict())

    # ---- geometry: what the pipeline and the memory planner ask

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_downsample_factor

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_downsample_factor

    def padded_frames(self, frames: int) -> int:
        """The frame count a clip of `frames` frames is padded to: the causal VAE encodes `4n + 1` frames (an
        image stays one frame)."""
        if frames < 1:
            raise ValueError(f"a video needs at least one frame, got {frames}")
        return frames + (-(frames - 1)) % self.temporal_factor

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`(C, t, h, w)` of the latent of `frames` frames (padded as `padded_frames`) of `height x width`
        pixels (multiples of `spatial_factor`)."""
        f = self.spatial_factor
        latent_frames = (self.padded_frames(frames) - 1) // self.temporal_factor + 1
        return (self.config.latent_channels, latent_frames, height // f, width // f)

    def tile_blocks(self, phase: str) -> list[Block]:
        """The tiling blocks (tile programs) of "encode" or "decode", the order in which they run."""
        if phase == "encode":
            return self.encoder.tile_blocks(self.quant_conv)
        if phase == "decode":
            return self.decoder.tile_blocks(self.post_quant_conv)
        raise ValueError(f"phase must be 'encode' or 'decode', got {phase!r}")

    # ---- running

    @kernels.runs_kernels
    def encode(
        self, x: torch.Tensor, tiling: VAETiling | None = None, periodic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`x (B, 3, T, H, W)` in [-1, 1] -> posterior `(mean, logvar)`, each `(B, 16, (T-1)/4 + 1, H/8, W/8)`.

        T must be 4n + 1 (1 for an image) and H, W multiples of 8. logvar is clamped to [-30, 20].
        With `tiling`, the encoder runs in exact spatial tiles (`tiled_encode`): same result. `periodic`: the
        frames are one period of a tileable image (a torus): every spatial padding wraps around (`wrap_space`).
        """
        _check_shape(x, "x", self.config.in_channels)
        frames, height, width = x.shape[2:]
        if self.padded_frames(frames) != frames:
            raise ValueError(
                f"the causal VAE encodes {self.temporal_factor}n+1 frames (1 for an image), got {frames}: "
                "pad the clip, e.g. by repeating its last frame"
            )
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(f"height and width must be multiples of {self.spatial_factor}, got {height}x{width}")
        x = self._prepare(x)
        with self._wrapping(periodic):
            if tiling is not None:
                moments = self.tiled_encode(x, tiling, periodic)
            else:
                moments = self._sliced(self._encode, x, self.config.slicing_sample_min_size)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    @kernels.runs_kernels
    def decode(self, z: torch.Tensor, tiling: VAETiling | None = None, periodic: bool = False) -> torch.Tensor:
        """`z (B, 16, t, h, w)` (the unscaled latent) -> `(B, 3, 4(t-1) + 1, 8h, 8w)`, roughly in [-1, 1].

        With `tiling`, the decoder runs in exact spatial tiles (`tiled_decode`): same result. `periodic`: as
        `encode`'s.
        """
        _check_shape(z, "z", self.config.latent_channels)
        z = self._prepare(z)
        with self._wrapping(periodic):
            if tiling is not None:
                return self.tiled_decode(z, tiling, periodic)
            split = self.config.slicing_sample_min_size // self.temporal_factor
            return self._sliced(self._decode, z, split)

    def tiled_encode(self, x: torch.Tensor, tiling: VAETiling, periodic: bool = False) -> torch.Tensor:
        """The encoder's moments `(B, 32, t, H/8, W/8)` of `x (B, 3, T, H, W)` (on the VAE's device and dtype),
        computed in exact spatial tiles (`seedvr_local/models/vae_tiling.py`), all frames at once."""
        return run_blocks(self.tile_blocks("encode"), x, tuple(x.shape[-2:]), tiling, x.device, periodic)

    def tiled_decode(self, z: torch.Tensor, tiling: VAETiling, periodic: bool = False) -> torch.Tensor:
        """The decoded video `(B, 3, T, 8h, 8w)` of the latent `z (B, 16, t, h, w)`, in exact spatial tiles."""
        image_size = (z.shape[-2] * self.spatial_factor, z.shape[-1] * self.spatial_factor)
        return run_blocks(self.tile_blocks("decode"), z, image_size, tiling, z.device, periodic)

    @contextlib.contextmanager
    def _wrapping(self, periodic: bool) -> Iterator[None]:
        """Spatial paddings that wrap around for the duration, when `periodic`."""
        if not periodic:
            yield
            return
        wrap_space(self, True)
        try:
            yield
        finally:
            wrap_space(self, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean."""
        return self.decode(self.encode(x)[0])

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        layout = torch.channels_last_3d if self.uses_channels_last else torch.contiguous_format
        return x.to(device=self.device, dtype=self.dtype, memory_format=layout)

    @property
    def uses_channels_last(self) -> bool:
        if self.channels_last is not None:
            return self.channels_last
        return self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)

    def _encode(self, x: torch.Tensor, memory: ChunkMemory | None) -> torch.Tensor:
        h = self.encoder(x, memory)
        return h if self.quant_conv is None else self.quant_conv(h, memory)

    def _decode(self, z: torch.Tensor, memory: ChunkMemory | None) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z, memory)
        return self.decoder(z, memory)

    def _sliced(self, stage: Stage, x: torch.Tensor, split: int) -> torch.Tensor:
        """Run `stage` over frames `[0, split]`, then over chunks of `split` frames, carrying the causal state
        (the official `slicing_encode` / `slicing_decode`); in one pass when the clip is short or slicing is off."""
        if not self.temporal_slicing or x.shape[2] - 1 <= split:
            return stage(x, None)
        chunks = [x[:, :, : split + 1], *x[:, :, split + 1 :].split(split, dim=2)]
        memory = ChunkMemory()
        outputs = []
        for chunk in chunks:
            outputs.append(stage(chunk, memory))
            memory.first = False
        return cat_frames(outputs)


def _check_shape(x: torch.Tensor, name: str, channels: int) -> None:
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(
            f"{name} must be (B, {channels}, T, H, W), got shape {tuple(x.shape)}"
            + (" (add the time axis for images: x[:, :, None])" if x.ndim == 4 and x.shape[1] == channels else "")
        )
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")


# `<path>.mid_block.attentions.<i>.<old name>.<weight|bias>`: the attention names of old diffusers versions.
_DEPRECATED_ATTENTION_KEY = re.compile(
    r"^((?:.*\.)?mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$"
)
_RENAMED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def current_attention_key(key: str) -> str:
    """The current name of a VAE state_dict key: old diffusers attention names (`query`, `key`, `value`,
    `proj_attn` under `*.mid_block.attentions.N`) become `to_q`, `to_k`, `to_v`, `to_out.0`; other keys stay."""
    match = _DEPRECATED_ATTENTION_KEY.match(key)
    if match is None:
        return key
    prefix, old, param = match.groups()
    return f"{prefix}{_RENAMED_ATTENTION[old]}.{param}"


def convert_deprecated_attention_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """`state_dict` with `current_attention_key` names, in the same order; values are passed through untouched."""
    return {current_attention_key(key): value for key, value in state_dict.items()}
