"""`seedvr-local upscale` writes the pixels the library makes with the same options: each option that changes the
image (colour fix, noise scale, dtype, VAE tiles) changes the CLI's file exactly as it changes `Upscaler`'s."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from seedvr_local.cli import main
from seedvr_local.image_io import decode_image
from seedvr_local.options import UpscaleOptions
from seedvr_local.upscaler import Upscaler

SEED = 4

# (CLI flags, the library's options and dtype for the same run, whether the pixels differ from the defaults')
CASES = {
    "defaults": ([], {}, None, False),
    "color-fix-none": (["--color-fix", "none"], {"color_fix": "none"}, None, True),
    "color-fix-adain": (["--color-fix", "adain"], {"color_fix": "adain"}, None, True),
    "noise-scale": (["--noise-scale", "0.6"], {"noise_scale": 0.6}, None, True),
    "dtype-bf16": (["--dtype", "bf16"], {}, "bf16", True),
    "vae-tile": (["--vae-tile", "32"], {"vae_tile": 32}, None, False),  # tiles change the pixels by < 1e-4
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-pixels") / "in.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(path)
    return path


@functools.cache
def _bf16_upscaler(bundle) -> Upscaler:
    return Upscaler.from_weights_dir(bundle, device="cpu", dtype="bf16")


def _library_pixels(upscaler: Upscaler, source, **options) -> np.ndarray:
    image = decode_image(source.read_bytes())
    result = upscaler.upscale(image, UpscaleOptions(upscale_factor=2, seed=SEED, **options))
    return np.asarray(Image.open(io.BytesIO(result.encode("png"))))


@pytest.mark.parametrize("case", CASES)
def test_cli_output_is_the_librarys_for_the_same_options(case, source, tiny_bundle, tiny_upscaler, tmp_path):
    flags, options, dtype, changes_pixels = CASES[case]
    target = tmp_path / "out.png"
    argv = ["upscale", str(source), "-o", str(target), "--weights-dir", str(tiny_bundle), "--device", "cpu",
            "--upscale-factor", "2", "--seed", str(SEED), *flags]  # fmt: skip
    assert main(argv) == 0
    with Image.open(target) as out:
        written = np.asarray(out)

    library = _bf16_upscaler(tiny_bundle) if dtype == "bf16" else tiny_upscaler
    expected = _library_pixels(library, source, **options)
    assert written.shape == expected.shape == (48, 80, 3)
    assert np.array_equal(written, expected)
    if changes_pixels:  # else the comparison could not tell the option was ignored
        assert not np.array_equal(expected, _library_pixels(tiny_upscaler, source))
