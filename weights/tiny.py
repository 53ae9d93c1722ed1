"""The tiny test model: SeedVR2's architecture at toy width and depth, with fixed random weights built in
memory, so `seedvr-local serve --model tiny` and `seedvr-local upscale IN -o OUT --model tiny` run from a bare
clone in seconds on a CPU. Its output is noise: it exercises the plumbing (CLI, server, pipeline, tiling),
never the picture quality.

The sizes follow the official 3B configuration with every width and the depth cut down (the same scale as the
reference data's tiny bundle); everything else (patching, windows, RoPE, norms, the VAE's block layout) is the
official one, so the same code paths run as with the real model.
"""

from __future__ import annotations

import torch

from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.weights.bundle import LoadedModels, kept_in_float32
from seedvr_local.weights.manifest import DIT_MANIFESTS, load_manifest

#: What the CLI and `/readyz` say about a model built here.
RANDOM_WEIGHTS_NOTICE = "random weights: output is noise; for trying the plumbing"
#: The weights are the same on every run and machine: drawn on the CPU from this seed.
TINY_SEED = 0

_DIT_VARIANT = "3b"
_DIT_SIZES = {
    "vid_dim": 40,
    "txt_in_dim": 32,
    "txt_dim": 40,
    "emb_dim": 240,  # 6 x vid_dim, as in the official model
    "heads": 2,
    "head_dim": 20,
    "rope_dim": 20,
    "num_layers": 3,
    "mm_layers": 1,
}
_PER_LAYER_FIELDS = ("block_type", "window", "window_method")
_VAE_SIZES = {"block_out_channels": (4, 6, 8, 8), "norm_num_groups": 2}
_TEXT_TOKENS = 12


def tiny_dit_config() -> DiTConfig:
    """The official 3B DiT configuration with the tiny sizes (per-layer lists cut to the tiny depth)."""
    official = load_manifest(DIT_MANIFESTS[_DIT_VARIANT]).config
    layers = _DIT_SIZES["num_layers"]
    per_layer = {name: official[name][:layers] for name in _PER_LAYER_FIELDS if isinstance(official[name], list)}
    return DiTConfig.from_dict({**official, **_DIT_SIZES, **per_layer}, _DIT_VARIANT)


def tiny_vae_config() -> VAEConfig:
    return VAEConfig(**_VAE_SIZES)


def build_tiny_models(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModels:
    """The tiny DiT, VAE and text embedding with their deterministic random weights, on `device` in `dtype`."""
    # Built in float32 on the CPU from a private generator state, so the weights depend on nothing but TINY_SEED.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        dit_config = tiny_dit_config()
        dit = NaDiT.from_config(dit_config)
        vae = VideoAutoencoder.from_vae_config(tiny_vae_config())
        pos_emb = torch.randn(_TEXT_TOKENS, dit_config.txt_in_dim)
    return LoadedModels(
        dit=_placed(dit, device, dtype),
        vae=_placed(vae, device, dtype),
        pos_emb=pos_emb.to(device=device, dtype=dtype),
        neg_emb=None,
        weights_dir=None,
    )


def _placed(model: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`model` on `device` in `dtype` as `load_models` leaves a model read from a file: the parameters of its
    `_keep_in_fp32_modules` and its buffers (the RoPE frequencies) stay float32. Cast parameter by parameter:
    diffusers' `ModelMixin.to(dtype=...)` would cast those modules too (and logs a warning saying so)."""
    keep_float32 = kept_in_float32(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.data = parameter.data.to(torch.float32 if keep_float32(name) else dtype)
    return model.to(device).eval().requires_grad_(False)
