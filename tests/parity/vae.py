"""Runners for `vae_encode` / `vae_decode` cases: the causal video VAE, one call per indexed input (batch 1)."""

from __future__ import annotations

import torch

from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from tests.reference_data import ReferenceCase


def build_case_model(case: ReferenceCase) -> VideoAutoencoder:
    """The case's tiny VAE with its weights loaded strictly by name."""
    model = VideoAutoencoder.from_vae_config(VAEConfig.from_dict(case.config))
    model.load_state_dict(case.weights, strict=True)
    return model.eval()


def run_encode_case(case: ReferenceCase) -> dict[str, torch.Tensor]:
    """Posterior mean/logvar of each `x_i`, and the DiT-space latent of the pipeline for the given eps."""
    model = build_case_model(case)
    scale, shift = case.params["scaling_factor"], case.params["shifting_factor"]
    out = {}
    for i, x in enumerate(case.indexed(case.inputs, "x")):
        mean, logvar = (t[0] for t in model.encode(x[None]))
        sample = mean + torch.exp(0.5 * logvar) * case.inputs[f"posterior_eps_{i}"]
        out[f"mean_{i}"], out[f"logvar_{i}"] = mean, logvar
        out[f"latent_{i}"] = (sample - shift) * scale
    return out


def run_decode_case(case: ReferenceCase) -> dict[str, torch.Tensor]:
    model = build_case_model(case)
    return {f"sample_{i}": model.decode(z[None])[0] for i, z in enumerate(case.indexed(case.inputs, "z"))}
