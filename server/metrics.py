"""Prometheus metrics in the text exposition format (no client library needed for a handful of series).

Counters count since the process started, as Prometheus expects; the queue gauges are read from the
job store when scraped.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol


class WorkerInfo(Protocol):
    """What the metrics show of a worker (server/fleet.py's WorkerInfo)."""

    id: str
    host: str
    device: str
    model_state: str
    current_job: str | None
    jobs_done: int
    heartbeat_at: float

OUTCOMES = ("ok", "invalid", "error", "cancelled", "timeout")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs = {outcome: 0 for outcome in OUTCOMES}
        self.phase_seconds: dict[str, float] = defaultdict(float)
        self.phase_count: dict[str, int] = defaultdict(int)
        self.megapixels_total = 0.0
        self.webhooks: dict[str, int] = {"delivered": 0, "retried": 0, "failed": 0}

    def job(self, outcome: str) -> None:
        with self._lock:
            self.jobs[outcome] = self.jobs.get(outcome, 0) + 1

    def phase(self, name: str, seconds: float) -> None:
        with self._lock:
            self.phase_seconds[name] += seconds
            self.phase_count[name] += 1

    def megapixels(self, value: float) -> None:
        with self._lock:
            self.megapixels_total += value

    def webhook(self, outcome: str) -> None:
        with self._lock:
            self.webhooks[outcome] = self.webhooks.get(outcome, 0) + 1

    def render(self, queued: int, running: int, model_state: str, workers: Sequence[WorkerInfo] = ()) -> str:
        """`workers`: the live workers of the whole fleet (every process on the job database)."""
        now = time.time()
        with self._lock:
            lines = [
                "# HELP seedvr_queue_depth Requests waiting for the worker.",
                "# TYPE seedvr_queue_depth gauge",
                f"seedvr_queue_depth {queued}",
                "# HELP seedvr_jobs_in_progress Requests being processed.",
                "# TYPE seedvr_jobs_in_progress gauge",
                f"seedvr_jobs_in_progress {running}",
                "# HELP seedvr_model_loaded 1 when the model is loaded and jobs can run.",
                "# TYPE seedvr_model_loaded gauge",
                f"seedvr_model_loaded {int(model_state == 'ready')}",
                "# HELP seedvr_jobs_total Finished requests by outcome.",
                "# TYPE seedvr_jobs_total counter",
                *(f'seedvr_jobs_total{{outcome="{name}"}} {count}' for name, count in sorted(self.jobs.items())),
                "# HELP seedvr_phase_seconds Time spent in each phase of a job.",
                "# TYPE seedvr_phase_seconds summary",
            ]
            for name in sorted(self.phase_count):
                lines.append(f'seedvr_phase_seconds_sum{{phase="{name}"}} {self.phase_seconds[name]:.6f}')
                lines.append(f'seedvr_phase_seconds_count{{phase="{name}"}} {self.phase_count[name]}')
            lines += [
                "# HELP seedvr_megapixels_processed_total Output megapixels produced.",
                "# TYPE seedvr_megapixels_processed_total counter",
                f"seedvr_megapixels_processed_total {self.megapixels_total:.6f}",
                "# HELP seedvr_webhook_deliveries_total Webhook POST attempts by outcome.",
                "# TYPE seedvr_webhook_deliveries_total counter",
                *(
                    f'seedvr_webhook_deliveries_total{{outcome="{name}"}} {n}'
                    for name, n in sorted(self.webhooks.items())
                ),
                "# HELP seedvr_workers Live workers (a heartbeat within two leases), fleet-wide.",
                "# TYPE seedvr_workers gauge",
                f"seedvr_workers {len(workers)}",
                "# HELP seedvr_worker_heartbeat_age_seconds Seconds since each live worker's last heartbeat.",
                "# TYPE seedvr_worker_heartbeat_age_seconds gauge",
                *(f"seedvr_worker_heartbeat_age_seconds{{{_labels(w)}}} {now - w.heartbeat_at:.3f}" for w in workers),
                "# HELP seedvr_worker_busy 1 while the worker runs a job.",
                "# TYPE seedvr_worker_busy gauge",
                *(f"seedvr_worker_busy{{{_labels(w)}}} {int(w.current_job is not None)}" for w in workers),
                "# HELP seedvr_worker_model_loaded 1 when the worker's model is loaded.",
                "# TYPE seedvr_worker_model_loaded gauge",
                *(f"seedvr_worker_model_loaded{{{_labels(w)}}} {int(w.model_state == 'ready')}" for w in workers),
                "# HELP seedvr_worker_jobs_total Jobs each live worker finished.",
                "# TYPE seedvr_worker_jobs_total counter",
                *(f"seedvr_worker_jobs_total{{{_labels(w)}}} {w.jobs_done}" for w in workers),
            ]
        return "\n".join(lines) + "\n"


def _labels(worker: WorkerInfo) -> str:
    return f'worker="{worker.id}",host="{worker.host}",device="{worker.device}"'
