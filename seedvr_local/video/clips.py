"""The clip restore step: one clip of source frames in, its restored frames out, wherever the model lives.

The restorer (`restorer.py`) decodes, blends and encodes in one process; what restores its clips is pluggable,
a `ClipRunner`: `LocalClips` runs them on a pipeline in this process, `pool.ClipPool` on several devices at once.
Both run `LocalClips.restore`, so a clip comes out the same, bit for bit, whichever runs it: the clip's noise
follows (seed, clip index), not the device or the order of work.

A restored clip carries its own frames (those no other clip restores) already rounded to uint8, and its share of
the frames it has in common with a neighbour as float32 contributions (cross-fade weight applied), which the
restorer adds up in clip order and rounds. Everything is on the CPU, so a clip can cross to another process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Protocol

import torch

from seedvr_local.options import VaeTile
from seedvr_local.pipeline import RestorationPipeline, RestoreNoises, to_uint8_frames
from seedvr_local.preprocess import pad_to_multiple, resize_bicubic_antialias

if TYPE_CHECKING:
    from seedvr_local.memory_planner import MemoryPlanner
    from seedvr_local.models.vae_tiling import VAETiling
    from seedvr_local.offload_levels import OffloadLevel

#: The longest clip the memory planner picks: beyond it, one clip's frames held on the host and the wait between
#: progress reports grow for little more temporal context (the official model ran about 100 frames at a time).
MAX_PLANNED_CLIP_FRAMES = 121


@dataclass
class ClipTask:
    """One clip to restore, with all a worker needs: nothing refers to the video or the job."""

    index: int
    pixels: torch.Tensor  # [T, H, W, 3] uint8 source RGB (a tensor: it crosses processes through shared memory)
    width: int  # output size
    height: int
    seed: int  # this clip's own seed (`restorer.clip_seed`)
    noise_scale: float
    color_fix: str
    weights: tuple[float, ...]  # the cross-fade weight of each frame of the clip
    own: tuple[int, int]  # [start, stop) of the frames (clip-relative) that no other clip restores

    @property
    def frames(self) -> int:
        return self.pixels.shape[0]


@dataclass
class RestoredClip:
    index: int
    own: torch.Tensor  # [n, H, W, 3] uint8: frames `task.own`, final
    shared: torch.Tensor  # [3, m, H, W] float32: weighted contributions to the frames listed in `shared_frames`
    shared_frames: tuple[int, ...]  # clip-relative
    worker: str  # which device (worker) restored it
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


class ClipRunner(Protocol):
    """Restores a stream of clips and hands them back in the order they came."""

    def run(self, tasks: Iterator[ClipTask]) -> Iterator[RestoredClip]:
        """Pulls tasks as it has room for them (pulling decodes frames) and yields each restored clip in turn."""
        ...


class PhaseTimer:
    """Sums the seconds spent in each phase; on CUDA it waits for the device so each phase gets its own time."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.seconds: dict[str, float] = {}
        self.phase: str | None = None
        self.started = 0.0

    def start(self, phase: str) -> None:
        self.stop()
        self.phase, self.started = phase, time.perf_counter()

    def stop(self) -> None:
        if self.phase is not None:
            if self.cuda:
                torch.cuda.synchronize()
            self.add({self.phase: time.perf_counter() - self.started})
            self.phase = None

    def add(self, seconds: dict[str, float]) -> None:
        for phase, value in seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + value


class LocalClips:
    """Restores clips one after the other with `pipeline`, in this process.

    VAE tiling: `vae_tiling` for every clip when there is no `planner`; with one, each clip gets the tiling that
    `planner.plan` picks for its size and length (`vae_tile` as for images: "auto" or a tile size)."""

    def __init__(
        self,
        pipeline: RestorationPipeline,
        vae_tiling: "VAETiling | None" = None,
        planner: "MemoryPlanner | None" = None,
        vae_tile: VaeTile = "auto",
        name: str | None = None,
    ):
        self.pipeline = pipeline
        self.vae_tiling = vae_tiling
        self.planner = planner
        self.vae_tile = vae_tile
        self.name = name or str(pipeline.device)

    def run(self, tasks: Iterator[ClipTask]) -> Iterator[RestoredClip]:
        for task in tasks:
            yield self.restore(task)

    def placement(self, width: int, height: int, frames: int) -> "tuple[VAETiling | None, OffloadLevel | None]":
        """The VAE tiling and offload level to restore a clip with (no level: the weights stay where they are)."""
        if self.planner is None:
            return self.vae_tiling, None
        plan = self.planner.plan(width, height, frames, vae_tile=self.vae_tile)
        return plan.vae_tiling, plan.offload

    def restore(self, task: ClipTask) -> RestoredClip:
        """Exactly `RestorationPipeline.restore` of the resized, padded clip, split into own and shared frames."""
        pipeline = self.pipeline
        timer = PhaseTimer(cuda=pipeline.device.type == "cuda")
        timer.start("resize")
        stack = task.pixels.to(pipeline.device)
        rgb = resize_bicubic_antialias(stack.permute(0, 3, 1, 2).float() / 255, (task.height, task.width)).clamp(0, 1)
        video = (rgb * 2 - 1).transpose(0, 1)  # [3, T, H, W] in [-1, 1]
        padded, _ = pad_to_multiple(video, pipeline.size_multiple)
        latent_shape = pipeline.latent_shape(task.frames, padded.shape[-2], padded.shape[-1])
        noises = RestoreNoises.draw(latent_shape, task.seed)
        tiling, offload = self.placement(task.width, task.height, task.frames)
        placed = {} if offload is None else {"offload": offload}  # without a planner the weights stay as they are
        out = pipeline.restore(
            padded, noises, cond_noise_scale=task.noise_scale, color_fix=task.color_fix, on_phase=timer.start,
            crop=(task.height, task.width), vae_tiling=tiling, **placed,
        )  # fmt: skip
        restored = out.colorfixed  # [3, T, H, W] in [-1, 1]
        timer.start("blend")
        start, stop = task.own
        shared_frames = tuple(i for i in range(task.frames) if not start <= i < stop)
        contributions = [restored[:, i] * task.weights[i] for i in shared_frames]
        shared = torch.stack(contributions, dim=1) if contributions else restored.new_empty((3, 0, *restored.shape[2:]))
        timer.start("finish")
        own = to_uint8_frames(restored[:, start:stop]).cpu()
        shared = shared.cpu()
        timer.stop()
        return RestoredClip(task.index, own, shared, shared_frames, self.name, timer.seconds)


def longest_clip(planner: "MemoryPlanner", width: int, height: int, vae_tile: VaeTile = "auto") -> int:
    """The longest clip (4n+1 frames, at most `MAX_PLANNED_CLIP_FRAMES`) of a `width x height` output that fits in
    the memory available now on the planner's device. Raises the planner's one-line `MemoryPlanError` when not
    even one frame fits."""
    planner.plan(width, height, 1, vae_tile=vae_tile)
    budget = planner.budget()
    lo, hi = 0, (MAX_PLANNED_CLIP_FRAMES - 1) // 4  # clips of 4n+1 frames, n in [lo, hi]; n = lo fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if planner.fits(width, height, 4 * mid + 1, vae_tile, budget=budget):
            lo = mid
        else:
            hi = mid - 1
    return 4 * lo + 1
