"""The streaming restorer end to end with the tiny model at small sizes (each clip takes about a second)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from seedvr_local.pipeline import RestoreNoises, to_uint8_frames
from seedvr_local.preprocess import pad_to_multiple, resize_bicubic_antialias
from seedvr_local.video import VideoLimits, VideoOptions, VideoRestorer, VideoTooLargeError, output_format
from seedvr_local.video.samples import make_video
from seedvr_local.video.source import decode_frames
from seedvr_local.video.writer import VideoWriter
from tests.video_helpers import read_video, tiny_pipeline


@pytest.fixture(scope="module")
def restorer(tiny_bundle):
    return VideoRestorer(tiny_pipeline(tiny_bundle))


def test_a_video_in_one_clip_is_exactly_the_pipelines_whole_clip_restore(restorer, tmp_path):
    source = make_video(tmp_path / "in.webm", 17, 13, frames=6, audio=None)
    options = VideoOptions(upscale_factor=1.5, seed=5, clip_frames=9)
    job = restorer.prepare(source, options)
    assert len(job.clips) == 1 and (job.width, job.height) == (26, 20)
    frames = [frame.pixels for frame in restorer.frames(job)]

    pixels = np.stack([f.pixels for f in decode_frames(source, alpha=False)])
    rgb = resize_bicubic_antialias(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, (20, 26)).clamp(0, 1)
    padded, _ = pad_to_multiple((rgb * 2 - 1).transpose(0, 1), 16)
    pipeline = restorer.pipeline
    noises = RestoreNoises.draw(pipeline.latent_shape(6, *padded.shape[-2:]), 5)
    expected = pipeline.restore(padded, noises, cond_noise_scale=0.1, crop=(20, 26)).colorfixed
    assert np.array_equal(np.stack(frames), to_uint8_frames(expected).numpy())


def test_overlapping_clips_keep_rate_size_rotation_audio_and_report_progress(restorer, tmp_path):
    source = make_video(tmp_path / "in.mov", 17, 13, frames=11, fps=10, audio="aac", rotation=90)
    reports = []
    options = VideoOptions(upscale_factor=1, seed=3, clip_frames=5, overlap_frames=2, output_format="X264 (.mp4)")
    result = restorer.restore(source, tmp_path / "out.mp4", options, progress=lambda *r: reports.append(r))
    out = read_video(result.path)
    assert (out["codec"], out["width"], out["height"]) == ("h264", 18, 14)  # 17x13 padded to even, never cropped
    assert (result.width, result.height, result.frames, result.seed) == (18, 14, 11, 3)
    assert out["frames"] == 11 and out["average_rate"] == 10 and out["rotation"] == 90
    assert out["times"] == pytest.approx([i / 10 for i in range(11)], abs=1e-3)
    assert out["audio"] == "aac" and out["audio_seconds"] == pytest.approx(1.1, abs=0.1)
    assert [r[:2] for r in reports] == [(i, 11) for i in range(1, 12)] and all(r[2] > 0 for r in reports)
    assert result.content_type == "video/mp4"
    assert all(result.timings[p] > 0 for p in ("decode", "encode", "dit", "vae_decode", "encode_video"))


def test_variable_frame_rate_timestamps_are_kept(restorer, tmp_path):
    times = [0.0, 0.05, 0.2, 0.25, 0.5]
    source = make_video(tmp_path / "vfr.mp4", 16, 16, frame_times=times, audio=None)
    result = restorer.restore(source, tmp_path / "out.webm", VideoOptions(upscale_factor=1, seed=0, output_format="webm"))
    assert read_video(result.path)["times"] == pytest.approx(times, abs=1e-3)


def test_same_seed_gives_identical_frames_and_files(restorer, tmp_path):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=7, audio=None)
    run = lambda seed: [f for f in restorer.frames(restorer.prepare(source, VideoOptions(upscale_factor=1, seed=seed, clip_frames=5, overlap_frames=2)))]  # noqa: E731
    first, again, other = run(7), run(7), run(8)
    assert len(first) == 7 and all(np.array_equal(a.pixels, b.pixels) for a, b in zip(first, again))
    assert not np.array_equal(first[-1].pixels, other[-1].pixels)  # the second clip's noise follows the seed too
    fmt = output_format("mp4")
    files = []
    for run_frames, name in ((first, "a.mp4"), (again, "b.mp4")):
        with VideoWriter(tmp_path / name, fmt, fmt.encoder_settings("high", "fast"), (16, 16), Fraction(1, 12), Fraction(12)) as writer:
            for frame in run_frames:
                writer.write(frame.pixels, frame.pts)
        files.append([f.pixels for f in decode_frames(tmp_path / name, alpha=False)])
    # what a player shows, frame by frame (x264 does not promise byte-identical streams from identical frames)
    assert len(files[0]) == len(files[1]) == 7
    assert all(np.array_equal(a, b) for a, b in zip(*files))


def test_prores_keeps_the_sources_alpha(restorer, tmp_path):
    source = make_video(tmp_path / "in.mov", 16, 16, frames=5, audio=None, alpha=True)
    result = restorer.restore(source, tmp_path / "out.mov", VideoOptions(upscale_factor=2, seed=0, output_format="mov"))
    frame = next(decode_frames(result.path, alpha=True)).pixels
    assert frame.shape == (32, 32, 4)
    assert frame[:, :12, 3].max() <= 8 and frame[:, 20:, 3].min() >= 247  # left half transparent in the source


def test_limits_are_checked_before_any_work(restorer, tmp_path):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=7, audio=None)
    with pytest.raises(VideoTooLargeError, match="has 7 frames; the most allowed is 5"):
        restorer.prepare(source, VideoOptions(), VideoLimits(max_frames=5))
    limit = VideoLimits(max_output_pixel_frames=32 * 32 * 6)
    with pytest.raises(VideoTooLargeError, match="32x32 x 7 frames .*at this size at most 6 frames"):
        restorer.prepare(source, VideoOptions(upscale_factor=2), limit)
    with pytest.raises(ValueError, match="clip_frames must be 4n\\+1"):
        restorer.prepare(source, VideoOptions(clip_frames=8))
    with pytest.raises(ValueError, match="output_format must be one of"):
        restorer.prepare(source, VideoOptions(output_format="avi"))


def test_a_cancelled_job_leaves_no_output(restorer, tmp_path):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=5, audio=None)

    def cancel(done, total, fps):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restorer.restore(source, tmp_path / "out.mp4", VideoOptions(upscale_factor=1, seed=0), progress=cancel)
    assert not (tmp_path / "out.mp4").exists()
