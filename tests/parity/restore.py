"""Runner for `restore` cases: the whole one-step restoration core."""

from __future__ import annotations

import torch

from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
from seedvr_local.pipeline import RestorationPipeline, RestoreNoises, to_uint8_frames
from seedvr_local.preprocess import official_transform
from tests.reference_data import ReferenceCase


def _submodule_state(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _check_input_transform(case: ReferenceCase) -> None:
    """The case's `video` must be what our official transform makes of its uint8 input."""
    frames = case.inputs.get("image_uint8")
    frames = frames[None] if frames is not None else case.inputs["frames_uint8_in"]
    image = frames.permute(0, 3, 1, 2).float() / 255.0
    normalized = official_transform(image, case.params["res_h"], case.params["res_w"])["normalized"]
    err = (normalized - case.inputs["video"]).abs().max().item()
    assert err <= case.tolerance("video").atol, f"input transform differs from the case's video by {err:.3g}"


def build_pipeline(case: ReferenceCase) -> RestorationPipeline:
    """The case's tiny DiT and VAE with its weights, its text embedding and its pipeline settings."""
    config, params = case.config, case.params
    dit = NaDiT.from_config(DiTConfig.from_dict(config["dit"], config["dit_variant"]))
    vae = VideoAutoencoder.from_vae_config(VAEConfig.from_dict(config["vae"]))
    dit.load_state_dict(_submodule_state(case.weights, "dit."), strict=True)
    vae.load_state_dict(_submodule_state(case.weights, "vae."), strict=True)
    dit.eval()
    vae.eval()
    return RestorationPipeline(
        dit,
        vae,
        case.inputs["text_pos"],
        scaling_factor=params["scaling_factor"],
        shifting_factor=params["shifting_factor"],
        sample_posterior=params["vae_use_sample"],
    )


def case_noises(case: ReferenceCase) -> RestoreNoises:
    inputs = case.inputs
    return RestoreNoises(inputs["posterior_eps"], inputs["noise"], inputs["aug_noise"])


def case_color_fix(case: ReferenceCase) -> str:
    """The colour fix of the case's colour-fixed outputs: the first word of `params.color_fix`."""
    return case.params["color_fix"].split()[0]


def run_restore_case(case: ReferenceCase) -> dict[str, torch.Tensor]:
    _check_input_transform(case)
    pipeline = build_pipeline(case)
    inputs = case.inputs
    out = pipeline.restore(
        inputs["video"], case_noises(case), cond_noise_scale=case.params["cond_noise_scale"], color_fix=case_color_fix(case)
    )

    image_key = "image_uint8" if inputs["video"].shape[1] == 1 else "frames_uint8"
    fixed, raw = to_uint8_frames(out.colorfixed), to_uint8_frames(out.decoded)
    if image_key == "image_uint8":
        fixed, raw = fixed[0], raw[0]
    return {
        "cond_latent": out.cond_latent,
        "cond_timestep": torch.tensor([out.cond_timestep]),
        "condition": out.condition,
        "dit_out": out.dit_out,
        "latent_out": out.latent_out,
        "decoded": out.decoded,
        "colorfixed": out.colorfixed,
        image_key: fixed,
        f"{image_key}_no_colorfix": raw,
    }
