"""What the server needs from the model: the `Engine` protocol.

`seedvr_local.upscaler.Upscaler` is one. The server gets a factory instead of the object so the model
loads in the worker thread after the server is up (`/readyz` says when), and so tests can inject a
fast stand-in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from seedvr_local.image_io import DecodedImage
from seedvr_local.options import ProgressCallback, UpscaleOptions

if TYPE_CHECKING:  # annotations only: the server loads torch with the model, in the worker
    from seedvr_local.memory_planner import RunPlan
    from seedvr_local.pipeline import RestorationPipeline


class UpscaledImage(Protocol):
    seed: int
    timings: dict[str, float]

    @property
    def size(self) -> tuple[int, int]: ...

    def encode(self, fmt: str) -> bytes: ...


class PreparedUpscale(Protocol):
    """A checked request, ready to run (the Upscaler's `PreparedRun`)."""

    @property
    def output_size(self) -> tuple[int, int]: ...


class ClipPlanner(Protocol):
    def plan(self, width: int, height: int, frames: int = 1) -> RunPlan:
        """How a clip of `frames` frames of `width x height` fits in memory; raises `MemoryPlanError` (naming
        the largest size that fits) when it cannot."""
        ...


class Engine(Protocol):
    """Every call the server makes on the model, in the order a request makes them: for an image
    `prepare`, then `run`; `max_output_pixels` once, for the default output limit. A video is restored
    with `pipeline` (through `seedvr_local.video.VideoRestorer`), in clips `planner` sizes."""

    description: str  # what /readyz and the start-up log call the model
    notice: str | None  # a warning shown with the description (random weights), or None
    pipeline: RestorationPipeline
    planner: ClipPlanner

    def max_output_pixels(self, aspect: tuple[int, int] = (1, 1)) -> int:
        """The largest output of this aspect ratio that fits in the device's memory."""
        ...

    def prepare(self, image: DecodedImage, options: UpscaleOptions) -> PreparedUpscale:
        """Validate and plan before any work: raises `SizeError` for an impossible size, `MemoryPlanError`
        for an output that cannot fit in memory, ValueError for other bad options (the server answers 422)."""
        ...

    def run(self, prepared: PreparedUpscale, progress: ProgressCallback | None = None) -> UpscaledImage: ...


EngineFactory = Callable[[], Engine]


class EngineHolder:
    """The engine, loaded once on first use; remembers a load failure so it is reported, not retried."""

    def __init__(self, factory: EngineFactory, description: str = "SeedVR2"):
        self._factory = factory
        self.description = description
        self.notice: str | None = None
        self._engine: Engine | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self.loaded = threading.Event()

    @property
    def state(self) -> str:
        """ "loading", "ready" or "failed"."""
        if self._engine is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    def get(self) -> Engine:
        """The engine, loading it if needed; raises RuntimeError when it cannot be loaded."""
        with self._lock:
            if self._engine is None and self.error is None:
                try:
                    engine = self._factory()
                    self.description, self.notice = engine.description, engine.notice
                    self._engine = engine
                except Exception as exc:  # reported by /readyz and in every job's error
                    lines = str(exc).strip().splitlines()
                    self.error = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
                finally:
                    self.loaded.set()
            if self._engine is None:
                raise RuntimeError(f"the model failed to load: {self.error}")
            return self._engine
