"""What a multi-clip video holds, against oracles the test computes itself: the cross-fade of overlapping clips
(raised-cosine weights written out here, frame by frame) and the seed of each clip (`seed + k * 2**32`, clip 0 the
image of the same seed), with every clip's frames compared to the clip or image restored alone."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from seedvr_local.image_io import DecodedImage
from seedvr_local.options import UpscaleOptions
from seedvr_local.pipeline import RestoreNoises, to_uint8_frames
from seedvr_local.preprocess import pad_to_multiple, resize_bicubic_antialias
from seedvr_local.video import VideoOptions, VideoRestorer
from seedvr_local.video.samples import make_video
from seedvr_local.video.source import decode_frames
from tests.video_helpers import tiny_pipeline

#: What each clip adds to its frames in the offset pipeline below ([-1, 1] units): neighbours differ by 0.3 or more,
#: so weights that are off by a tenth move a blended frame by several levels of 255.
CLIP_OFFSETS = (0.0, 0.4, -0.3, 0.25)


class OffsetPipeline:
    """Restores clip k (in the order they come) as its own frames plus `CLIP_OFFSETS[k]`: every blended frame is
    then the source plus the weighted sum of its clips' offsets, a value the test knows exactly. Records the noises
    each clip was given."""

    device = torch.device("cpu")
    size_multiple = 16

    def __init__(self):
        self.noises: list[RestoreNoises] = []

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (2, (frames - 1) // 4 + 1, 2, 2)

    def restore(self, video, noises, cond_noise_scale, color_fix, on_phase, crop, vae_tiling, **placement):
        offset = CLIP_OFFSETS[len(self.noises)]
        self.noises.append(noises)
        height, width = crop
        return SimpleNamespace(colorfixed=video[..., :height, :width] + offset)


def _rising(shared: int) -> list[float]:
    """The weight of the later of two clips over the `shared` frames they have in common: sin² of a quarter turn,
    sampled at frame centres (the earlier clip gets the rest)."""
    return [math.sin(math.pi / 2 * (i + 0.5) / shared) ** 2 for i in range(shared)]


def _source_frames(path, width: int, height: int) -> torch.Tensor:
    """[T, 3, H, W] in [-1, 1]: the decoded frames resized to the output size, as every clip receives them."""
    pixels = torch.from_numpy(np.stack([f.pixels for f in decode_frames(path, alpha=False)]))
    rgb = resize_bicubic_antialias(pixels.permute(0, 3, 1, 2).float() / 255, (height, width)).clamp(0, 1)
    return (rgb * 2 - 1).double()


def test_overlapping_clips_are_cross_faded_with_raised_cosine_weights_frame_by_frame(tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 16, frames=13, audio=None)
    pipeline = OffsetPipeline()
    restorer = VideoRestorer(pipeline)
    job = restorer.prepare(source, VideoOptions(upscale_factor=1, seed=11, clip_frames=5, overlap_frames=2))
    # 5-frame clips 3 frames apart, the last one moved back to end on the last frame
    assert [(c.start, c.stop) for c in job.clips] == [(0, 5), (3, 8), (6, 11), (8, 13)]
    frames = np.stack([frame.pixels for frame in restorer.frames(job)])

    # each frame's weights: 1 where one clip holds it, a rising/falling pair over each shared run
    weights = np.zeros((13, len(CLIP_OFFSETS)))
    weights[0:3, 0] = weights[5:6, 1] = weights[11:13, 3] = 1
    for earlier, later, start, stop in ((0, 1, 3, 5), (1, 2, 6, 8), (2, 3, 8, 11)):
        rising = np.array(_rising(stop - start))
        weights[start:stop, later] = rising
        weights[start:stop, earlier] = 1 - rising
    offsets = torch.from_numpy(weights @ np.array(CLIP_OFFSETS))  # [T]
    expected = _source_frames(source, 32, 16) + offsets[:, None, None, None]
    expected = to_uint8_frames(expected.transpose(0, 1)).numpy()
    assert frames.shape == expected.shape == (13, 16, 32, 3)
    # the product adds float32 contributions, the oracle float64: a sum on a rounding boundary may differ by one
    difference = np.abs(frames.astype(int) - expected.astype(int))
    assert difference.max() <= 1, [int(d.max()) for d in difference]
    assert (difference == 0).mean() > 0.99


def test_clip_k_draws_the_noises_of_seed_plus_k_times_2_to_the_32(tmp_path):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=13, audio=None)
    pipeline = OffsetPipeline()
    restorer = VideoRestorer(pipeline)
    job = restorer.prepare(source, VideoOptions(upscale_factor=1, seed=2**31 - 1, clip_frames=5, overlap_frames=2))
    for _ in restorer.frames(job):
        pass
    assert len(pipeline.noises) == 4
    for k, noises in enumerate(pipeline.noises):
        generator = torch.Generator("cpu").manual_seed(2**31 - 1 + k * 2**32)
        for drawn in (noises.posterior_eps, noises.noise, noises.aug_noise):  # drawn in this order
            assert torch.equal(drawn, torch.randn(drawn.shape, generator=generator)), k


@pytest.fixture(scope="module")
def tiny_restorer(tiny_bundle):
    return VideoRestorer(tiny_pipeline(tiny_bundle))


def test_each_clip_is_the_clip_restored_alone_with_its_own_seed(tiny_restorer, tmp_path):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=15, audio=None)
    options = VideoOptions(upscale_factor=1, seed=9, clip_frames=5, overlap_frames=0, noise_scale=0.3)
    job = tiny_restorer.prepare(source, options)
    assert [(c.start, c.stop) for c in job.clips] == [(0, 5), (5, 10), (10, 15)]  # nothing shared: no blend
    frames = np.stack([frame.pixels for frame in tiny_restorer.frames(job)])

    pipeline = tiny_restorer.pipeline
    video = _source_frames(source, 16, 16).float().transpose(0, 1)  # [3, T, H, W]
    for k in range(3):
        clip, _ = pad_to_multiple(video[:, 5 * k : 5 * k + 5], 16)
        noises = RestoreNoises.draw(pipeline.latent_shape(5, 16, 16), 9 + k * 2**32)
        alone = pipeline.restore(clip, noises, cond_noise_scale=0.3, crop=(16, 16)).colorfixed
        assert np.array_equal(frames[5 * k : 5 * k + 5], to_uint8_frames(alone).numpy()), f"clip {k}"


def test_a_one_frame_video_is_the_image_of_the_same_seed(tiny_restorer, tiny_upscaler, tmp_path):
    source = make_video(tmp_path / "in.mp4", 24, 16, frames=1, audio=None)
    options = dict(upscale_factor=2, seed=1234, noise_scale=0.2)
    [frame] = tiny_restorer.frames(tiny_restorer.prepare(source, VideoOptions(**options)))
    [decoded] = decode_frames(source, alpha=False)
    rgb = torch.from_numpy(decoded.pixels).permute(2, 0, 1).float() / 255
    image = tiny_upscaler.upscale(DecodedImage(rgb, None, 24, 16, None), UpscaleOptions(**options))
    assert image.seed == 1234
    assert np.array_equal(frame.pixels, image.pixels.permute(1, 2, 0).numpy())
