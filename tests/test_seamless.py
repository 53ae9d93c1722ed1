"""The seamless (tileable) restore with the tiny model: it is periodic where the model allows it exactly, the
plain restore is not, and exact VAE tiling keeps working on a torus.

Random weights make the pictures noise, so "no seam" is checked against the model itself: restoring the texture
rolled by half a period puts the wrap-around boundary in the middle of the frame, where the model sees ordinary
interior neighbours. A seamless restore must give the same pixels there as it gave across its wrap-around edge.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local.models.nadit import DiTConfig, NaDiT
from seedvr_local.models.windows import window_boxes
from seedvr_local.pipeline import RestorationPipeline, RestoreNoises
from seedvr_local.preprocess import resize_bicubic_antialias, resize_periodic, wrap_pad
from seedvr_local.upscaler import Upscaler, UpscaleOptions
from seedvr_local.weights.tiny import build_tiny_models, tiny_dit_config
from tests.precision import UPSCALE_LIMITS, assert_within

F32 = UPSCALE_LIMITS[torch.float32]
#: Window counts per axis of the test DiT (the official (4, 3, 3) scaled up): windows of 3 tokens, 48 pixels,
#: so that a 96-pixel texture holds two per axis and a half-period shift lies on the window grid.
SMALL_WINDOWS = (4, 24, 24)


@pytest.fixture(scope="module")
def models():
    return build_tiny_models()


@pytest.fixture(scope="module")
def pipeline(models) -> RestorationPipeline:
    """The tiny model with smaller attention windows (the weights do not depend on the window count)."""
    config = tiny_dit_config().to_dict()
    config["window"] = [list(SMALL_WINDOWS)] * config["num_layers"]
    dit = NaDiT.from_config(DiTConfig.from_dict(config))
    dit.load_state_dict(models.dit.state_dict())
    return RestorationPipeline(dit.eval().requires_grad_(False), models.vae, models.pos_emb)


def texture(height: int, width: int) -> torch.Tensor:
    """A tileable colour pattern `[3, 1, H, W]` in [-1, 1]: sums of sines with whole periods across the frame."""
    y = torch.arange(height)[:, None] / height * 2 * math.pi
    x = torch.arange(width)[None, :] / width * 2 * math.pi
    channels = [0.6 * torch.sin(3 * x + 2 * y), 0.5 * torch.cos(2 * x - y), 0.4 * torch.sin(4 * x) * torch.cos(3 * y)]
    return torch.stack([c.expand(height, width) for c in channels])[:, None]


def rolled(noises: RestoreNoises, shift: tuple[int, int]) -> RestoreNoises:
    return RestoreNoises(*(torch.roll(n, shift, (-2, -1)) for n in (noises.posterior_eps, noises.noise, noises.aug_noise)))


def restore_pair(pipeline: RestorationPipeline, periodic: bool, size: int = 96):
    """(restore of the texture, restore of the texture rolled by half a period with its noise): the second is the
    first rolled when the restore treats the wrap-around boundary as it treats the middle of the frame."""
    video = texture(size, size)
    noises = RestoreNoises.draw(pipeline.latent_shape(1, size, size), seed=5)
    half = size // 2
    latent_half = half // pipeline.vae.spatial_factor
    first = pipeline.restore(video, noises, cond_noise_scale=0.1, periodic=periodic).colorfixed[:, 0]
    second = pipeline.restore(
        torch.roll(video, (half, half), (-2, -1)), rolled(noises, (latent_half, latent_half)),
        cond_noise_scale=0.1, periodic=periodic,
    ).colorfixed[:, 0]  # fmt: skip
    return first, second


def test_seamless_restore_is_periodic_and_has_no_seam(pipeline):
    """Rolling the texture by half a period (one attention window) rolls the seamless result by as much: the pixels
    on both sides of its wrap-around edge are what the model makes of interior neighbours, so its 2x2 tiling has no
    seam. The plain restore pads instead and fails the same check, worst along the seam."""
    first, second = restore_pair(pipeline, periodic=True)
    half = first.shape[-1] // 2
    assert_within(second, torch.roll(first, (half, half), (-2, -1)), F32, "seamless restore of a rolled texture")
    # The user's statistic: across the seam of the 2x2 tiling (last column next to the first) the mean absolute
    # difference is that of the same pixels as interior neighbours (random weights make noise, so neighbours
    # elsewhere in the frame are no reference for it: docs/seamless.md).
    across_seam = (first[..., -1] - first[..., 0]).abs().mean()
    as_interior = (second[..., half - 1] - second[..., half]).abs().mean()
    assert abs(across_seam / as_interior - 1) < 0.01

    plain_first, plain_second = restore_pair(pipeline, periodic=False)
    plain_ratio = (plain_first[..., -1] - plain_first[..., 0]).abs().mean() / (
        plain_second[..., half - 1] - plain_second[..., half]
    ).abs().mean()
    assert abs(plain_ratio - 1) > 0.05, "the plain restore's seam differs from its interior (0.88 measured)"
    difference = (plain_second - torch.roll(plain_first, (half, half), (-2, -1))).abs()
    seam = torch.cat([difference[..., half - 4 : half + 4, :].flatten(), difference[..., half - 4 : half + 4].flatten()])
    assert seam.mean() > 0.05, "the plain restore should show its padded edges along the seam"


def test_plain_restore_is_unchanged_by_the_periodic_option_default(pipeline):
    video = texture(32, 48)
    noises = RestoreNoises.draw(pipeline.latent_shape(1, 32, 48), seed=1)
    default = pipeline.restore(video, noises).colorfixed
    explicit = pipeline.restore(video, noises, periodic=False).colorfixed
    assert torch.equal(default, explicit)
    wrapped = pipeline.restore(video, noises, periodic=True).colorfixed
    assert (wrapped - default).abs().max() > 0.01


@pytest.mark.parametrize("phase", ["encode", "decode"])
def test_vae_on_a_torus_is_shift_equivariant_and_tiles_exactly(models, phase):
    """Every padding of the VAE wraps: a shift by whole latent pixels commutes with it (exactly, up to float
    rounding), and the exact tiling takes its halos across the wrap-around (several tiles, every store scale)."""
    from seedvr_local.models.vae_tiling import VAETiling

    vae = models.vae
    torch.manual_seed(0)
    if phase == "encode":
        x, shift, scale = torch.rand(1, 3, 1, 32, 48) * 2 - 1, (16, 24), 1 / 8
        run = lambda t, **kw: vae.encode(t, **kw)[0]  # noqa: E731
    else:
        x, shift, scale = torch.randn(1, 16, 1, 4, 6), (2, 3), 8
        run = vae.decode
    whole = run(x, periodic=True)
    moved = run(torch.roll(x, shift, (-2, -1)), periodic=True)
    out_shift = tuple(int(s * scale) for s in shift)
    assert_within(moved, torch.roll(whole, out_shift, (-2, -1)), F32, f"periodic {phase} of a shifted input")
    for store_scale in (1, 4):
        tiled = run(x, tiling=VAETiling(16, store_scale), periodic=True)
        assert_within(tiled, whole, F32, f"tiled periodic {phase}, store scale {store_scale}")
    assert (run(x) - whole).abs().max() > 1e-2, "the plain VAE should differ near the edges"


def test_periodic_windows_cover_the_torus_and_straddle_every_boundary():
    for grid in [(1, 40, 40), (1, 64, 23), (1, 7, 90), (1, 5, 5)]:
        regular = window_boxes(grid, (4, 3, 3), "720pwin_by_size_bysize", periodic=True)
        shifted = window_boxes(grid, (4, 3, 3), "720pswin_by_size_bysize", periodic=True)
        _, h, w = grid
        for boxes in (regular, shifted):
            covered = torch.zeros(h, w, dtype=torch.int64)
            for _, (h0, h1), (w0, w1) in boxes:
                rows, cols = torch.arange(h0, h1) % h, torch.arange(w0, w1) % w
                covered[rows[:, None], cols[None, :]] += 1
            assert torch.equal(covered, torch.ones_like(covered)), f"{grid}: every token in exactly one window"
        for axis in (1, 2):
            starts = {box[axis][0] % grid[axis] for box in regular}  # regular boundaries, 0 (the wrap) included
            for box in shifted:
                inside = {(box[axis][0] + k) % grid[axis] for k in range(1, box[axis][1] - box[axis][0])}
                starts -= inside
            assert not starts or grid[axis] == 1, f"{grid}: a regular boundary no shifted window straddles"
    # A grid that holds whole official windows keeps them (40 tokens, windows of 20).
    assert [b[1] for b in window_boxes((1, 40, 40), (4, 3, 3), "720pwin_by_size_bysize", periodic=True)][:2] == [
        (0, 20), (20, 40),
    ]  # fmt: skip


@pytest.mark.parametrize("size, out", [((37, 50), (74, 100)), ((37, 50), (60, 81)), ((40, 56), (20, 33))])
def test_periodic_resize_is_the_resize_of_the_endless_texture(size, out):
    """Oracle: the plain resize of a 5x5 mosaic of the texture, whose middle tile no border reaches."""
    torch.manual_seed(2)
    x = torch.rand(3, *size)
    got = resize_periodic(x, out)
    mosaic = wrap_pad(x, 2 * size[0], 2 * size[1])
    expected = resize_bicubic_antialias(mosaic, (5 * out[0], 5 * out[1]))[..., 2 * out[0] : 3 * out[0], 2 * out[1] : 3 * out[1]]
    assert (got - expected).abs().max() < 1e-4
    assert (resize_bicubic_antialias(x, out) - expected).abs().max() > 1e-2  # the plain resize is not periodic


def _tileable_image(width: int, height: int) -> Image.Image:
    pixels = ((texture(height, width)[:, 0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler.tiny(device="cpu")


def test_upscaler_seamless_size_tiling_and_alpha(upscaler):
    """Any output size (the model runs at the next multiple of 16 and is resized back, wrapping around); exact VAE
    tiling gives the untiled result; an alpha channel is resized as a tileable image too."""
    source = _tileable_image(30, 21)
    options = UpscaleOptions(upscale_factor=1.5, seed=3, seamless=True)
    result = upscaler.upscale(source, options)
    assert result.image.size == (45, 32)  # run at 48x32
    tiled = upscaler.upscale(source, UpscaleOptions(upscale_factor=1.5, seed=3, seamless=True, vae_tile=24))
    assert tiled.plan.vae_tiling is not None and tiled.plan.periodic
    assert_within(tiled.rgb, result.rgb, F32, "seamless upscale with --vae-tile 32")

    alpha = np.tile(np.linspace(0, 255, 30).astype(np.uint8), (21, 1))  # a ramp: its wrap-around is a hard edge
    rgba = source.copy()
    rgba.putalpha(Image.fromarray(alpha))
    out_alpha = upscaler.upscale(rgba, options).alpha[0]
    expected = resize_periodic(torch.from_numpy(alpha).float()[None] / 255, (32, 45))[0].clamp(0, 1)
    assert (out_alpha - expected).abs().max() < 1e-6


def test_memory_model_counts_the_wrapped_copies():
    """On a torus each padding conv copies its input with the wrapped border: the SeedVR2 VAE's predicted peaks
    grow where a conv is the peak (in float32; in bfloat16 the norms' float32 temporaries stay the peak)."""
    from seedvr_local.memory_cost import VAEMemoryModel
    from seedvr_local.models.vae import VAEConfig, VideoAutoencoder
    from seedvr_local.models.vae_tiling import VAETiling

    with torch.device("meta"):
        vae = VideoAutoencoder.from_vae_config(VAEConfig.seedvr2())
    model = VAEMemoryModel(vae, "cpu")
    for phase in ("encode", "decode"):
        for tiling in (None, VAETiling(512)):
            for itemsize in (2, 4):
                plain = model.bytes(phase, 1, 1024, 1024, tiling, itemsize)
                wrapped = model.bytes(phase, 1, 1024, 1024, tiling, itemsize, periodic=True)
                assert wrapped > plain if itemsize == 4 else wrapped >= plain, (phase, tiling, itemsize)
