"""A worker: claims jobs from the store, in priority then arrival order, and runs them on its device.

In the embedded server it is a thread of the server's process; `seedvr-local worker` runs it alone in a process
per device. The model is loaded here first (so the HTTP server is up, and /readyz honest, while it loads). A
claimed job is leased: a heartbeat thread renews the lease while the job runs, so when the worker dies its job
is claimed again once the lease expires (JobStore.reclaim_expired). A job stops at the next phase boundary when it
is cancelled, or when the worker shuts down, in which case it goes back to the queue.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from seedvr_local.server.db import is_connection_error
from seedvr_local.server.engine import EngineHolder
from seedvr_local.server.errors import request_error
from seedvr_local.server.fleet import WorkerRegistry, device_memory, new_worker_id
from seedvr_local.server.jobs import Completion, Job, JobStore
from seedvr_local.server.processing import JobProcessor, ShuttingDown

log = logging.getLogger("seedvr_local.server")


class Worker:
    def __init__(
        self,
        jobs: JobStore,
        processor: JobProcessor,
        engines: EngineHolder,
        registry: WorkerRegistry,
        lease_s: float,
        device: str = "local",
        claim_without_model: bool = True,
    ):
        """`claim_without_model`: when the model failed to load, still claim jobs (each fails with the load
        error: the embedded server's behaviour); False for a worker among others, which leaves them to those."""
        self.jobs = jobs
        self.processor = processor
        self.engines = engines
        self.registry = registry
        self.lease_s = lease_s
        self.device = device
        self.claim_without_model = claim_without_model
        self.id = new_worker_id(device)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lease_lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._heart: threading.Thread | None = None
        self.current_job: str | None = None

    def start(self) -> None:
        self.registry.register(self.id, self.device)
        self._thread = threading.Thread(target=self._loop, name="seedvr-worker", daemon=True)
        self._heart = threading.Thread(target=self._heartbeat, name="seedvr-heartbeat", daemon=True)
        self._thread.start()
        self._heart.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Ask the worker to stop after the current phase; True when it did within `timeout`."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            self._heart.join(timeout=5)
            self._safely(self.registry.stopped, self.id)
        return stopped

    def _loop(self) -> None:
        started = time.perf_counter()
        try:
            self.engines.get()
            log.info("model ready in %.1f s: %s", time.perf_counter() - started, self.engines.description)
        except RuntimeError as exc:
            if not self.claim_without_model:
                log.error("%s; this worker claims no job", exc)
                self._beat(None)
                self._stopping.wait()
                return
            log.error("%s; every request will fail with 503 until the server is restarted", exc)
        self._beat(None)  # ready now, not at the next beat
        clips = self.processor.clip_helper(self.id, self._wake)
        while not self._stopping.is_set():
            if self._safely(clips.restore_next, self.engines):
                continue  # a clip of a video another worker runs comes before any new job
            job = self._safely(self.jobs.claim_next, self.id, self.lease_s)
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _heartbeat(self) -> None:
        """Renews the running job's lease and this worker's heartbeat, a third of a lease apart: two beats can be
        lost (a database restart) before anyone takes the job."""
        while not self._stopping.wait(self.lease_s / 3):
            job_id = self.current_job
            if job_id is not None and self._safely(self.jobs.renew, job_id, self.id, self.lease_s) is False:
                log.warning("job %s: its lease went to another worker; this run stops", job_id)
                self._lease_lost.set()
            self._beat(job_id)
            self._safely(self.jobs.reclaim_expired)

    def _beat(self, job_id: str | None) -> None:
        """This worker's heartbeat: its state, its job, its device's memory and its model, for /readyz and /metrics."""
        memory, engines = device_memory(self._memory_device()), self.engines
        self._safely(self.registry.beat, self.id, engines.state, job_id, memory, engines.description, engines.notice)

    def _memory_device(self) -> str:
        """The device whose memory the heartbeat reports: the one the loaded model runs on (the embedded worker is
        "local": its model's --device), else the one this worker was started for."""
        if self.engines.state == "ready":
            return str(self.engines.get().pipeline.device)
        return self.device

    def _run(self, job: Job) -> None:
        self.current_job = job.id
        self._lease_lost.clear()
        self._beat(job.id)

        def should_stop() -> str | None:
            if self._stopping.is_set() or self._lease_lost.is_set():
                return "shutdown"
            return "cancel" if self.jobs.is_cancel_requested(job.id) else None

        try:
            completion = self.processor.run(job, should_stop)
        except ShuttingDown:
            self._safely(self.jobs.requeue, job.id, self.id)
            log.info("job %s: interrupted by shutdown, back in the queue", job.id)
            return
        finally:
            self.current_job = None
        self._complete(job, completion)  # counted and logged by the store's on_completed
        self._safely(self.registry.job_done, self.id)

    def _complete(self, job: Job, completion: Completion) -> None:
        """Store how the job ended. A completion the database refuses (a data error: a value too long for its
        column, say) would be refused again at every try: the job fails with that error instead, so it never holds
        the queue."""
        try:
            self._until_done(self.jobs.complete, job.id, completion)
        except SQLAlchemyError as exc:
            if is_connection_error(exc):
                raise
            reason = _one_line(exc.orig if getattr(exc, "orig", None) is not None else exc)
            log.error("job %s: the database refused its result (%s); the job fails", job.id, reason)
            error = request_error(500, f"the result could not be stored: {reason}", "runner_server_error")
            try:
                self._until_done(self.jobs.complete, job.id, Completion.failure(error, None, completion.inference_time))
            except SQLAlchemyError as again:
                if is_connection_error(again):
                    raise
                # not even the error could be stored: the job's lease runs out, and it is rerun or failed then
                log.exception("job %s: the database refused its failure too", job.id)

    def _until_done(self, call, *args):
        """A job's completion is retried while the database is away (a restart): losing it would run the job
        again; stops trying when the worker is stopped. Other database errors are raised at once."""
        while True:
            try:
                return call(*args)
            except SQLAlchemyError as exc:
                if self._stopping.is_set() or not is_connection_error(exc):
                    raise
                log.warning("the database is unavailable (%s); retrying", type(exc).__name__)
                self._stopping.wait(1.0)

    def _safely(self, call, *args):
        """A database call of the loop that may fail while the database restarts: logged, and None returned."""
        try:
            return call(*args)
        except SQLAlchemyError as exc:
            log.warning("%s failed: %s", call.__name__, type(exc).__name__)
            return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


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
