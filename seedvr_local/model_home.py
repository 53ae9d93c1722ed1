"""Where `seedvr-local download` puts models and where `--model 3b|7b` finds them."""

from __future__ import annotations

import os
from pathlib import Path

#: The models `seedvr-local download` fetches and `--model` finds in the models home.
DOWNLOADABLE_MODELS = ("3b", "7b", "7b-sharp")
#: `--model tiny`: a toy architecture with random weights built in memory (`seedvr_local.weights.tiny`).
TINY_MODEL = "tiny"
MODELS = (*DOWNLOADABLE_MODELS, TINY_MODEL)
#: Weight formats, most precise first (`weights.download` says which files each is; not every model has each).
VARIANTS = ("official", "fp16", "fp8", "Q8_0", "Q4_K_M")


def models_home() -> Path:
    """`$SEEDVR_HOME`, else `~/.cache/seedvr-local`."""
    return Path(os.environ.get("SEEDVR_HOME") or Path.home() / ".cache" / "seedvr-local")


def default_weights_dir(model: str, variant: str = "official") -> Path:
    suffix = "" if variant == "official" else f"-{variant}"
    return models_home() / f"seedvr2-{model}{suffix}"


def find_installed_weights(model: str) -> Path:
    """The first downloaded variant of `model`, in VARIANTS order (the most precise first)."""
    for variant in VARIANTS:
        path = default_weights_dir(model, variant)
        if path.is_dir() and any(path.iterdir()):
            return path
    raise FileNotFoundError(
        f"no SeedVR2 {model.upper()} weights in {models_home()}: run `seedvr-local download --model {model}` "
        f"or pass --weights-dir (or try the plumbing with --model {TINY_MODEL})"
    )
