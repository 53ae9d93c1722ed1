"""What lets several processes and hosts share one job database: the workers' registry (heartbeats, for /readyz
and /metrics) and per-key owners (job changes announced across processes: change_feed.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass

from seedvr_local.server.db import Database


#: A worker's `model_state` while its supervisor restarts its process (server/supervisor.py); the others are the
#: model's: loading, ready, failed.
RESTARTING = "restarting"


def owner_of(api_key: str) -> str:
    """What a job row stores of the key that submitted it: a digest, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def new_worker_id(device: str) -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{device}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class DeviceMemory:
    """What a worker's device holds, in bytes (None: not measured there)."""

    allocated: int | None
    reserved: int | None
    total: int | None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def device_memory(device: str) -> DeviceMemory:
    """From CUDA's caching allocator on a GPU (tensors, held, the device's total; nothing before CUDA is set up);
    on the CPU the process's resident set (held) and the host's RAM (total), as the CPU has no allocator to ask.
    Never imports torch: a process that has not loaded it has no CUDA memory."""
    if device.startswith("cuda"):
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():  # nothing on the device yet (asking would set CUDA up)
            return DeviceMemory(None, None, None)
        return DeviceMemory(
            torch.cuda.memory_allocated(device),
            torch.cuda.memory_reserved(device),
            torch.cuda.get_device_properties(device).total_memory,
        )
    try:
        with open("/proc/self/statm") as statm:  # Linux; elsewhere the CPU's figures are not measured
            resident = int(statm.read().split()[1]) * _PAGE
    except OSError:
        resident = None
    physical = os.sysconf("SC_PHYS_PAGES") * _PAGE if hasattr(os, "sysconf") else None
    return DeviceMemory(None, resident, physical)


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    device: str
    model_state: str
    current_job: str | None
    jobs_done: int
    started_at: float
    heartbeat_at: float
    memory_allocated: int | None
    memory_reserved: int | None
    memory_total: int | None
    model: str | None
    model_notice: str | None


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

    def beat(
        self,
        worker_id: str,
        model_state: str,
        current_job: str | None,
        memory: DeviceMemory,
        model: str | None = None,
        model_notice: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE workers SET heartbeat_at = ?, model_state = ?, current_job = ?, memory_allocated = ?,"
            " memory_reserved = ?, memory_total = ?, model = ?, model_notice = ? WHERE id = ?",
            (time.time(), model_state, current_job, memory.allocated, memory.reserved, memory.total, model,
             model_notice, worker_id),
        )  # fmt: skip

    def job_done(self, worker_id: str) -> None:
        self.db.execute("UPDATE workers SET jobs_done = jobs_done + 1, current_job = NULL WHERE id = ?", (worker_id,))

    def stopped(self, worker_id: str) -> None:
        self.db.execute("UPDATE workers SET stopped_at = ?, current_job = NULL WHERE id = ?", (time.time(), worker_id))

    def mark_restarting(self, host: str, pid: int, how: str) -> list[str]:
        """The rows of the worker process `pid` on `host`, which exited (`how`: "killed by SIGKILL"): they say
        "restarting" (with how it ended as their notice) until its supervisor starts the next process; their ids."""
        rows = self.db.query(
            "SELECT id FROM workers WHERE host = ? AND pid = ? AND stopped_at IS NULL", (host, pid)
        )
        ids = [row[0] for row in rows]
        for worker_id in ids:
            self.db.execute(
                "UPDATE workers SET model_state = ?, model_notice = ?, current_job = NULL, heartbeat_at = ?"
                " WHERE id = ?",
                (RESTARTING, f"its process exited ({how}) and is restarting", time.time(), worker_id),
            )
        return ids

    def replaced(self, worker_ids: tuple[str, ...]) -> None:
        """A restarted worker's new process is up: the dead one's rows are history."""
        for worker_id in worker_ids:
            self.stopped(worker_id)

    def live(self, fresh_s: float) -> list[WorkerInfo]:
        """The workers that have not stopped and beat within `fresh_s` seconds."""
        rows = self.db.query(
            "SELECT id, host, pid, device, model_state, current_job, jobs_done, started_at, heartbeat_at,"
            " memory_allocated, memory_reserved, memory_total, model, model_notice FROM workers"
            " WHERE stopped_at IS NULL AND heartbeat_at > ? ORDER BY id",
            (time.time() - fresh_s,),
        )
        return [WorkerInfo(*row) for row in rows]

    def forget_stale(self, older_than_s: float) -> None:
        """Workers silent for longer than this are gone: their rows go (the retention of the registry)."""
        self.db.execute("DELETE FROM workers WHERE heartbeat_at < ?", (time.time() - older_than_s,))
