# Ported from ByteDance Seed's SeedVR (https://github.com/ByteDance-Seed/SeedVR, Apache-2.0),
# common/diffusion: the schedule, the v_lerp prediction, the timestep shift; rewritten for this project (see NOTICE).
"""The diffusion maths SeedVR2 uses: lerp schedule (T = 1000), v_lerp prediction, the SD3-style
resolution shift of the condition-noise timestep, and the one-step Euler endpoint."""

from __future__ import annotations

import torch

NUM_TIMESTEPS = 1000.0


def lerp_noise(x0: torch.Tensor, noise: torch.Tensor, t: float) -> torch.Tensor:
    """x_t = A x_0 + B x_T with A = 1 - t/T and B = t/T."""
    b = t / NUM_TIMESTEPS
    return (1.0 - b) * x0 + b * noise


def v_lerp_to_x0(x_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """Recover x_0 from the v = x_T - x_0 prediction: (x_t - B v) / (A + B)."""
    b = t / NUM_TIMESTEPS
    return (x_t - b * v) / ((1.0 - b) + b)


def _line(x: float, x1: float, y1: float, x2: float, y2: float) -> float:
    return (x - x1) * (y2 - y1) / (x2 - x1) + y1


def resolution_shift(t: float, shape_argument: tuple[int, int, int]) -> float:
    """The SD3-style timestep shift `timestep_transform` of the official code.

    `shape_argument` is read as latent (frames, height, width); the shift grows with the pixel count.
    """
    frames = (shape_argument[0] - 1) * 4 + 1
    pixels = shape_argument[1] * 8 * shape_argument[2] * 8
    if frames > 1:
        shift = _line(pixels * frames, 256 * 256 * 37, 1.0, 1280 * 720 * 145, 5.0)
    else:
        shift = _line(pixels, 256 * 256, 1.0, 1024 * 1024, 3.2)
    u = t / NUM_TIMESTEPS
    return NUM_TIMESTEPS * shift * u / (1.0 + (shift - 1.0) * u)


def condition_timestep(cond_noise_scale: float, latent_thw: tuple[int, int, int], channels: int) -> float:
    """Noise level of the condition latent for `cond_noise_scale`.

    The official scripts pass the channels-last latent shape without its first axis, (h, w, C), where
    the transform expects (t, h, w). We reproduce that: the official numbers (and every SeedVR2 result
    with a non-zero noise scale) were made that way. At scale 0, the SeedVR2 default, it maps 0 to 0.
    """
    _, h, w = latent_thw
    return resolution_shift(NUM_TIMESTEPS * cond_noise_scale, (h, w, channels))
