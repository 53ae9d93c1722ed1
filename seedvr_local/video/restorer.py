"""Restoring a whole video in memory that does not grow with its length.

    restorer = VideoRestorer(pipeline)
    result = restorer.restore("in.mp4", "out.mp4", VideoOptions(upscale_factor=2, seed=42))

Frames are decoded one at a time, resized exactly as images are (to `seedvr_local.sizes.output_size`, then
mirror-padded to a multiple of 16 for the model), restored in clips of 4n+1 frames (`schedule.py`), cross-faded
where clips overlap, rounded and encoded as soon as no later clip contains them. What restores the clips is a
`clips.ClipRunner`: the pipeline in this process (`LocalClips`, one clip at a time), or a pool of worker processes,
one per device (`pool.ClipPool`), which restores several clips at once and hands them back in order. At any moment
the clips in flight (one in this process) are held, source and restored frames, whatever the video's length.

Seeds: clip k draws its noises exactly as an image restored with seed `seed + k * 2**32` would
(`RestoreNoises.draw`), so clip 0 of a video and an image use the same noise for the same seed, every
(seed, clip) pair has its own noise, and the same seed always gives the same video.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from seedvr_local.image_io import to_uint8, upscale_alpha
from seedvr_local.pipeline import RestorationPipeline, to_uint8_frames
from seedvr_local.models.vae_tiling import VAETiling
from seedvr_local.options import MAX_SEED, RestoreOptions
from seedvr_local.video.clips import ClipRunner, ClipTask, LocalClips, PhaseTimer
from seedvr_local.video.errors import InvalidVideoError, VideoTooLargeError
from seedvr_local.video.formats import (
    DEFAULT_FORMAT,
    DEFAULT_QUALITY,
    DEFAULT_WRITE_MODE,
    OUTPUT_QUALITIES,
    OUTPUT_WRITE_MODES,
    OutputFormat,
    check_choice,
    output_format,
)
from seedvr_local.video.limits import DEFAULT_MAX_FRAMES, check_clip_frames
from seedvr_local.video.schedule import (
    Clip,
    check_overlap,
    clip_schedule,
    clip_weight,
    default_overlap,
)
from seedvr_local.video.source import MAX_INPUT_PIXELS, SourceFrame, VideoInfo, decode_frames, probe_video
from seedvr_local.video.writer import VideoWriter, padded_size

#: Called after each frame is written: (frames done, frames in all, frames per second so far). Raising from it
#: (a cancellation, say) stops the job; the unfinished output file is removed.
VideoProgress = Callable[[int, int, float], None]
#: Chooses the clip length (4n+1 frames) for an output of (width, height): the memory planner's hook.
ClipFramesFor = Callable[[int, int], int]

#: Clip length when none is given: short enough for a CPU, long enough to share context across 5 latent frames.
DEFAULT_CLIP_FRAMES = 21
_CLIP_SEED_STRIDE = 2**32


def clip_seed(seed: int, clip_index: int) -> int:
    """The seed clip `clip_index` draws its noises with: distinct for every (seed < 2**32, clip) pair."""
    return seed + clip_index * _CLIP_SEED_STRIDE


@dataclass(frozen=True)
class VideoOptions(RestoreOptions):
    """fal's `fal-ai/seedvr/upscale/video` input semantics (minus the video itself), plus the clip layout."""

    output_format: str = DEFAULT_FORMAT.fal_name
    output_quality: str = DEFAULT_QUALITY
    output_write_mode: str = DEFAULT_WRITE_MODE
    clip_frames: int | ClipFramesFor = DEFAULT_CLIP_FRAMES
    overlap_frames: int | None = None  # None: `schedule.default_overlap(clip_frames)`

    def validate(self) -> None:
        """Raise ValueError with a one-line message for options no run could honour."""
        super().validate()  # what a video shares with an image follows the image's rules
        output_format(self.output_format)
        check_choice("output_quality", self.output_quality, OUTPUT_QUALITIES)
        check_choice("output_write_mode", self.output_write_mode, OUTPUT_WRITE_MODES)
        if not callable(self.clip_frames):
            check_clip_frames(self.clip_frames)
            if self.overlap_frames is not None:
                check_overlap(self.overlap_frames, self.clip_frames)
        elif self.overlap_frames is not None and self.overlap_frames < 0:  # the most allowed follows the planned clip
            raise ValueError(f"overlap must be at least 0 frames, got {self.overlap_frames}")

    @property
    def format(self) -> OutputFormat:
        return output_format(self.output_format)


