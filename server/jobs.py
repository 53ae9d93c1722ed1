"""The durable job queue: every request (queued or sync) is a row; the worker claims them in order.

States are fal's: IN_QUEUE -> IN_PROGRESS -> COMPLETED. A failed, timed-out or cancelled request is
COMPLETED too, with an error and the HTTP status and body its result call answers with.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from seedvr_local.server.db import Database
from seedvr_local.server.errors import FalError, cancelled_error, queue_full_error, request_error, timeout_error
from seedvr_local.server.metrics import count_job
from seedvr_local.server.quotas import CLAIM_LOCK, owner_lock_key

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
PRIORITIES = {"normal": 0, "low": 1}

Outcome = Literal["ok", "invalid", "error", "cancelled", "timeout"]
CancelOutcome = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


@dataclass
class Job:
    id: str
    seq: int
    kind: str
    priority: int
    status: str
    input: dict[str, Any]
    base_url: str
    webhook_url: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    start_deadline: float | None
    attempts: int
    cancel_requested: bool
    outcome: str | None
    response_status: int | None
    response_body: Any
    response_headers: dict[str, str]
    error: str | None
    error_type: str | None
    inference_time: float | None
    owner: str | None = None
    worker_id: str | None = None
    lease_expires_at: float | None = None
    #: The limits it was accepted under (settings.JOB_LIMITS); {} for a job stored before they were.
    limits: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row) -> Job:
        """`input` is {} unless the row was read with it (`JobStore.get(..., with_input=True)`); `response_body` None
        when it was read without it (`with_result=False`)."""
        columns = row.keys()
        return cls(
            id=row["id"],
            seq=row["seq"],
            kind=row["kind"],
            priority=row["priority"],
            status=row["status"],
            input=json.loads(row["input"]) if "input" in columns else {},
            base_url=row["base_url"],
            webhook_url=row["webhook_url"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            start_deadline=row["start_deadline"],
            attempts=row["attempts"],
            cancel_requested=bool(row["cancel_requested"]),
            outcome=row["outcome"],
            response_status=row["response_status"],
            response_body=(
                json.loads(row["response_body"]) if "response_body" in columns and row["response_body"] is not None
                else None
            ),
            response_headers=json.loads(row["response_headers"] or "{}"),
            error=row["error"],
            error_type=row["error_type"],
            inference_time=row["inference_time"],
            owner=row["owner"],
            worker_id=row["worker_id"],
            lease_expires_at=row["lease_expires_at"],
            limits=json.loads(row["limits"] or "{}"),
        )


#: Every column of a job but its input and its result: what status polls and SSE read, so a poll costs the same
#: whatever the size of the input or of a sync_mode output.
STATUS_COLUMNS = (
    "seq, id, kind, priority, status, base_url, webhook_url, created_at, started_at, finished_at, start_deadline,"
    " attempts, cancel_requested, outcome, response_status, response_headers, error, error_type,"
    " inference_time, owner, worker_id, lease_expires_at, limits"
)


@dataclass
class Completion:
    """How a job ended: the result call answers `status_code` with `body` and `headers`."""

    outcome: Outcome
    status_code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None

    @classmethod
    def success(cls, output: dict[str, Any], inference_time: float) -> Completion:
        return cls("ok", 200, output, inference_time=inference_time)

    @classmethod
    def failure(cls, exc: FalError, outcome: Outcome | None = None, inference_time: float | None = None) -> Completion:
        if outcome is None:
            outcome = "invalid" if exc.status_code < 500 else "error"
        return cls(outcome, exc.status_code, exc.body, exc.response_headers, exc.message, exc.kind, inference_time)


@dataclass
class LogEntry:
    seq: int
    timestamp: str
    level: str
    message: str

    def as_fal(self) -> dict[str, str]:
        return {"message": self.message, "level": self.level, "source": "USER", "timestamp": self.timestamp}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: PostgreSQL channel on which every change to a job is announced (payload: the job id, or "" for "the queue
#: moved"): API processes forward it to their SSE streams and sync waits (server/fleet.py).
CHANGES_CHANNEL = "seedvr_jobs"

#: Rewrites a new job's input before it is stored (given the input and the job's base URL): how a large data URI
#: leaves the row for the file store (ServerState wires it).
InputWriter = Callable[[dict[str, Any], str], dict[str, Any]]


class JobStore:
    """`on_change(job_id)` is called after every change to a job, `on_change(None)` when queue positions
    moved; `on_completed(job, completion)` once per job, after it completed (however it did)."""

    def __init__(
        self,
        db: Database,
        max_attempts: int = 2,
        on_change: Callable[[str | None], None] | None = None,
        on_completed: Callable[[Job, Completion], None] | None = None,
        write_input: InputWriter | None = None,
        limits: dict[str, int | None] | None = None,
        max_queued_per_owner: int | None = None,
        max_running_per_owner: int | None = None,
    ):
        """`limits`: stored with every job created here, for the worker that runs it (ServerSettings.job_limits).
        `max_queued_per_owner`: one more queued job of an owner is a 429 (server/quotas.py);
        `max_running_per_owner`: stored with every job created here, the most of its owner's jobs that workers
        run at once."""
        self.db = db
        self.max_queued_per_owner = max_queued_per_owner
        self.max_running_per_owner = max_running_per_owner
        self.limits = json.dumps(limits) if limits is not None else None
        self.max_attempts = max_attempts
        self.on_change = on_change or (lambda job_id: None)
        self.on_completed = on_completed or (lambda job, completion: None)
        self.write_input = write_input or (lambda input, base_url: input)

    # --- creating and reading -------------------------------------------------------------------

    def create(
        self,
        kind: Literal["queue", "sync"],
        input: dict[str, Any],
        base_url: str,
        priority: int = 0,
        webhook_url: str | None = None,
        start_deadline: float | None = None,
        completion: Completion | None = None,
        owner: str | None = None,
    ) -> Job:
        """A new job, queued; or already completed when `completion` is given (an invalid input)."""
        job_id = str(uuid.uuid4())
        quota = completion is None and self.max_queued_per_owner is not None
        if quota:  # before a large input is stored for nothing
            with self.db.reading() as conn:
                self._check_queued(conn, owner)
        stored_input = self.write_input(input, base_url)
        now = time.time()
        done: list = []
        with self.db.transaction() as conn:
            if quota:  # again, where it counts: in the transaction that adds the job
                if self.db.is_postgres:
                    conn.execute("SELECT pg_advisory_xact_lock(?)", (owner_lock_key(owner),))
                self._check_queued(conn, owner)
            conn.execute(
                "INSERT INTO jobs (id, kind, priority, status, input, base_url, webhook_url, created_at,"
                " start_deadline, owner, limits, running_cap) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id, kind, priority, IN_QUEUE, json.dumps(stored_input), base_url, webhook_url, now,
                    start_deadline, owner, self.limits, self.max_running_per_owner,
                ),
            )  # fmt: skip
            if completion is not None:
                self._complete(conn, job_id, completion, now, done)
            self._announce(conn, job_id)
        self.on_change(job_id)
        self._report(done)
        return self.get(job_id)

    def _check_queued(self, conn, owner: str | None) -> None:
        waiting = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = ? AND COALESCE(owner, '') = ?", (IN_QUEUE, owner or "")
        ).fetchone()[0]
        if waiting >= self.max_queued_per_owner:
            raise queue_full_error(self.max_queued_per_owner)

    def get(self, job_id: str, with_input: bool = False, with_result: bool = True) -> Job | None:
        """The job; its input only when asked, its result (`response_body`) unless told not to read it."""
        columns = STATUS_COLUMNS + (", response_body" if with_result else "") + (", input" if with_input else "")
        row = self.db.query_one(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row) if row else None

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before this one (0: it is next)."""
        row = self.db.query_one(
            "SELECT COUNT(*) FROM jobs WHERE status = ? AND (priority < ? OR (priority = ? AND seq < ?))",
            (IN_QUEUE, job.priority, job.priority, job.seq),
        )
        return row[0]

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT status, COUNT(*) FROM jobs WHERE status != ? GROUP BY status", (COMPLETED,))
        counts = {IN_QUEUE: 0, IN_PROGRESS: 0}
        counts.update({row[0]: row[1] for row in rows})
        return counts

    # --- logs -------------------------------------------------------------------------------------

    def log(self, job_id: str, message: str, level: str = "INFO") -> None:
        """Retried while the database is away: a log line must not fail the job it describes."""
        timestamp = now_iso()

        def insert() -> None:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO job_logs (job_id, timestamp, level, message) VALUES (?, ?, ?, ?)",
                    (job_id, timestamp, level, message),
                )
                self._announce(conn, job_id)

        self.db.retrying(insert)
        self.on_change(job_id)

    def logs(self, job_id: str, after: int = 0) -> list[LogEntry]:
        rows = self.db.query(
            "SELECT seq, timestamp, level, message FROM job_logs WHERE job_id = ? AND seq > ? ORDER BY seq",
            (job_id, after),
        )
        return [LogEntry(*row) for row in rows]

    # --- the worker's side -------------------------------------------------------------------------

    def claim_next(self, worker_id: str = "local", lease_s: float = 30.0) -> Job | None:
        """The next job to run (priority, then arrival), now IN_PROGRESS and leased to `worker_id` for `lease_s`
        seconds; None when the queue is empty. Two workers never claim the same job: on PostgreSQL the row is
        locked and skipped by the others, on SQLite the transaction holds the database."""
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.is_postgres else ""
        now = time.time()
        with self.db.transaction() as conn:
            if self.db.is_postgres:  # one claim at a time: two at once could both pass an owner's running cap
                conn.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
            # a job whose owner already runs its cap of jobs (`running_cap`, server/quotas.py) waits in its place
            row = conn.execute(
                "SELECT id FROM jobs j WHERE status = ? AND (j.running_cap IS NULL OR (SELECT COUNT(*) FROM jobs r"
                " WHERE r.status = ? AND COALESCE(r.owner, '') = COALESCE(j.owner, '')) < j.running_cap)"
                f" ORDER BY priority, seq LIMIT 1{skip_locked}",
                (IN_QUEUE, IN_PROGRESS),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, worker_id = ?,"
                " lease_expires_at = ? WHERE id = ?",
                (IN_PROGRESS, now, worker_id, now + lease_s, row["id"]),
            )
            self._announce(conn, "")
        self.on_change(None)
        return self.get(row["id"], with_input=True)

    def renew(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        """Extend the lease of a running job; False when the job is no longer this worker's (it completed,
        or its lease had expired and it was given to another worker)."""
        with self.db.transaction() as conn:
            result = conn.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND worker_id = ? AND status = ?",
                (time.time() + lease_s, job_id, worker_id, IN_PROGRESS),
            )
        return result.rowcount == 1

    def release_leases(self, worker_ids: list[str] | tuple[str, ...]) -> None:
        """The leases of workers known dead (their process exited) end now: their jobs are reclaimed at the next
        `reclaim_expired` (each run counted as an attempt), and so are the clips they restored for other workers'
        videos (server/clip_tasks.py), instead of a lease later."""
        if not worker_ids:
            return
        marks = ", ".join("?" for _ in worker_ids)
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET lease_expires_at = ? WHERE status = ? AND worker_id IN ({marks})",
                (now - 1, IN_PROGRESS, *worker_ids),
            )
            conn.execute(
                f"UPDATE clip_tasks SET lease_expires_at = ? WHERE state = 'running' AND worker_id IN ({marks})",
                (now - 1, *worker_ids),
            )

    def requeue(self, job_id: str, worker_id: str | None = None) -> None:
        """Put a job the worker gave up at shutdown back in its place; that run does not count."""
        owned = "" if worker_id is None else " AND worker_id = ?"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, started_at = NULL, worker_id = NULL, lease_expires_at = NULL,"
                f" attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE id = ? AND status = ?{owned}",
                (IN_QUEUE, job_id, IN_PROGRESS, *([] if worker_id is None else [worker_id])),
            )
            self._announce(conn, "")
        self.on_change(None)

    def complete(self, job_id: str, completion: Completion) -> bool:
        """Finish a job (and queue its webhook); False when it had already completed."""
        done: list = []
        with self.db.transaction() as conn:
            self._complete(conn, job_id, completion, time.time(), done)
            self._announce(conn, job_id)
        self.on_change(None)
        self._report(done)
        return bool(done)

    def _report(self, done: list[tuple[str, Completion]]) -> None:
        for job_id, completion in done:
            self.on_completed(self.get(job_id), completion)

    def _announce(self, conn, job_id: str) -> None:
        """Tell the other processes (delivered when the transaction commits)."""
        if self.db.is_postgres:
            conn.execute("SELECT pg_notify(?, ?)", (CHANGES_CHANNEL, job_id))

    def _complete(self, conn, job_id: str, completion: Completion, now: float, done: list) -> bool:
        from seedvr_local.server.webhooks import webhook_body  # the payload format lives with the sender

        row = conn.execute(
            f"SELECT status, webhook_url, base_url FROM jobs WHERE id = ?{self.db.for_update}", (job_id,)
        ).fetchone()
        if row is None or row["status"] == COMPLETED:
            return False
        conn.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, outcome = ?, response_status = ?, response_body = ?,"
            " response_headers = ?, error = ?, error_type = ?, inference_time = ?, lease_expires_at = NULL"
            " WHERE id = ?",
            (
                COMPLETED,
                now,
                completion.outcome,
                completion.status_code,
                json.dumps(completion.body),
                json.dumps(completion.headers),
                completion.error,
                completion.error_type,
                completion.inference_time,
                job_id,
            ),
        )
        count_job(conn, completion.outcome)
        if row["webhook_url"]:
            conn.execute(
                "INSERT INTO webhooks (job_id, url, body, next_attempt, state) VALUES (?, ?, ?, ?, 'pending')",
                (job_id, row["webhook_url"], webhook_body(job_id, completion, row["base_url"]), now),
            )
        done.append((job_id, completion))
        return True

    # --- cancellation, deadlines, restarts -----------------------------------------------------

    def request_cancel(self, job_id: str) -> CancelOutcome:
        """A queued job is cancelled at once; a running one is flagged for the worker to stop."""
        done: list = []
        with self.db.transaction() as conn:
            row = conn.execute(f"SELECT status FROM jobs WHERE id = ?{self.db.for_update}", (job_id,)).fetchone()
            if row is None:
                return "NOT_FOUND"
            if row["status"] == COMPLETED:
                return "ALREADY_COMPLETED"
            if row["status"] == IN_QUEUE:
                self._complete(conn, job_id, Completion.failure(cancelled_error(), "cancelled"), time.time(), done)
            else:
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            self._announce(conn, job_id)
        self.on_change(None)
        self._report(done)
        return "CANCELLATION_REQUESTED"

    def is_cancel_requested(self, job_id: str) -> bool:
        row = self.db.query_one("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))
        return bool(row and row[0])

    def expire_overdue(self, now: float | None = None) -> list[str]:
        """Complete the queued jobs whose start deadline passed with fal's user timeout (504)."""
        now = time.time() if now is None else now
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.is_postgres else ""
        done: list = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE status = ? AND start_deadline IS NOT NULL AND start_deadline < ?"
                + skip_locked,
                (IN_QUEUE, now),
            ).fetchall()
            for row in rows:
                self._complete(conn, row["id"], Completion.failure(timeout_error(), "timeout"), now, done)
                self._announce(conn, row["id"])
        if done:
            self.on_change(None)
            self._report(done)
        return [job_id for job_id, _ in done]

    def reclaim_expired(self, now: float | None = None) -> dict[str, list[str]]:
        """The running jobs whose worker stopped renewing its lease (it died, or lost the database): each runs
        again, unless it was cancelled or has already run `max_attempts` times (then it fails, as after a crash)."""
        now = time.time() if now is None else now
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.is_postgres else ""
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, kind, status, attempts, cancel_requested FROM jobs"
                " WHERE status = ? AND lease_expires_at IS NOT NULL AND lease_expires_at < ?" + skip_locked,
                (IN_PROGRESS, now),
            ).fetchall()
            report = self._recover_rows(conn, rows, now, "its worker stopped", sync_rerun=True)
        self._after_recovery(report, "its worker stopped while this request was running; it runs again")
        return {"requeued": report["requeued"], "failed": [job_id for job_id, _ in report["done"]]}

    def recover(self) -> dict[str, list[str]]:
        """After a restart of the single server (SQLite): rerun the queue jobs that were running; fail what cannot
        be rerun. Sync jobs are failed (their caller's connection is gone), and so is a job that was running
        during `max_attempts` stops: it may be what brought the server down."""
        now = time.time()
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, kind, status, attempts, cancel_requested FROM jobs WHERE status != ?", (COMPLETED,)
            ).fetchall()
            report = self._recover_rows(conn, rows, now, "the server stopped", sync_rerun=False)
        self._after_recovery(report, "the server restarted while this request was running; it runs again")
        return {"requeued": report["requeued"], "failed": [job_id for job_id, _ in report["done"]]}

    def _recover_rows(self, conn, rows, now: float, what: str, sync_rerun: bool) -> dict:
        requeued, done = [], []
        for row in rows:
            if row["kind"] == "sync" and not sync_rerun:
                error = request_error(503, "the server restarted before this request finished", "runner_disconnected")
                self._complete(conn, row["id"], Completion.failure(error), now, done)
            elif row["status"] == IN_PROGRESS and row["cancel_requested"]:
                self._complete(conn, row["id"], Completion.failure(cancelled_error(), "cancelled"), now, done)
            elif row["status"] == IN_PROGRESS and row["attempts"] >= self.max_attempts:
                error = request_error(
                    503, f"{what} {row['attempts']} times while running this request", "runner_disconnected"
                )
                self._complete(conn, row["id"], Completion.failure(error), now, done)
            elif row["status"] == IN_PROGRESS:
                conn.execute(
                    "UPDATE jobs SET status = ?, started_at = NULL, worker_id = NULL, lease_expires_at = NULL"
                    " WHERE id = ?",
                    (IN_QUEUE, row["id"]),
                )
                requeued.append(row["id"])
            else:
                continue
            self._announce(conn, row["id"])
        return {"requeued": requeued, "done": done}

    def _after_recovery(self, report: dict, message: str) -> None:
        for job_id in report["requeued"]:
            self.log(job_id, message, "WARN")
        if report["requeued"] or report["done"]:
            self.on_change(None)
        self._report(report["done"])


class OwnedJobs:
    """The job store as one API key sees it: the jobs it submitted, and no other (fal answers 404 for another
    account's request). Everything else is the store's."""

    def __init__(self, jobs: JobStore, owner: str, sees_all: bool):
        self._jobs = jobs
        self.owner = owner
        self.sees_all = sees_all

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jobs, name)

    def create(self, *args: Any, **kwargs: Any) -> Job:
        return self._jobs.create(*args, owner=self.owner, **kwargs)

    def get(self, job_id: str, with_input: bool = False, with_result: bool = True) -> Job | None:
        job = self._jobs.get(job_id, with_input, with_result)
        if job is None or self.sees_all or job.owner == self.owner:
            return job
        return None
