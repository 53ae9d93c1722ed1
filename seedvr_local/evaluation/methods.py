"""What restores an item in a benchmark run: this model, a plain resize, or another upscaler's command line.

Each method's `restore` takes the item's input file and its decoded frames and yields the output frames at the size
asked (the input's times the scale), one at a time, so that a long video's outputs are measured and saved as they
come rather than held; the run times the method by the time spent inside it. `peak_memory_bytes` is read after.
Only the model loads torch.
"""

from __future__ import annotations

import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from seedvr_local.cli_files import VIDEO_SUFFIXES
from seedvr_local.evaluation.datasets import iter_frames, read_image

#: Resize baselines: name -> Pillow's filter.
BASELINES = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
#: Seconds one `--compare` command may run for one item before it is stopped (and the item counted as failed).
DEFAULT_COMPARE_TIMEOUT_S = 600.0
#: The model's name in the report.
MODEL_METHOD = "seedvr2"


def _rss_peak(who: int) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # kilobytes on Linux


def parse_baselines(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"--baseline: unknown resize {unknown[0]!r}; choose from {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))


def parse_compare(text: str) -> tuple[str, str]:
    """`NAME=COMMAND` -> (name, command), checked: the command names {in} and {out}."""
    name, sep, command = text.partition("=")
    name = name.strip()
    if not sep or not name or not command.strip():
        raise ValueError(f"--compare takes NAME=COMMAND, got {text!r}")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"--compare: the name {name!r} may hold only letters, digits, '-', '_' and '.'")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"--compare {name}: the command cannot be split into words ({exc})") from None
    if not any("{in}" in word for word in words) or not any("{out}" in word for word in words):
        raise ValueError(f"--compare {name}: the command must name the input as {{in}} and the output as {{out}}")
    return name, command


class ResizeMethod:
    """A plain resize of every frame: the floor any restoration should beat."""

    def __init__(self, name: str):
        self.name = name
        self.filter = BASELINES[name]

    def info(self) -> dict:
        return {"kind": "baseline", "resize": f"{self.name} (Pillow)", "device": "cpu", "dtype": "uint8",
                "weights_format": None, "tiling": None}

    def restore(
        self, source: Path, frames: list[np.ndarray], size: tuple[int, int], out: Path
    ) -> Iterator[np.ndarray]:
        for frame in frames:
            yield np.asarray(Image.fromarray(frame).resize(size, self.filter))

    def peak_memory_bytes(self) -> int | None:
        return None  # a frame's worth: not worth a figure