@dataclass(frozen=True)
class VideoLimits:
    """Checked before any frame is restored. None: no limit."""

    max_frames: int | None = DEFAULT_MAX_FRAMES
    max_output_pixel_frames: int | None = None  # output width x height x frames (what fal prices)
    max_input_pixels: int = MAX_INPUT_PIXELS  # per source frame, from the header

    def check(self, info: VideoInfo, width: int, height: int) -> None:
        if self.max_frames is not None and info.frames > self.max_frames:
            raise VideoTooLargeError(f"the video has {info.frames} frames; the most allowed is {self.max_frames}")
        limit = self.max_output_pixel_frames
        if limit is not None and width * height * info.frames > limit:
            raise VideoTooLargeError(
                f"the output would be {width}x{height} x {info.frames} frames = "
                f"{width * height * info.frames / 1e9:.2f} Gpx; the most allowed is {limit / 1e9:.2f} Gpx "
                f"(at this size at most {limit // (width * height)} frames)"
            )


@dataclass(frozen=True)
class VideoJob:
    """A checked video job: what will be made, decided before any work."""

    source: Path
    info: VideoInfo
    options: VideoOptions
    format: OutputFormat
    width: int  # output size (before the encoder's padding)
    height: int
    seed: int
    clips: tuple[Clip, ...]
    #: The most pixels a decoded frame may have (`VideoLimits.max_input_pixels`): checked on every frame.
    max_input_pixels: int = MAX_INPUT_PIXELS

    @property
    def frames(self) -> int:
        return self.info.frames

    @property
    def encoded_size(self) -> tuple[int, int]:
        """(width, height) in the file: the output size padded to what the encoder needs."""
        return padded_size(self.width, self.height, self.format)


@dataclass
class RestoredFrame:
    pixels: np.ndarray  # [H, W, 3] uint8 RGB, or [H, W, 4] RGBA when the source has alpha
    pts: int  # in the source's time base


