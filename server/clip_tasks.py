"""Every device busy: the clips of one video restored by every worker of the fleet at once, written in order.

The worker that claimed a video job (the coordinator) decodes, blends and encodes it, as on one device; what it
shares out is the clip restore step (`seedvr_local.video.clips`). Each clip of the run becomes a clip task: a row
of `clip_tasks` in the job database and the clip itself (source frames, sizes, seed, cross-fade weights, VAE
tiling) as a blob of the file store, so workers on other hosts can take it. Every worker, between jobs and before
it claims a new one, claims a queued clip task (`ClipHelper`), restores it with its own model through
`LocalClips.restore`, the code path of a single device, and stores the restored clip. A clip's noise follows
(seed, clip index), so it comes out the same, bit for bit, whichever worker restores it (on identical devices
and settings). The coordinator restores clips of its own run too while it waits (a lone worker never waits for
help that does not come), keeps a window of `PER_WORKER` clips per live worker in flight (memory and storage
stay bounded whatever the video's length), and hands the restored clips to the writer in clip order, deleting
their blobs as it takes them. With no other live worker it restores every clip itself, without storing anything.

Failures: a clip worker that dies stops renewing its clip's lease, and the clip is claimed again once the lease
expires (at most `max_job_attempts` times, as jobs). A coordinator that dies loses its job's lease: the job runs
again (server/jobs.py), and the clip tasks of the dead run are void (their job is no longer the coordinator's)
and swept, rows and blobs, by the next run of the job or by any worker within a lease. A cancel (checked between
clips) or a failure drops the run's clip tasks. A clip that fails on a helper fails the job with its error.

Wake-ups: a worker that publishes or finishes a clip wakes the idle workers and waiting coordinators of its own
process at once; the idle workers of other processes hear of it through the job change feed (server/change_feed.py,
the publish and finish announce their job), and a waiting coordinator looks again every `_POLL_S`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from sqlalchemy.exc import SQLAlchemyError

from seedvr_local.models.vae_tiling import VAETiling
from seedvr_local.server.db import Database
from seedvr_local.server.engine import EngineHolder
from seedvr_local.server.errors import request_error
from seedvr_local.server.jobs import CHANGES_CHANNEL, IN_PROGRESS
from seedvr_local.server.storage import CLIP_BLOB_PREFIX, FileStore
from seedvr_local.video.clips import ClipTask, LocalClips, RestoredClip
from seedvr_local.video.pool import PER_WORKER

log = logging.getLogger("seedvr_local.server")

#: Seconds a coordinator waits for a clip restored elsewhere before it looks again (another process's clips).
_POLL_S = 0.25
#: What a clip failed with when its workers kept dying while they restored it.
WORKERS_LOST = "ClipWorkersLost"

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


# --- a clip as bytes --------------------------------------------------------------------------------------------


def _fields(obj) -> dict:
    """A dataclass's fields, shallow (its tensors as they are, not copied)."""
    return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}


def _pack(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), weights_only=True)  # tensors and plain values only: never code


def task_to_bytes(task: ClipTask, vae_tiling: VAETiling | None) -> bytes:
    """A clip task and the VAE tiling to restore it with (the coordinator's plan: every worker tiles alike)."""
    return _pack({"task": _fields(task), "vae_tiling": None if vae_tiling is None else _fields(vae_tiling)})


def task_from_bytes(data: bytes) -> tuple[ClipTask, VAETiling | None]:
    payload = _unpack(data)
    tiling = payload["vae_tiling"]
    return ClipTask(**payload["task"]), None if tiling is None else VAETiling(**tiling)


def clip_to_bytes(clip: RestoredClip) -> bytes:
    return _pack(_fields(clip))


def clip_from_bytes(data: bytes) -> RestoredClip:
    return RestoredClip(**_unpack(data))


# --- waking this process's waiters --------------------------------------------------------------------------------