class CommandMethod:
    """Another upscaler, run once per item as `COMMAND` with {in} and {out} replaced: split like a shell would
    split it, but run without a shell, and stopped after `timeout_s`."""

    def __init__(self, name: str, command: str, timeout_s: float = DEFAULT_COMPARE_TIMEOUT_S):
        self.name = name
        self.command = command
        self.timeout_s = timeout_s

    def info(self) -> dict:
        return {"kind": "command", "command": self.command, "device": None, "dtype": None,
                "weights_format": None, "tiling": None}

    def restore(
        self, source: Path, frames: list[np.ndarray], size: tuple[int, int], out: Path
    ) -> Iterator[np.ndarray]:
        video = source.suffix.lower() in VIDEO_SUFFIXES
        target = out.with_suffix(".mp4" if video else ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        words = [w.replace("{in}", str(source)).replace("{out}", str(target)) for w in shlex.split(self.command)]
        try:
            finished = subprocess.run(words, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ValueError(f"the command ran longer than {self.timeout_s:g} s and was stopped") from None
        except OSError as exc:
            raise ValueError(f"the command could not start: {exc.strerror or exc}") from None
        if finished.returncode != 0:
            last = (finished.stderr.strip().splitlines() or ["no message"])[-1]
            raise ValueError(f"the command exited with status {finished.returncode}: {last[:200]}")
        if not target.exists():
            raise ValueError(f"the command wrote no {target.name}")
        for frame in iter_frames(target) if video else [read_image(target)]:
            if (frame.shape[1], frame.shape[0]) != size:
                raise ValueError(f"the output is {frame.shape[1]}x{frame.shape[0]}, expected {size[0]}x{size[1]}")
            yield frame

    def peak_memory_bytes(self) -> int | None:
        return _rss_peak(resource.RUSAGE_CHILDREN)  # the largest of the commands run so far


class ModelMethod:
    """This model, loaded once, with the restore options of the run."""

    def __init__(
        self, upscaler, options: dict, video_options: dict, vae_tile, weights_format: str, warm_up_seconds: float
    ):
        self.name = MODEL_METHOD
        self.upscaler = upscaler
        self.options = options  # RestoreOptions fields without the size
        self.video_options = video_options  # clip_frames, overlap_frames (None: planned)
        self.vae_tile = vae_tile
        self.weights_format = weights_format
        self.tilings: set[str] = set()
        self.warm_up_seconds = warm_up_seconds  # before the first item, not counted in its time

    def info(self) -> dict:
        import torch

        pipeline = self.upscaler.pipeline
        device = pipeline.device
        return {
            "kind": "model", "description": self.upscaler.description, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "dtype": str(pipeline.dtype).removeprefix("torch."),
            "weights_format": self.weights_format, "kernels": self.upscaler.kernel_backend,
            "tiling": "; ".join(sorted(self.tilings)) or f"vae_tile={self.vae_tile}",
            "options": {**self.options, **self.video_options, "vae_tile": self.vae_tile},
            "warm_up_seconds": self.warm_up_seconds,
        }  # fmt: skip

    def peak_memory_bytes(self) -> int:
        import torch

        device = self.upscaler.pipeline.device
        if device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(device))
        return _rss_peak(resource.RUSAGE_SELF)

    def _reset_peak(self) -> None:
        import torch

        device = self.upscaler.pipeline.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def restore(
        self, source: Path, frames: list[np.ndarray], size: tuple[int, int], out: Path
    ) -> Iterator[np.ndarray]:
        scale = size[0] / frames[0].shape[1]
        self._reset_peak()
        if source.suffix.lower() not in VIDEO_SUFFIXES:
            from seedvr_local.options import UpscaleOptions

            options = UpscaleOptions(
                upscale_mode="factor", upscale_factor=scale, vae_tile=self.vae_tile, **self.options
            )
            result = self.upscaler.upscale(Image.fromarray(frames[0]), options)
            if result.plan is not None:
                self.tilings.add(result.plan.describe_tiling())
            yield result.pixels.permute(1, 2, 0).numpy()
        else:
            yield from self._restore_video(source, scale)

    def _restore_video(self, source: Path, scale: float) -> Iterator[np.ndarray]:
        import functools

        from seedvr_local.video import VideoOptions, VideoRestorer
        from seedvr_local.video.clips import LocalClips, longest_clip

        planner = self.upscaler.planner
        clip_frames = self.video_options["clip_frames"]
        if clip_frames is None:
            clip_frames = functools.partial(longest_clip, planner, vae_tile=self.vae_tile)
        options = VideoOptions(
            upscale_mode="factor", upscale_factor=scale, clip_frames=clip_frames,
            overlap_frames=self.video_options["overlap_frames"], **self.options,
        )  # fmt: skip
        restorer = VideoRestorer(clips=LocalClips(self.upscaler.pipeline, planner=planner, vae_tile=self.vae_tile))
        job = restorer.prepare(source, options)
        self.tilings.add(f"clips of {job.clips[0].frames} frames, vae_tile={self.vae_tile}")
        frames = restorer.frames(job)
        try:
            yield from (frame.pixels[..., :3] for frame in frames)
        finally:
            frames.close()


def load_model(args, seed: int) -> ModelMethod:
    """The model the arguments name (the upscale command's flags), loaded once."""
    from seedvr_local import kernels
    from seedvr_local.devices import resolve_device
    from seedvr_local.model_home import TINY_MODEL
    from seedvr_local.upscaler import Upscaler

    weights_dir = None if args.model == TINY_MODEL else args.weights_dir  # found by the command's checks
    kernels.backend.resolve(args.kernels, resolve_device(args.device))
    if weights_dir is None:
        upscaler = Upscaler.tiny(device=args.device, dtype=args.dtype, kernels=args.kernels)
        weights_format = "random (tiny test model)"
    else:
        upscaler = Upscaler.from_weights_dir(weights_dir, device=args.device, dtype=args.dtype, kernels=args.kernels)
        weights_format = _weights_format(Path(weights_dir))
    # the device's one-time setup (CUDA context, kernel compilation) is not charged to the first item
    warm_up = upscaler.warm_up()
    print(f"loaded {upscaler.description}; kernels: {upscaler.kernel_backend}; warmed up in {warm_up:.1f}s",
          file=sys.stderr)
    if upscaler.notice:
        print(f"note: {upscaler.notice}", file=sys.stderr)
    options = {"seed": seed, "noise_scale": args.noise_scale, "color_fix": args.color_fix}
    video = {"clip_frames": args.clip_frames, "overlap_frames": args.clip_overlap}
    return ModelMethod(upscaler, options, video, args.vae_tile, weights_format, warm_up)


def _weights_format(weights_dir: Path) -> str:
    """The DiT file's format, from its name: safetensors, gguf or a PyTorch pickle."""
    names = sorted(p.name for p in weights_dir.iterdir() if p.is_file())
    dit = [n for n in names if "dit" in n.lower()] or names
    suffixes = sorted({Path(n).suffix.lstrip(".") for n in dit if Path(n).suffix in {".safetensors", ".gguf", ".pth"}})
    return ", ".join(suffixes) or "unknown"