@dataclass
class VideoResult:
    path: Path
    format: OutputFormat
    width: int  # as encoded (padded to the encoder's multiple)
    height: int
    frames: int
    seed: int
    seconds: float  # end to end
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, summed over clips and devices
    clip_workers: tuple[str, ...] = ()  # the device (worker) that restored each clip, in clip order

    @property
    def content_type(self) -> str:
        return self.format.content_type

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class VideoRestorer:
    """Restores videos, one at a time (not thread-safe): with one loaded `RestorationPipeline` in this process
    (`vae_tiling`: the VAE tiling of every clip, None: untiled), or with any `ClipRunner` (`clips=`), such as a
    `pool.ClipPool` that restores the clips on several devices at once."""

    def __init__(
        self,
        pipeline: RestorationPipeline | None = None,
        vae_tiling: VAETiling | None = None,
        *,
        clips: ClipRunner | None = None,
    ):
        if (pipeline is None) == (clips is None):
            raise TypeError("give VideoRestorer a pipeline or a clip runner (clips=), not both")
        self.pipeline = pipeline
        self.clips = clips if clips is not None else LocalClips(pipeline, vae_tiling)

    def prepare(
        self, source: str | Path, options: VideoOptions = VideoOptions(), limits: VideoLimits = VideoLimits()
    ) -> VideoJob:
        """Check the options, the file and the limits, and lay out the clips; raises ValueError (a `VideoError`
        for the file and the limits) with a one-line message before any frame is restored."""
        options.validate()
        info = probe_video(source, limits.max_input_pixels)
        width, height = options.output_size(info.width, info.height)
        limits.check(info, width, height)
        clip_frames = options.clip_frames(width, height) if callable(options.clip_frames) else options.clip_frames
        check_clip_frames(clip_frames)
        overlap = options.overlap_frames if options.overlap_frames is not None else default_overlap(clip_frames)
        clips = tuple(clip_schedule(info.frames, clip_frames, overlap))
        seed = options.seed if options.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return VideoJob(
            Path(source), info, options, options.format, width, height, seed, clips, limits.max_input_pixels
        )

    def restore(
        self,
        source: str | Path,
        output: str | Path,
        options: VideoOptions = VideoOptions(),
        limits: VideoLimits = VideoLimits(),
        progress: VideoProgress | None = None,
    ) -> VideoResult:
        """Restore `source` into the file `output` in `options.output_format`. On any error the unfinished
        output is removed."""
        job = self.prepare(source, options, limits)
        return self.write(job, output, progress)

    def write(self, job: VideoJob, output: str | Path, progress: VideoProgress | None = None) -> VideoResult:
        """Run a prepared job into the file `output`."""
        started = time.perf_counter()
        output = Path(output)
        timer = PhaseTimer()  # this process's phases run on the CPU; each clip brings its device's timings
        workers: list[str] = []
        info = job.info
        writer = VideoWriter(
            output, job.format, job.format.encoder_settings(job.options.output_quality, job.options.output_write_mode),
            (job.width, job.height), info.time_base, info.average_rate, alpha=info.has_alpha,
            display_matrix=info.display_matrix, audio_from=job.source,
        )  # fmt: skip
        try:
            with writer:
                for done, frame in enumerate(self.frames(job, timer, workers), start=1):
                    timer.start("encode_video")
                    writer.write(frame.pixels, frame.pts)
                    timer.stop()
                    if progress is not None:
                        progress(done, job.frames, done / (time.perf_counter() - started))
                timer.start("encode_video")
            timer.stop()
        except BaseException:
            output.unlink(missing_ok=True)
            raise
        width, height = job.encoded_size
        seconds = time.perf_counter() - started
        return VideoResult(
            output, job.format, width, height, job.frames, job.seed, seconds, timer.seconds, tuple(workers)
        )

    def frames(
        self, job: VideoJob, timer: PhaseTimer | None = None, workers: list[str] | None = None
    ) -> Iterator[RestoredFrame]:
        """The restored frames in order, each as soon as it is final. `timer` sums the seconds of each phase,
        `workers` gets the worker of each clip."""
        timer = timer or PhaseTimer()
        clips = list(job.clips)
        decoded = decode_frames(job.source, job.info.has_alpha, (job.info.width, job.info.height), job.max_input_pixels)
        sources: dict[int, SourceFrame] = {}  # decoded frames that a clip in flight needs or that are not yet out
        blended: dict[int, torch.Tensor] = {}  # weighted sums of frames that a later clip still adds to
        tasks = self._tasks(job, decoded, sources, timer)
        restored_clips = self.clips.run(tasks)
        try:
            for k, (clip, restored) in enumerate(zip(clips, restored_clips, strict=True)):
                timer.add(restored.timings)
                if workers is not None:
                    workers.append(restored.worker)
                timer.start("blend")
                for j, i in enumerate(restored.shared_frames):
                    f, contribution = clip.start + i, restored.shared[:, j]
                    blended[f] = blended[f] + contribution if f in blended else contribution
                timer.stop()
                own_start, own_stop = (clip.start + i for i in _own_frames(clips, k))
                final = clips[k + 1].start if k + 1 < len(clips) else clip.stop
                for f in range(clip.start, final):
                    timer.start("finish")
                    if own_start <= f < own_stop:
                        pixels = restored.own[f - own_start].numpy()
                    else:
                        pixels = to_uint8_frames(blended.pop(f)[:, None])[0].numpy()
                    out = self._finish(job, pixels, sources.pop(f), f)
                    timer.stop()
                    yield out
        finally:
            restored_clips.close()
            tasks.close()
            decoded.close()

    def _tasks(
        self, job: VideoJob, decoded: Iterator[SourceFrame], sources: dict[int, SourceFrame], timer: PhaseTimer
    ) -> Iterator[ClipTask]:
        """The clips to restore, in order, each decoded when the clip runner asks for it."""
        clips = list(job.clips)
        count = 0  # frames decoded; frames past the counted total (none, normally) are never read
        for k, clip in enumerate(clips):
            timer.start("decode")
            while count < clip.stop:
                frame = next(decoded, None)
                if frame is None:
                    raise InvalidVideoError(
                        f"the video is truncated: its container holds {job.frames} frames, "
                        f"only {count} could be decoded"
                    )
                sources[count] = frame
                count += 1
            pixels = torch.from_numpy(np.stack([sources[f].pixels[..., :3] for f in range(clip.start, clip.stop)]))
            timer.stop()
            yield ClipTask(
                k, pixels, job.width, job.height, clip_seed(job.seed, clip.index), job.options.noise_scale,
                job.options.color_fix, tuple(clip_weight(clips, k).tolist()), _own_frames(clips, k),
            )  # fmt: skip

    def _finish(self, job: VideoJob, pixels: np.ndarray, source: SourceFrame, index: int) -> RestoredFrame:
        if job.info.has_alpha:
            alpha = torch.from_numpy(source.pixels[..., 3].copy())[None].float() / 255
            alpha = to_uint8(upscale_alpha(alpha, (job.height, job.width)))[0].numpy()
            pixels = np.concatenate([pixels, alpha[..., None]], axis=-1)
        return RestoredFrame(pixels, self._pts(job, source, index))

    @staticmethod
    def _pts(job: VideoJob, source: SourceFrame, index: int) -> int:
        """The source frame's timestamp; for a stream without any, the frame's place at the average rate."""
        if source.pts is not None:
            return source.pts
        rate = job.info.average_rate or 25
        return round(index / rate / job.info.time_base)


def _own_frames(clips: list[Clip], k: int) -> tuple[int, int]:
    """[start, stop), relative to clip `k`, of the frames no other clip contains: those after the previous clip's
    last and before the next clip's first (clips are sorted by start and by stop); empty when those two overlap."""
    clip = clips[k]
    start = clips[k - 1].stop if k > 0 else clip.start
    stop = clips[k + 1].start if k + 1 < len(clips) else clip.stop
    start = max(start, clip.start)
    return start - clip.start, max(start, stop) - clip.start
