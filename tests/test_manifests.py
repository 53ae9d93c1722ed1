"""The shipped checkpoint manifests: equal to the official ones, and equal to the modules the code builds."""

from __future__ import annotations

import pytest
import torch

from tests.reference_data import missing_reference_message, reference_dir
from seedvr_local.weights.build_manifests import read_official_manifest
from seedvr_local.weights.manifest import MANIFEST_NAMES, format_manifest, load_manifest, parse_manifest

OFFICIAL_COUNTS = {  # spec section 4: tensors and parameters of the released files
    "seedvr2_ema_3b": (635, 3_391_476_448),
    "seedvr2_ema_7b": (1128, 8_239_608_232),
    "ema_vae": (250, 250_648_227),
}


@pytest.mark.reference
@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_shipped_manifest_equals_the_official_one(name):
    official_file = reference_dir() / "manifests" / f"{name}.json"
    assert official_file.is_file(), missing_reference_message(f"official manifest manifests/{name}.json")
    official = read_official_manifest(reference_dir(), name)
    shipped = load_manifest(name)
    assert list(shipped.shapes.items()) == list(official.shapes.items())  # keys, order and shapes
    assert shipped.dtypes == official.dtypes
    assert shipped.config == official.config
    assert shipped.pipeline == official.pipeline
    assert shipped.checkpoint_file == official.checkpoint_file


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_manifest_counts_match_the_released_files(name):
    manifest = load_manifest(name)
    assert (manifest.num_tensors, manifest.num_params) == OFFICIAL_COUNTS[name]


def test_manifest_text_round_trips_and_detects_truncation():
    manifest = load_manifest("ema_vae")
    text = format_manifest(manifest, "a comment")
    assert parse_manifest("ema_vae", text) == manifest
    truncated = text.rsplit("\n", 2)[0] + "\n"  # drop the last tensor line
    with pytest.raises(ValueError, match="corrupt"):
        parse_manifest("ema_vae", truncated)


def test_variant_aliases_and_unknown_names():
    assert load_manifest("3b").name == "seedvr2_ema_3b"
    assert load_manifest("7b").name == "seedvr2_ema_7b"
    with pytest.raises(ValueError, match="unknown checkpoint manifest"):
        load_manifest("seedvr2_ema_13b")


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


@pytest.mark.parametrize("variant", ["3b", "7b"])
def test_full_size_dit_on_meta_has_exactly_the_manifest_keys_and_shapes(variant):
    from seedvr_local.models.nadit import DiTConfig, NaDiT

    manifest = load_manifest(variant)
    preset = DiTConfig.seedvr2_3b() if variant == "3b" else DiTConfig.seedvr2_7b()
    for config in (preset, DiTConfig.from_dict(manifest.config, variant)):
        with torch.device("meta"):
            model = NaDiT.from_config(config)
        assert _meta_shapes(model) == manifest.shapes


def test_full_size_vae_on_meta_has_exactly_the_manifest_keys_and_shapes():
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder

    manifest = load_manifest("ema_vae")
    for config in (VAEConfig.seedvr2(), VAEConfig.from_dict(manifest.config)):
        with torch.device("meta"):
            model = VideoAutoencoder.from_vae_config(config)
        assert _meta_shapes(model) == manifest.shapes
