"""Fast checks of the causal video VAE: layout, config, key conversion, causality, chunking, shapes, dtypes.

Numerical parity with the official code is in the reference cases (`tests/parity/vae.py`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seedvr_local.kernels import reference as kernel_reference
from seedvr_local.models import vae_blocks
from seedvr_local.models.vae import VAEConfig, VideoAutoencoder, convert_deprecated_attention_keys
from seedvr_local.models.vae_blocks import ChunkMemory, FrameGroupNorm
from seedvr_local.models.vae_tiling import VAETiling
from seedvr_local.weights.manifest import load_manifest
from tests.precision import VAE_LIMITS, assert_within

# Every code path of the real model at toy size: 4 levels, 2 temporal resamplers, shortcut convs, attention.
TINY = dict(block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4)


@pytest.fixture(scope="module")
def tiny_vae() -> VideoAutoencoder:
    torch.manual_seed(0)
    model = VideoAutoencoder.from_vae_config(VAEConfig(**TINY)).eval()
    with torch.no_grad():  # move every parameter off its init so identity/zero inits cannot hide a mistake
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def _video(frames: int, height: int = 32, width: int = 24, batch: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=generator) * 2 - 1


def _latent(frames: int, height: int = 4, width: int = 3, batch: int = 1, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, height, width, generator=generator)


# ---------------------------------------------------------------------------------------------- layout, config


def test_full_size_module_on_meta_matches_the_manifest():
    manifest = load_manifest("ema_vae")
    with torch.device("meta"):
        model = VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert list(shapes.items()) == list(manifest.shapes.items())  # keys, order and shapes
    assert sum(p.numel() for p in model.parameters()) == 250_648_227
    assert all(p.device.type == "meta" for p in model.parameters())


def test_config_from_official_dicts_and_round_trip():
    manifest = load_manifest("ema_vae")
    assert VAEConfig.from_dict(manifest.config) == VAEConfig.seedvr2()
    yaml_like = {"__object__": {"name": "VideoAutoencoderKLWrapper"}, "sample_size": 32, **manifest.config}
    assert VAEConfig.from_dict(yaml_like) == VAEConfig.seedvr2()
    tiny = VAEConfig(**TINY)
    assert VAEConfig.from_dict(tiny.to_dict()) == tiny
    model = VideoAutoencoder.from_vae_config(tiny)
    assert VAEConfig.from_dict(model.config) == tiny  # the config lives in one place: read back from the model


@torch.no_grad()
def test_save_pretrained_and_from_pretrained_round_trip(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path)
    loaded = VideoAutoencoder.from_pretrained(tmp_path).eval()
    assert VAEConfig.from_dict(loaded.config) == VAEConfig.from_dict(tiny_vae.config)
    x, z = _video(5), _latent(2)
    for got, expected in zip((*loaded.encode(x), loaded.decode(z)), (*tiny_vae.encode(x), tiny_vae.decode(z))):
        assert torch.equal(got, expected)
    assert loaded.config.block_out_channels != VAEConfig.seedvr2().block_out_channels  # not rebuilt from defaults


def test_frame_padding_and_latent_shape_come_from_the_config():
    vae = VideoAutoencoder.from_vae_config(VAEConfig(**TINY))
    padded = {frames: vae.padded_frames(frames) for frames in (1, 2, 4, 5, 6, 9, 10)}
    assert padded == {1: 1, 2: 5, 4: 5, 5: 5, 6: 9, 9: 9, 10: 13}
    assert vae.latent_shape(6, 32, 24) == (16, 3, 4, 3)
    with torch.device("meta"):  # temporal factor 2: one downsampler in time
        coarse = VideoAutoencoder(**{**TINY, "temporal_scale_num": 1, "temporal_downsample_factor": 2})
    assert coarse.padded_frames(4) == 5 and coarse.latent_shape(4, 32, 24)[1] == 3
    with pytest.raises(ValueError, match="at least one frame"):
        vae.padded_frames(0)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"blocks_out_channels": [8]}, "unknown field"),
        ({"slicing_up_num": 2}, "slicing_up_num"),
        ({"down_block_types": ["DownEncoderBlock2D"] * 4}, "down_block_types"),
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"temporal_downsample_factor": 8}, "temporal_downsample_factor"),
        ({"act_fn": "gelu"}, "act_fn"),
    ],
)
def test_bad_configs_are_refused(change, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig.from_dict({**VAEConfig.seedvr2().to_dict(), **change})


def test_deprecated_attention_keys_are_renamed(tiny_vae):
    current = tiny_vae.state_dict()
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    deprecated = {}
    for key, value in current.items():
        for new, old in old_names.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        deprecated[key] = value
    assert sum(".proj_attn." in key for key in deprecated) == 4

    converted = convert_deprecated_attention_keys(deprecated)
    assert list(converted) == list(current)  # same names, same order
    assert all(converted[key] is current[key] for key in current)  # values untouched
    assert convert_deprecated_attention_keys(current) == current
    # only attention keys of the mid blocks are renamed
    other = {"decoder.up_blocks.0.key.weight": 1, "encoder.mid_block.resnets.0.query.weight": 2}
    assert convert_deprecated_attention_keys(other) == other


# ------------------------------------------------------------------------------------------ causality, chunking


@torch.no_grad()
def test_encoder_is_causal(tiny_vae):
    x = _video(9)
    changed = x.clone()
    changed[:, :, 5:] = _video(4, seed=7)  # frames 5..8 only reach latent frame 2
    mean, logvar = tiny_vae.encode(x)
    mean_changed, logvar_changed = tiny_vae.encode(changed)
    prefix_mean, _ = tiny_vae.encode(x[:, :, :5])
    assert mean.shape == (1, 16, 3, 4, 3)
    torch.testing.assert_close(mean_changed[:, :, :2], mean[:, :, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(logvar_changed[:, :, :2], logvar[:, :, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(prefix_mean, mean[:, :, :2], rtol=0, atol=1e-5)
    assert (mean_changed[:, :, 2] - mean[:, :, 2]).abs().max() > 1e-3  # the test can fail


@torch.no_grad()
def test_decoder_is_causal(tiny_vae):
    z = _latent(3)
    changed = z.clone()
    changed[:, :, 2] = _latent(1, seed=9)[:, :, 0]  # latent frame 2 decodes to frames 5..8
    sample = tiny_vae.decode(z)
    assert sample.shape == (1, 3, 9, 32, 24)
    torch.testing.assert_close(tiny_vae.decode(changed)[:, :, :5], sample[:, :, :5], rtol=0, atol=1e-6)
    torch.testing.assert_close(tiny_vae.decode(z[:, :, :2]), sample[:, :, :5], rtol=0, atol=1e-5)
    assert (tiny_vae.decode(changed)[:, :, 5:] - sample[:, :, 5:]).abs().max() > 1e-3


@torch.no_grad()
def test_temporal_chunks_equal_one_pass(tiny_vae):
    x, z = _video(13), _latent(4)  # encode: frames [0..4], [5..8], [9..12]; decode: [0, 1], [2], [3]
    try:
        tiny_vae.temporal_slicing = True
        chunked = tiny_vae.encode(x), tiny_vae.decode(z)
        tiny_vae.temporal_slicing = False
        whole = tiny_vae.encode(x), tiny_vae.decode(z)
    finally:
        tiny_vae.temporal_slicing = True
    for got, expected in zip((*chunked[0], chunked[1]), (*whole[0], whole[1])):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_single_frame_shortcut_equals_the_causal_3d_convs(tiny_vae):
    # Without a memory, a lone frame takes the summed-weight 2-D conv path; with one, the padded 3-D conv.
    x, z = _video(1), _latent(1)
    torch.testing.assert_close(tiny_vae._encode(x, None), tiny_vae._encode(x, ChunkMemory()), rtol=0, atol=1e-5)
    torch.testing.assert_close(tiny_vae._decode(z, None), tiny_vae._decode(z, ChunkMemory()), rtol=0, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("frames", [1, 13])  # an image; a clip with temporal chunks
@pytest.mark.parametrize("tiled", [False, True])
def test_channels_last_gives_the_same_result(tiny_vae, frames, tiled):
    x, z = _video(frames, 48, 40), _latent((frames - 1) // 4 + 1, 6, 5)
    tiling = VAETiling(tile=16) if tiled else None
    layouts = []
    hooks = [
        norm.register_forward_pre_hook(
            lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
        )
        for norm in tiny_vae.modules() if isinstance(norm, FrameGroupNorm)
    ]  # fmt: skip
    try:
        expected = tiny_vae.encode(x, tiling=tiling)[0], tiny_vae.decode(z, tiling=tiling)
        layouts.clear()
        tiny_vae.channels_last = True
        got = tiny_vae.encode(x, tiling=tiling)[0], tiny_vae.decode(z, tiling=tiling)
    finally:
        tiny_vae.channels_last = None
        for hook in hooks:
            hook.remove()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    if frames == 1 and not tiled:  # CPU 3-D convs answer in the contiguous layout; the image path is all 2-D
        assert layouts and all(layouts), f"{layouts.count(False)} of {len(layouts)} norms saw another layout"


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [("cpu", torch.bfloat16, False), ("cuda", torch.float32, False), ("cuda", torch.bfloat16, True),
     ("cuda", torch.float16, True)],
)  # fmt: skip
def test_channels_last_by_default_only_for_half_precision_on_cuda(device, dtype, expected, monkeypatch):
    vae = VideoAutoencoder.from_vae_config(VAEConfig(**TINY))
    monkeypatch.setattr(VideoAutoencoder, "device", property(lambda _: torch.device(device)))
    monkeypatch.setattr(VideoAutoencoder, "dtype", property(lambda _: dtype))
    assert vae.uses_channels_last is expected
    vae.channels_last = not expected  # an explicit choice wins
    assert vae.uses_channels_last is not expected


# ---------------------------------------------------------------------------------------------- shapes, errors


@torch.no_grad()
def test_round_trip_shapes_and_batch_independence(tiny_vae):
    x = _video(5, 40, 56, batch=2)
    mean, logvar = tiny_vae.encode(x)
    assert mean.shape == logvar.shape == (2, 16, 2, 5, 7)
    assert tiny_vae.decode(mean).shape == (2, 3, 5, 40, 56)
    assert tiny_vae(x).shape == x.shape
    alone, _ = tiny_vae.encode(x[1:])
    torch.testing.assert_close(alone, mean[1:], rtol=0, atol=1e-5)
    assert tiny_vae.decode(_latent(1, 5, 7)).shape == (1, 3, 1, 40, 56)  # odd latent sizes decode fine


def test_logvar_is_clamped(tiny_vae):
    with torch.no_grad():
        bias = tiny_vae.encoder.conv_out.bias
        saved = bias.clone()
        bias[16:] = 1e4
        try:
            _, logvar = tiny_vae.encode(_video(1))
        finally:
            bias.copy_(saved)
    assert logvar.max().item() == 20.0


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 4, 32, 24), "4n\\+1 frames"),
        ((1, 3, 6, 32, 24), "4n\\+1 frames"),
        ((1, 3, 1, 30, 24), "multiples of 8"),
        ((1, 3, 1, 32, 20), "multiples of 8"),
        ((1, 3, 32, 24), "add the time axis"),
        ((1, 4, 1, 32, 24), "must be \\(B, 3, T, H, W\\)"),
    ],
)
def test_bad_encoder_inputs_raise_one_clear_error(tiny_vae, shape, match):
    with pytest.raises(ValueError, match=match) as info:
        tiny_vae.encode(torch.zeros(shape))
    assert "\n" not in str(info.value)


def test_bad_decoder_inputs_raise_one_clear_error(tiny_vae):
    with pytest.raises(ValueError, match="must be \\(B, 16, T, H, W\\)"):
        tiny_vae.decode(torch.zeros(1, 4, 1, 4, 3))
    with pytest.raises(ValueError, match="add the time axis"):
        tiny_vae.decode(torch.zeros(1, 16, 4, 3))


# ------------------------------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_runs_close_to_float32(tiny_vae, dtype):
    x, z = _video(5), _latent(2)
    mean32, sample32 = tiny_vae.encode(x)[0], tiny_vae.decode(z)
    half = VideoAutoencoder.from_config(tiny_vae.config).eval()
    half.load_state_dict(tiny_vae.state_dict())
    half.to(dtype)
    mean, logvar = half.encode(x)  # float32 input is cast to the weights' dtype
    sample = half.decode(z)
    assert mean.dtype == logvar.dtype == sample.dtype == dtype
    assert torch.isfinite(mean).all() and torch.isfinite(sample).all()
    assert_within(mean.float(), mean32, VAE_LIMITS[dtype], "encode")
    assert_within(sample.float(), sample32, VAE_LIMITS[dtype], "decode")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_is_per_frame_in_float32(monkeypatch, dtype):
    torch.manual_seed(0)
    norm = FrameGroupNorm(4, 8, eps=1e-6).requires_grad_(False)
    norm.weight.normal_()
    norm.bias.normal_()
    norm.to(dtype)
    x = (torch.randn(2, 8, 3, 5, 6) * 3 + 1).to(dtype)
    frames = x.float().transpose(1, 2).reshape(6, 8, 5, 6)  # (b t) c h w: statistics per frame
    expected = F.group_norm(frames, 4, norm.weight.float(), norm.bias.float(), 1e-6)
    expected = expected.to(dtype).reshape(2, 3, 8, 5, 6).transpose(1, 2)
    out = norm(x)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert torch.equal(norm(x, silu=True), F.silu(expected))
    # big frames are normalised a few groups at a time: the same numbers
    monkeypatch.setattr(kernel_reference, "_GROUPNORM_CHUNK_BYTES", 4 * x[:, :, 0].numel() // 4)
    assert torch.equal(norm(x), expected)


def test_gemm_attention_math(monkeypatch):
    """The CUDA half-precision VAE attention's arithmetic, emulated on the CPU (`torch.mm(out_dtype=...)` is
    CUDA-only): equal to softmax attention. tests/test_cuda.py checks the real thing on a GPU."""
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, out_dtype=None: real_mm(a.float(), b.float()).to(out_dtype or a.dtype))
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 1, 37, 64) * 3 for _ in range(3))
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert (vae_blocks.gemm_attention(q, k, v).double() - expected).abs().max() < 1e-4
