"""Clip layout and cross-fade weights: every frame covered, clips of 4n+1, weights summing to one."""

from __future__ import annotations

import pytest
import torch

from seedvr_local.video.schedule import clip_schedule, clip_weight, default_overlap


@pytest.mark.parametrize("total", [1, 4, 21, 22, 37, 38, 40, 100, 401])
@pytest.mark.parametrize("clip_frames, overlap", [(21, 4), (9, 2), (5, 0), (33, 16), (5, 4)])
def test_clips_cover_every_frame_and_weights_sum_to_one(total, clip_frames, overlap):
    clips = clip_schedule(total, clip_frames, overlap)
    assert clips[0].start == 0 and clips[-1].stop == total
    assert all(clip.frames == min(total, clip_frames) for clip in clips)
    assert all(b.start > a.start and b.start <= a.stop for a, b in zip(clips, clips[1:]))
    assert all(b.start - a.start == clip_frames - overlap for a, b in zip(clips, clips[1:-1]))
    summed = torch.zeros(total, dtype=torch.float64)
    for k, clip in enumerate(clips):
        weight = clip_weight(clips, k)
        assert (weight > 0).all() and (weight <= 1).all()
        summed[clip.start : clip.stop] += weight
    torch.testing.assert_close(summed, torch.ones(total, dtype=torch.float64), rtol=0, atol=1e-12)


def test_a_video_within_one_clip_is_one_clip_with_weight_exactly_one():
    clips = clip_schedule(17, 21, 4)
    assert [(c.start, c.stop) for c in clips] == [(0, 17)]
    assert torch.equal(clip_weight(clips, 0), torch.ones(17, dtype=torch.float64))


def test_overlap_cross_fades_with_a_rising_raised_cosine():
    clips = clip_schedule(38, 21, 4)
    assert [(c.start, c.stop) for c in clips] == [(0, 21), (17, 38)]
    second = clip_weight(clips, 1)
    ramp = second[:4]
    assert (ramp[1:] > ramp[:-1]).all() and 0 < ramp[0] < 0.1 and 0.9 < ramp[-1] < 1
    assert torch.equal(second[4:], torch.ones(17, dtype=torch.float64))


def test_the_last_clip_is_moved_back_to_keep_its_full_length():
    clips = clip_schedule(40, 21, 4)
    assert [(c.start, c.stop) for c in clips] == [(0, 21), (17, 38), (19, 40)]


@pytest.mark.parametrize("clip_frames", [0, 2, 4, 20, -3])
def test_clip_lengths_must_be_4n_plus_1(clip_frames):
    with pytest.raises(ValueError, match="4n\\+1"):
        clip_schedule(10, clip_frames, 0)


def test_overlap_must_leave_the_clips_advancing():
    with pytest.raises(ValueError, match="overlap"):
        clip_schedule(30, 9, 9)
    assert default_overlap(21) == 4 and default_overlap(5) == 2 and default_overlap(1) == 0