class _Wakeups:
    """The idle workers and waiting coordinators of this process (weakly held: a stopped worker just goes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: weakref.WeakSet[threading.Event] = weakref.WeakSet()

    def add(self, event: threading.Event) -> None:
        with self._lock:
            self._events.add(event)

    def discard(self, event: threading.Event) -> None:
        with self._lock:
            self._events.discard(event)

    def notify(self) -> None:
        with self._lock:
            events = list(self._events)
        for event in events:
            event.set()


_wakeups = _Wakeups()


# --- the table and the blobs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipRun:
    """One run of a video job: a rerun of the job is another run, with clip tasks of its own."""

    run_id: str
    job_id: str
    coordinator: str  # the worker id that claimed the job

    @classmethod
    def new(cls, job_id: str, coordinator: str) -> ClipRun:
        return cls(uuid.uuid4().hex, job_id, coordinator)


@dataclass(frozen=True)
class ClaimedClip:
    run_id: str
    index: int
    job_id: str
    input_key: str


@dataclass(frozen=True)
class ClipState:
    index: int
    state: str
    worker_id: str | None
    input_key: str
    output_key: str | None
    error_type: str | None
    error: str | None


class ClipFailed(RuntimeError):
    """A clip failed on another worker: its error, with the worker's name."""


