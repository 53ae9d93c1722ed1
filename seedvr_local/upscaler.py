"""The one object to use from Python: load SeedVR2 once, upscale many images.

Both the CLI and the server use this (and nothing below it)::

    upscaler = Upscaler.from_weights_dir("weights/seedvr2-3b")
    result = upscaler.upscale(Image.open("in.png"), UpscaleOptions(upscale_factor=2, seed=42))
    Path("out.png").write_bytes(result.encode("png"))
"""

from __future__ import annotations

import functools
import gc
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from seedvr_local.devices import resolve_device, resolve_dtype
from seedvr_local.image_io import DecodedImage, encode_image, from_pil, to_pil, to_uint8, upscale_alpha
from seedvr_local.memory_planner import (
    MemoryPlanError, MemoryPlanner, RunOutOfMemoryError, RunPlan, use_mmap_for_large_cpu_tensors,
)  # fmt: skip
from seedvr_local.offload_levels import FULL_OFFLOAD, NO_OFFLOAD, Offload, check_offload, parse_offload
from seedvr_local.options import MAX_SEED, ProgressCallback, UpscaleOptions
from seedvr_local.pipeline import RestorationPipeline, RestoreNoises
from seedvr_local.preprocess import pad_to_multiple, resize_bicubic_antialias, resize_periodic
from seedvr_local.weights.bundle import load_models
from seedvr_local.weights.tiny import RANDOM_WEIGHTS_NOTICE, build_tiny_models

__all__ = ["PreparedRun", "ProgressCallback", "UpscaleOptions", "UpscaleResult", "Upscaler"]


@dataclass(frozen=True)
class PreparedRun:
    """One upscale, decided and checked before any work: what `Upscaler.prepare` returns, `Upscaler.run` takes."""

    source: DecodedImage
    options: UpscaleOptions  # validated
    seed: int  # `options.seed`, or the one drawn for this run
    output_size: tuple[int, int]  # (width, height) of the result
    padded_size: tuple[int, int]  # (width, height) the model runs at: the output padded to the pipeline's multiple
    # (seamless: resized to it, since a tileable image cannot be padded and stay one)
    plan: RunPlan  # how it fits in memory


@dataclass
class UpscaleResult:
    pixels: torch.Tensor  # the image as uint8 [3, H, W] on the CPU, laid out as PIL takes it (H, W, 3)
    unrounded: torch.Tensor = field(repr=False)  # `rgb`, on the model's device
    alpha: torch.Tensor | None  # [1, H, W] float in [0, 1] when the input had alpha
    seed: int  # the seed used (drawn when the options had none)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    plan: RunPlan | None = None  # the memory plan it ran with (after an out-of-memory retry, the retry's)

    @functools.cached_property
    def rgb(self) -> torch.Tensor:
        """The image before rounding, [3, H, W] float in [0, 1] on the CPU. Moved from the model's device on
        first use: images only need `pixels`, and the float copy of a 4K output (100 MB of fresh, page-faulting
        host memory) took tens of milliseconds."""
        return self.unrounded.cpu()

    @property
    def image(self) -> Image.Image:
        """RGB, or RGBA when the input had alpha."""
        return to_pil(self.pixels, self.alpha)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[-1], self.pixels.shape[-2]

    def encode(self, fmt: str, quality: int = 95) -> bytes:
        """PNG/WebP keep the alpha channel; JPEG drops it."""
        return encode_image(self.pixels, self.alpha, fmt, quality=quality)


