"""Will it fit? The plan for a model in a weights format on a device of a given memory, before any download.

The weights' bytes come from the shipped manifests' shapes and the format table (`weight_formats.py`); the working
memory of each phase from the same `PhaseCosts` the running `Upscaler` plans with, over the full-size models built
on the "meta" device (no memory, no weights), computing in bfloat16 on a GPU. `plan_for` answers with a `FormatPlan`:
the plan that fits, or the most frugal attempt and the smallest change that would fit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from seedvr_local.memory_cost import PHASES, PhaseCosts
from seedvr_local.memory_planner import AUTO_TILES, MemoryPlanError, MemoryPlanner, RunPlan
from seedvr_local.models.vae_tiling import STORE_SCALES, VAETiling
from seedvr_local.offload_levels import FULL_OFFLOAD, ModelWeights, Offload
from seedvr_local.pipeline import RestorationPipeline
from seedvr_local.weight_formats import (
    FORMAT_NAMES, VAE_FORMAT, dequant_scratch, dit_block_shapes, weight_format, weights_bytes,
)  # fmt: skip
from seedvr_local.weights.manifest import DIT_MANIFESTS, VAE_MANIFEST, load_manifest

#: The device `seedvr-local plan` plans for: a GPU computing in bfloat16.
PLAN_DEVICE = torch.device("cuda")
PLAN_DTYPE = torch.bfloat16
GiB = 1024**3


def model_weights(model: str, fmt: str) -> ModelWeights:
    """The device bytes of `model`'s ("3b" or "7b") DiT stored in format `fmt`, and of its 16-bit VAE."""
    manifest = load_manifest(DIT_MANIFESTS[model])
    dit_format = weight_format(fmt)
    blocks, other = dit_block_shapes(manifest.shapes, manifest.config["num_layers"])
    vae = load_manifest(VAE_MANIFEST)
    return ModelWeights(
        block_bytes=tuple(weights_bytes(shapes, dit_format) for shapes in blocks),
        dit_other_bytes=weights_bytes(other, dit_format),
        vae_bytes=weights_bytes(vae.shapes.values(), weight_format(VAE_FORMAT)),
        dequant_scratch=dequant_scratch(manifest.shapes.values(), dit_format),
    )


@functools.lru_cache(maxsize=2)
def phase_costs(model: str) -> PhaseCosts:
    """The working-memory model of `model`'s full-size pipeline (built on "meta") on a GPU in bfloat16."""
    from seedvr_local.models.nadit import DiTConfig, NaDiT
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder

    config = DiTConfig.seedvr2_3b() if model == "3b" else DiTConfig.seedvr2_7b()
    with torch.device("meta"):
        # nn.Module.to: the dtype is all the cost model reads (ModelMixin.to warns about its float32 modules)
        dit = torch.nn.Module.to(NaDiT.from_config(config), PLAN_DTYPE)
        vae = torch.nn.Module.to(VideoAutoencoder.from_vae_config(VAEConfig.seedvr2()), PLAN_DTYPE)
    return PhaseCosts(RestorationPipeline(dit, vae, torch.empty(0)), PLAN_DEVICE)


def planner_for(model: str, fmt: str, offload: Offload = "auto") -> MemoryPlanner:
    """The planner a GPU would use for `model` in `fmt` (its margin and reserve are the running server's)."""
    return MemoryPlanner(phase_costs(model), weights=model_weights(model, fmt), offload=offload)


@dataclass(frozen=True)
class FormatPlan:
    """`plan`: what would run, or when nothing does (`fits` False) the most frugal attempt's phases; `suggestion`:
    the smallest change that would fit, in words, or None."""

    model: str
    weights_format: str
    device_memory: int
    width: int
    height: int
    frames: int
    fits: bool
    plan: RunPlan | None
    peaks: dict[str, int]  # per phase: the plan's, or the most frugal attempt's
    weights: dict[str, int]
    budget: int
    suggestion: str | None = None
    reason: str | None = None  # why it does not fit, one line

    @property
    def peak_bytes(self) -> int:
        return max(self.peaks.values())

    def settings(self) -> dict:
        plan = self.plan
        tiling = plan.vae_tiling if plan is not None else None
        return {
            "weights_format": self.weights_format,
            "offload": str(plan.offload) if plan is not None else None,
            "vae_tile": tiling.core if tiling is not None else None,
            "vae_store_scale": tiling.store_scale if tiling is not None else None,
            "clip_frames": self.frames,
        }

    def to_json(self) -> dict:
        return {
            "fits": self.fits,
            "peak_bytes": self.peak_bytes,
            "budget_bytes": self.budget,
            "device_memory_bytes": self.device_memory,
            "phases": {
                phase: {"peak_bytes": self.peaks[phase], "weights_bytes": self.weights.get(phase, 0)}
                for phase in PHASES
            },
            "settings": self.settings() if self.fits else None,
            "suggestion": self.suggestion,
            "reason": self.reason,
        }


