"""Runners that push one reference case through the project's own modules.

Each runner takes a `ReferenceCase` and returns the tensors it computed, named as in the case's
`expected.safetensors`. The parity test compares every expected tensor; a kind without a runner fails.
"""

from __future__ import annotations

from typing import Callable

import torch

from tests.reference_data import ReferenceCase

Runner = Callable[[ReferenceCase], dict[str, torch.Tensor]]


def runners() -> dict[str, Runner]:
    # Imported lazily so a broken module fails only the cases of its kind.
    from tests.parity import dit, image_ops, restore, vae

    return {
        "dit3b": dit.run_dit_case,
        "dit7b": dit.run_dit_case,
        "vae_encode": vae.run_encode_case,
        "vae_decode": vae.run_decode_case,
        "colorfix": image_ops.run_colorfix_case,
        "preprocess": image_ops.run_preprocess_case,
        "restore": restore.run_restore_case,
    }
