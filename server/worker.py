"""The one thread that runs jobs on the device, in priority then arrival order.

The model is loaded here first (so the HTTP server is up, and /readyz honest, while it loads). A job
stops at the next phase boundary when it is cancelled, or when the server shuts down, in which case
it goes back to the queue and runs after the restart.
"""

from __future__ import annotations

import logging
import threading
import time

from seedvr_local.server.engine import EngineHolder
from seedvr_local.server.jobs import Completion, Job, JobStore
from seedvr_local.server.processing import JobProcessor, ShuttingDown

log = logging.getLogger("seedvr_local.server")


class Worker:
    def __init__(self, jobs: JobStore, processor: JobProcessor, engines: EngineHolder):
        self.jobs = jobs
        self.processor = processor
        self.engines = engines
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.current_job: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="seedvr-worker", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Ask the worker to stop after the current phase; True when it did within `timeout`."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        started = time.perf_counter()
        try:
            self.engines.get()
            log.info("model ready in %.1f s: %s", time.perf_counter() - started, self.engines.description)
        except RuntimeError as exc:
            log.error("%s; every request will fail with 503 until the server is restarted", exc)
        while not self._stopping.is_set():
            job = self.jobs.claim_next()
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        self.current_job = job.id

        def should_stop() -> str | None:
            if self._stopping.is_set():
                return "shutdown"
            return "cancel" if self.jobs.is_cancel_requested(job.id) else None

        try:
            completion = self.processor.run(job, should_stop)
        except ShuttingDown:
            self.jobs.requeue(job.id)
            log.info("job %s: interrupted by shutdown, back in the queue", job.id)
            return
        finally:
            self.current_job = None
        self.jobs.complete(job.id, completion)  # counted and logged by the store's on_completed


def log_job(job: Job, completion: Completion) -> None:
    """The one log line of a finished job."""
    queued = (job.started_at or job.finished_at or job.created_at) - job.created_at
    took = f"{completion.inference_time:.2f}s" if completion.inference_time is not None else "-"
    if completion.outcome == "ok" and "video" in completion.body:
        video = completion.body["video"]
        what = f"{video['content_type']} {video['file_size']} bytes seed={completion.body['seed']}"
    elif completion.outcome == "ok":
        image = completion.body["image"]
        what = f"{image['width']}x{image['height']} {image['content_type']} seed={completion.body['seed']}"
    else:
        what = f"{completion.status_code} {completion.error_type}: {completion.error}"
    log.info("job %s %s %s in %s (queued %.2fs): %s", job.id, job.kind, completion.outcome, took, queued, what)
