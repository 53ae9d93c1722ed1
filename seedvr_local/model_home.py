"""Where `seedvr-local download` puts models and where `--model 3b|7b` finds them."""

from __future__ import annotations

import os
from pathlib import Path

VARIANTS = ("official", "fp16", "fp8")


def models_home() -> Path:
    """`$SEEDVR_HOME`, else `~/.cache/seedvr-local`."""
    return Path(os.environ.get("SEEDVR_HOME") or Path.home() / ".cache" / "seedvr-local")


def default_weights_dir(model: str, variant: str = "official") -> Path:
    suffix = "" if variant == "official" else f"-{variant}"
    return models_home() / f"seedvr2-{model}{suffix}"


def find_installed_weights(model: str) -> Path:
    """The first downloaded variant of `model` (official, then fp16, then fp8)."""
    for variant in VARIANTS:
        path = default_weights_dir(model, variant)
        if path.is_dir() and any(path.iterdir()):
            return path
    raise FileNotFoundError(
        f"no SeedVR2 {model.upper()} weights in {models_home()}: run `seedvr-local download --model {model}` "
        "or pass --weights-dir"
    )
