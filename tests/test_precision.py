"""Half precision on the CPU against float32: each dtype within its limits (tests/precision.py), and the fp16
limits tight enough that a bf16 computation fails them (an accidental bf16 cast in the fp16 path)."""

from __future__ import annotations

import pytest
import torch

from seedvr_local.upscaler import Upscaler, UpscaleOptions
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from tests.precision import DIT_LIMITS, UPSCALE_LIMITS, VAE_LIMITS, assert_within, errors, within
from tests.test_dit import random_inputs, random_model
from tests.test_upscaler import _image
from tests.test_vae import TINY, _latent, _video

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _dit_outputs(variant: str, dtype: torch.dtype) -> torch.Tensor:
    vids, txts = random_inputs([(1, 42, 50), (3, 16, 20)], [6, 9])
    model = random_model(variant).to(dtype)
    with torch.no_grad():
        outs = model.forward_samples([v.to(dtype) for v in vids], [t.to(dtype) for t in txts], torch.tensor([1000.0, 500.0]))
    return torch.cat([o.float().flatten() for o in outs])


@pytest.fixture(scope="module", params=["3b", "7b"])
def dit_runs(request) -> dict[str, torch.Tensor]:
    variant = request.param
    return {"variant": variant, "fp32": _dit_outputs(variant, torch.float32)} | {
        name: _dit_outputs(variant, dtype) for name, dtype in HALF.items()
    }


@pytest.mark.parametrize("dtype_name", HALF)
def test_dit_in_half_precision_is_within_its_limits(dit_runs, dtype_name):
    dtype = HALF[dtype_name]
    assert_within(dit_runs[dtype_name], dit_runs["fp32"], DIT_LIMITS[dtype], f"{dit_runs['variant']} DiT in {dtype_name}")


def test_dit_fp16_limits_fail_a_bf16_computation(dit_runs):
    rel, max_abs = errors(dit_runs["bf16"], dit_runs["fp32"])
    assert not within(dit_runs["bf16"], dit_runs["fp32"], DIT_LIMITS[torch.float16]), (
        f"bf16 DiT (rel {rel:.3g}, max {max_abs:.3g}) passes the fp16 limits: they cannot tell the two apart"
    )


@pytest.fixture(scope="module")
def vae_runs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(encoder mean, decoded sample) of a tiny VAE with perturbed weights, per dtype."""
    torch.manual_seed(0)
    model = VideoAutoencoder.from_vae_config(VAEConfig(**TINY)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    x, z = _video(5), _latent(2)
    runs = {}
    with torch.no_grad():
        for name, dtype in {"fp32": torch.float32, **HALF}.items():
            copy = VideoAutoencoder.from_config(model.config).eval()
            copy.load_state_dict(model.state_dict())
            copy.to(dtype)
            runs[name] = (copy.encode(x)[0], copy.decode(z))
    return runs


@pytest.mark.parametrize("dtype_name", HALF)
def test_vae_in_half_precision_is_within_its_limits(vae_runs, dtype_name):
    limits = VAE_LIMITS[HALF[dtype_name]]
    for part, (got, want) in zip(("encode", "decode"), zip(vae_runs[dtype_name], vae_runs["fp32"])):
        assert_within(got, want, limits, f"VAE {part} in {dtype_name}")


def test_vae_fp16_limits_fail_a_bf16_computation(vae_runs):
    for got, want in zip(vae_runs["bf16"], vae_runs["fp32"]):
        assert not within(got, want, VAE_LIMITS[torch.float16])


def _upscale(tiny_bundle, dtype: str | None) -> torch.Tensor:
    upscaler = Upscaler.from_weights_dir(tiny_bundle, device="cpu", dtype=dtype)
    return upscaler.upscale(_image(61, 45, seed=3), UpscaleOptions(upscale_factor=2.0, seed=7)).rgb


@pytest.fixture(scope="module")
def upscale_runs(tiny_bundle) -> dict[str, torch.Tensor]:
    return {name: _upscale(tiny_bundle, name) for name in ("fp32", *HALF)}


@pytest.mark.parametrize("dtype_name", HALF)
def test_upscale_in_half_precision_is_within_its_limits(upscale_runs, dtype_name):
    limits = UPSCALE_LIMITS[HALF[dtype_name]]
    assert_within(upscale_runs[dtype_name], upscale_runs["fp32"], limits, f"upscale in {dtype_name}")


def test_upscale_fp16_limits_fail_a_bf16_computation(upscale_runs):
    assert not within(upscale_runs["bf16"], upscale_runs["fp32"], UPSCALE_LIMITS[torch.float16])