class Upscaler:
    """SeedVR2 loaded on one device. Not thread-safe: run one upscale at a time.

    `notice`: a line a user must see about this model, shown by the CLI and the server's `/readyz` (the tiny
    model's random weights), or None.

    `offload`: "auto" (the least offload that fits each request), "none", "blocks:N" or "full", or an
    `OffloadLevel` (`seedvr_local/offload_levels.py`): how much of the model waits in host memory while it is not
    in use. The result is the same at every level."""

    def __init__(
        self, pipeline: RestorationPipeline, description: str = "SeedVR2", notice: str | None = None,
        offload: Offload | str = "auto",
    ):  # fmt: skip
        self.pipeline = pipeline
        self.description = description
        self.notice = notice
        self.offload = parse_offload(offload)
        check_offload(self.offload, len(pipeline.dit.blocks))
        placement = None if self.offload == NO_OFFLOAD and pipeline.offload is None else pipeline.enable_offload()
        if placement is None:
            self.planner = MemoryPlanner.for_pipeline(pipeline)
        else:
            self.planner = MemoryPlanner.for_pipeline(
                pipeline, weights=placement.weights(), offload=self.offload, resident=placement.device_bytes
            )
            placement.apply(self._first_level(placement.level))
        if pipeline.device.type == "cpu":
            use_mmap_for_large_cpu_tensors()  # keeps the resident size what the planner predicts

    def _first_level(self, current):
        """Where to place the weights before the first request: the fixed level, or under "auto" the least
        offload a small image needs (weights loaded on the device stay there)."""
        if self.offload != "auto":
            return self.offload
        if current == NO_OFFLOAD:
            return current
        try:
            return self.planner.plan(64, 64).offload
        except MemoryPlanError:
            return FULL_OFFLOAD

    @classmethod
    def from_weights_dir(
        cls,
        weights_dir: str | Path,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        kernels: str | None = None,
        offload: Offload | str = "auto",
    ) -> "Upscaler":
        """Load the DiT, the VAE and the text embedding of a weights directory (see docs/weights.md). `kernels`: "auto",
        "triton" or "torch" for both models (default: `$SEEDVR_KERNELS`, else auto); `offload`: as for the
        constructor (with offload, a GPU's model loads into host memory first)."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        models = load_models(weights_dir, device=_load_device(torch_device, offload), dtype=torch_dtype)
        info = models.weights_dir
        pipeline = RestorationPipeline(
            models.dit,
            models.vae,
            models.pos_emb,
            scaling_factor=info.scaling_factor,
            shifting_factor=info.shifting_factor,
        )
        if pipeline.device.type != torch_device.type:  # loaded into host memory for the device
            pipeline.enable_offload(torch_device)
        dtype_name = str(torch_dtype).removeprefix("torch.")
        description = f"SeedVR2 {info.variant.upper()} from {info.path} on {torch_device} ({dtype_name})"
        upscaler = cls(pipeline, description, offload=offload)
        if kernels is not None:
            upscaler.set_kernel_backend(kernels)
        return upscaler

    @classmethod
    def tiny(
        cls, device: str | None = None, dtype: str | torch.dtype | None = None, kernels: str | None = None,
        offload: Offload | str = "auto",
    ) -> "Upscaler":  # fmt: skip
        """A tiny SeedVR2 architecture with fixed random weights, built in memory (nothing to download): the
        whole CLI and server run with it in seconds on a CPU, but the pictures it makes are noise."""
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        models = build_tiny_models(device=_load_device(torch_device, offload), dtype=torch_dtype)
        pipeline = RestorationPipeline(models.dit, models.vae, models.pos_emb)
        if pipeline.device.type != torch_device.type:  # loaded into host memory for the device
            pipeline.enable_offload(torch_device)
        dtype_name = str(torch_dtype).removeprefix("torch.")
        description = f"tiny test model on {torch_device} ({dtype_name})"
        upscaler = cls(pipeline, description, RANDOM_WEIGHTS_NOTICE, offload=offload)
        if kernels is not None:
            upscaler.set_kernel_backend(kernels)
        return upscaler

    def set_kernel_backend(self, mode: str) -> str:
        """Run both models with the "auto", "triton" or "torch" kernels -> the backend chosen ("triton" or
        "torch"; both models are on one device, so they choose alike)."""
        with self.pipeline.weights_on_device("encode"):  # resolved where the weights are while they run
            self.pipeline.vae.set_kernel_backend(mode)
        with self.pipeline.weights_on_device("dit"):
            return self.pipeline.dit.set_kernel_backend(mode)

    @property
    def kernel_backend(self) -> str:
        return self.pipeline.dit.kernel_backend

    def warm_up(self, sizes: Sequence[tuple[int, int]] = ()) -> float:
        """Run small images through every phase and return the seconds it took, so that no real request pays for
        the device's one-time setup: the CUDA context, cuBLAS and cuDNN handles, the Triton kernels' compilation
        (the first 1080p image took 8.6 s on an H100 against 0.76 s once warm, benchmarks/RESULTS.md).

        `sizes`: output sizes `(width, height)` to run instead of the one small image, e.g. those a compiled
        pipeline (`--compile`, compiled per size) should be ready for. Raises `MemoryPlanError` for a size that
        does not fit."""
        started = time.perf_counter()
        for width, height in sizes or [(64, 64)]:
            source = Image.new("RGB", (max(1, width // 2), max(1, height // 2)), (128, 96, 64))
            self.upscale(source, UpscaleOptions(upscale_factor=2, seed=0))
        return time.perf_counter() - started

    def plan(self, width: int, height: int, options: UpscaleOptions = UpscaleOptions()) -> RunPlan:
        """The memory plan for a `width x height` output on this device now. Raises `MemoryPlanError` (a
        ValueError with a one-line message naming the largest output that fits) when it cannot fit."""
        options.validate()
        return self.planner.plan(width, height, vae_tile=options.vae_tile, periodic=options.seamless)

    def max_output_pixels(self, aspect: tuple[int, int] = (1, 1)) -> int:
        """Pixels of the largest output of this aspect ratio (width, height) that fits in the memory available
        now, with the most frugal VAE tiling: a default for a server's output-size limit."""
        return self.planner.max_output_pixels(aspect)

    def prepare(self, image: Image.Image | DecodedImage, options: UpscaleOptions = UpscaleOptions()) -> PreparedRun:
        """Check the options, size the output and plan its memory, without touching the image's pixels.

        Raises ValueError (`SizeError`, `MemoryPlanError`: one line each) for a run that cannot be done."""
        options.validate()
        source = image if isinstance(image, DecodedImage) else from_pil(image)
        width, height = options.output_size(source.width, source.height)
        multiple = self.pipeline.size_multiple
        padded = (width + -width % multiple, height + -height % multiple)
        plan = self.planner.plan(width, height, vae_tile=options.vae_tile, periodic=options.seamless)
        seed = options.seed if options.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return PreparedRun(source, options, seed, (width, height), padded, plan)

    def upscale(
        self,
        image: Image.Image | DecodedImage,
        options: UpscaleOptions = UpscaleOptions(),
        progress: ProgressCallback | None = None,
    ) -> UpscaleResult:
        """`prepare`, then `run`."""
        return self.run(self.prepare(image, options), progress)

    def run(self, prepared: PreparedRun, progress: ProgressCallback | None = None) -> UpscaleResult:
        """Upscale as prepared. An out-of-memory error is retried once with a more frugal plan, then raised
        as `RunOutOfMemoryError`."""
        source, options, plan = prepared.source, prepared.options, prepared.plan
        width, height = prepared.output_size
        timings: dict[str, float] = {}
        clock = _PhaseClock(timings, progress, cuda=self.pipeline.device.type == "cuda")

        clock.start("resize")
        seamless = options.seamless
        if seamless:  # resized straight to the model's size: padding would break the tiling
            rgb = resize_periodic(source.rgb[None].float(), prepared.padded_size[::-1]).clamp(0, 1)
            padded = (rgb * 2 - 1).transpose(0, 1)
        else:
            rgb = resize_bicubic_antialias(source.rgb[None].float(), (height, width)).clamp(0, 1)
            video = (rgb * 2 - 1).transpose(0, 1)  # [3, 1, H, W] in [-1, 1]
            padded, _ = pad_to_multiple(video, self.pipeline.size_multiple)
        latent_shape = self.pipeline.latent_shape(1, padded.shape[-2], padded.shape[-1])
        noises = RestoreNoises.draw(latent_shape, prepared.seed)

        def restore(plan: RunPlan):
            return self.pipeline.restore(
                padded, noises, cond_noise_scale=options.noise_scale, color_fix=options.color_fix,
                on_phase=clock.start, crop=None if seamless else (height, width), vae_tiling=plan.vae_tiling,
                offload=plan.offload, periodic=seamless,
            )  # fmt: skip

        out = _unless_out_of_memory(restore, plan)
        if out is None:
            retry = self.planner.fallback(plan)
            out = None if retry is None else _unless_out_of_memory(restore, retry)
            if out is None:
                raise RunOutOfMemoryError.after(plan, retry, self.pipeline.device)
            plan = retry

        clock.start("finish")
        rgb = (out.colorfixed[:, 0].clamp(-1, 1) + 1) / 2  # [3, H, W] in [0, 1], on the model's device
        if rgb.shape[-2:] != (height, width):  # a seamless run at the next multiple of the model's size
            rgb = resize_periodic(rgb, (height, width)).clamp(0, 1)
        # Rounded there and laid out for PIL: a quarter of the bytes cross to the CPU, and the CPU does not spend
        # longer converting a 4K image than encoding it.
        pixels = to_uint8(rgb).permute(1, 2, 0).contiguous().cpu().permute(2, 0, 1)
        alpha = upscale_alpha(source.alpha, (height, width), seamless) if source.alpha is not None else None
        result = UpscaleResult(pixels, rgb, alpha, prepared.seed, timings, plan)
        clock.stop()
        return result


