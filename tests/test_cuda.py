"""The CUDA paths against the CPU float32 ones: attention backends, Triton kernels inside the DiT, low precision,
exact tiling and the whole upscale. Skipped without a CUDA GPU (CI has none); `benchmarks/device_check.sh` runs
them on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from seedvr_local import kernels
from seedvr_local.devices import AMPERE, cuda_capability
from seedvr_local.models.window_attention import ATTENTION_BACKENDS, attention_backend_available
from seedvr_local.upscaler import Upscaler, UpscaleOptions
from seedvr_local.models.vae_tiling import VAETiling
from tests import requires
from tests.precision import DIT_LIMITS, UPSCALE_LIMITS, assert_within, within
from tests.test_dit import random_inputs, random_model
from tests.test_upscaler import _image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 would make float32 matmuls and convs differ from the CPU by ~1e-3."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    assert out.isfinite().all(), "non-finite output"
    return float((out - ref).norm() / ref.norm())


def _dit_outputs(model, vids, txts, device, dtype) -> torch.Tensor:
    model = model.to(device=device, dtype=dtype)
    with torch.no_grad():
        outs = model.forward_samples(
            [v.to(device, dtype) for v in vids], [t.to(device, dtype) for t in txts], torch.tensor([1000.0, 500.0])
        )
    return torch.cat([o.float().flatten() for o in outs])


@pytest.mark.parametrize("variant", ["3b", "7b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kernel_backend", ["torch", "triton"])
def test_dit_on_cuda_matches_cpu_for_every_attention_backend(variant, dtype, kernel_backend):
    if kernel_backend == "triton" and not kernels.triton_available():
        requires.missing("triton", "pip install 'seedvr-local[triton]'")
    vids, txts = random_inputs([(1, 42, 50), (3, 16, 20)], [6, 9])
    reference = _dit_outputs(random_model(variant), vids, txts, "cpu", torch.float32)  # on the CPU: torch kernels
    model = random_model(variant).to(device="cuda", dtype=dtype)
    assert model.set_kernel_backend(kernel_backend) == kernel_backend
    ran = []
    for backend in ATTENTION_BACKENDS:
        if not attention_backend_available(backend, model.device, dtype, model.config.head_dim):
            continue
        model.set_window_attention_backend(backend)
        assert_within(_dit_outputs(model, vids, txts, "cuda", dtype), reference, DIT_LIMITS[dtype], backend)
        ran.append(backend)
    assert "sdpa" in ran and "per_window" in ran
    if dtype != torch.float32 and cuda_capability(torch.device("cuda")) >= AMPERE:  # flash: half precision, sm80+
        assert {"torch_varlen", "flash_attn"} & set(ran), f"no varlen attention on this GPU: {ran}"


@pytest.fixture(scope="module")
def cpu_upscaler(tiny_bundle) -> Upscaler:
    return Upscaler.from_weights_dir(tiny_bundle, device="cpu")


def _upscale(upscaler: Upscaler, tile: int | str = "auto"):
    options = UpscaleOptions(upscale_factor=2.0, seed=7, vae_tile=tile)
    return upscaler.upscale(_image(61, 45, seed=3), options).rgb


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_upscale_on_cuda_matches_cpu(tiny_bundle, cpu_upscaler, dtype):
    expected = _upscale(cpu_upscaler)
    cuda = Upscaler.from_weights_dir(tiny_bundle, device="cuda", dtype=dtype)
    # untiled, and with exact tiling on the ragged 64-pixel grid of the 122x90 output
    outputs = {tile: _upscale(cuda, tile) for tile in ("auto", 64)}
    for tile, got in outputs.items():
        assert_within(got, expected, UPSCALE_LIMITS[DTYPES[dtype]], f"{dtype}, vae_tile={tile}")
    if dtype == "fp32":  # exact: half precision rounds tiles and frames differently
        assert float((outputs[64] - outputs["auto"]).abs().max()) < 1e-4


def test_fp16_limits_on_cuda_fail_a_bf16_upscale(tiny_bundle, cpu_upscaler):
    """The fp16 limits can tell fp16 from bf16: a bf16 cast in the fp16 path would fail them."""
    bf16 = _upscale(Upscaler.from_weights_dir(tiny_bundle, device="cuda", dtype="bf16"))
    assert not within(bf16, _upscale(cpu_upscaler), UPSCALE_LIMITS[torch.float16])


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_either_vae_layout_on_cuda_matches_cpu(tiny_bundle, cpu_upscaler, dtype, channels_last):
    expected = _upscale(cpu_upscaler)
    cuda = Upscaler.from_weights_dir(tiny_bundle, device="cuda", dtype=dtype)
    assert cuda.pipeline.vae.uses_channels_last == (dtype == "bf16")  # the default
    cuda.pipeline.vae.channels_last = channels_last
    for tile in ("auto", 64):
        assert_within(_upscale(cuda, tile), expected, UPSCALE_LIMITS[DTYPES[dtype]], f"{dtype}, vae_tile={tile}")


@pytest.mark.parametrize("store_scale", [1, 8])
def test_tiled_vae_on_cuda_equals_untiled(tiny_bundle, store_scale):
    upscaler = Upscaler.from_weights_dir(tiny_bundle, device="cuda", dtype="fp32")
    vae = upscaler.pipeline.vae
    x = torch.rand(1, 3, 1, 96, 80, device="cuda") * 2 - 1
    tiling = VAETiling(tile=32, store_scale=store_scale)
    with torch.no_grad():
        mean, _ = vae.encode(x)
        tiled_mean, _ = vae.encode(x, tiling=tiling)
        decoded = vae.decode(mean)
        tiled_decoded = vae.decode(mean, tiling=tiling)
    torch.testing.assert_close(tiled_mean, mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(tiled_decoded, decoded, atol=1e-4, rtol=0)


def test_planner_limits_on_cuda(tiny_bundle):
    upscaler = Upscaler.from_weights_dir(tiny_bundle, device="cuda")
    pixels = upscaler.max_output_pixels()
    assert pixels > 4096 * 4096  # a tiny model on any data-centre GPU
    with pytest.raises(ValueError, match="largest"):
        upscaler.plan(200_000, 200_000)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_vae_gemm_attention_is_as_accurate_as_sdpa(dtype):
    from seedvr_local.models.vae_blocks import gemm_attention

    generator = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 1, 1000, 512, device="cuda", generator=generator) for _ in range(3))
    q = q * 2  # peaked softmax rows, as trained attention has
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    low = [t.to(dtype) for t in (q, k, v)]
    ours = rel_error(gemm_attention(*low), expected)
    sdpa = rel_error(torch.nn.functional.scaled_dot_product_attention(*low), expected)
    assert ours < max(2 * sdpa, 1e-3), f"gemm attention {ours:.3g}, SDPA {sdpa:.3g}"


def test_compiled_upscale_on_cuda_equals_eager(tiny_bundle):
    from seedvr_local.compilation import compile_pipeline

    upscaler = Upscaler.from_weights_dir(tiny_bundle, device="cuda", dtype="bf16")
    eager = _upscale(upscaler)
    compile_pipeline(upscaler.pipeline)
    compiled = _upscale(upscaler)
    assert_within(compiled, eager, UPSCALE_LIMITS[torch.bfloat16], "compiled against eager, both bf16")
