"""SIGTERM drains a worker process: the running job stops at its next phase boundary and goes back to the queue
(the run does not count as an attempt), the process exits 0, and the job then completes on another worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from seedvr_local.server.worker_process import open_worker
from tests.server.helpers import FakeEngine, data_uri, png_bytes, wait_status, wait_until

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
SLOW_S = 2.0


@pytest.fixture
def store() -> str:
    return "postgresql"  # standalone workers share the fleet's job database


def test_sigterm_mid_job_finishes_the_phase_requeues_the_job_and_exits(settings, tmp_path):
    settings.worker_in_process = False
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "tests.server.drain_worker", str(settings.data_dir),
               settings.database_url or "-", str(SLOW_S)]  # fmt: skip
    with TestClient(create_app(settings, lambda: None)) as client:
        process = subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env={**os.environ})
        try:
            wait_until(lambda: client.get("/readyz").status_code == 200, "the worker ready", timeout=120)
            request_id = client.post(SUBMIT, json={"image_url": data_uri(png_bytes(32, 32)), "seed": 7}).json()[
                "request_id"
            ]
            wait_until(lambda: _in_dit(client, request_id), "the job in its slow phase", timeout=60)
            process.send_signal(signal.SIGTERM)
            # a clean exit with the job back in the queue (below): it finished the phase, not killed, no lease ran out
            assert process.wait(60) == 0, log_path.read_text()
        finally:
            process.kill()
        log = log_path.read_text()
        assert "interrupted by shutdown, back in the queue" in log, log
        status = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}/status").json()
        assert status["status"] == "IN_QUEUE"
        job = client.app.state.server.jobs.get(request_id)
        assert job.attempts == 0 and job.worker_id is None  # the interrupted run is not held against the job

        worker = open_worker(settings, "cpu", FakeEngine, FakeEngine.description)  # another worker takes it
        worker.start()
        try:
            wait_status(client, request_id, timeout=30)
        finally:
            worker.stop(10)
            worker.jobs.db.close()
        result = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}")
        assert result.status_code == 200 and result.json()["image"]["width"] == 64


def _in_dit(client, request_id: str) -> bool:
    status = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}/status", params={"logs": 1}).json()
    return status["status"] == "IN_PROGRESS" and any(e["message"].startswith("dit:") for e in status["logs"])
