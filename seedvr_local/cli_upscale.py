"""`seedvr-local upscale`: one image or a directory of images, the model loaded once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seedvr_local.image_io import decode_image
from seedvr_local.model_home import find_installed_weights
from seedvr_local.upscaler import UpscaleOptions, Upscaler

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


def _plan(args: argparse.Namespace) -> list[tuple[Path, Path, str]]:
    """(input, output, format) for every image, checked before the model is loaded."""
    source: Path = args.input
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not inputs:
            raise ValueError(f"{source}: no images in this directory")
        out_dir = args.output or source.with_name(source.name + "_upscaled")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a directory")
        fmt = args.output_format or "png"
        return [(p, out_dir / f"{p.stem}.{fmt}", fmt) for p in inputs]
    if args.output is None:
        raise ValueError("give the output file with -o OUTPUT")
    fmt = args.output_format or FORMAT_BY_SUFFIX.get(args.output.suffix.lower())
    if fmt is None:
        raise ValueError(f"{args.output}: unknown image extension; use .png/.jpg/.webp or --output-format")
    return [(source, args.output, fmt)]


def _options(args: argparse.Namespace) -> UpscaleOptions:
    if args.target_resolution:
        options = UpscaleOptions(upscale_mode="target", target_resolution=args.target_resolution)
    else:
        options = UpscaleOptions(upscale_mode="factor", upscale_factor=args.upscale_factor or 2.0)
    options = UpscaleOptions(
        upscale_mode=options.upscale_mode,
        upscale_factor=options.upscale_factor,
        target_resolution=options.target_resolution,
        seed=args.seed,
        noise_scale=args.noise_scale,
        color_fix=args.color_fix,
    )
    options.validate()
    return options


class _PhaseBar:
    """One status line per image on a terminal: `[2/5] photo.png: dit`."""

    def __init__(self, total: int):
        self.total = total
        self.enabled = sys.stderr.isatty()

    def show(self, index: int, name: str, phase: str) -> None:
        if self.enabled:
            print(f"\r\033[K[{index}/{self.total}] {name}: {phase}", end="", file=sys.stderr, flush=True)

    def done(self, index: int, name: str, message: str) -> None:
        if self.enabled:
            print("\r\033[K", end="", file=sys.stderr)
        print(f"[{index}/{self.total}] {name}: {message}", file=sys.stderr)


def run_upscale(args: argparse.Namespace) -> int:
    options = _options(args)
    jobs = _plan(args)
    # Read and check every input before spending time on loading the model.
    images = []
    for source, _, _ in jobs:
        try:
            images.append(decode_image(source.read_bytes()))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    weights_dir = args.weights_dir or find_installed_weights(args.model or "3b")
    upscaler = Upscaler.from_weights_dir(weights_dir, device=args.device, dtype=args.dtype)
    print(f"loaded {upscaler.description}", file=sys.stderr)

    bar = _PhaseBar(len(jobs))
    for index, ((source, target, fmt), image) in enumerate(zip(jobs, images), start=1):
        started = time.perf_counter()
        result = upscaler.upscale(image, options, progress=lambda phase: bar.show(index, source.name, phase))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.encode(fmt))
        width, height = result.size
        bar.done(index, source.name, f"{width}x{height} -> {target} (seed {result.seed}, "
                 f"{time.perf_counter() - started:.1f}s)")
    return 0
