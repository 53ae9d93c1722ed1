"""`--compile` (seedvr_local/compilation.py): regional torch.compile gives the eager numbers."""

from __future__ import annotations

import pytest

from seedvr_local.compilation import compile_pipeline
from seedvr_local.models.vae_blocks import ResnetBlock3D
from seedvr_local.upscaler import Upscaler, UpscaleOptions
from tests.test_upscaler import _image


def test_compile_pipeline_compiles_the_repeated_blocks(tiny_bundle):
    upscaler = Upscaler.from_weights_dir(tiny_bundle, device="cpu")
    compile_pipeline(upscaler.pipeline)  # lazy: nothing is traced before the first call
    resnets = [m for m in upscaler.pipeline.vae.modules() if isinstance(m, ResnetBlock3D)]
    assert resnets and all(m._compiled_call_impl is not None for m in resnets)
    assert all(block._compiled_call_impl is not None for block in upscaler.pipeline.dit.blocks)
    # Regional: only the models' `_repeated_blocks`, never a whole model.
    assert upscaler.pipeline.dit._compiled_call_impl is None and upscaler.pipeline.dit.vid_in._compiled_call_impl is None


@pytest.mark.slow  # about a minute of compilation on two CPU cores; tests/test_cuda.py runs it on a GPU
def test_compiled_upscale_equals_eager(tiny_bundle):
    upscaler = Upscaler.from_weights_dir(tiny_bundle, device="cpu")
    options = UpscaleOptions(seed=7)
    eager = upscaler.upscale(_image(61, 45, seed=3), options).rgb
    compile_pipeline(upscaler.pipeline)
    compiled = upscaler.upscale(_image(61, 45, seed=3), options).rgb
    assert float((compiled - eager).abs().max()) < 1e-5
