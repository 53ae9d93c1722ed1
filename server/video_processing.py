"""One `fal-ai/seedvr/upscale/video` job: fetch the video into a file, check it against every limit before any
frame is restored, restore it clip by clip (`seedvr_local.video`) with progress logs, store (or inline) the result.
The clips are restored by every live worker of the fleet at once, this one among them (server/clip_tasks.py).

Files, never whole videos in memory: the input is read where the file store keeps it, or written to the store's
scratch folder (downloads streamed there), and the output is encoded there and moved into the store. The job
stops between clips when it is cancelled or the server shuts down (raised from the progress callback; the
library then removes the unfinished output). A video interrupted by a restart runs again from its first frame,
and says so in its logs: a partly written video cannot be continued.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from seedvr_local.memory_planner import MemoryPlanError, RunPlan
from seedvr_local.server.clip_tasks import ClipRun, ClipTaskQueue, FleetClips
from seedvr_local.server.engine import ClipPlanner, Engine
from seedvr_local.server.errors import model_error, request_error
from seedvr_local.server.fetch import FetchError, ImageFetcher
from seedvr_local.server.fleet import WorkerRegistry
from seedvr_local.server.jobs import Job, JobStore
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.results import inline_output
from seedvr_local.server.schema import SeedVRVideoInput
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.storage import FileStore
from seedvr_local.video import (
    InvalidVideoError,
    VideoJob,
    VideoLimits,
    VideoOptions,
    VideoRestorer,
    VideoTooLargeError,
)
from seedvr_local.video.clips import LocalClips

#: The log line of each finished clip's frames starts with this (a rerun reads the last one back).
PROGRESS_PREFIX = "frames: "
#: The log line that counts the clips each worker restored starts with this.
CLIPS_PREFIX = "clips: "
#: What the first phase of every run of a video job logs (as "download: ..."): a rerun finds it.
DOWNLOAD_MESSAGE = "fetching video_url"


#: The scratch files of a running video job: its source and its output, named after the job (server/sweeper.py
#: leaves those of a job that has not finished alone).
SCRATCH_FILE = re.compile(r"^video-(?P<job_id>[0-9a-f-]{36})\.(?:source|output)$")


def scratch_files(tmp_dir: Path, job_id: str) -> tuple[Path, Path]:
    """Where a video job's source and output are, while it runs."""
    return tmp_dir / f"video-{job_id}.source", tmp_dir / f"video-{job_id}.output"


class Phases(Protocol):
    """What a job's phases do (processing._Phases): log and time a phase; raise to stop the job."""

    def start(self, phase: str, message: str) -> None: ...
    def stop(self) -> None: ...
    def check(self) -> None: ...
    def add_model_timings(self, timings: dict[str, float]) -> None: ...


class ClipSizer:
    """The longest clip (4n+1 frames, at most `longest`) that the planner fits at an output size; the
    restorer calls it once, while preparing, and `plan` is then that clip's memory plan."""

    def __init__(self, planner: ClipPlanner, longest: int):
        self.planner = planner
        self.longest = longest
        self.plan: RunPlan | None = None

    def __call__(self, width: int, height: int) -> int:
        self.plan = self.planner.plan(width, height, 1)  # MemoryPlanError when not even one frame fits
        lo, hi = 0, (self.longest - 1) // 4  # clips of 4n+1 frames: search n, assuming longer never fits better
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                plan = self.planner.plan(width, height, 4 * mid + 1)
            except MemoryPlanError:
                hi = mid - 1
            else:
                lo, self.plan = mid, plan
        return 4 * lo + 1  # `plan` is the last plan that fitted: this length's


