"""The Python API end to end with the tiny bundle: sizes, alpha, determinism, progress."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local.upscaler import Upscaler, UpscaleOptions
from tests.precision import UPSCALE_LIMITS, assert_within


def _image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


@pytest.mark.parametrize(
    "size, options, expected",
    [
        ((50, 37), UpscaleOptions(upscale_factor=2), (100, 74)),
        ((51, 37), UpscaleOptions(upscale_factor=1.5), (76, 56)),
        ((21, 13), UpscaleOptions(upscale_factor=3), (63, 39)),
        ((40, 30), UpscaleOptions(upscale_mode="target", target_resolution="720p"), (960, 720)),
        ((30, 40), UpscaleOptions(upscale_mode="target", target_resolution="720p"), (720, 960)),
    ],
)
def test_output_has_exactly_the_requested_size(tiny_upscaler, size, options, expected):
    result = tiny_upscaler.upscale(_image(*size), options)
    assert result.image.size == expected
    assert result.image.mode == "RGB"


def test_pixels_are_the_rounded_rgb(tiny_upscaler):
    from seedvr_local.image_io import to_uint8

    result = tiny_upscaler.upscale(_image(30, 20), UpscaleOptions(seed=3))
    assert result.pixels.dtype == torch.uint8 and torch.equal(result.pixels, to_uint8(result.rgb))
    assert np.array_equal(np.asarray(result.image), to_uint8(result.rgb).permute(1, 2, 0).numpy())


def test_same_seed_gives_identical_bytes(tiny_upscaler):
    image = _image(24, 20)
    first = tiny_upscaler.upscale(image, UpscaleOptions(seed=7)).encode("png")
    second = tiny_upscaler.upscale(image, UpscaleOptions(seed=7)).encode("png")
    other = tiny_upscaler.upscale(image, UpscaleOptions(seed=8)).encode("png")
    assert first == second
    assert first != other


def test_a_drawn_seed_is_reported_and_reproduces(tiny_upscaler):
    image = _image(24, 20)
    drawn = tiny_upscaler.upscale(image, UpscaleOptions())
    again = tiny_upscaler.upscale(image, UpscaleOptions(seed=drawn.seed))
    assert drawn.encode("png") == again.encode("png")


def test_rgba_keeps_its_alpha(tiny_upscaler):
    image = _image(50, 37, "RGBA")
    alpha = np.zeros((37, 50), dtype=np.uint8)
    alpha[:, 25:] = 255  # left half transparent, right half opaque
    image.putalpha(Image.fromarray(alpha))
    result = tiny_upscaler.upscale(image, UpscaleOptions(seed=1))
    assert result.image.mode == "RGBA" and result.image.size == (100, 74)
    out_alpha = np.asarray(result.image)[..., 3]
    assert out_alpha[:, :40].max() <= 5 and out_alpha[:, 60:].min() >= 250
    for fmt, mode in (("png", "RGBA"), ("webp", "RGBA"), ("jpg", "RGB")):
        import io

        assert Image.open(io.BytesIO(result.encode(fmt))).mode == mode


def test_greyscale_input_gives_rgb(tiny_upscaler):
    result = tiny_upscaler.upscale(_image(20, 16, "L"), UpscaleOptions(seed=3))
    assert result.image.mode == "RGB" and result.image.size == (40, 32)


def test_progress_reports_phases_and_can_abort(tiny_upscaler):
    phases: list[str] = []
    result = tiny_upscaler.upscale(_image(20, 16), UpscaleOptions(seed=3), progress=phases.append)
    assert phases == ["resize", "encode", "dit", "vae_decode", "color_fix", "finish"]
    assert set(result.timings) == set(phases)

    class Cancelled(Exception):
        pass

    def cancel_at_dit(phase: str) -> None:
        if phase == "dit":
            raise Cancelled

    with pytest.raises(Cancelled):
        tiny_upscaler.upscale(_image(20, 16), UpscaleOptions(seed=3), progress=cancel_at_dit)


@pytest.mark.parametrize("method", ["wavelet", "adain", "lab", "none"])
def test_every_colour_fix_runs(tiny_upscaler, method):
    result = tiny_upscaler.upscale(_image(20, 16), UpscaleOptions(seed=3, color_fix=method))
    assert result.image.size == (40, 32)


@pytest.mark.parametrize(
    "options, message",
    [
        (UpscaleOptions(upscale_factor=0), "upscale_factor"),
        (UpscaleOptions(noise_scale=-1), "noise_scale"),
        (UpscaleOptions(seed=-5), "seed"),
        (UpscaleOptions(color_fix="sepia"), "color_fix"),
    ],
)
def test_bad_options_are_refused_before_running(tiny_upscaler, options, message):
    with pytest.raises(ValueError, match=message):
        tiny_upscaler.upscale(_image(8, 8), options)


def _overflowing_fp16(upscaler: Upscaler) -> Upscaler:
    """Scales both VAE input convs so that their outputs pass fp16's 65504 (the GroupNorm after them
    normalises the scale away, so float32 results stay ordinary)."""
    with torch.no_grad():
        for conv in (upscaler.pipeline.vae.encoder.conv_in, upscaler.pipeline.vae.decoder.conv_in):
            conv.weight.mul_(3e4 / float(conv.weight.abs().max()))
    return upscaler


def test_fp16_vae_overflow_is_rerun_in_float32(tiny_bundle, caplog):
    image = _image(40, 24, seed=5)
    options = UpscaleOptions(upscale_factor=2, seed=3)
    half = _overflowing_fp16(Upscaler.from_weights_dir(tiny_bundle, device="cpu", dtype="fp16"))
    full = _overflowing_fp16(Upscaler.from_weights_dir(tiny_bundle, device="cpu", dtype="fp32"))
    vae = half.pipeline.vae
    weights = {name: t.clone() for name, t in vae.state_dict().items()}
    with torch.no_grad():  # the premise: in fp16 these weights overflow
        assert not vae.encode(torch.zeros(1, 3, 1, 32, 48, dtype=torch.float16).uniform_(-1, 1))[0].isfinite().all()

    with caplog.at_level(logging.WARNING, logger="seedvr_local"):
        got = half.upscale(image, options).rgb
    expected = full.upscale(image, options).rgb
    assert_within(got, expected, UPSCALE_LIMITS[torch.float16], "fp16 with the VAE rerun in float32")
    assert [r.getMessage() for r in caplog.records] == [
        f"the VAE {phase} overflowed float16; running it again in float32" for phase in ("encode", "decode")
    ]
    for name, t in vae.state_dict().items():  # the fp16 weights are back, untouched
        assert t.dtype == torch.float16 and torch.equal(t, weights[name]), name


def test_prepare_decides_everything_before_any_work(tiny_upscaler, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("prepare ran the model")

    monkeypatch.setattr(tiny_upscaler.pipeline, "restore", no_work)
    prepared = tiny_upscaler.prepare(_image(25, 13), UpscaleOptions(upscale_factor=1.5))
    assert prepared.output_size == (38, 20)  # 37.5 -> 38, 19.5 -> 20: half to even
    assert prepared.padded_size == (48, 32)  # the pipeline's multiple
    assert 0 <= prepared.seed <= 2**31 - 1 and prepared.plan is not None
    with pytest.raises(ValueError, match="noise_scale"):
        tiny_upscaler.prepare(_image(8, 8), UpscaleOptions(noise_scale=2))


def test_an_output_that_cannot_fit_is_refused_by_prepare(tiny_upscaler, monkeypatch):
    from seedvr_local.memory_planner import MemoryPlanError

    monkeypatch.setattr(tiny_upscaler.planner, "budget", lambda available=None: 1024)  # bytes: nothing fits
    with pytest.raises(MemoryPlanError):
        tiny_upscaler.prepare(_image(8, 8), UpscaleOptions(seed=1))


def test_upscale_is_prepare_then_run_with_one_noise_draw(tiny_upscaler, monkeypatch):
    """The noises of a run are drawn once, by RestoreNoises.draw, from the prepared seed (parity tests replace
    that one function to inject the reference noises)."""
    from seedvr_local.pipeline import RestoreNoises

    draws = []
    real_draw = RestoreNoises.draw.__func__

    def counting_draw(cls, latent_shape, seed):
        draws.append((tuple(latent_shape), seed))
        return real_draw(cls, latent_shape, seed)

    monkeypatch.setattr(RestoreNoises, "draw", classmethod(counting_draw))
    image = _image(20, 12)
    prepared = tiny_upscaler.prepare(image, UpscaleOptions())  # no seed: one is drawn and kept
    by_steps = tiny_upscaler.run(prepared)
    at_once = tiny_upscaler.upscale(image, UpscaleOptions(seed=prepared.seed))
    assert draws == [((16, 1, 4, 6), prepared.seed)] * 2  # 40x24 output padded to 48x32, latent / 8
    assert by_steps.seed == at_once.seed == prepared.seed and torch.equal(by_steps.pixels, at_once.pixels)
