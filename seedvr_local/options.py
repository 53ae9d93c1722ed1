"""The choices of an upscale, written once and without torch: the CLI's flags, the server's schema and
`UpscaleOptions.validate` all read them from here, so `seedvr-local --help` and the request schema load in
milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from seedvr_local.sizes import TARGET_SHORT_SIDE, UPSCALE_MODES, check_size_options, output_size

#: The colour fixes `seedvr_local.colorfix.apply_color_fix` implements.
COLOR_FIXES = ("wavelet", "adain", "lab", "none")
#: Formats an upscaled image can be written in (`image_io.encode_image` also takes "jpeg" for "jpg").
OUTPUT_FORMATS = ("png", "jpg", "webp")
#: Seeds are drawn from and accepted in [0, MAX_SEED] (fal's range).
MAX_SEED = 2**31 - 1
MIN_VAE_TILE = 8

#: Called when a phase of a run starts: "resize", "encode", "dit", "vae_decode", "color_fix", "finish".
#: Raising from it (a cancellation, say) aborts the run between phases.
ProgressCallback = Callable[[str], None]

# Literal types built from the tuples above (typing accepts a tuple of values as the subscript).
UpscaleMode = Literal[UPSCALE_MODES]  # type: ignore[valid-type]
TargetResolution = Literal[tuple(TARGET_SHORT_SIDE)]  # type: ignore[valid-type]
ColorFix = Literal[COLOR_FIXES]  # type: ignore[valid-type]
OutputFormat = Literal[OUTPUT_FORMATS]  # type: ignore[valid-type]
VaeTile = int | Literal["auto"]


def check_vae_tile(vae_tile: VaeTile) -> None:
    if vae_tile == "auto":
        return
    if isinstance(vae_tile, bool) or not isinstance(vae_tile, int) or vae_tile < MIN_VAE_TILE:
        raise ValueError(f"vae_tile must be 'auto' or a tile size of at least {MIN_VAE_TILE} pixels, got {vae_tile!r}")


@dataclass(frozen=True)
class RestoreOptions:
    """What an image and a video upscale share: fal's size, seed, noise and colour-fix semantics."""

    upscale_mode: UpscaleMode = "factor"
    upscale_factor: float = 2.0
    target_resolution: TargetResolution = "1080p"
    seed: int | None = None
    noise_scale: float = 0.1
    color_fix: ColorFix = "wavelet"

    def validate(self) -> None:
        """Raise ValueError with a one-line message for options no run could honour."""
        check_size_options(self.upscale_mode, self.upscale_factor, self.target_resolution)
        if not 0.0 <= self.noise_scale <= 1.0:
            raise ValueError(f"noise_scale must be between 0 and 1, got {self.noise_scale:g}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {self.color_fix!r}")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the result for a `width x height` input; SizeError when there is none."""
        return output_size(width, height, self.upscale_mode, self.upscale_factor, self.target_resolution)


@dataclass(frozen=True)
class UpscaleOptions(RestoreOptions):
    """fal's `fal-ai/seedvr/upscale/image` input semantics (minus the image and the output format);
    `seamless=True` is `fal-ai/seedvr/upscale/image/seamless`'s: the image is a tileable texture, restored as one
    period of a torus so that the result tiles too (docs/seamless.md)."""

    vae_tile: VaeTile = "auto"  # VAE tile in pixels; "auto": untiled if it fits, else the planner's
    seamless: bool = False

    def validate(self) -> None:
        super().validate()
        check_vae_tile(self.vae_tile)
