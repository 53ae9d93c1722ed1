"""`seedvr-local upscale`: one image or a directory of images, the model loaded once.

Torch-free at import: the arguments are checked first, in milliseconds; `run_upscale` then loads the model."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seedvr_local.cli_files import IMAGE_SUFFIXES, is_video, refuse_overwriting
from seedvr_local.model_home import TINY_MODEL, find_installed_weights
from seedvr_local.options import OUTPUT_FORMATS, UpscaleOptions

FORMAT_BY_SUFFIX = {f".{fmt}": fmt for fmt in OUTPUT_FORMATS} | {".jpeg": "jpg"}


def _plan(args: argparse.Namespace) -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """(input, output, format) for every image, and a line for every entry of a directory input that is skipped;
    checked before the model is loaded."""
    source: Path = args.input
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if source.is_dir():
        videos = {p for p in source.iterdir() if p.is_file() and is_video(p)}  # the video command's, animated GIFs too
        inputs = sorted(
            p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p not in videos
        )
        skipped = [
            f"skipped {p.name}: " + ("a directory (not searched)" if p.is_dir() else "not an image or video file")
            for p in sorted(source.iterdir())
            if p not in inputs and p not in videos
        ]
        if not inputs:
            raise ValueError(f"{source}: no images in this directory")
        out_dir = args.output or source.with_name(source.name + "_upscaled")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a directory")
        fmt = args.output_format or "png"
        jobs = [(p, out_dir / f"{p.stem}.{fmt}", fmt) for p in inputs]
    else:
        skipped = []
        target = args.output or _beside(source, args.output_format)
        fmt = args.output_format or FORMAT_BY_SUFFIX.get(target.suffix.lower())
        if fmt is None:
            raise ValueError(f"{target}: unknown image extension; use .png/.jpg/.webp or --output-format")
        jobs = [(source, target, fmt)]
    refuse_overwriting(jobs, args.overwrite)
    return jobs, skipped


def _beside(source: Path, output_format: str | None) -> Path:
    """`photo.jpg` -> `photo_upscaled.jpg`; `--output-format`'s extension, or .png for an input no format writes."""
    if output_format is not None:
        suffix = f".{output_format}"
    else:
        suffix = source.suffix if source.suffix.lower() in FORMAT_BY_SUFFIX else ".png"
    return source.with_name(f"{source.stem}_upscaled{suffix}")




def _options(args: argparse.Namespace) -> UpscaleOptions:
    size = (
        dict(upscale_mode="target", target_resolution=args.target_resolution)
        if args.target_resolution
        else dict(upscale_mode="factor", upscale_factor=2.0 if args.upscale_factor is None else args.upscale_factor)
    )
    options = UpscaleOptions(
        **size, seed=args.seed, noise_scale=args.noise_scale, color_fix=args.color_fix, vae_tile=args.vae_tile,
        seamless=args.seamless,
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


def _read(source: Path):
    from seedvr_local.image_io import decode_image

    try:
        return decode_image(source.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def run_upscale(args: argparse.Namespace) -> int:
    options = _options(args)
    jobs, skipped = _plan(args)
    for line in skipped:  # before the model loads: a user sees at once what the run leaves out
        print(line, file=sys.stderr)
    # None for the tiny model, built in memory. Missing weights are said before anything loads.
    weights_dir = (
        None if args.model == TINY_MODEL else args.weights_dir or find_installed_weights(args.model or "3b")
    )

    from seedvr_local import kernels
    from seedvr_local.compilation import compile_pipeline
    from seedvr_local.devices import resolve_device
    from seedvr_local.upscaler import Upscaler

    single = len(jobs) == 1 and not args.input.is_dir()
    first = _read(jobs[0][0]) if single else None  # a bad single input fails before the model loads
    kernels.backend.resolve(args.kernels, resolve_device(args.device))  # an impossible --kernels fails before loading
    upscaler = (
        Upscaler.tiny(device=args.device, dtype=args.dtype, kernels=args.kernels, offload=args.offload)
        if weights_dir is None
        else Upscaler.from_weights_dir(
            weights_dir, device=args.device, dtype=args.dtype, kernels=args.kernels, offload=args.offload
        )
    )
    backend = upscaler.kernel_backend
    if args.compile:
        compile_pipeline(upscaler.pipeline)
    compiled = "; compiled on first use of each size" if args.compile else ""
    print(f"loaded {upscaler.description}; kernels: {backend}{compiled}", file=sys.stderr)
    if upscaler.notice:
        print(f"note: {upscaler.notice}", file=sys.stderr)

    bar = _PhaseBar(len(jobs))
    failed = 0
    for index, (source, target, fmt) in enumerate(jobs, start=1):
        started = time.perf_counter()
        try:
            image = first if single else _read(source)
        except ValueError as exc:  # in a directory, one bad file does not stop the others
            failed += 1
            bar.done(index, source.name, f"skipped: {exc}")
            continue
        result = upscaler.upscale(image, options, progress=lambda phase: bar.show(index, source.name, phase))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.encode(fmt))
        width, height = result.size
        seconds = time.perf_counter() - started
        bar.done(index, source.name, f"{width}x{height} -> {target} (seed {result.seed}, {seconds:.1f}s)")
    if failed:
        raise ValueError(f"{failed} of {len(jobs)} images could not be read")
    return 0
