"""Worker processes kept alive: `serve --devices ...` and `seedvr-local worker --devices a,b` run one process per
device under a supervisor that restarts any of them that exits while the server is not stopping (killed by the
OOM killer, `kill -9`, a crash in a native library).

When a worker process exits, the supervisor reaps it at once (no defunct child), logs how it ended, adds one to
the fleet-wide `seedvr_worker_restarts_total` counter, and hands back what it held: its job's and its clips'
leases end now, not a lease later, so its job runs again at once (that run counted as one of the job's attempts:
a job that kills its worker every time fails after `max_job_attempts` runs, and never wedges the queue). Its row
in the workers' registry says "restarting" until the new process starts, which /readyz reports. The new process
starts after a backoff (1 s, doubling up to 30 s; back to 1 s once a process has lived a minute), so a worker that
dies at start-up cannot spin.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_sentinels
from multiprocessing.process import BaseProcess

from seedvr_local.server.db import Database
from seedvr_local.server.fleet import WorkerRegistry
from seedvr_local.server.jobs import JobStore
from seedvr_local.server.metrics import Metrics

log = logging.getLogger("seedvr_local.server")

#: The first wait before a restart, its cap, and how long a process must live for the wait to start over.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
STABLE_S = 60.0


def describe_exit(exitcode: int | None) -> str:
    """`killed by SIGKILL`, `exit code 1`."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class _Slot:
    """One device's worker: its process now, when it started, and the wait before the next restart."""

    device: str
    process: BaseProcess | None = None
    started_at: float = 0.0
    backoff_s: float = RESTART_BACKOFF_S
    restart_at: float | None = None  # when the next process starts (None: one is running)
    replaced: tuple[str, ...] = ()  # the registry rows of the process that died, "restarting" until then


class WorkerSupervisor:
    """Starts a process per device (`start(device)` returns it started) and keeps each one running until `stop`.

    `db`: the job database the workers use, where the supervisor counts restarts and frees what a dead worker
    held."""

    def __init__(
        self,
        start: Callable[[str], BaseProcess],
        devices: list[str],
        db: Database,
        max_job_attempts: int,
        backoff_s: float = RESTART_BACKOFF_S,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
    ):
        self._start = start
        self._slots = [_Slot(device, backoff_s=backoff_s) for device in devices]
        self._first_backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self.db = db
        self.jobs = JobStore(db, max_job_attempts)
        self.registry = WorkerRegistry(db)
        self.metrics = Metrics(db)
        self.restarts = 0  # in this supervisor's life (the counter in the database is the fleet's)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def processes(self) -> list[BaseProcess]:
        with self._lock:
            return [slot.process for slot in self._slots if slot.process is not None]

    def start(self) -> WorkerSupervisor:
        with self._lock:
            for slot in self._slots:
                self._launch(slot)
        self._monitor = threading.Thread(target=self._watch, name="seedvr-supervisor", daemon=True)
        self._monitor.start()
        return self

    def stop(self, grace_s: float) -> None:
        """No more restarts; SIGTERM to each process (it finishes or requeues its job), then wait; one still alive
        after the grace is killed, and its job comes back when its lease expires."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
        processes = self.processes
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(grace_s + 5)
            if process.is_alive():
                process.kill()
                process.join()
        self.db.close()

    def wait(self, stop: threading.Event, grace_s: float) -> int:
        """Supervise until `stop` is set, then stop the processes; the largest exit code among the last ones."""
        stop.wait()
        self.stop(grace_s)
        return max((abs(process.exitcode or 0) for process in self.processes), default=0)

    # --- the monitor thread ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                running = {slot.process.sentinel: slot for slot in self._slots if slot.restart_at is None}
                due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 1.0
            # a process's sentinel is ready the moment it exits: no polling interval between a death and its restart
            for sentinel in wait_for_sentinels(list(running), timeout=min(timeout, 1.0)):
                self._exited(running[sentinel])
            self._restart_due()

    def _exited(self, slot: _Slot) -> None:
        process = slot.process
        process.join()  # reaped: no defunct child
        if self._stopping.is_set():
            return
        lived = time.monotonic() - slot.started_at
        slot.backoff_s = self._first_backoff_s if lived >= STABLE_S else slot.backoff_s
        how = describe_exit(process.exitcode)
        log.error(
            "the worker process for %s (pid %s) exited (%s) after %.0f s; restarting it in %.0f s",
            slot.device, process.pid, how, lived, slot.backoff_s,
        )  # fmt: skip
        slot.replaced = self._release(process.pid, how)
        self.restarts += 1
        self.metrics.worker_restart()
        with self._lock:
            slot.restart_at = time.monotonic() + slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, self._backoff_max_s)

    def _restart_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            for slot in self._slots:
                if slot.restart_at is not None and slot.restart_at <= now and not self._stopping.is_set():
                    self._launch(slot)
                    log.info("restarted the worker process for %s (pid %s)", slot.device, slot.process.pid)
                    if slot.replaced:
                        self._safely(self.registry.replaced, slot.replaced)
                        slot.replaced = ()

    def _launch(self, slot: _Slot) -> None:
        slot.process = self._start(slot.device)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _release(self, pid: int, how: str) -> tuple[str, ...]:
        """What the dead process held, handed back now: its jobs run again (or fail, past their attempts), its
        clips go to other workers; its registry rows say it is restarting. The ids of those rows."""
        worker_ids = self._safely(self.registry.mark_restarting, socket.gethostname(), pid, how) or ()
        if worker_ids:
            self._safely(self.jobs.release_leases, worker_ids)
            self._safely(self.jobs.reclaim_expired)
        return tuple(worker_ids)

    @staticmethod
    def _safely(call, *args):
        """The database may be away (a restart): the leases then end by themselves, a lease later."""
        try:
            return call(*args)
        except Exception as exc:
            log.warning("%s failed: %s: %s", getattr(call, "__name__", call), type(exc).__name__, exc)
            return None
