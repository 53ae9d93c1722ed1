"""Which frames each clip restores, and the cross-fade weights that join overlapping clips.

SeedVR2 restores clips of 4n+1 frames (the causal VAE turns 4n+1 frames into n+1 latent frames). A video
longer than one clip is cut into clips that start `clip_frames - overlap` frames apart; the last clip is
moved back to end on the last frame, so every clip has the full temporal context (it overlaps its
neighbour by more than `overlap` frames then). Frames seen by several clips are cross-faded: each clip's
weight rises along a raised-cosine (Hann) ramp over the frames it shares with the previous clip and falls
over those it shares with the next, and the weights of a frame are divided by their sum, so they always add
up to one (two complementary ramps already do; the division also covers a short tail where three clips meet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seedvr_local.video.limits import check_clip_frames  # torch-free there, for the server's flags

#: Frames shared by consecutive clips when the caller does not choose (vLLM-Omni cross-fades 4 frames).
DEFAULT_OVERLAP = 4


@dataclass(frozen=True)
class Clip:
    index: int
    start: int  # first frame
    stop: int  # one past the last frame

    @property
    def frames(self) -> int:
        return self.stop - self.start


def check_overlap(overlap: int, clip_frames: int) -> None:
    if not 0 <= overlap < clip_frames:
        raise ValueError(
            f"overlap must be between 0 and {clip_frames - 1} frames for clips of {clip_frames}, got {overlap}"
        )


def default_overlap(clip_frames: int) -> int:
    """`DEFAULT_OVERLAP`, but at most half a clip, so short clips still advance by at least half their length."""
    return min(DEFAULT_OVERLAP, (clip_frames - 1) // 2)


def clip_schedule(total_frames: int, clip_frames: int, overlap: int) -> list[Clip]:
    """The clips covering frames [0, total_frames), in order, each of `clip_frames` frames (one clip of
    `total_frames` when the video is shorter)."""
    check_clip_frames(clip_frames)
    check_overlap(overlap, clip_frames)
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    if total_frames <= clip_frames:
        return [Clip(0, 0, total_frames)]
    stride = clip_frames - overlap
    count = math.ceil((total_frames - clip_frames) / stride) + 1
    starts = [k * stride for k in range(count - 1)] + [total_frames - clip_frames]
    return [Clip(k, start, start + clip_frames) for k, start in enumerate(starts)]


def _ramp(length: int) -> torch.Tensor:
    """Raised-cosine weights rising over `length` frames, sampled at frame centres: never exactly 0 or 1,
    and `ramp[i] + ramp[length - 1 - i] == 1` (sin² + cos²), so a rising and a falling ramp sum to one."""
    centres = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    return torch.sin(centres * (math.pi / 2)) ** 2


def _raw_weight(clips: list[Clip], k: int) -> torch.Tensor:
    clip = clips[k]
    weight = torch.ones(clip.frames, dtype=torch.float64)
    if k > 0:
        shared = max(0, clips[k - 1].stop - clip.start)
        weight[:shared] *= _ramp(shared)
    if k + 1 < len(clips):
        shared = max(0, clip.stop - clips[k + 1].start)
        weight[clip.frames - shared :] *= _ramp(shared).flip(0)
    return weight


def clip_weight(clips: list[Clip], k: int) -> torch.Tensor:
    """The float64 weight of each frame of clip `k` in the final video. For every frame, the weights of the
    clips that contain it sum to one. Computed from the neighbours only, so a stream never holds weights for
    the whole video."""
    clip = clips[k]
    total = torch.zeros(clip.frames, dtype=torch.float64)
    for j in range(len(clips)):
        other = clips[j]
        lo, hi = max(clip.start, other.start), min(clip.stop, other.stop)
        if lo < hi:
            total[lo - clip.start : hi - clip.start] += _raw_weight(clips, j)[lo - other.start : hi - other.start]
    return _raw_weight(clips, k) / total
