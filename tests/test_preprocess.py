"""The official input transform (sizes, rounding, resize kernel) and the product's pad/crop path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from seedvr_local.preprocess import (
    area_resize_hw,
    crop_to,
    official_transform,
    pad_to_multiple,
    resize_bicubic_antialias,
)


@pytest.mark.parametrize(
    "height, width, res_h, res_w, expected",
    [
        (480, 640, 720, 1280, (831, 1109)),  # the spec's worked example (scale sqrt(3))
        (96, 72, 40, 56, (55, 41)),
        (29, 45, 58, 90, (58, 90)),  # scale exactly 2
        (5, 20, 5, 5, (2, 10)),  # 2.5 rounds half to even: down
        (7, 28, 7, 7, (4, 14)),  # 3.5 rounds half to even: up
        # sqrt(3)**2 is 2.9999999999999996 in floats, so the official code lands just below 1.5:
        # exact arithmetic (or skipping the square of the square root) would give (2, 2).
        (3, 4, 1, 3, (1, 2)),
    ],
)
def test_area_resize_hw_matches_the_official_float_math(height, width, res_h, res_w, expected):
    assert area_resize_hw(height, width, res_h, res_w) == expected


def _pillow_bicubic(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow's own float resize: the kernel torchvision's antialiased tensor resize reproduces."""
    return np.array(Image.fromarray(plane, "F").resize((size[1], size[0]), Image.BICUBIC))


@pytest.mark.parametrize("size", [(29, 11), (40, 50), (5, 7), (13, 17)])
def test_resize_uses_the_pillow_cubic_kernel(size):
    plane = np.random.default_rng(0).random((13, 17), dtype=np.float32)
    ours = resize_bicubic_antialias(torch.from_numpy(plane)[None], size)[0].numpy()
    assert np.abs(ours - _pillow_bicubic(plane, size)).max() < 2e-6


def test_resize_differs_from_plain_bicubic_when_upscaling():
    x = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(0))
    plain = F.interpolate(x, size=(20, 24), mode="bicubic", align_corners=False)
    assert (resize_bicubic_antialias(x, (20, 24)) - plain).abs().max() > 1e-3


def test_resize_accepts_any_leading_dims_and_keeps_float_dtypes():
    x = torch.rand(2, 2, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    out = resize_bicubic_antialias(x, (18, 7))
    assert out.shape == (2, 2, 3, 18, 7)
    assert torch.equal(out[1, 0], resize_bicubic_antialias(x[1, 0], (18, 7)))
    assert torch.allclose(resize_bicubic_antialias(x, (9, 11)), x, atol=1e-6)  # same size: identity
    assert resize_bicubic_antialias(x.bfloat16(), (4, 4)).dtype == torch.bfloat16
    assert resize_bicubic_antialias((x * 255).to(torch.uint8), (4, 4)).dtype == torch.float32
    with pytest.raises(ValueError):
        resize_bicubic_antialias(x, (0, 4))


def test_official_transform_sizes_layout_and_crop():
    image = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    out = official_transform(image, 72, 128)  # scale sqrt(3): 48x64 -> 83x111 -> crop 80x96
    assert out["resized"].shape == (2, 3, 83, 111)
    assert out["cropped"].shape == (2, 3, 80, 96)
    assert out["normalized"].shape == (3, 2, 80, 96)
    top, left = 2, 8  # round(1.5) = 2, round(7.5) = 8
    expected = out["resized"].clamp(0, 1)[..., top : top + 80, left : left + 96]
    assert torch.equal(out["cropped"], expected)
    assert torch.equal(out["normalized"], (expected * 2 - 1).transpose(0, 1))
    assert out["normalized"].min() >= -1 and out["normalized"].max() <= 1


def test_official_transform_refuses_a_result_below_16_pixels():
    with pytest.raises(ValueError, match="smaller than 16"):
        official_transform(torch.rand(1, 3, 8, 64), 8, 64)


@pytest.mark.parametrize("height, width", [(20, 37), (16, 32), (1, 3), (5, 40), (3, 17)])
def test_pad_to_multiple_round_trips(height, width):
    x = torch.rand(3, 2, height, width, generator=torch.Generator().manual_seed(3))
    padded, size = pad_to_multiple(x, 16)
    assert size == (height, width)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert padded.shape[-2] - height < 16 and padded.shape[-1] - width < 16
    assert padded.dtype == x.dtype
    assert torch.equal(crop_to(padded, size), x)
    # Every padded value is a copy of a real one (a mirror of the content, never a constant).
    assert set(padded.unique().tolist()) <= set(x.unique().tolist())


def test_padding_mirrors_the_content_without_repeating_the_edge():
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    padded, _ = pad_to_multiple(x, 8)
    assert padded[0, 0, :4, 5:].tolist() == [[3.0, 2.0, 1.0], [8.0, 7.0, 6.0], [13.0, 12.0, 11.0], [18.0, 17.0, 16.0]]
    assert padded[0, 0, 4:, 0].tolist() == [10.0, 5.0, 0.0, 5.0]  # bounces off the far edge when it runs out


def test_crop_to_refuses_to_grow():
    with pytest.raises(ValueError):
        crop_to(torch.zeros(3, 1, 16, 16), (17, 16))
