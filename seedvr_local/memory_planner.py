"""The offload level and VAE tiling that make a restoration fit in the memory available, or a refusal up front.

`MemoryPlanner.plan` picks them for a request from the per-phase predictions of `memory_cost.PhaseCosts`, the
weights each phase holds on the device at each offload level (`offload_levels.ModelWeights`, when the planner
knows them) and the free memory of `device_memory.available_memory`: the least offload that fits (none, then more
and more streamed DiT blocks, then `full`), and with it the VAE untiled when that fits, otherwise the least
recomputation that fits (`store_scale` 1, 2, 4, then 8) with the largest tile that fits. It refuses up front
with a one-line `MemoryPlanError` that names the largest output that would fit. `fallback` is the plan to retry
with after a run ran out of memory anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from seedvr_local.device_memory import available_memory, use_mmap_for_large_cpu_tensors
from seedvr_local.memory_cost import PHASES, PhaseCosts
from seedvr_local.models.vae_tiling import STORE_SCALES, VAETiling
from seedvr_local.offload_levels import NO_OFFLOAD, ModelWeights, Offload, OffloadLevel, candidate_levels
from seedvr_local.options import VaeTile, check_vae_tile

if TYPE_CHECKING:
    from seedvr_local.pipeline import RestorationPipeline

__all__ = [
    "MemoryPlanError", "MemoryPlanner", "RunOutOfMemoryError", "RunPlan", "check_vae_tile",
    "use_mmap_for_large_cpu_tensors",  # the Upscaler's one import for what the CPU predictions assume
]  # fmt: skip

GiB = 1024**3
MiB = 1024**2


#: Tile sizes `auto` tries, largest first. Below 128 pixels the halos cost more than the tile.
AUTO_TILES = (2048, 1536, 1024, 768, 512, 384, 256, 192, 128)


class MemoryPlanError(ValueError):
    """A request that cannot run in the memory available at any VAE tile size. `str()` is one line that names
    the largest output (same aspect ratio) that would fit; `largest` is that `(width, height)`, or None."""

    def __init__(self, message: str, needed: int, available: int, largest: tuple[int, int] | None):
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.largest = largest


class RunOutOfMemoryError(RuntimeError):
    """The device ran out of memory although the plan predicted a fit, and the retry with a more frugal plan
    did too (or there was none). One line; the process is left clean for the next job."""

    @classmethod
    def after(cls, plan: "RunPlan", retry: "RunPlan | None", device: torch.device) -> "RunOutOfMemoryError":
        tried = plan.describe_tiling() + ("" if retry is None else f", then {retry.describe_tiling()}")
        return cls(
            f"ran out of memory on {device.type} for a {plan.width}x{plan.height} output ({tried}); other "
            "processes may be using the memory: try again, or ask for a smaller output"
        )


@dataclass(frozen=True)
class RunPlan:
    """What to run a request with, the predicted peak memory above the weights of each phase, and the weights each
    phase holds on the device (empty when the planner does not know the weights: they are already in place)."""

    width: int
    height: int
    frames: int
    vae_tiling: VAETiling | None  # None: untiled
    phase_bytes: dict[str, int] = field(compare=False)
    budget: int  # bytes the plan had to fit in
    offload: OffloadLevel = NO_OFFLOAD
    weight_bytes: dict[str, int] = field(default_factory=dict, compare=False)
    periodic: bool = False  # planned for a tileable image (the seamless upscale)

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_peaks.values())

    @property
    def phase_peaks(self) -> dict[str, int]:
        """Each phase's predicted peak: its working memory plus the weights it holds on the device."""
        return {phase: n + self.weight_bytes.get(phase, 0) for phase, n in self.phase_bytes.items()}

    def describe_tiling(self) -> str:
        tiling = self.vae_tiling
        if tiling is None:
            return "untiled VAE"
        return f"VAE tiles of {tiling.core} px, store scale {tiling.store_scale}" + (", offloaded" * tiling.offload)

    def describe(self) -> str:
        offload = "" if self.offload == NO_OFFLOAD else f"offload {self.offload}, "
        return f"{offload}{self.describe_tiling()}; peak about {self.peak_bytes / GiB:.2f} GiB of {self.budget / GiB:.2f} GiB"


