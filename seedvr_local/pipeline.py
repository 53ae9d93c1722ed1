"""The SeedVR2 one-step restoration core, on tensors.

`RestorationPipeline.restore` takes a video `[3, T, H, W]` in [-1, 1] whose H and W are multiples of
`size_multiple` (16 for SeedVR2) and returns the restored video at the same size, with every intermediate of the
official `generation_step` kept for inspection. Image decoding, resizing and padding live in `upscaler.py`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from seedvr_local.colorfix import apply_color_fix
from seedvr_local.diffusion import NUM_TIMESTEPS, condition_timestep, lerp_noise, v_lerp_to_x0
from seedvr_local.preprocess import crop_to
from seedvr_local.models.vae_tiling import VAETiling
from seedvr_local.offload import ModelOffload
from seedvr_local.offload_levels import NO_OFFLOAD, OffloadLevel

PhaseCallback = Callable[[str], None]
log = logging.getLogger("seedvr_local")


@dataclass
class RestoreNoises:
    """The three random tensors of one restoration, channels-first `[C, t, h, w]`, in draw order."""

    posterior_eps: torch.Tensor
    noise: torch.Tensor
    aug_noise: torch.Tensor

    @classmethod
    def draw(cls, latent_shape: tuple[int, ...], seed: int) -> "RestoreNoises":
        """Draw on the CPU in float32 from one generator seeded with `seed`, in the official order
        (posterior eps, then the starting noise x_T, then the condition augmentation noise), so a
        seed gives the same result on every device."""
        generator = torch.Generator("cpu").manual_seed(seed)
        eps, noise, aug = (torch.randn(latent_shape, generator=generator, dtype=torch.float32) for _ in range(3))
        return cls(eps, noise, aug)


@dataclass
class RestoreOutput:
    cond_latent: torch.Tensor  # [16, t, h, w] DiT-space latent of the input
    cond_timestep: float  # noise level of the condition
    condition: torch.Tensor  # [17, t, h, w]
    dit_out: torch.Tensor  # [16, t, h, w] the v prediction
    latent_out: torch.Tensor  # [16, t, h, w] the restored latent x_0
    decoded: torch.Tensor  # [3, T, H, W] VAE output, not clipped
    colorfixed: torch.Tensor  # [3, T, H, W]


def pad_frames(video: torch.Tensor, frames: int) -> torch.Tensor:
    """`video [3, T, H, W]` with its last frame repeated up to `frames` frames (`VideoAutoencoder.padded_frames`
    says how many the causal VAE needs)."""
    extra = frames - video.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {video.shape[1]} frames to {frames}")
    if extra == 0:
        return video
    return torch.cat([video, video[:, -1:].expand(-1, extra, -1, -1)], dim=1)


class RestorationPipeline:
    """VAE encode -> condition -> one DiT step at t = 1000 -> Euler endpoint -> VAE decode -> colour fix."""

    def __init__(
        self,
        dit: torch.nn.Module,
        vae: torch.nn.Module,
        text_embedding: torch.Tensor,
        scaling_factor: float = 0.9152,
        shifting_factor: float = 0.0,
        sample_posterior: bool = True,
    ):
        self.dit = dit
        self.vae = vae
        self.text_embedding = text_embedding
        self.scaling_factor = scaling_factor
        self.shifting_factor = shifting_factor
        self.sample_posterior = sample_posterior
        self.offload: ModelOffload | None = None  # `enable_offload`: weights placed between host and device

    @property
    def device(self) -> torch.device:
        """Where the restoration runs (with offload, some weights wait in host memory meanwhile)."""
        return self.offload.device if self.offload is not None else next(self.dit.parameters()).device

    def enable_offload(self, device: torch.device | str | None = None) -> ModelOffload:
        """Let `restore` keep weights in host memory by `OffloadLevel` (none until one is given), running on
        `device` (default: where the models are)."""
        if self.offload is None:
            self.offload = ModelOffload(self.dit, self.vae, self.device if device is None else device)
        return self.offload

    def weights_on_device(self, phase: str) -> contextlib.AbstractContextManager:
        """The weights of `phase` ("encode", "dit", "decode") on the device for the duration of the `with`."""
        return self.offload.phase(phase) if self.offload is not None else contextlib.nullcontext()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    # ---- geometry, from the models' configs

    @property
    def dit_patch(self) -> tuple[int, int]:
        """(rows, columns) of latent pixels per DiT token (its config's `patch_size`, `[t, h, w]` or one int)."""
        patch = self.dit.config.patch_size
        return (patch, patch) if isinstance(patch, int) else (int(patch[-2]), int(patch[-1]))

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: whole DiT patches of whole latent pixels (16 for SeedVR2:
        the VAE's 8 x the DiT's 2)."""
        factor = self.vae.spatial_factor
        rows, columns = self.dit_patch
        return math.lcm(factor * rows, factor * columns)

    def padded_frames(self, frames: int) -> int:
        """The frames a clip of `frames` is padded to, as the causal VAE needs (4n + 1)."""
        return self.vae.padded_frames(frames)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`[C, t, h, w]` of the latent of a `[3, frames, height, width]` input (after frame padding)."""
        return self.vae.latent_shape(frames, height, width)

    def dit_tokens(self, frames: int, height: int, width: int) -> int:
        """Tokens the DiT sees for a `[3, frames, height, width]` input (sizes multiples of `size_multiple`)."""
        _, t, h, w = self.latent_shape(frames, height, width)
        rows, columns = self.dit_patch
        return t * (h // rows) * (w // columns)

    @torch.no_grad()
    def restore(
        self,
        video: torch.Tensor,
        noises: RestoreNoises,
        cond_noise_scale: float = 0.0,
        color_fix: str = "wavelet",
        on_phase: PhaseCallback | None = None,
        crop: tuple[int, int] | None = None,
        vae_tiling: VAETiling | None = None,
        offload: OffloadLevel | None = None,
        periodic: bool = False,
    ) -> RestoreOutput:
        """`crop=(height, width)` cuts the decoded video back to the top-left region of the input that was
        not padding before the colour fix, so padding never influences the colours of the result.
        `vae_tiling` runs the VAE in exact spatial tiles (same result, less memory; `seedvr_local/models/vae_tiling.py`).
        `offload` places the weights for that level first (`enable_offload`; default: as they are).
        `periodic`: each frame is one period of a tileable image, restored as the endless plane of its tiles would
        be, so that the result tiles too: the VAE's paddings, the DiT's attention windows and the colour fix's
        blurs wrap around the frame's sides (docs/seamless.md says which of these are exact)."""
        if offload is not None and (self.offload is not None or offload != NO_OFFLOAD):
            self.enable_offload().apply(offload)
        on_phase = on_phase or (lambda phase: None)
        frames, height, width = video.shape[1:]
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {height}x{width}")
        device, dtype = self.device, self.dtype
        f32 = lambda x: x.to(device=device, dtype=torch.float32)  # noqa: E731

        on_phase("encode")
        x = pad_frames(video, self.padded_frames(frames)).to(device=device, dtype=dtype)
        with self.weights_on_device("encode"):
            mean, logvar = self._vae("encode", x[None], vae_tiling, periodic)
        mean, logvar = f32(mean[0]), f32(logvar[0])
        latent = mean + torch.exp(0.5 * logvar) * f32(noises.posterior_eps) if self.sample_posterior else mean
        cond_latent = (latent - self.shifting_factor) * self.scaling_factor

        cond_timestep = condition_timestep(cond_noise_scale, tuple(cond_latent.shape[1:]), cond_latent.shape[0])
        cond = lerp_noise(cond_latent, f32(noises.aug_noise), cond_timestep)
        condition = torch.cat([cond, torch.ones_like(cond[:1])])  # channel 16: the "sr" task mask

        on_phase("dit")
        noise = f32(noises.noise)
        dit_in = torch.cat([noise, condition]).to(dtype)
        timestep = torch.full((1,), NUM_TIMESTEPS, device=device)
        text = self.text_embedding.to(device=device, dtype=dtype)
        with self.weights_on_device("dit"):
            (dit_out,) = self.dit.forward_samples([dit_in], [text], timestep, periodic)
        dit_out = dit_out.float()
        latent_out = v_lerp_to_x0(noise, dit_out, NUM_TIMESTEPS)

        on_phase("vae_decode")
        z = latent_out / self.scaling_factor + self.shifting_factor
        with self.weights_on_device("decode"):
            decoded = self._vae("decode", z[None].to(dtype), vae_tiling, periodic)[0, :, :frames].float()
        style = video
        if crop is not None:
            decoded, style = crop_to(decoded, crop), crop_to(video, crop)

        on_phase("color_fix")
        style = style.to(device=device, dtype=torch.float32)
        frames_first = decoded.transpose(0, 1), style.transpose(0, 1)
        colorfixed = apply_color_fix(color_fix, *frames_first, periodic).transpose(0, 1)
        return RestoreOutput(cond_latent, cond_timestep, condition, dit_out, latent_out, decoded, colorfixed)

    def _vae(
        self, phase: str, x: torch.Tensor, tiling: VAETiling | None, periodic: bool
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """`vae.encode` or `vae.decode`; in fp16 a phase whose output overflowed runs again in float32.

        fp16 stops at 65504, and VAE activations can pass it (spec pitfall 7: black or NaN images on GPUs without
        bf16), which shows as inf/NaN in the output. bf16 has float32's range and never needs this.
        """
        run = getattr(self.vae, phase)
        out = run(x, tiling=tiling, periodic=periodic)
        if x.dtype != torch.float16 or all(bool(t.isfinite().all()) for t in _as_tuple(out)):
            return out
        log.warning("the VAE %s overflowed float16; running it again in float32", phase)
        with _float32_weights(self.vae):
            return run(x.float(), tiling=tiling, periodic=periodic)


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


@contextlib.contextmanager
def _float32_weights(module: torch.nn.Module) -> Iterator[None]:
    """Float32 copies of `module`'s weights for the duration; the originals are put back untouched."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    originals = [t.data for t in tensors]
    try:
        for t, data in zip(tensors, originals):
            t.data = data.float()
        yield
    finally:
        for t, data in zip(tensors, originals):
            t.data = data


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """`[3, T, H, W]` in [-1, 1] -> `[T, H, W, 3]` uint8, rounding half to even like the official script."""
    return ((video.clamp(-1, 1) * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
