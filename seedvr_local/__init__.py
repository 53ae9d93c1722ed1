"""seedvr-local: SeedVR2 one-step image restoration in PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["UpscaleOptions", "UpscaleResult", "Upscaler"]


def __getattr__(name: str):
    # Lazy, so that importing a submodule (a model, say) does not load the whole stack.
    if name in __all__:
        from seedvr_local import upscaler

        return getattr(upscaler, name)
    raise AttributeError(f"module 'seedvr_local' has no attribute {name!r}")
