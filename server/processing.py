"""One job, start to end: fetch the image, upscale it, store (or inline) the result; a video job is handed to
server/video_processing.py.

Each phase is logged on the job (`status?logs=1`, the SSE stream) and timed for /metrics; between
phases the job can be stopped (cancel, shutdown). Every way a job can fail ends in a `Completion`
carrying the HTTP status and body of fal's matching error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from seedvr_local.image_io import ImageError, ImageTooLargeError, content_type_for, decode_image
from seedvr_local.memory_planner import MemoryPlanError, RunOutOfMemoryError
from seedvr_local.options import UpscaleOptions
from seedvr_local.sizes import SizeError
from seedvr_local.server.clip_tasks import ClipHelper, ClipTaskQueue
from seedvr_local.server.endpoint import SEAMLESS, VIDEO, endpoint_of
from seedvr_local.server.engine import Engine, EngineHolder
from seedvr_local.server.errors import FalError, cancelled_error, model_error, request_error
from seedvr_local.server.fetch import FetchError, ImageFetcher
from seedvr_local.server.jobs import Completion, Job, JobStore
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.results import inline_output
from seedvr_local.server.settings import DEFAULT_MAX_OUTPUT_PIXELS, ServerSettings
from seedvr_local.server.storage import FileStore, StorageFull
from seedvr_local.server.video_processing import VideoJobRunner

log = logging.getLogger("seedvr_local.server")

PHASE_LOG = {
    "resize": "resizing the input",
    "encode": "VAE encode",
    "dit": "DiT restoration step",
    "vae_decode": "VAE decode",
    "color_fix": "colour fix",
    "finish": "finishing",
}


class JobCancelled(Exception):
    pass


class ShuttingDown(Exception):
    """The server is stopping: the job goes back to the queue, to run after the restart."""


#: Returns "cancel" or "shutdown" when the running job should stop at the next phase boundary.
StopCheck = Callable[[], str | None]


class JobProcessor:
    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        fetcher: ImageFetcher,
        engines: EngineHolder,
        settings: ServerSettings,
        metrics: Metrics,
    ):
        self.jobs = jobs
        self.files = files
        self.fetcher = fetcher
        self.engines = engines
        self.settings = settings
        self.metrics = metrics
        self._largest_fitting: int | None = None
        self.clip_tasks = ClipTaskQueue(jobs.db, files, settings.lease_s, settings.max_job_attempts)

    def clip_helper(self, worker_id: str, wake: threading.Event) -> ClipHelper:
        """What worker `worker_id` restores of the other workers' videos between its jobs (server/clip_tasks.py)."""
        return ClipHelper(self.clip_tasks, worker_id, wake)

    def output_limit(self, engine: Engine, settings: ServerSettings) -> int:
        """`--max-output-pixels` (of an image, or of each frame of a video), else the largest square output the
        loaded model fits in this device's memory (asked of the planner once, when the first job runs), capped at
        8192x8192."""
        if settings.max_output_pixels is not None:
            return settings.max_output_pixels
        if self._largest_fitting is None:
            self._largest_fitting = min(DEFAULT_MAX_OUTPUT_PIXELS, engine.max_output_pixels())
        return self._largest_fitting

    def run(self, job: Job, should_stop: StopCheck) -> Completion:
        """Raises ShuttingDown (only); everything else becomes the job's Completion."""
        started = time.perf_counter()
        try:
            output = self._run(job, should_stop)
        except ShuttingDown:
            raise
        except JobCancelled:
            self.jobs.log(job.id, "cancelled", "WARN")
            return Completion.failure(cancelled_error(), "cancelled", time.perf_counter() - started)
        except FalError as exc:
            self.jobs.log(job.id, f"failed: {exc.message}", "ERROR")
            return Completion.failure(exc, inference_time=time.perf_counter() - started)
        except StorageFull as exc:  # the output does not fit the storage budget
            self.jobs.log(job.id, f"failed: {exc}", "ERROR")
            error = request_error(507, str(exc), exc.error_type)
            return Completion.failure(error, inference_time=time.perf_counter() - started)
        except Exception as exc:  # a bug or a device failure: a 500, logged with its traceback
            log.exception("job %s failed", job.id)
            message = f"the upscale failed: {type(exc).__name__}: {_one_line(exc)}"
            self.jobs.log(job.id, message, "ERROR")
            error = request_error(500, message, "runner_server_error")
            return Completion.failure(error, inference_time=time.perf_counter() - started)
        return Completion.success(output, time.perf_counter() - started)

    def _run(self, job: Job, should_stop: StopCheck) -> dict:
        phases = _Phases(self.jobs, job.id, should_stop)
        settings = self.settings.with_job_limits(job.limits)  # what the API that accepted it promised
        try:
            if endpoint_of(job.input) is VIDEO:
                videos = VideoJobRunner(
                    self.jobs, self.files, self.fetcher, settings, self.metrics,
                    lambda e: self.output_limit(e, settings), self.clip_tasks,
                )  # fmt: skip
                return videos.run(job, self._engine(), phases)
            return self._run_image(job, phases, settings)
        finally:
            self.metrics.phases(phases.timed)  # the phases that ran, however the job ended

    def _engine(self) -> Engine:
        try:
            return self.engines.get()
        except RuntimeError as exc:
            raise request_error(503, str(exc), "runner_scheduling_failure") from None

    def _run_image(self, job: Job, phases: _Phases, settings: ServerSettings) -> dict:
        endpoint = endpoint_of(job.input)
        params = endpoint.input_model.model_validate(job.input)
        phases.start("download", "fetching image_url")
        engine = self._engine()
        try:
            data, source = self.fetcher.fetch(params.image_url, "image_url")
        except FetchError as exc:
            raise model_error("image_url", str(exc), exc.error_type) from None

        phases.start("decode", f"decoding {len(data):,} bytes from {source}")
        try:
            image = decode_image(data, max_pixels=settings.max_input_pixels)
        except ImageTooLargeError as exc:
            raise model_error(
                "image_url", str(exc), "image_too_large", {"max_pixels": settings.max_input_pixels}
            ) from None
        except ImageError as exc:
            raise model_error("image_url", str(exc), "image_load_error") from None

        options = UpscaleOptions(
            upscale_mode=params.upscale_mode,
            upscale_factor=params.upscale_factor,
            target_resolution=params.target_resolution,
            seed=params.seed,
            noise_scale=params.noise_scale,
            seamless=endpoint is SEAMLESS,
        )
        size_field = "upscale_factor" if params.upscale_mode == "factor" else "target_resolution"
        try:
            prepared = engine.prepare(image, options)  # checks and plans, before any work
        except SizeError as exc:
            raise model_error(size_field, str(exc), "value_error") from None
        except MemoryPlanError as exc:
            ctx = {"max_width": exc.largest[0], "max_height": exc.largest[1]} if exc.largest else None
            raise model_error(size_field, str(exc), "image_too_large", ctx) from None
        except ValueError as exc:  # options the schema let through but the model refuses
            raise model_error(None, str(exc), "value_error") from None
        width, height = prepared.output_size
        limit = self.output_limit(engine, settings)
        if width * height > limit:
            raise model_error(
                size_field,
                f"the output would be {width}x{height} ({width * height:,} pixels), more than the limit of "
                f"{limit:,} pixels",
                "image_too_large",
                {"max_pixels": limit},
            )
        self.jobs.log(job.id, f"upscaling {image.width}x{image.height} to {width}x{height}")
        try:
            result = engine.run(prepared, progress=phases.model_phase)
        except RunOutOfMemoryError as exc:
            raise request_error(503, str(exc), "runner_out_of_memory") from None
        phases.add_model_timings(result.timings)

        phases.start("save", f"encoding {params.output_format.upper()}")
        try:
            encoded = result.encode(params.output_format)
        except ValueError as exc:
            raise model_error("output_format", str(exc), "value_error") from None
        content_type = content_type_for(params.output_format)
        file_name = f"seedvr_{job.id[:8]}.{params.output_format}"
        if params.sync_mode:
            url = inline_output(lambda: encoded, len(encoded), content_type, settings.max_sync_result_bytes)
        else:
            stored = self.files.save(encoded, file_name, content_type, settings.max_storage_bytes)
            url = self.files.output_url(stored)
        phases.stop()
        out_width, out_height = result.size
        self.metrics.megapixels(out_width * out_height / 1e6)
        self.jobs.log(
            job.id, f"done: {out_width}x{out_height} {params.output_format}, {len(encoded):,} bytes, seed {result.seed}"
        )
        return {
            "image": {
                "url": url,
                "content_type": content_type,
                "file_name": file_name,
                "file_size": len(encoded),
                "width": out_width,
                "height": out_height,
            },
            "seed": result.seed,
        }


