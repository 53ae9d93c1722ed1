"""Output-size semantics of fal's `fal-ai/seedvr/upscale/image` (`upscale_mode`, `upscale_factor`,
`target_resolution`). Torch-free: the CLI's argument checks and the server's schema use it."""

from __future__ import annotations

UPSCALE_MODES = ("factor", "target")
TARGET_SHORT_SIDE = {"720p": 720, "1080p": 1080, "1440p": 1440, "2160p": 2160}
MIN_UPSCALE_FACTOR = 1.0
MAX_UPSCALE_FACTOR = 10.0


class SizeError(ValueError):
    """An output size that cannot be produced from these options."""


def check_size_options(upscale_mode: str, upscale_factor: float, target_resolution: str) -> None:
    """Raise SizeError for size options no input could honour (only the field `upscale_mode` uses)."""
    if upscale_mode == "factor":
        if not MIN_UPSCALE_FACTOR <= upscale_factor <= MAX_UPSCALE_FACTOR:
            raise SizeError(
                f"upscale_factor must be between {MIN_UPSCALE_FACTOR:g} and {MAX_UPSCALE_FACTOR:g}, got {upscale_factor:g}"
            )
    elif upscale_mode == "target":
        if target_resolution not in TARGET_SHORT_SIDE:
            raise SizeError(f"target_resolution must be one of {', '.join(TARGET_SHORT_SIDE)}, got {target_resolution!r}")
    else:
        raise SizeError(f"upscale_mode must be one of {', '.join(UPSCALE_MODES)}, got {upscale_mode!r}")


def output_size(
    width: int, height: int, upscale_mode: str, upscale_factor: float, target_resolution: str
) -> tuple[int, int]:
    """(width, height) of the upscaled image.

    `factor` multiplies both sides by the factor and rounds (half to even, like Python's round);
    `target` scales so the short side becomes 720/1080/1440/2160 and keeps the aspect ratio.
    """
    if width < 1 or height < 1:
        raise SizeError(f"image has no pixels ({width}x{height})")
    check_size_options(upscale_mode, upscale_factor, target_resolution)
    if upscale_mode == "factor":
        return max(1, round(width * upscale_factor)), max(1, round(height * upscale_factor))
    short = TARGET_SHORT_SIDE[target_resolution]
    scale = short / min(width, height)
    if width <= height:
        return short, max(1, round(height * scale))
    return max(1, round(width * scale)), short