def plan_for(
    model: str, fmt: str, device_memory: int, width: int, height: int, frames: int = 1, offload: Offload = "auto"
) -> FormatPlan:
    """The plan for restoring `frames` frames together at `width x height` with `model` in `fmt` on a GPU of
    `device_memory` bytes."""
    planner = planner_for(model, fmt, offload)
    budget = planner.budget(device_memory)
    answer = dict(model=model, weights_format=fmt, device_memory=device_memory, width=width, height=height,
                  frames=frames, budget=budget)  # fmt: skip
    try:
        plan = planner.plan(width, height, frames, available=device_memory)
    except MemoryPlanError:
        frugal = _frugal_attempt(planner, width, height, frames)
        peaks = frugal.phase_peaks
        phase = max(peaks, key=peaks.get)
        reason = (f"even with {frugal.describe_tiling()} and offload {frugal.offload} it needs about "
                  f"{peaks[phase] / GiB:.1f} GiB for the {phase} phase, {budget / GiB:.1f} GiB is usable")  # fmt: skip
        suggestion = smallest_change(model, fmt, device_memory, width, height, frames, offload)
        return FormatPlan(**answer, fits=False, plan=None, peaks=peaks, weights=frugal.weight_bytes,
                          suggestion=suggestion, reason=reason)  # fmt: skip
    return FormatPlan(**answer, fits=True, plan=plan, peaks=plan.phase_peaks, weights=plan.weight_bytes)


def _frugal_attempt(planner: MemoryPlanner, width: int, height: int, frames: int) -> RunPlan:
    """The plan needing the least memory (the most offload, the most frugal VAE tilings' lowest peak): what a
    refusal reports per phase."""
    level = planner.levels()[-1]
    weights = planner.weights_on_device(level)
    plans = [
        RunPlan(width, height, frames, tiling, planner.costs.estimate(width, height, frames, tiling), 0, level, weights)
        for tiling in [None, *(VAETiling(AUTO_TILES[-1], scale) for scale in STORE_SCALES)]  # as `fits` tries
    ]
    return min(plans, key=lambda plan: plan.peak_bytes)


def smallest_change(
    model: str, fmt: str, device_memory: int, width: int, height: int, frames: int, offload: Offload
) -> str | None:
    """The first single change that makes the request fit, in this order: more offload (same output), a shorter
    clip (each frame restored alike), a smaller weights format (some quality); else all three together; else the
    largest output that fits with all three; None when nothing fits at all."""

    def fits(fmt_: str, offload_: Offload, frames_: int) -> bool:
        planner = planner_for(model, fmt_, offload_)
        return planner.fits(width, height, frames_, budget=planner.budget(device_memory))

    if offload != "auto" and offload != FULL_OFFLOAD and fits(fmt, "auto", frames):
        planner = planner_for(model, fmt, "auto")
        level = planner.plan(width, height, frames, available=device_memory).offload
        return f"it would with --offload {level}"
    if frames > 1:
        clip = _longest_clip(lambda n: fits(fmt, offload, n), frames)
        if clip:
            return f"it would as clips of {clip} frames"
    smaller = FORMAT_NAMES[FORMAT_NAMES.index(fmt) + 1:]
    for candidate in smaller:
        if fits(candidate, offload, frames):
            return f"it would with --weights-format {candidate}"
    smallest = FORMAT_NAMES[-1]
    if fits(smallest, "auto", 1):
        return f"it would with --weights-format {smallest}, --offload full and clips of 1 frame"
    planner = planner_for(model, smallest, "auto")
    largest = planner.largest_fitting(width, height, 1, budget=planner.budget(device_memory))
    if largest is not None:
        return f"the largest output that fits (with {smallest}, full offload, 1 frame) is {largest[0]}x{largest[1]}"
    return None  # not even the smallest output


def _longest_clip(fits, frames: int) -> int | None:
    """The longest clip (4n + 1 frames, shorter than `frames`) for which `fits(clip)`, or None (a longer clip never
    needs less memory)."""
    lo, hi = -1, (frames - 2) // 4  # n = lo fits (or none does), n > hi is not shorter
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(4 * mid + 1) else (lo, mid - 1)
    return None if lo < 0 else 4 * lo + 1
