"""What the server needs from the model: an object with `output_size` and `upscale`.

`seedvr_local.upscaler.Upscaler` is one. The server gets a factory instead of the object so the model
loads in the worker thread after the server is up (`/readyz` says when), and so tests can inject a
fast stand-in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from seedvr_local.image_io import DecodedImage
from seedvr_local.upscaler import ProgressCallback, UpscaleOptions


class UpscaledImage(Protocol):
    seed: int
    timings: dict[str, float]

    @property
    def size(self) -> tuple[int, int]: ...

    def encode(self, fmt: str) -> bytes: ...


class Engine(Protocol):
    """Optionally also `plan(width, height, options)`, raising `MemoryPlanError` when an output of that
    size cannot fit in memory (the Upscaler's): the server then answers 422 before doing any work."""

    def output_size(self, width: int, height: int, options: UpscaleOptions) -> tuple[int, int]: ...

    def upscale(
        self, image: DecodedImage, options: UpscaleOptions, progress: ProgressCallback | None = None
    ) -> UpscaledImage: ...


EngineFactory = Callable[[], Engine]


class EngineHolder:
    """The engine, loaded once on first use; remembers a load failure so it is reported, not retried."""

    def __init__(self, factory: EngineFactory, description: str = "SeedVR2"):
        self._factory = factory
        self.description = description
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
                    self._engine = self._factory()
                    self.description = getattr(self._engine, "description", self.description)
                except Exception as exc:  # reported by /readyz and in every job's error
                    lines = str(exc).strip().splitlines()
                    self.error = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
                finally:
                    self.loaded.set()
            if self._engine is None:
                raise RuntimeError(f"the model failed to load: {self.error}")
            return self._engine
