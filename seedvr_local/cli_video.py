"""`seedvr-local upscale` for videos (and the routing of an input to the image or the video path).

Torch-free at import, like the image command: the arguments and the files are checked first (a bad video fails in
one line before any model loads); PyAV and torch load after. A directory's videos are done here, its images then by
the image command. With several `--devices`, the clips of each video are restored on all of them at once
(`seedvr_local.video.pool`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from seedvr_local.cli_files import IMAGE_SUFFIXES, is_video, refuse_overwriting
from seedvr_local.model_home import TINY_MODEL, find_installed_weights
from seedvr_local.video.formats import DEFAULT_FORMAT, OUTPUT_FORMATS, output_format

if TYPE_CHECKING:
    from seedvr_local.video import VideoOptions

#: Output file extension -> video output format.
VIDEO_FORMAT_BY_SUFFIX = {fmt.extension: fmt.name for fmt in OUTPUT_FORMATS} | {".m4v": "mp4"}
#: What `--output-format` accepts for a video: the short names and fal's names.
VIDEO_FORMAT_NAMES = tuple(name for fmt in OUTPUT_FORMATS for name in (fmt.name, fmt.fal_name))
#: Seconds between redraws of the progress bar on a terminal.
_REDRAW_S = 0.2




def _videos_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and is_video(p))


def run_upscale_command(args: argparse.Namespace, run_images: Callable[[argparse.Namespace], int]) -> int:
    """Videos here; images, and a directory's images after its videos, by `run_images` (`cli_upscale.run_upscale`,
    which `seedvr_local.cli` hands in: it alone knows every command)."""
    source: Path = args.input
    videos = _videos_in(source) if source.is_dir() else [source] if source.is_file() and is_video(source) else []
    if not videos:
        if source.exists():  # else the image command says it is missing
            if args.output_format in VIDEO_FORMAT_NAMES:
                raise ValueError(f"--output-format {args.output_format} is a video format, and {source} holds no video")
            if args.devices is not None:
                raise ValueError(f"--devices is for videos, and {source} holds none; images run on --device")
        return run_images(args)
    if args.seamless:
        raise ValueError(f"--seamless is for images, and {source} {'holds' if source.is_dir() else 'is'} a video")
    failed = run_video(args, videos)
    if source.is_dir() and _has_images(source, videos):
        run_images(argparse.Namespace(**{**vars(args), "output_format": _image_format(args.output_format)}))
    if failed:
        raise ValueError(f"{failed} of {len(videos)} videos were skipped (see above)")
    return 0


def _has_images(directory: Path, videos: list[Path]) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p not in videos for p in directory.iterdir() if p.is_file())


def _image_format(output_format: str | None) -> str | None:
    """`--output-format` as it applies to a directory's images: a video format names none."""
    return None if output_format in VIDEO_FORMAT_NAMES else output_format


def _video_format(output_format: str | None) -> str | None:
    """`--output-format` as it applies to videos: an image format names none."""
    return output_format if output_format in VIDEO_FORMAT_NAMES else None


def _plan(args: argparse.Namespace, videos: list[Path]) -> list[tuple[Path, Path, str]]:
    """(input, output, format short name) for every video, checked before any model loads."""
    chosen = _video_format(args.output_format)
    if args.output_format is not None and chosen is None and not args.input.is_dir():
        raise ValueError(f"--output-format {args.output_format} is an image format; {args.input} is a video")

    def own_format(path: Path) -> str:
        """The format to write `path` in, without a -o to say: its own container when fal writes it, else MP4."""
        if chosen:
            return output_format(chosen).name
        return VIDEO_FORMAT_BY_SUFFIX.get(path.suffix.lower(), DEFAULT_FORMAT.name)

    if args.input.is_dir():
        out_dir = args.output or args.input.with_name(args.input.name + "_upscaled")
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a directory")
        jobs = [(p, out_dir / f"{p.stem}.{own_format(p)}", own_format(p)) for p in videos]
        targets = [target for _, target, _ in jobs]
        clashes = sorted({str(t) for t in targets if targets.count(t) > 1})
        if clashes:
            raise ValueError(f"two videos would be written to {clashes[0]}: upscale them separately")
    else:
        source = args.input
        if args.output is None:
            fmt = own_format(source)
            target = source.with_name(f"{source.stem}_upscaled.{fmt}")
        else:
            target = args.output
            fmt = output_format(chosen).name if chosen else VIDEO_FORMAT_BY_SUFFIX.get(target.suffix.lower())
            if fmt is None:
                suffixes = "/".join(VIDEO_FORMAT_BY_SUFFIX)
                raise ValueError(f"{target}: unknown video extension; use {suffixes} or --output-format")
        jobs = [(source, target, fmt)]
    refuse_overwriting(jobs, args.overwrite)
    return jobs


def _options(args: argparse.Namespace, fmt: str) -> "VideoOptions":
    from seedvr_local.video import VideoOptions

    if args.target_resolution:
        size = dict(upscale_mode="target", target_resolution=args.target_resolution)
    else:  # VideoOptions' own default factor unless one is given
        size = dict(upscale_mode="factor")
        if args.upscale_factor is not None:
            size["upscale_factor"] = args.upscale_factor
    options = VideoOptions(
        **size, seed=args.seed, noise_scale=args.noise_scale, color_fix=args.color_fix, output_format=fmt,
        output_quality=args.output_quality, output_write_mode=args.output_write_mode,
        overlap_frames=args.clip_overlap, clip_frames=_planned if args.clip_frames is None else args.clip_frames,
    )  # fmt: skip
    options.validate()
    return options


