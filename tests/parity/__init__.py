"""Runners that push one reference case through the project's own modules.

Each runner takes a `ReferenceCase` and returns the tensors it computed, named as in the case's
`expected.safetensors`. The parity test compares every expected tensor; a kind without a runner fails.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from tests.reference_data import ReferenceCase

Runner = Callable[[ReferenceCase], dict[str, torch.Tensor]]

# kind -> (module under tests.parity, function). Modules are imported per case, so a broken module fails
# only the cases of its kinds.
RUNNERS: dict[str, tuple[str, str]] = {
    "dit3b": ("dit", "run_dit_case"),
    "dit7b": ("dit", "run_dit_case"),
    "vae_encode": ("vae", "run_encode_case"),
    "vae_decode": ("vae", "run_decode_case"),
    "colorfix": ("image_ops", "run_colorfix_case"),
    "preprocess": ("image_ops", "run_preprocess_case"),
    "restore": ("restore", "run_restore_case"),
}


def runner_for(kind: str) -> Runner:
    module, function = RUNNERS[kind]
    return getattr(importlib.import_module(f"tests.parity.{module}"), function)