class VideoJobRunner:
    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        fetcher: ImageFetcher,
        settings: ServerSettings,
        metrics: Metrics,
        output_limit: Callable[[Engine], int],
        clip_tasks: ClipTaskQueue,
    ):
        """`clip_tasks`: the queue through which this worker shares the clips with the fleet (its JobProcessor's)."""
        self.jobs = jobs
        self.files = files
        self.fetcher = fetcher
        self.settings = settings
        self.metrics = metrics
        self.output_limit = output_limit
        self.clip_tasks = clip_tasks
        self.registry = WorkerRegistry(jobs.db)

    def run(self, job: Job, engine: Engine, phases: Phases) -> dict[str, Any]:
        """The job's output; raises FalError for what fails, or what `phases` raises to stop."""
        params = SeedVRVideoInput.model_validate(job.input)
        self._say_if_rerun(job)
        source_file, output_file = scratch_files(self.files.tmp_dir, job.id)
        try:
            phases.start("download", DOWNLOAD_MESSAGE)
            try:
                path, origin = self.fetcher.fetch_to_file(params.video_url, source_file, "video_url")
            except FetchError as exc:
                raise model_error("video_url", str(exc), exc.error_type) from None

            phases.start("probe", f"reading {path.stat().st_size:,} bytes from {origin}")
            clips = ClipSizer(engine.planner, self.settings.max_video_clip_frames)
            video = self._prepare(path, params, clips, engine)
            plan = clips.plan
            phases.stop()
            phases.check()
            fps = f"{float(video.info.average_rate):g} fps" if video.info.average_rate else "variable rate"
            self.jobs.log(
                job.id,
                f"upscaling {video.info.width}x{video.info.height} ({video.frames} frames, {fps}, "
                f"{video.info.codec}) to {video.width}x{video.height} in {len(video.clips)} clip(s) of at most "
                f"{plan.frames} frames; {plan.describe_tiling()}",
            )
            progress = _Progress(self.jobs, job.id, phases, video)
            clips = self._clip_runner(job, engine, plan, phases)
            try:
                result = VideoRestorer(clips=clips).write(video, output_file, progress)
            except torch.OutOfMemoryError:
                raise request_error(
                    503, f"the device ran out of memory restoring clips of {plan.frames} frames", "runner_out_of_memory"
                ) from None
            except InvalidVideoError as exc:  # found while decoding: a damaged frame past the header
                raise model_error("video_url", _without_path(exc, path), "video_load_error") from None
            phases.add_model_timings(result.timings)

            phases.start("save", f"storing the {result.format.fal_name} video")
            file_name = f"seedvr_{job.id[:8]}{result.format.extension}"
            size = output_file.stat().st_size
            if params.sync_mode:
                url = inline_output(
                    output_file.read_bytes, size, result.content_type, self.settings.max_sync_result_bytes
                )
            else:
                stored = self.files.adopt(output_file, file_name, result.content_type, self.settings.max_storage_bytes)
                url = self.files.output_url(stored)
            phases.stop()
        finally:
            source_file.unlink(missing_ok=True)
            output_file.unlink(missing_ok=True)
        self.metrics.megapixels(result.width * result.height * result.frames / 1e6)
        self.jobs.log(job.id, clips_by_worker(result.clip_workers))
        self.jobs.log(
            job.id,
            f"done: {result.width}x{result.height}, {result.frames} frames, {result.format.fal_name}, {size:,} bytes, "
            f"{result.frames_per_second:.2f} frames/s, seed {result.seed}",
        )
        return {
            "video": {"url": url, "content_type": result.content_type, "file_name": file_name, "file_size": size},
            "seed": result.seed,
        }

    def _clip_runner(self, job: Job, engine: Engine, plan: RunPlan, phases: Phases) -> FleetClips:
        """This run's clips shared with every live worker, this one (the job's) among them."""
        coordinator = job.worker_id
        live_s = 2 * self.settings.lease_s  # what /readyz counts as live: a worker that missed a few beats

        def helpers() -> int:
            workers = self.registry.live(live_s)
            return sum(worker.id != coordinator and worker.model_state == "ready" for worker in workers)

        here = LocalClips(engine.pipeline, plan.vae_tiling, name=coordinator)
        run = ClipRun.new(job.id, coordinator)
        return FleetClips(self.clip_tasks, run, here, helpers, phases.check, refresh_s=self.settings.lease_s / 3)

    def _prepare(self, path: Path, params: SeedVRVideoInput, clips: ClipSizer, engine: Engine) -> VideoJob:
        """Probe the file and lay out the job; every refusal is a 422 before any frame is restored."""
        size_field = "upscale_factor" if params.upscale_mode == "factor" else "target_resolution"
        options = VideoOptions(
            upscale_mode=params.upscale_mode, upscale_factor=params.upscale_factor,
            target_resolution=params.target_resolution, seed=params.seed, noise_scale=params.noise_scale,
            output_format=params.output_format, output_quality=params.output_quality,
            output_write_mode=params.output_write_mode, clip_frames=clips,
        )  # fmt: skip
        max_input = self.settings.max_input_pixels
        header_only = VideoLimits(max_frames=None, max_output_pixel_frames=None, max_input_pixels=max_input)
        try:
            video = VideoRestorer(engine.pipeline).prepare(path, options, header_only)
        except VideoTooLargeError as exc:  # the frame size its header declares
            raise model_error("video_url", str(exc), "video_too_large", {"max_pixels": max_input}) from None
        except InvalidVideoError as exc:
            raise model_error("video_url", _without_path(exc, path), "video_load_error") from None
        except MemoryPlanError as exc:
            ctx = {"max_width": exc.largest[0], "max_height": exc.largest[1]} if exc.largest else None
            raise model_error(size_field, str(exc), "video_too_large", ctx) from None
        except ValueError as exc:  # options the schema let through but the library refuses
            raise model_error(None, str(exc), "value_error") from None
        self._check_limits(video, size_field, engine)
        return video

    def _check_limits(self, video: VideoJob, size_field: str, engine: Engine) -> None:
        width, height = video.width, video.height
        frame_limit = self.output_limit(engine)
        if width * height > frame_limit:
            raise model_error(
                size_field,
                f"the output frames would be {width}x{height} ({width * height:,} pixels), more than the limit of "
                f"{frame_limit:,} pixels",
                "video_too_large",
                {"max_pixels": frame_limit},
            )
        settings = self.settings
        limits = VideoLimits(
            max_frames=settings.max_video_frames,
            max_output_pixel_frames=settings.max_video_pixel_frames,
            max_input_pixels=settings.max_input_pixels,
        )
        try:
            limits.check(video.info, width, height)
        except VideoTooLargeError as exc:
            if limits.max_frames is not None and video.frames > limits.max_frames:
                raise model_error("video_url", str(exc), "video_too_large", {"max_frames": limits.max_frames}) from None
            pixel_frames = limits.max_output_pixel_frames
            ctx = {"max_pixel_frames": pixel_frames, "max_frames_at_this_size": pixel_frames // (width * height)}
            raise model_error(size_field, str(exc), "video_too_large", ctx) from None

    def _say_if_rerun(self, job: Job) -> None:
        """A video job that ran before (the server stopped during it) runs again from the first frame: say so."""
        earlier = self.jobs.logs(job.id)
        if not any(entry.message == f"download: {DOWNLOAD_MESSAGE}" for entry in earlier):
            return
        done = [entry.message for entry in earlier if entry.message.startswith(PROGRESS_PREFIX)]
        # "frames: 8/13 (61%), ..." -> "after 8/13 frames"
        finished = f"after {done[-1].removeprefix(PROGRESS_PREFIX).split(' ', 1)[0]} frames" if done else (
            "before any frame was written"
        )
        self.jobs.log(
            job.id,
            f"rerun: the earlier run was interrupted {finished}; this run restores the video from its first frame "
            "(a partly written video file cannot be continued)",
            "WARN",
        )


class _Progress:
    """The restorer's progress callback: stops the job when asked (between clips: a clip's frames come out
    together) and logs each finished clip's frames, the rate and the time left."""

    def __init__(self, jobs: JobStore, job_id: str, phases: Phases, video: VideoJob):
        self.jobs = jobs
        self.job_id = job_id
        self.phases = phases
        # the frame counts at which a clip's frames are all out: the next clip's start, and the end
        self.milestones = {clip.start for clip in video.clips[1:]} | {video.frames}

    def __call__(self, done: int, total: int, frames_per_second: float) -> None:
        self.phases.check()
        if done in self.milestones:
            left = (total - done) / frames_per_second if frames_per_second > 0 else 0.0
            self.jobs.log(
                self.job_id,
                f"{PROGRESS_PREFIX}{done}/{total} ({100 * done // total}%), {frames_per_second:.2f} frames/s, "
                f"about {left:.0f} s left",
            )


def clips_by_worker(workers: tuple[str, ...]) -> str:
    """The log line that says which workers restored the clips: "clips: 5 by 2 worker(s) (w1: 3, w2: 2)"."""
    counts = Counter(workers)
    each = ", ".join(f"{worker}: {count}" for worker, count in counts.most_common())
    return f"{CLIPS_PREFIX}{len(workers)} by {len(counts)} worker(s) ({each})"


def _without_path(exc: Exception, path: Path) -> str:
    """FFmpeg's messages name the file: the user's error names none of this server's paths."""
    return str(exc).replace(f": '{path}'", "").replace(str(path), "the video")