class _Phases:
    """Logs and times the server's own phases; checks for a stop request at every boundary."""

    def __init__(self, jobs: JobStore, job_id: str, should_stop: StopCheck):
        self.jobs = jobs
        self.job_id = job_id
        self.should_stop = should_stop
        self.timed: list[tuple[str, float]] = []  # (phase, seconds), for /metrics once the job is over
        self.current: str | None = None
        self.started = 0.0

    def check(self) -> None:
        reason = self.should_stop()
        if reason == "cancel":
            raise JobCancelled()
        if reason == "shutdown":
            raise ShuttingDown()

    def start(self, phase: str, message: str) -> None:
        self.stop()
        self.check()
        self.jobs.log(self.job_id, f"{phase}: {message}")
        self.current, self.started = phase, time.perf_counter()

    def stop(self) -> None:
        if self.current is not None:
            self.timed.append((self.current, time.perf_counter() - self.started))
            self.current = None

    def model_phase(self, phase: str) -> None:
        """The engine's progress callback: its phases are timed by the engine itself."""
        self.stop()
        self.check()
        self.jobs.log(self.job_id, f"{phase}: {PHASE_LOG.get(phase, phase)}")

    def add_model_timings(self, timings: dict[str, float]) -> None:
        self.timed.extend(timings.items())


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
