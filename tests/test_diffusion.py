import torch

from seedvr_local.diffusion import condition_timestep, lerp_noise, resolution_shift, v_lerp_to_x0
from seedvr_local.models.vae import VideoAutoencoder
from seedvr_local.pipeline import pad_frames


def test_zero_noise_scale_leaves_the_condition_clean():
    assert condition_timestep(0.0, (1, 64, 64), 16) == 0.0


def test_shift_keeps_the_end_points_and_grows_with_resolution():
    assert abs(resolution_shift(1000.0, (1, 90, 160)) - 1000.0) < 1e-9
    small, large = resolution_shift(100.0, (1, 32, 32)), resolution_shift(100.0, (1, 128, 128))
    assert small < large
    # 256x256 pixels is the identity point of the image line.
    assert abs(resolution_shift(100.0, (1, 32, 32)) - 100.0) < 1e-9


def _line(x: float, x1: float, y1: float, x2: float, y2: float) -> float:
    return y1 + (x - x1) * (y2 - y1) / (x2 - x1)


def _sd3_shifted_timestep(noise_scale: float, shape_argument: tuple[int, int, int]) -> float:
    """The official condition timestep, written out here from the spec independently of seedvr_local.diffusion:
    the shape argument (s0, s1, s2) is read as latent (frames, height, width)."""
    frames, height, width = (shape_argument[0] - 1) * 4 + 1, shape_argument[1] * 8, shape_argument[2] * 8
    if frames > 1:
        shift = _line(height * width * frames, 256 * 256 * 37, 1.0, 1280 * 720 * 145, 5.0)
    else:
        shift = _line(height * width, 256 * 256, 1.0, 1024 * 1024, 3.2)
    u = noise_scale
    return 1000 * shift * u / (1 + (shift - 1) * u)


def test_condition_timestep_reads_the_official_shape_argument():
    # The official scripts pass the channels-last latent's (h, w, C) where (t, h, w) is meant: h plays the frames.
    for latent_thw in [(1, 12, 10), (2, 6, 10), (1, 90, 160), (5, 30, 52)]:
        t, h, w = latent_thw
        expected = _sd3_shifted_timestep(0.1, (h, w, 16))
        assert abs(condition_timestep(0.1, latent_thw, 16) - expected) < 1e-9, latent_thw
        assert abs(_sd3_shifted_timestep(0.1, (t, h, w)) - expected) > 1e-3  # the quirk matters for these sizes


def test_v_lerp_round_trip():
    x0, noise = torch.randn(4, 5), torch.randn(4, 5)
    for t in (1000.0, 437.5, 1.0):
        x_t = lerp_noise(x0, noise, t)
        assert torch.allclose(v_lerp_to_x0(x_t, noise - x0, t), x0, atol=1e-5)


def test_frames_are_padded_to_4n_plus_1_by_repeating_the_last():
    with torch.device("meta"):
        vae = VideoAutoencoder()  # SeedVR2's: 4x temporal compression
    video = torch.arange(3 * 9 * 2 * 2, dtype=torch.float32).reshape(3, 9, 2, 2)
    for frames, padded in [(1, 1), (2, 5), (4, 5), (5, 5), (6, 9), (7, 9), (9, 9)]:
        out = pad_frames(video[:, :frames], vae.padded_frames(frames))
        assert out.shape[1] == padded
        assert torch.equal(out[:, :frames], video[:, :frames])
        assert torch.equal(out[:, frames - 1 :], video[:, frames - 1 : frames].expand_as(out[:, frames - 1 :]))
