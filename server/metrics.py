"""Prometheus metrics in the text exposition format, for the whole fleet (no client library needed for a handful
of series).

Whichever process does something worth counting (a worker timing a phase, an API process cancelling a queued job
or delivering a webhook) adds it to the job database in one statement, so every API process answers /metrics for
all of them: a scrape through a load balancer reads the same series whichever front-end answers, and an API-only
front-end (which runs no job) still shows every worker's phases. The counters and histograms live in tables of
their own (`counters`, `phase_seconds`), which retention never touches: they count since the job database was
created, and only grow. The queue, the workers' heartbeats and their device memory are read when scraped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from seedvr_local.server.db import Database
from seedvr_local.server.fleet import RESTARTING, WorkerInfo

log = logging.getLogger("seedvr_local.server")


JOB_OUTCOMES = ("ok", "invalid", "error", "cancelled", "timeout")
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
#: The upper bounds of the phase-time histogram's buckets, in seconds: from a 10 ms decode to a 10-minute video
#: DiT pass (roughly 1-2.5-5 per decade), then the +Inf bucket.
PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf)

# One statement records a phase: a row per bucket, added to the bucket's counts (created by the first observation
# of that phase: no phase list to keep in step with the code that times them).
_OBSERVE = (
    "INSERT INTO phase_seconds (phase, le, observations, seconds) VALUES "
    + ", ".join("(?, ?, ?, ?)" for _ in PHASE_BUCKETS)
    + " ON CONFLICT (phase, le) DO UPDATE SET observations = phase_seconds.observations + excluded.observations,"
    " seconds = phase_seconds.seconds + excluded.seconds"
)
_COUNT = (
    "INSERT INTO counters (name, label, value) VALUES (?, ?, ?)"
    " ON CONFLICT (name, label) DO UPDATE SET value = counters.value + excluded.value"
)


def count_job(conn, outcome: str) -> None:
    """Count a finished job in the transaction that finishes it (JobStore): exactly once, whichever process
    finished it (a worker, or an API process cancelling a queued job), and in /metrics as soon as it is
    COMPLETED."""
    conn.execute(_COUNT, ("jobs", outcome, 1))


class Metrics:
    """Records into the job database (`db`) and renders what the whole fleet recorded there."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def megapixels(self, value: float) -> None:
        self._record(_COUNT, [("megapixels", "", value)])

    def worker_restart(self) -> None:
        """A worker process that exited was restarted by its supervisor (server/supervisor.py)."""
        self._record(_COUNT, [("worker_restarts", "", 1)])

    def webhook(self, outcome: str) -> None:
        self._record(_COUNT, [("webhook_deliveries", outcome, 1)])

    def phases(self, observations: Sequence[tuple[str, float]]) -> None:
        """Observations of the histogram, (phase, seconds) each: +1 (and the seconds) in every bucket whose bound
        it is within. One transaction for all of a job's phases: on SQLite every commit is a disk flush."""
        rows = []
        for name, seconds in observations:
            params = []
            for bound in PHASE_BUCKETS:
                within = seconds <= bound
                params += [name, bound, int(within), seconds if within else 0.0]
            rows.append(params)
        if rows:
            self._record(_OBSERVE, rows)

    def _record(self, sql: str, rows: Sequence[Sequence]) -> None:
        """A metric never fails what it measures: when the database is away for longer than its retries, the
        increment is logged and lost (the counters stay monotonic, a little short)."""

        def write() -> None:
            with self.db.transaction() as conn:
                conn.executemany(sql, rows)

        try:
            self.db.retrying(write)
        except SQLAlchemyError as exc:
            log.warning("a metric was not recorded (the database is unavailable: %s)", type(exc).__name__)

    def render(self, queued: int, running: int, model_loaded: bool, workers: Sequence[WorkerInfo] = ()) -> str:
        """The exposition text. `workers`: the live workers of the whole fleet (every process on the job
        database); `model_loaded`: whether jobs can run (this process's model, or a live worker's)."""
        now = time.time()
        counters = {(row[0], row[1]): row[2] for row in self.db.query("SELECT name, label, value FROM counters")}
        buckets = self.db.query("SELECT phase, le, observations, seconds FROM phase_seconds ORDER BY phase, le")
        lines = [
            "# HELP seedvr_queue_depth Requests waiting for a worker, fleet-wide.",
            "# TYPE seedvr_queue_depth gauge",
            f"seedvr_queue_depth {queued}",
            "# HELP seedvr_jobs_in_progress Requests being processed, fleet-wide.",
            "# TYPE seedvr_jobs_in_progress gauge",
            f"seedvr_jobs_in_progress {running}",
            "# HELP seedvr_model_loaded 1 when jobs can run: this process's model is loaded, or (an API-only "
            "server) at least one live worker's.",
            "# TYPE seedvr_model_loaded gauge",
            f"seedvr_model_loaded {int(model_loaded)}",
            "# HELP seedvr_jobs_total Finished requests by outcome, fleet-wide, since the job database was created.",
            "# TYPE seedvr_jobs_total counter",
            *(
                f'seedvr_jobs_total{{outcome="{outcome}"}} {_number(counters.get(("jobs", outcome), 0))}'
                for outcome in JOB_OUTCOMES
            ),
            "# HELP seedvr_phase_seconds Time spent in each phase of a job, by every worker of the fleet.",
            "# TYPE seedvr_phase_seconds histogram",
        ]
        for phase, rows in _by_phase(buckets).items():
            label = f'phase="{_escape(phase)}"'
            lines += [f'seedvr_phase_seconds_bucket{{{label},le="{_bound(row[1])}"}} {row[2]}' for row in rows]
            total = rows[-1]  # the +Inf bucket: every observation
            lines.append(f"seedvr_phase_seconds_sum{{{label}}} {total[3]:.6f}")
            lines.append(f"seedvr_phase_seconds_count{{{label}}} {total[2]}")
        lines += [
            "# HELP seedvr_megapixels_processed_total Output megapixels produced, fleet-wide.",
            "# TYPE seedvr_megapixels_processed_total counter",
            f"seedvr_megapixels_processed_total {counters.get(('megapixels', ''), 0.0):.6f}",
            "# HELP seedvr_webhook_deliveries_total Webhook POST attempts by outcome, fleet-wide.",
            "# TYPE seedvr_webhook_deliveries_total counter",
            *(
                f'seedvr_webhook_deliveries_total{{outcome="{outcome}"}} '
                f"{_number(counters.get(('webhook_deliveries', outcome), 0))}"
                for outcome in WEBHOOK_OUTCOMES
            ),
            "# HELP seedvr_worker_restarts_total Worker processes that exited and were restarted by their "
            "supervisor (serve --devices, worker --devices), fleet-wide.",
            "# TYPE seedvr_worker_restarts_total counter",
            f"seedvr_worker_restarts_total {_number(counters.get(('worker_restarts', ''), 0))}",
            "# HELP seedvr_workers Live workers (a heartbeat within two leases), fleet-wide; not those restarting.",
            "# TYPE seedvr_workers gauge",
            f"seedvr_workers {sum(worker.model_state != RESTARTING for worker in workers)}",
        ]
        lines += _worker_series(
            workers,
            ("heartbeat_age_seconds", "Seconds since each live worker's last heartbeat, by this server's clock.",
             lambda w: f"{max(0.0, now - w.heartbeat_at):.3f}"),
            ("last_heartbeat_timestamp_seconds", "Unix time of each live worker's last heartbeat, by its own clock.",
             lambda w: f"{w.heartbeat_at:.3f}"),
            ("start_timestamp_seconds", "Unix time each live worker started.", lambda w: f"{w.started_at:.3f}"),
            ("busy", "1 while the worker runs a job.", lambda w: int(w.current_job is not None)),
            ("model_loaded", "1 when the worker's model is loaded.", lambda w: int(w.model_state == "ready")),
            ("jobs_total", "Jobs each live worker finished since it started.", lambda w: w.jobs_done, "counter"),
            ("memory_allocated_bytes", "Device memory in tensors (CUDA workers; none on the CPU).",
             lambda w: w.memory_allocated),
            ("memory_reserved_bytes", "Device memory the worker holds: CUDA's caching allocator on a GPU, the "
             "process's resident set size on the CPU.", lambda w: w.memory_reserved),
            ("memory_total_bytes", "The worker device's memory: the GPU's, or the host's RAM for a CPU worker.",
             lambda w: w.memory_total),
        )  # fmt: skip
        return "\n".join(lines) + "\n"


def _worker_series(workers: Sequence[WorkerInfo], *series) -> list[str]:
    """A family per (name, help, value[, type]) with a sample per worker (none where the value is None: a
    worker that measured nothing yet, or a figure its device does not have)."""
    lines = []
    for name, help_text, value, *kind in series:
        family = f"seedvr_worker_{name}"
        lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind[0] if kind else 'gauge'}"]
        for worker in workers:
            sample = value(worker)
            if sample is not None:
                lines.append(f"{family}{{{_labels(worker)}}} {sample}")
    return lines


def _by_phase(rows) -> dict[str, list]:
    phases: dict[str, list] = {}
    for row in rows:
        phases.setdefault(row[0], []).append(row)
    return phases


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else f"{value:g}"


def _number(value: float) -> str:
    """A count stored as a float, written as the integer it is."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}"


def _labels(worker: WorkerInfo) -> str:
    return f'worker="{_escape(worker.id)}",host="{_escape(worker.host)}",device="{_escape(worker.device)}"'


def _escape(value: str) -> str:
    """A label value as the exposition format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
