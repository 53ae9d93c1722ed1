"""Dtype and attention-path choice by GPU generation (compute capability faked: CI has no GPU)."""

from __future__ import annotations

import pytest
import torch

from seedvr_local import devices
from seedvr_local.models import window_attention

CUDA = torch.device("cuda")


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 6), torch.bfloat16),
                                                  ((7, 5), torch.float16), ((6, 1), torch.float16)])  # fmt: skip
def test_default_dtype_on_cuda_follows_bf16_support(monkeypatch, capability, expected):
    monkeypatch.setattr(devices, "cuda_capability", lambda device: capability)
    assert devices.resolve_dtype(None, CUDA) == expected
    assert devices.resolve_dtype("fp16", CUDA) == torch.float16


def test_cpu_defaults_to_float32():
    assert devices.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert devices.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_bf16_on_a_gpu_without_it_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(devices, "cuda_capability", lambda device: (7, 0))
    with pytest.raises(ValueError, match=r"compute capability 7\.0\) has no bf16 arithmetic: use --dtype fp16"):
        devices.resolve_dtype("bf16", CUDA)
    with pytest.raises(ValueError, match="dtype must be one of"):
        devices.resolve_dtype("fp8", CUDA)


@pytest.mark.parametrize("capability, expected", [((9, 0), "torch_varlen"), ((7, 5), "sdpa")])
def test_flash_varlen_attention_needs_ampere(monkeypatch, capability, expected):
    monkeypatch.setattr(devices, "cuda_capability", lambda device: capability)
    monkeypatch.setattr(window_attention, "_flash_attn_varlen", lambda: None)  # whatever is installed here
    monkeypatch.setattr(window_attention, "_torch_varlen", lambda: object())  # present on any CUDA torch build
    assert window_attention.resolve_attention_backend("auto", CUDA, torch.float16, 128)[0] == expected
    assert window_attention.resolve_attention_backend("auto", CUDA, torch.float32, 128)[0] == "sdpa"


@pytest.mark.parametrize("capability, dtype, kernels", [((9, 0), torch.bfloat16, "triton"),
                                                        ((6, 1), torch.float16, "torch")])  # fmt: skip
def test_one_capability_helper_decides_dtype_attention_and_kernels(monkeypatch, capability, dtype, kernels):
    from seedvr_local.kernels import backend

    monkeypatch.setattr(devices, "cuda_capability", lambda device: capability)
    monkeypatch.setattr(backend, "triton_version", lambda: "3.test")
    assert devices.resolve_dtype(None, CUDA) == dtype
    assert backend.resolve("auto", CUDA)[0] == kernels
    assert window_attention.attention_backend_available("torch_varlen", CUDA, dtype, 128) == (capability >= (8, 0))