class MemoryPlanner:
    """The plan that fits a restoration, with per-phase predictions from `costs`, on `costs.device`.

    `margin` (a fraction of the available memory) and `reserve` (bytes) are kept free for what the model does not
    see: allocator fragmentation, other processes, the CUDA context.

    `weights`: the bytes of the model's parts, for plans that move them (`offload`: "auto" tries every level, least
    first; a level: only that one); `resident()`: the weight bytes on the device now, which a plan may place anew.
    Without `weights` the weights stay where they are and only the VAE tiling is planned.
    """

    def __init__(
        self, costs: PhaseCosts, margin: float = 0.1, reserve: int = 512 * MiB, weights: ModelWeights | None = None,
        offload: Offload = "auto", resident: Callable[[], int] = lambda: 0,
    ):  # fmt: skip
        self.costs = costs
        self.device = costs.device
        self.margin = margin
        self.reserve = reserve
        self.weights = weights
        self.offload = offload
        self.resident = resident

    @classmethod
    def for_pipeline(
        cls, pipeline: "RestorationPipeline", device: torch.device | str | None = None, **kwargs
    ) -> "MemoryPlanner":
        """For `pipeline` run on `device` (default: where its models are)."""
        return cls(PhaseCosts(pipeline, device), **kwargs)

    def budget(self, available: int | None = None) -> int:
        """Bytes a plan may use: the available memory (default: measured now, plus the weights on the device that
        a plan may place anew) less the margin and reserve."""
        if available is None:
            return max(0, int(available_memory(self.device) * (1 - self.margin)) - self.reserve + self.resident())
        return max(0, int(available * (1 - self.margin)) - self.reserve)

    def levels(self, offload: Offload | None = None) -> list[OffloadLevel]:
        """Offload levels a plan may use, least offload first (default `offload`: the planner's)."""
        offload = self.offload if offload is None else offload
        if self.weights is None:
            return [NO_OFFLOAD]
        if offload != "auto":
            return [offload]
        if self.weights.host_is_device:
            return [NO_OFFLOAD]  # host memory is the device's: offloading saves nothing
        return candidate_levels(len(self.weights.block_bytes))

    def weights_on_device(self, level: OffloadLevel) -> dict[str, int]:
        """Bytes of weights each phase holds on the device at `level` (empty without `weights`)."""
        return {} if self.weights is None else {phase: self.weights.on_device(level, phase) for phase in PHASES}

    # ---- planning

    def candidates(self, vae_tile: VaeTile = "auto") -> list[VAETiling | None]:
        """Tilings in order of preference: least recomputation first, then the largest tile."""
        offload = False
        if vae_tile == "auto":
            return [None] + [VAETiling(t, s, offload) for s in STORE_SCALES for t in AUTO_TILES]
        return [VAETiling(int(vae_tile), s, offload) for s in STORE_SCALES]

    def plan(
        self, width: int, height: int, frames: int = 1, vae_tile: VaeTile = "auto", available: int | None = None,
        offload: Offload | None = None, periodic: bool = False,
    ) -> RunPlan:  # fmt: skip
        """The first offload level (least first) and candidate tiling whose every phase fits the budget (`periodic`:
        for a tileable image). Raises `MemoryPlanError` (one line, naming the largest output of the same aspect ratio that fits) when none does."""
        check_vae_tile(vae_tile)
        budget = self.budget(available)
        tried = []
        for level in self.levels(offload):
            weights = self.weights_on_device(level)
            untileable = _plus(self.costs.untileable(width, height, frames), weights)
            if max(untileable.values()) > budget:  # no tiling can help
                tried.append((max(untileable.values()), untileable))
                continue
            for tiling in self.candidates(vae_tile):
                estimate = self.costs.estimate(width, height, frames, tiling, periodic)
                peaks = _plus(estimate, weights)
                if max(peaks.values()) <= budget:
                    return RunPlan(width, height, frames, tiling, estimate, budget, level, weights, periodic)
                tried.append((max(peaks.values()), peaks))
        need, phases = min(tried, key=lambda t: t[0])
        largest = self.largest_fitting(
            width, height, frames, vae_tile, budget=budget, offload=offload, periodic=periodic
        )
        phase = max(phases, key=phases.get)
        fits = f"the largest {_aspect(width, height)} output that fits is {largest[0]}x{largest[1]}" if largest else (
            "nothing fits: free some memory or use a smaller model"
        )
        tiles = "" if vae_tile == "auto" else f" with VAE tiles of {int(vae_tile)} px"
        frugal = self.levels(offload)[-1]
        if frugal != NO_OFFLOAD:
            tiles += f"{' and' if tiles else ' with'} offload {frugal}"
        message = (
            f"a {width}x{height} output needs about {need / GiB:.1f} GiB for the {phase} phase{tiles} but only "
            f"{budget / GiB:.1f} GiB is available on {self.device.type}; {fits}"
        )
        raise MemoryPlanError(message, need, budget, largest)

    def fallback(self, plan: RunPlan) -> RunPlan | None:
        """The plan to retry with after `plan` ran out of memory: the first tiling predicted to need at most half
        of `plan`'s VAE memory, else the one needing the least; None when none needs less than `plan` (tiling
        cannot shrink the DiT phase)."""
        current = _vae_peak(plan.phase_bytes)
        estimates = [
            (t, self.costs.estimate(plan.width, plan.height, plan.frames, t, plan.periodic))
            for t in self.candidates("auto") if t is not None
        ]  # fmt: skip
        half = [(t, e) for t, e in estimates if _vae_peak(e) <= current // 2]
        tiling, phases = half[0] if half else min(estimates, key=lambda te: _vae_peak(te[1]))
        if _vae_peak(phases) >= current:
            return None
        return RunPlan(
            plan.width, plan.height, plan.frames, tiling, phases, plan.budget, plan.offload, plan.weight_bytes,
            plan.periodic,
        )

    def fits(
        self, width: int, height: int, frames: int = 1, vae_tile: VaeTile = "auto", budget: int | None = None,
        offload: Offload | None = None, periodic: bool = False,
    ) -> bool:  # fmt: skip
        """Whether some plan fits; only the most frugal candidates are tried (the most offload, and the smallest
        tile at every store scale, and untiled, which wins for images smaller than a tile)."""
        budget = self.budget() if budget is None else budget
        weights = self.weights_on_device(self.levels(offload)[-1])
        if max(_plus(self.costs.untileable(width, height, frames), weights).values()) > budget:
            return False
        tile = AUTO_TILES[-1] if vae_tile == "auto" else int(vae_tile)
        frugal = [None] * (vae_tile == "auto") + [VAETiling(tile, s) for s in STORE_SCALES]
        return any(
            max(_plus(self.costs.estimate(width, height, frames, t, periodic), weights).values()) <= budget
            for t in frugal
        )

    def largest_fitting(
        self, width: int, height: int, frames: int = 1, vae_tile: VaeTile = "auto", budget: int | None = None,
        offload: Offload | None = None, periodic: bool = False,
    ) -> tuple[int, int] | None:  # fmt: skip
        """The largest `(w, h)` with the aspect ratio of `width x height` (w and h multiples of the pipeline's
        size multiple) that fits."""
        budget = self.budget() if budget is None else budget
        ratio = height / width
        step = self.costs.size_multiple

        def size(w: int) -> tuple[int, int]:
            return w, max(step, round(w * ratio / step) * step)

        lo, hi = 0, max(width, step) // step + 1  # in units of `step` pixels of width
        def fits(w: int) -> bool:
            return self.fits(*size(w * step), frames, vae_tile, budget, offload, periodic)

        if fits(hi):
            while fits(hi):
                lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return size(lo * step) if lo else None

    def max_output_pixels(self, aspect: tuple[int, int] = (1, 1), budget: int | None = None) -> int:
        """Pixels of the largest output of the given aspect ratio (width, height) that fits, with the most offload
        the planner may use: a default for a server's output-size limit."""
        largest = self.largest_fitting(aspect[0] * 64, aspect[1] * 64, budget=budget)
        return 0 if largest is None else largest[0] * largest[1]


def _plus(phases: dict[str, int], weights: dict[str, int]) -> dict[str, int]:
    return {phase: n + weights.get(phase, 0) for phase, n in phases.items()}


def _vae_peak(phases: dict[str, int]) -> int:
    return max(phases["encode"], phases["decode"])


def _aspect(width: int, height: int) -> str:
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"