def _planned(width: int, height: int) -> int:
    """Stands for the longest clip that fits while the options are checked, before the model that plans it loads."""
    raise RuntimeError("the clip length is planned once the model is loaded")


def parse_devices(value: str) -> list[str]:
    """`--devices`: "all" (every visible GPU) or a comma-separated list such as "cuda:0,cuda:1" or "cpu,cpu"."""
    import torch

    from seedvr_local.devices import resolve_device

    if value == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("--devices all: this machine has no usable CUDA GPU")
        return [f"cuda:{i}" for i in range(count)]
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise ValueError(f"--devices takes 'all' or a comma-separated list such as cuda:0,cuda:1, got {value!r}")
    devices = []
    for name in names:
        try:
            device = resolve_device(name)
        except RuntimeError:  # torch's own message for a malformed name spans several lines
            raise ValueError(f"--devices: {name!r} is not a device (cpu, cuda or cuda:N)") from None
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--devices: there is no {name}; this machine has {torch.cuda.device_count()} GPU(s)")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--devices: {name!r} is not a device (cpu, cuda or cuda:N)")
        devices.append(str(device))
    return devices


class _Progress:
    """A video's progress: on a terminal a bar redrawn in place (frames done, frames per second, time left), else a
    plain line at every tenth of the video."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.drawn = 0.0
        self.tenths = 0

    def __call__(self, done: int, total: int, fps: float) -> None:
        left = (total - done) / fps if fps > 0 else 0.0
        status = f"{done}/{total} frames, {fps:.2f} fps, {_duration(left)} left"
        if self.tty:
            now = time.monotonic()
            if now - self.drawn >= _REDRAW_S or done == total:
                self.drawn = now
                width = 24
                filled = width * done // total
                bar = "#" * filled + "-" * (width - filled)
                print(f"\r\033[K{self.label}: [{bar}] {status}", end="", file=self.stream, flush=True)
        elif done * 10 // total > self.tenths:
            self.tenths = done * 10 // total
            print(f"{self.label}: {status}", file=self.stream, flush=True)

    def line(self, message: str) -> None:
        """A line of its own, after the bar."""
        if self.tty:
            print("\r\033[K", end="", file=self.stream)
        print(f"{self.label}: {message}", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_video(args: argparse.Namespace, videos: list[Path]) -> int:
    """Upscale `videos` (the input, or a directory's videos) -> how many of a directory's were skipped (unreadable,
    too large)."""
    jobs = _plan(args, videos)
    options = {fmt: _options(args, fmt) for _, _, fmt in jobs}
    if args.device is not None and args.devices is not None:
        raise ValueError("give --device or --devices, not both")
    weights_dir = None if args.model == TINY_MODEL else args.weights_dir or find_installed_weights(args.model or "3b")
    if not args.input.is_dir():
        from seedvr_local.video import probe_video

        try:
            probe_video(jobs[0][0])  # a bad single video fails before any model loads
        except ValueError as exc:
            raise ValueError(f"{jobs[0][0]}: {exc}") from None

    from seedvr_local import kernels
    from seedvr_local.devices import resolve_device
    from seedvr_local.video import VideoRestorer
    from seedvr_local.video.clips import LocalClips, longest_clip
    from seedvr_local.video.pool import ClipPool, ModelSpec

    spec = ModelSpec(weights_dir, dtype=args.dtype, kernels=args.kernels, compile=args.compile, offload=args.offload)
    devices = parse_devices(args.devices) if args.devices is not None else [args.device]
    pool = None
    if len(devices) > 1:
        pool = ClipPool(spec, devices, vae_tile=args.vae_tile)
        restorer = VideoRestorer(clips=pool)
        clip_frames = pool.clip_frames
        print(f"loaded {len(devices)} copies of the model: {'; '.join(pool.descriptions)}", file=sys.stderr)
    else:
        kernels.backend.resolve(args.kernels, resolve_device(devices[0]))  # an impossible --kernels fails first
        upscaler = spec(devices[0])
        restorer = VideoRestorer(clips=LocalClips(upscaler.pipeline, planner=upscaler.planner, vae_tile=args.vae_tile))
        clip_frames = functools.partial(longest_clip, upscaler.planner, vae_tile=args.vae_tile)
        print(f"loaded {upscaler.description}; kernels: {upscaler.kernel_backend}", file=sys.stderr)
        if upscaler.notice:
            print(f"note: {upscaler.notice}", file=sys.stderr)
    failed = 0
    try:
        for index, (source, target, fmt) in enumerate(jobs, start=1):
            progress = _Progress(f"[{index}/{len(jobs)}] {source.name}")
            job_options = options[fmt]
            if job_options.clip_frames is _planned:  # the longest clip that fits, for this video's output size
                job_options = dataclasses.replace(job_options, clip_frames=clip_frames)
            try:
                job = restorer.prepare(source, job_options)
            except ValueError as exc:
                if not args.input.is_dir():
                    raise ValueError(f"{source}: {exc}") from None
                failed += 1  # in a directory, one bad video does not stop the others
                progress.line(f"skipped: {exc}")
                continue
            clips = job.clips
            progress.line(
                f"{job.info.width}x{job.info.height} -> {job.width}x{job.height}, {job.frames} frames in {len(clips)} "
                f"clip(s) of {clips[0].frames} (seed {job.seed})"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            result = restorer.write(job, target, progress)
            progress.line(
                f"{result.width}x{result.height} -> {target} "
                f"({result.seconds:.1f}s, {result.frames_per_second:.2f} fps)"
            )
    finally:
        if pool is not None:
            pool.close()
    return failed
