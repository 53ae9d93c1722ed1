"""The product path against the official reference: `Upscaler.upscale`, through its public API only.

The reference `restore` cases record the official pipeline from an already resized and centre-cropped input
(`video`, a multiple of 16 on both sides) to uint8 frames. The product instead resizes to the requested size,
pads to a multiple of 16 and crops the result. Both agree when the product is asked for a 1x upscale of the
case's `video` itself: the resize is then the identity (checked below), the padding and the crop are empty,
and everything after it (the noise draw, replaced here by the case's noises at the one place the upscaler
draws them; encode, DiT, decode, colour fix, rounding to uint8) is the product's own code. So every image
`restore` case is compared with the uint8 image of its official run, within the case's tolerance (±1).

What the reference cannot check: the product's resize to a different size and its mirror padding (the official
script crops instead; `tests/test_preprocess.py` checks the resize against the `preprocess` cases), and video
cases (the upscaler takes single images).
"""

from __future__ import annotations

import pytest
import torch

from seedvr_local.colorfix import COLOR_FIX_METHODS, apply_color_fix
from seedvr_local.image_io import DecodedImage
from seedvr_local.pipeline import RestoreNoises, to_uint8_frames
from seedvr_local.preprocess import resize_bicubic_antialias
from seedvr_local.upscaler import Upscaler, UpscaleOptions
from tests.parity.restore import build_pipeline, case_color_fix, case_noises
from tests.reference_data import case_params, discover_cases, missing_reference_message

def _is_image_case(case) -> bool:
    """A `restore` case of one frame, read from case.json (loading tensors here would turn a broken case file
    into an error collecting this whole module)."""
    video = case.meta.get("tensors", {}).get("inputs", {}).get("video", {})
    return case.kind == "restore" and video.get("shape", [None, None])[1] == 1


IMAGE_CASES = [c for c in discover_cases() if _is_image_case(c)]
SEED = 1234  # any: the case's noises replace the draw; checked to be what reaches the draw


@pytest.mark.reference
def test_image_restore_cases_found():
    assert IMAGE_CASES, missing_reference_message("image `restore` reference case")


def _as_image(video: torch.Tensor) -> DecodedImage:
    """The case's model input `[3, 1, H, W]` in [-1, 1] as the float RGB image in [0, 1] it was made from."""
    rgb = (video[:, 0] + 1) / 2
    return DecodedImage(rgb=rgb, alpha=None, width=rgb.shape[-1], height=rgb.shape[-2], format=None)


def _upscale_with_case_noises(monkeypatch, upscaler, case, noises: RestoreNoises, **options) -> torch.Tensor:
    """`Upscaler.upscale` of the case's input at 1x, with `noises` injected where the upscaler draws them.
    Returns the pixels `[H, W, 3]` uint8, the reference's layout."""
    draws = []

    def draw(cls, latent_shape, seed):
        draws.append((tuple(latent_shape), seed))
        return noises

    monkeypatch.setattr(RestoreNoises, "draw", classmethod(draw))
    video = case.inputs["video"]
    result = upscaler.upscale(_as_image(video), UpscaleOptions(upscale_factor=1.0, seed=SEED, **options))
    assert draws == [(tuple(noises.noise.shape), SEED)], "the upscaler must draw the noises once, with the seed"
    return result.pixels.permute(1, 2, 0)


@pytest.fixture(scope="module", params=case_params(IMAGE_CASES, "image `restore` reference case"))
def case_upscaler(request):
    case = request.param
    return case, Upscaler(build_pipeline(case))


@pytest.mark.reference
def test_the_1x_resize_is_the_identity():
    """What makes the 1x upscale of `video` the official run: the product's resize leaves it untouched."""
    assert IMAGE_CASES, missing_reference_message("image `restore` reference case")
    for case in IMAGE_CASES:
        rgb = _as_image(case.inputs["video"]).rgb
        assert torch.equal(resize_bicubic_antialias(rgb[None], tuple(rgb.shape[-2:]))[0], rgb), case.name


def _reference_outputs(case) -> dict[str, str]:
    """Expected uint8 image -> the colour fix that made it."""
    return {"image_uint8": case_color_fix(case), "image_uint8_no_colorfix": "none"}


@pytest.mark.reference
@pytest.mark.parametrize("output", ["image_uint8", "image_uint8_no_colorfix"])
def test_upscale_matches_the_official_uint8_image(monkeypatch, case_upscaler, output):
    case, upscaler = case_upscaler
    color_fix = _reference_outputs(case)[output]
    assert color_fix in COLOR_FIX_METHODS, f"case {case.name}: colour fix {color_fix!r} is not an upscaler option"
    pixels = _upscale_with_case_noises(
        monkeypatch, upscaler, case, case_noises(case), noise_scale=case.params["cond_noise_scale"], color_fix=color_fix
    )
    expected = case.expected[output]
    assert pixels.shape == expected.shape
    ok, err = case.tolerance(output).check(pixels, expected)
    assert ok, f"case {case.name}/{output}: a pixel is {err:.0f} levels off (tolerance {case.tolerance(output).atol})"


