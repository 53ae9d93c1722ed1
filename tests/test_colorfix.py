"""Colour fixes: shapes and dtypes, the properties each method promises, and `apply_color_fix` errors.

Exact parity with the official and numz code is proven by the `colorfix` reference cases.
"""

from __future__ import annotations

import pytest
import torch

from seedvr_local.colorfix import (
    COLOR_FIX_METHODS,
    _match_histogram,
    adain_color_fix,
    apply_color_fix,
    lab_color_fix,
    wavelet_reconstruction,
    wavelet_reconstruction_numz,
)


def _frames(*shape: int, seed: int = 0, scale: float = 0.6) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * scale


@pytest.mark.parametrize("method", COLOR_FIX_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_keeps_shape_and_dtype(method, dtype):
    content, style = _frames(2, 3, 20, 24, seed=1).to(dtype), _frames(2, 3, 20, 24, seed=2).to(dtype)
    out = apply_color_fix(method, content, style)
    assert out.shape == content.shape and out.dtype == dtype
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("method", ["wavelet", "adain", "lab"])
def test_low_precision_inputs_are_computed_in_float32(method):
    content, style = _frames(1, 3, 16, 16, seed=3).bfloat16(), _frames(1, 3, 16, 16, seed=4).bfloat16()
    expected = apply_color_fix(method, content.float(), style.float()).bfloat16()
    assert torch.equal(apply_color_fix(method, content, style), expected)


def test_wavelet_gives_a_colour_shifted_content_the_style_colours():
    # A constant offset is all low frequency: the fix must remove it exactly (replicate padding keeps
    # the blur of a constant constant, also at the borders).
    style = _frames(2, 3, 24, 40, seed=5)
    offset = torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    assert torch.allclose(wavelet_reconstruction(style + offset, style), style, atol=1e-6)
    assert torch.allclose(wavelet_reconstruction_numz(style + offset, style), style, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 4])
def test_wavelet_works_for_any_channel_count(channels):
    content, style = _frames(1, channels, 18, 20, seed=6), _frames(1, channels, 18, 20, seed=7)
    out = wavelet_reconstruction(content, style)
    assert out.shape == content.shape
    assert torch.allclose(wavelet_reconstruction(content, content), content, atol=1e-6)


def test_numz_wavelet_equals_the_official_one_from_128_pixels_up_except_for_its_clamp():
    content, style = _frames(1, 3, 128, 132, seed=8, scale=1.2), _frames(1, 3, 128, 132, seed=9)
    official = wavelet_reconstruction(content, style)
    assert official.abs().max() > 1  # so the clamp matters
    assert torch.equal(wavelet_reconstruction_numz(content, style), official.clamp(-1, 1))


def test_numz_wavelet_caps_the_radius_on_small_frames():
    content, style = _frames(1, 3, 24, 40, seed=10), _frames(1, 3, 24, 40, seed=11)
    official = wavelet_reconstruction(content, style).clamp(-1, 1)
    assert not torch.allclose(wavelet_reconstruction_numz(content, style), official)


def test_adain_gives_each_frame_the_style_statistics():
    content, style = _frames(2, 3, 16, 20, seed=12), _frames(2, 3, 16, 20, seed=13) * 0.5 + 0.1
    out = adain_color_fix(content, style)
    assert torch.allclose(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3)), style.std(dim=(2, 3)), atol=1e-4)
    # An affine recolouring of the style is undone (up to the eps in the deviation).
    assert torch.allclose(adain_color_fix(style * 1.5 - 0.2, style), style, atol=1e-4)


def test_lab_is_the_identity_when_content_and_style_agree():
    frames = _frames(2, 3, 16, 16, seed=14, scale=0.9)
    out = lab_color_fix(frames, frames)
    assert torch.allclose(out, frames, atol=1e-4)


def test_lab_output_stays_in_range():
    out = lab_color_fix(_frames(1, 3, 12, 16, seed=15, scale=1.5), _frames(1, 3, 12, 16, seed=16))
    assert out.min() >= -1 and out.max() <= 1


def test_histogram_matching_by_rank():
    source = torch.tensor([0.3, 0.1, 0.2])
    assert _match_histogram(source, torch.tensor([5.0, 9.0, 7.0])).tolist() == [9.0, 5.0, 7.0]
    # Unequal counts: the k-th of 5 source values takes reference rank floor(k * 8 / 4).
    source = torch.tensor([4.0, 0.0, 3.0, 1.0, 2.0])
    reference = torch.arange(9.0) * 10
    assert _match_histogram(source, reference).tolist() == [80.0, 0.0, 60.0, 20.0, 40.0]


def test_none_returns_the_content():
    content = _frames(1, 3, 8, 8, seed=17)
    assert torch.equal(apply_color_fix("none", content, _frames(1, 3, 8, 8, seed=18)), content)


def test_unknown_method_names_the_valid_ones():
    content = _frames(1, 3, 8, 8)
    with pytest.raises(ValueError, match="wavelet, adain, lab, none"):
        apply_color_fix("sepia", content, content)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        apply_color_fix("wavelet", _frames(1, 3, 8, 8), _frames(1, 3, 8, 10))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        apply_color_fix("adain", _frames(3, 8, 8), _frames(3, 8, 8))
