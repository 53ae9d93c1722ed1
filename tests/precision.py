"""Accuracy limits per dtype, for results computed in half precision against the same computation in float32.

Each limit is a relative L2 error (‖out − ref‖ / ‖ref‖, the overall accuracy) and a max-abs error (no single bad
element, tile or frame hides in an average). They were set at about 3x the errors measured on the CPU
(tests/test_precision.py runs them there; tests/test_cuda.py on a GPU): bf16 keeps 8 mantissa bits and fp16 11,
so bf16's errors are about 8x fp16's, and the fp16 limits sit below what a bf16 computation reaches. An
accidental bf16 cast in the fp16 path therefore fails (tests/test_precision.py checks that it would).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Limits:
    rel_l2: float
    max_abs: float


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error, max abs error) of `out` against `ref`, in float64 on the CPU."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert bool(out.isfinite().all()), "non-finite output"
    diff = out - ref
    return float(diff.norm() / ref.norm()), float(diff.abs().max())


def within(out: torch.Tensor, ref: torch.Tensor, limits: Limits) -> bool:
    rel, max_abs = errors(out, ref)
    return rel <= limits.rel_l2 and max_abs <= limits.max_abs


def assert_within(out: torch.Tensor, ref: torch.Tensor, limits: Limits, what: str) -> None:
    rel, max_abs = errors(out, ref)
    assert rel <= limits.rel_l2 and max_abs <= limits.max_abs, (
        f"{what}: relative L2 error {rel:.3g} (limit {limits.rel_l2:.3g}), max abs error {max_abs:.3g} "
        f"(limit {limits.max_abs:.3g})"
    )


#: The tiny DiTs of tests/test_dit.py (outputs of magnitude ~3). Measured on the CPU: bf16 rel 5.8e-3 / max 2.0e-2,
#: fp16 rel 5.7e-4 / max 2.2e-3 (3B; the 7B is lower).
DIT_LIMITS = {
    torch.float32: Limits(rel_l2=1e-5, max_abs=1e-4),
    torch.bfloat16: Limits(rel_l2=2e-2, max_abs=6e-2),
    torch.float16: Limits(rel_l2=1.5e-3, max_abs=7e-3),
}

#: The tiny VAE of tests/test_vae.py (encoder mean and decoded sample, magnitudes ~1). Measured on the CPU: bf16 rel
#: 9.8e-3 / max 6.2e-2, fp16 rel 1.6e-3 / max 7.6e-3.
VAE_LIMITS = {
    torch.float32: Limits(rel_l2=1e-5, max_abs=1e-4),
    torch.bfloat16: Limits(rel_l2=3e-2, max_abs=0.15),
    torch.float16: Limits(rel_l2=4e-3, max_abs=2e-2),
}

#: A whole upscale with the tiny bundle, on the [0, 1] image. Measured on the CPU: bf16 rel 5.3e-3 / max 4.9/255,
#: fp16 rel 6.8e-4 / max 0.6/255.
UPSCALE_LIMITS = {
    torch.float32: Limits(rel_l2=1e-5, max_abs=1e-4),
    torch.bfloat16: Limits(rel_l2=1.5e-2, max_abs=12 / 255),
    torch.float16: Limits(rel_l2=2e-3, max_abs=2 / 255),
}
