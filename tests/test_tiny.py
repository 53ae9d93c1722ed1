"""The tiny test model (`--model tiny`): built in memory, the same weights on every build, run end to end."""

from __future__ import annotations

import torch
from PIL import Image

from seedvr_local.upscaler import UpscaleOptions, Upscaler
from seedvr_local.weights.tiny import RANDOM_WEIGHTS_NOTICE, build_tiny_models, tiny_dit_config


def test_weights_are_the_same_on_every_build_and_leave_the_global_generator_alone():
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    first, second = build_tiny_models(), build_tiny_models()
    assert torch.equal(torch.rand(3), expected_next)  # the build drew from a private generator state
    for a, b in ((first.dit, second.dit), (first.vae, second.vae)):
        pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
        assert pairs and all(torch.equal(x, y) for x, y in pairs)
    assert torch.equal(first.pos_emb, second.pos_emb)
    assert any(float(p.abs().sum()) > 0 for p in first.dit.parameters())


def test_architecture_is_small_and_official_in_layout():
    config = tiny_dit_config()
    assert (config.vid_dim, config.num_layers, config.heads * config.head_dim) == (40, 3, 40)
    models = build_tiny_models()
    assert sum(p.numel() for p in models.dit.parameters()) < 1_000_000
    assert models.pos_emb.shape[1] == config.txt_in_dim and models.weights_dir is None


def test_tiny_upscaler_runs_and_says_its_output_is_noise():
    upscaler = Upscaler.tiny(device="cpu")
    assert upscaler.notice == RANDOM_WEIGHTS_NOTICE and "tiny" in upscaler.description
    image = Image.new("RGB", (20, 12), (200, 100, 50))
    first = upscaler.upscale(image, UpscaleOptions(seed=4))
    again = Upscaler.tiny(device="cpu").upscale(image, UpscaleOptions(seed=4))
    assert first.size == (40, 24) and torch.equal(first.pixels, again.pixels)
