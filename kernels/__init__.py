"""Fused fp16/bf16 kernels (Triton, fp32 accumulation) for the memory-bound hot spots, each with a PyTorch
reference that computes the same numbers:

- `rms_norm_modulate`, `gated_residual`, `gated_residual_rms_norm_modulate`, `rms_norm`: the DiT's RMSNorm and
  AdaSingle modulation, and the gated residual add fused with the next norm;
- `rotate_pairs`: RoPE on q/k (adjacent pairs, partial rotary dims, optional fused window gather);
- `group_norm_silu`, `group_norm_stats`, `group_norm_moments`, `merge_moments`: the VAE's per-frame GroupNorm
  fused with SiLU, from statistics that may come from the whole frame while the tensor is one tile of it;
- `unnormalized_softmax`: the softmax of the VAE attention's two-GEMM path in two passes over the scores;
- `dequant.dequantize_ggml`: GGUF weight blocks to the compute dtype (Triton for Q8_0 and Q4_K; the PyTorch
  references in `ggml_reference` cover every type).

Backend: chosen per model (`ModelBackends.set_kernel_backend("auto" | "triton" | "torch")`, see `backend`); the
ops called while a model's `@runs_kernels` method runs use that model's backend, elsewhere the references. Triton
is optional: without it everything runs the references.
"""

from seedvr_local.kernels.backend import (
    MODES,
    KernelBackendError,
    ModelBackends,
    interpreter_enabled,
    runs_kernels,
    triton_available,
    use,
)
from seedvr_local.kernels.group_stats import GroupMoments, GroupStats, merge_moments
from seedvr_local.kernels.ops import (
    gated_residual,
    gated_residual_rms_norm_modulate,
    group_norm_moments,
    group_norm_silu,
    group_norm_stats,
    rms_norm,
    rms_norm_modulate,
    rotate_pairs,
    unnormalized_softmax,
)

__all__ = [
    "MODES",
    "GroupMoments",
    "GroupStats",
    "KernelBackendError",
    "ModelBackends",
    "gated_residual",
    "gated_residual_rms_norm_modulate",
    "group_norm_moments",
    "group_norm_silu",
    "group_norm_stats",
    "interpreter_enabled",
    "merge_moments",
    "rms_norm",
    "rms_norm_modulate",
    "rotate_pairs",
    "runs_kernels",
    "triton_available",
    "unnormalized_softmax",
    "use",
]
