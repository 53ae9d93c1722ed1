"""What lets several processes and hosts share one job database: the workers' registry (heartbeats, for /readyz
and /metrics) and per-key owners (job changes announced across processes: change_feed.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass

from seedvr_local.server.db import Database


def owner_of(api_key: str) -> str:
    """What a job row stores of the key that submitted it: a digest, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def new_worker_id(device: str) -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{device}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    device: str
    model_state: str
    current_job: str | None
    jobs_done: int
    heartbeat_at: float


class WorkerRegistry:
    """One row per worker, its heartbeat renewed while it runs."""

    def __init__(self, db: Database):
        self.db = db

    def register(self, worker_id: str, device: str) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO workers (id, host, pid, device, model_state, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, 'loading', ?, ?)",
            (worker_id, socket.gethostname(), os.getpid(), device, now, now),
        )

    def beat(self, worker_id: str, model_state: str, current_job: str | None) -> None:
        self.db.execute(
            "UPDATE workers SET heartbeat_at = ?, model_state = ?, current_job = ? WHERE id = ?",
            (time.time(), model_state, current_job, worker_id),
        )

    def job_done(self, worker_id: str) -> None:
        self.db.execute("UPDATE workers SET jobs_done = jobs_done + 1 WHERE id = ?", (worker_id,))

    def stopped(self, worker_id: str) -> None:
        self.db.execute("UPDATE workers SET stopped_at = ?, current_job = NULL WHERE id = ?", (time.time(), worker_id))

    def live(self, fresh_s: float) -> list[WorkerInfo]:
        """The workers that have not stopped and beat within `fresh_s` seconds."""
        rows = self.db.query(
            "SELECT id, host, pid, device, model_state, current_job, jobs_done, heartbeat_at FROM workers"
            " WHERE stopped_at IS NULL AND heartbeat_at > ? ORDER BY id",
            (time.time() - fresh_s,),
        )
        return [WorkerInfo(*row) for row in rows]

    def forget_stale(self, older_than_s: float) -> None:
        """Workers silent for longer than this are gone: their rows go (the retention of the registry)."""
        self.db.execute("DELETE FROM workers WHERE heartbeat_at < ?", (time.time() - older_than_s,))