class ClipTaskQueue:
    """The clip tasks of every running video: rows in `db`, clips as blobs of `files` (keys under `clips/`,
    which no file id can name: they are never served)."""

    def __init__(self, db: Database, files: FileStore, lease_s: float, max_attempts: int):
        self.db = db
        self.files = files
        self.lease_s = lease_s
        self.max_attempts = max_attempts

    # --- the coordinator's side ---------------------------------------------------------------------------------

    def publish(self, run: ClipRun, task: ClipTask, vae_tiling: VAETiling | None) -> None:
        """Queue `task` for any worker."""
        key = f"{CLIP_BLOB_PREFIX}{run.run_id}-{task.index}.task"
        self._put(key, task_to_bytes(task, vae_tiling))
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO clip_tasks (run_id, clip_index, job_id, coordinator, state, input_key, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, task.index, run.job_id, run.coordinator, QUEUED, key, time.time()),
            )
            self._announce(conn, run.job_id)
        _wakeups.notify()

    def states(self, run_id: str) -> dict[int, ClipState]:
        """Every clip task of the run, by clip index."""
        rows = self.db.query(
            "SELECT clip_index, state, worker_id, input_key, output_key, error_type, error FROM clip_tasks"
            " WHERE run_id = ?",
            (run_id,),
        )
        return {
            row["clip_index"]: ClipState(
                row["clip_index"], row["state"], row["worker_id"], row["input_key"], row["output_key"],
                row["error_type"], row["error"],
            )  # fmt: skip
            for row in rows
        }

    def take(self, run_id: str, state: ClipState) -> RestoredClip:
        """A clip restored elsewhere; its task and its blobs are gone afterwards."""
        data = self.files.blobs.get_bytes(state.output_key)
        if data is None:
            raise RuntimeError(f"clip {state.index} was restored, but its result is missing from the file store")
        self.forget(run_id, state.index)
        return clip_from_bytes(data)

    def forget(self, run_id: str, index: int) -> None:
        """Delete a clip task, and its blobs."""
        self._drop("run_id = ? AND clip_index = ?", (run_id, index))

    def drop_run(self, run_id: str) -> None:
        """Delete every clip task of a run that is over (finished, failed, cancelled)."""
        self._drop("run_id = ?", (run_id,))

    def drop_earlier_runs(self, run: ClipRun) -> int:
        """Delete the clip tasks left by earlier runs of the run's job (a coordinator that died); how many."""
        return self._drop("job_id = ? AND run_id != ?", (run.job_id, run.run_id))

    # --- every worker's side ------------------------------------------------------------------------------------

    def claim(self, worker_id: str, run_id: str | None = None) -> ClaimedClip | None:
        """The next clip to restore (of the oldest running job first, then by clip index; of `run_id` only when
        given), now leased to `worker_id`; None when there is none. A queued clip, or one whose worker stopped
        renewing its lease; one whose workers stopped `max_attempts` times fails instead. Only clips whose job is
        still its coordinator's: the tasks of a dead coordinator are void."""
        skip_locked = " FOR UPDATE OF c SKIP LOCKED" if self.db.is_postgres else ""
        of_run = " AND c.run_id = ?" if run_id is not None else ""
        now = time.time()
        with self.db.transaction() as conn:
            while True:
                row = conn.execute(
                    "SELECT c.run_id, c.clip_index, c.job_id, c.input_key, c.attempts FROM clip_tasks c"
                    " JOIN jobs j ON j.id = c.job_id"
                    " WHERE (c.state = ? OR (c.state = ? AND c.lease_expires_at < ?))"
                    f" AND j.status = ? AND j.worker_id = c.coordinator{of_run}"
                    f" ORDER BY j.priority, j.seq, c.clip_index LIMIT 1{skip_locked}",
                    (QUEUED, RUNNING, now, IN_PROGRESS, *([] if run_id is None else [run_id])),
                ).fetchone()
                if row is None:
                    return None
                where = (row["run_id"], row["clip_index"])
                if row["attempts"] >= self.max_attempts:
                    conn.execute(
                        "UPDATE clip_tasks SET state = ?, error_type = ?, error = ?, lease_expires_at = NULL,"
                        " finished_at = ? WHERE run_id = ? AND clip_index = ?",
                        (FAILED, WORKERS_LOST, f"its worker stopped {row['attempts']} times while restoring it",
                         now, *where),
                    )  # fmt: skip
                    self._announce(conn, row["job_id"])
                    continue
                conn.execute(
                    "UPDATE clip_tasks SET state = ?, worker_id = ?, attempts = attempts + 1, lease_expires_at = ?,"
                    " started_at = ? WHERE run_id = ? AND clip_index = ?",
                    (RUNNING, worker_id, now + self.lease_s, now, *where),
                )
                return ClaimedClip(row["run_id"], row["clip_index"], row["job_id"], row["input_key"])

    def read(self, claimed: ClaimedClip) -> tuple[ClipTask, VAETiling | None]:
        data = self.files.blobs.get_bytes(claimed.input_key)
        if data is None:  # its run ended meanwhile (dropped)
            raise RuntimeError(f"clip {claimed.index}'s task is missing from the file store")
        return task_from_bytes(data)

    @contextmanager
    def leased(self, claimed: ClaimedClip, worker_id: str) -> Iterator[None]:
        """Renews the clip's lease every third of a lease while the block runs (restoring it)."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease_s / 3):
                try:
                    with self.db.transaction() as conn:
                        conn.execute(
                            "UPDATE clip_tasks SET lease_expires_at = ? WHERE run_id = ? AND clip_index = ?"
                            " AND worker_id = ? AND state = ?",
                            (time.time() + self.lease_s, claimed.run_id, claimed.index, worker_id, RUNNING),
                        )
                except Exception as exc:  # the database is away: the next beat tries again
                    log.warning("renewing the lease of clip %d failed: %s", claimed.index, type(exc).__name__)

        thread = threading.Thread(target=renew, name="seedvr-clip-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def finish(self, claimed: ClaimedClip, worker_id: str, clip: RestoredClip) -> bool:
        """Store a restored clip; False (and nothing kept) when the clip is no longer this worker's (its run is
        over, or its lease expired and another worker took it)."""
        key = f"{CLIP_BLOB_PREFIX}{claimed.run_id}-{claimed.index}-{secrets.token_hex(4)}.clip"  # each try its own
        self._put(key, clip_to_bytes(clip))
        mine = self._settle(claimed, worker_id, "state = ?, output_key = ?", (DONE, key))
        if not mine:
            self.files.blobs.delete([key])
        return mine

    def fail(self, claimed: ClaimedClip, worker_id: str, exc: BaseException) -> None:
        """Record what restoring the clip raised: the coordinator raises it."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self._settle(claimed, worker_id, "state = ?, error_type = ?, error = ?", (FAILED, type(exc).__name__, message))

    def drop_orphans(self) -> int:
        """Delete the clip tasks whose job is no longer their coordinator's (it died, or the job ended while it
        was away); how many."""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT c.run_id, c.clip_index, c.input_key, c.output_key FROM clip_tasks c"
                " LEFT JOIN jobs j ON j.id = c.job_id"
                " WHERE j.id IS NULL OR j.status != ? OR j.worker_id IS NULL OR j.worker_id != c.coordinator",
                (IN_PROGRESS,),
            ).fetchall()
            conn.executemany(
                "DELETE FROM clip_tasks WHERE run_id = ? AND clip_index = ?",
                [(row["run_id"], row["clip_index"]) for row in rows],
            )
        self._delete_blobs(rows)
        return len(rows)

    # --- helpers ------------------------------------------------------------------------------------------------

    def _settle(self, claimed: ClaimedClip, worker_id: str, assignments: str, values: tuple) -> bool:
        with self.db.transaction() as conn:
            result = conn.execute(
                f"UPDATE clip_tasks SET {assignments}, lease_expires_at = NULL, finished_at = ?"
                " WHERE run_id = ? AND clip_index = ? AND worker_id = ? AND state = ?",
                (*values, time.time(), claimed.run_id, claimed.index, worker_id, RUNNING),
            )
            self._announce(conn, claimed.job_id)
        _wakeups.notify()
        return result.rowcount == 1

    def _drop(self, where: str, params: tuple) -> int:
        with self.db.transaction() as conn:
            rows = conn.execute(f"SELECT input_key, output_key FROM clip_tasks WHERE {where}", params).fetchall()
            conn.execute(f"DELETE FROM clip_tasks WHERE {where}", params)
        self._delete_blobs(rows)
        return len(rows)

    def _delete_blobs(self, rows) -> None:
        keys = [key for row in rows for key in (row["input_key"], row["output_key"]) if key is not None]
        if keys:
            self.files.blobs.delete(keys)

    def _put(self, key: str, data: bytes) -> None:
        tmp = self.files.tmp_dir / f"clip-{secrets.token_hex(8)}"
        tmp.write_bytes(data)
        try:
            self.files.blobs.put_file(key, tmp, "application/octet-stream")
        finally:
            tmp.unlink(missing_ok=True)

    def _announce(self, conn, job_id: str) -> None:
        """The job's watchers in other processes re-read it (PostgreSQL NOTIFY, sent at commit)."""
        if self.db.is_postgres:
            conn.execute("SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, job_id))


# --- the coordinator ----------------------------------------------------------------------------------------------


class FleetClips:
    """A `ClipRunner` for one run of a video job: its clips restored by every live worker, in clip order.

    `local` restores a clip in this worker; `helpers()` counts the other live workers with a model (asked again
    at most every `refresh_s`); `check()` raises to stop the job (a cancel, a shutdown) and is called while
    waiting."""

    def __init__(
        self,
        queue: ClipTaskQueue,
        run: ClipRun,
        local: LocalClips,
        helpers: Callable[[], int],
        check: Callable[[], None],
        refresh_s: float,
    ):
        self.queue = queue
        self.clip_run = run
        self.local = local
        self.helpers = helpers
        self.check = check
        self.refresh_s = refresh_s

    def run(self, tasks: Iterator[ClipTask]) -> Iterator[RestoredClip]:
        run, queue = self.clip_run, self.queue
        if dropped := queue.drop_earlier_runs(run):
            log.info("job %s: dropped %d clip task(s) of an earlier run", run.job_id, dropped)
        kept: dict[int, ClipTask] = {}  # pulled and not shared: this worker restores them
        published: dict[int, ClipTask] = {}  # shared and not back yet (kept: this worker may claim them itself)
        restored: dict[int, RestoredClip] = {}  # back, waiting for an earlier clip
        wake = threading.Event()
        _wakeups.add(wake)
        helpers, asked_at = 0, float("-inf")
        next_index = pulled = 0
        exhausted = shared = False
        try:
            while True:
                if time.monotonic() - asked_at >= self.refresh_s:
                    helpers, asked_at = self.helpers(), time.monotonic()
                window = PER_WORKER * (1 + helpers) if helpers else 1
                while not exhausted and pulled - next_index < window:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                        break
                    pulled += 1
                    if helpers:
                        shared = True
                        queue.publish(run, task, self.local.vae_tiling)
                        published[task.index] = task
                    else:
                        kept[task.index] = task
                if next_index in restored:
                    yield restored.pop(next_index)
                    next_index += 1
                    continue
                if exhausted and next_index == pulled:
                    return
                self.check()
                wake.clear()  # set by any change from now on: the wait below returns at once
                if published and self._collect(published, restored):
                    continue
                if kept:
                    index = min(kept)
                    restored[index] = self.local.restore(kept.pop(index))
                    continue
                claimed = queue.claim(run.coordinator, run.run_id) if published else None
                if claimed is not None:
                    with queue.leased(claimed, run.coordinator):
                        restored[claimed.index] = self.local.restore(published.pop(claimed.index))
                    queue.forget(run.run_id, claimed.index)
                    continue
                wake.wait(_POLL_S)  # every clip in flight is with another worker
        finally:
            _wakeups.discard(wake)
            if shared:  # what is left of the run: clips in flight when it stopped
                queue.drop_run(run.run_id)

    def _collect(self, published: dict[int, ClipTask], restored: dict[int, RestoredClip]) -> bool:
        """Take the clips other workers finished; raise a clip's failure. True when one came back."""
        states = self.queue.states(self.clip_run.run_id)
        came_back = False
        for index in sorted(published):
            state = states.get(index)
            if state is None:  # swept: this worker no longer holds the job
                self.check()
                raise RuntimeError(f"clip {index}'s task was dropped: this run of the job is over")
            if state.state == FAILED:
                raise clip_error(state)
            if state.state == DONE:
                restored[index] = self.queue.take(self.clip_run.run_id, state)
                del published[index]
                came_back = True
        return came_back


def clip_error(state: ClipState) -> Exception:
    """What a clip that failed elsewhere raises here: out of memory as such (the job answers 503 as for a clip
    restored here), workers that kept dying as fal's 503 `runner_disconnected`, anything else with the worker's
    error."""
    if state.error_type == "OutOfMemoryError":
        return torch.OutOfMemoryError(state.error)
    if state.error_type == WORKERS_LOST:  # as a job whose worker keeps dying: fal's 503, not a bug's 500
        return request_error(503, f"clip {state.index}: {state.error}", "runner_disconnected")
    return ClipFailed(f"clip {state.index} failed on worker {state.worker_id}: {state.error_type}: {state.error}")


# --- helping the others -------------------------------------------------------------------------------------------


class ClipHelper:
    """A worker's share of the clips of videos that other workers run: `restore_next` between its own jobs."""

    def __init__(self, queue: ClipTaskQueue, worker_id: str, wake: threading.Event):
        """`wake`: the event the worker waits on when idle; set when a clip task is queued in this process."""
        self.queue = queue
        self.worker_id = worker_id
        self.wake = wake
        self._swept_at = float("-inf")
        _wakeups.add(wake)

    def restore_next(self, engines: EngineHolder) -> bool:
        """Claim a clip task and restore it; False when there is none (or this worker has no model). A database
        error is raised (the worker's loop retries); a file store failure is logged, and the clip is claimed again
        when its lease expires."""
        try:
            return self._restore_next(engines)
        except SQLAlchemyError:
            raise
        except Exception:
            log.exception("restoring a clip of another worker's video failed")
            return False

    def _restore_next(self, engines: EngineHolder) -> bool:
        if engines.state != "ready":
            return False
        if time.monotonic() - self._swept_at >= self.queue.lease_s:
            self._swept_at = time.monotonic()
            if swept := self.queue.drop_orphans():
                log.info("dropped %d clip task(s) of video runs that are over", swept)
        claimed = self.queue.claim(self.worker_id)
        if claimed is None:
            return False
        started = time.perf_counter()
        try:
            task, vae_tiling = self.queue.read(claimed)
            with self.queue.leased(claimed, self.worker_id):
                clip = LocalClips(engines.get().pipeline, vae_tiling, name=self.worker_id).restore(task)
        except Exception as exc:  # the coordinator fails the job with it
            log.warning("job %s: clip %d failed: %s: %s", claimed.job_id, claimed.index, type(exc).__name__, exc)
            self.queue.fail(claimed, self.worker_id, exc)
            return True
        if self.queue.finish(claimed, self.worker_id, clip):
            log.info(
                "job %s: restored clip %d in %.2f s", claimed.job_id, claimed.index, time.perf_counter() - started
            )
        return True
