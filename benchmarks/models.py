"""The models a benchmark runs: the built-in tiny model, a full-size architecture with random weights, or a
real weights directory. Random weights time exactly like real ones, so speed and memory numbers for the
full-size models need no download."""

from __future__ import annotations

import torch

from seedvr_local.devices import resolve_device, resolve_dtype
from seedvr_local.pipeline import RestorationPipeline
from seedvr_local.upscaler import Upscaler

#: `--model` values besides a directory path.
RANDOM_MODELS = ("3b-random", "7b-random")
TINY = "tiny"
TEXT_TOKENS = 58  # length of the real SeedVR2 positive text embedding


def materialize_random_(
    model: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> None:
    """Give every `meta` parameter small random values, drawn on the generator's device in `dtype` (drawing
    3B float32 values on the CPU first takes longer than the benchmark). Norm scales are 1, so activations
    stay in range. Buffers are left alone: the models compute theirs at construction."""
    device = generator.device
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            if param.ndim == 1 and name == "weight":
                value = torch.ones(param.shape, device=device, dtype=dtype)
            else:
                value = torch.randn(param.shape, generator=generator, device=device, dtype=dtype).mul_(0.02)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)


def build_upscaler(model: str, device: str | None = None, dtype: str | None = None) -> Upscaler:
    """`model`: "tiny", "3b-random", "7b-random" or a weights directory."""
    if model == TINY:
        return Upscaler.tiny(device=device, dtype=dtype)
    if model not in RANDOM_MODELS:
        return Upscaler.from_weights_dir(model, device=device, dtype=dtype)

    from seedvr_local.models.nadit import DiTConfig, NaDiT
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
    from seedvr_local.weights.bundle import parameters_on_meta

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    dit_config = DiTConfig.seedvr2_3b() if model == "3b-random" else DiTConfig.seedvr2_7b()
    generator = torch.Generator(torch_device).manual_seed(0)
    models = []
    with parameters_on_meta():
        built = [NaDiT.from_config(dit_config), VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())]
    for module in built:
        materialize_random_(module, generator, torch_dtype)
        models.append(module.to(device=torch_device, dtype=torch_dtype).eval().requires_grad_(False))
    dit, vae = models
    text = torch.randn(TEXT_TOKENS, dit_config.txt_in_dim, generator=generator, device=torch_device, dtype=torch_dtype)
    pipeline = RestorationPipeline(dit, vae, text)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    return Upscaler(pipeline, f"SeedVR2 {model} on {torch_device} ({dtype_name})")
