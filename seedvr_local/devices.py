"""Device and dtype choice: bf16 on CUDA by default (fp16 on GPUs without bf16 arithmetic), fp32 on CPU."""

from __future__ import annotations

import functools

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: The first compute capability with bf16 arithmetic and the flash attention kernels.
AMPERE = (8, 0)


@functools.cache  # a device's capability never changes
def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device: the one helper for it (dtypes, attention, kernels)."""
    return tuple(torch.cuda.get_device_capability(device))


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        # Before Ampere (V100, T4, GTX) bf16 is emulated or refused by cuBLAS (spec pitfall 7); fp16 runs there,
        # with the overflow guards of the DiT and the VAE.
        return torch.bfloat16 if cuda_capability(device) >= AMPERE else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "bf16" and device.type == "cuda" and cuda_capability(device) < AMPERE:
        major, minor = cuda_capability(device)
        raise ValueError(f"this GPU (compute capability {major}.{minor}) has no bf16 arithmetic: use --dtype fp16")
    return DTYPES[dtype]