@pytest.mark.reference
@pytest.mark.parametrize("color_fix", [m for m in COLOR_FIX_METHODS if m not in ("wavelet", "none")])
def test_upscale_applies_the_other_colour_fixes_to_the_official_decode(monkeypatch, case_upscaler, color_fix):
    """The reference has restore outputs only without a colour fix and with the wavelet one. For the others the
    expected image is composed from reference data: the case's official `decoded` video, recoloured after its
    input by `apply_color_fix` (itself checked against the `colorfix` cases), rounded like the official script.
    This checks that the upscaler applies the method asked for, to the decoded image with the input as style."""
    case, upscaler = case_upscaler
    content, style = case.expected["decoded"], case.inputs["video"]
    expected = to_uint8_frames(apply_color_fix(color_fix, content.transpose(0, 1), style.transpose(0, 1)).transpose(0, 1))[0]
    pixels = _upscale_with_case_noises(
        monkeypatch, upscaler, case, case_noises(case), noise_scale=case.params["cond_noise_scale"], color_fix=color_fix
    )
    err = (pixels.int() - expected.int()).abs().max().item()
    assert err <= 1, f"case {case.name}: {color_fix} image is {err} levels off the recoloured official decode"


@pytest.mark.reference
def test_upscale_noise_scale_is_the_condition_noise_of_the_core(monkeypatch, case_upscaler):
    """Each case at its own condition noise is compared with its official image above, whatever that noise is.
    Here the upscaler runs at another noise scale (0.1, or 0 for a case recorded at 0.1), which the official run
    did not record: it is compared with the restoration core run at that scale on the same input and noises (the
    core at 0.1 is itself checked against the reference by the video case at 0.1), and must differ from the
    official image at the case's own scale."""
    case, upscaler = case_upscaler
    noise_scale = 0.0 if case.params["cond_noise_scale"] == 0.1 else 0.1
    color_fix, noises = case_color_fix(case), case_noises(case)
    core = upscaler.pipeline.restore(case.inputs["video"], noises, cond_noise_scale=noise_scale, color_fix=color_fix)
    expected = to_uint8_frames(core.colorfixed)[0]
    pixels = _upscale_with_case_noises(monkeypatch, upscaler, case, noises, noise_scale=noise_scale, color_fix=color_fix)
    assert (pixels.int() - expected.int()).abs().max().item() <= 1
    official = case.expected["image_uint8"]  # at the case's own noise scale, with the same colour fix
    assert (pixels.int() - official.int()).abs().max().item() > 1, "the noise scale must change the image"


# ------------------------------------------------------------------- every option changes the real engine


def _upscale(upscaler, image, **options) -> torch.Tensor:
    return upscaler.upscale(image, UpscaleOptions(upscale_factor=2.0, **options)).pixels


@pytest.fixture(scope="module")
def small_image(tiny_bundle):
    from PIL import Image

    torch.manual_seed(0)
    return Image.fromarray((torch.rand(24, 40, 3) * 255).to(torch.uint8).numpy())


def _changed_pixels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of the values that differ by more than the ±1 of float noise."""
    return float(((a.int() - b.int()).abs() > 1).float().mean())


def test_the_same_seed_gives_the_same_image_and_another_seed_another(tiny_upscaler, small_image):
    first = _upscale(tiny_upscaler, small_image, seed=1)
    assert torch.equal(first, _upscale(tiny_upscaler, small_image, seed=1))
    assert _changed_pixels(first, _upscale(tiny_upscaler, small_image, seed=2)) > 0.1


def test_noise_scale_changes_the_image(tiny_upscaler, small_image):
    at = {scale: _upscale(tiny_upscaler, small_image, seed=1, noise_scale=scale) for scale in (0.0, 0.1)}
    assert _changed_pixels(at[0.0], at[0.1]) > 0.1


def test_each_colour_fix_gives_another_image(tiny_upscaler, small_image):
    images = {method: _upscale(tiny_upscaler, small_image, seed=1, color_fix=method) for method in COLOR_FIX_METHODS}
    for i, a in enumerate(COLOR_FIX_METHODS):
        for b in COLOR_FIX_METHODS[i + 1 :]:
            assert _changed_pixels(images[a], images[b]) > 0.05, f"color_fix {a} and {b} give the same image"
