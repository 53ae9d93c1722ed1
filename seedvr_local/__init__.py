"""seedvr-local: SeedVR2 one-step image restoration in PyTorch."""

from __future__ import annotations

from importlib.metadata import version

__version__ = version("seedvr-local")  # written once, in pyproject.toml
__all__ = ["UpscaleOptions", "UpscaleResult", "Upscaler"]


def __getattr__(name: str):
    # Lazy, so that importing a submodule (a model, say) does not load the whole stack.
    if name in __all__:
        from seedvr_local import upscaler

        return getattr(upscaler, name)
    raise AttributeError(f"module 'seedvr_local' has no attribute {name!r}")