def _load_device(device: torch.device, offload: Offload | str) -> torch.device:
    """Where to load a model for `device`: host memory when some of it may stay there (a GPU with offload)."""
    return torch.device("cpu") if device.type != "cpu" and parse_offload(offload) != NO_OFFLOAD else device


def _unless_out_of_memory(run: Callable[[RunPlan], object], plan: RunPlan):
    """`run(plan)`, or None when it runs out of memory. The failed run's tensors are released before this
    returns (outside the `except` block, whose traceback would keep them alive), so a retry or the next job
    starts with the memory the planner counted on."""
    try:
        return run(plan)
    except torch.OutOfMemoryError:
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


class _PhaseClock:
    """Times consecutive phases and reports each start to the caller's progress callback."""

    def __init__(self, timings: dict[str, float], progress: ProgressCallback | None, cuda: bool):
        self.timings = timings
        self.progress = progress
        self.cuda = cuda  # CUDA work is asynchronous: wait for it so each phase gets its own time
        self.phase: str | None = None
        self.started = 0.0

    def start(self, phase: str) -> None:
        self.stop()
        if self.progress is not None:
            self.progress(phase)
        self.phase, self.started = phase, time.perf_counter()

    def stop(self) -> None:
        if self.phase is not None:
            if self.cuda:
                torch.cuda.synchronize()
            self.timings[self.phase] = time.perf_counter() - self.started
            self.phase = None
