"""Worker processes (`seedvr-local worker`) beside an API-only server on one PostgreSQL database: readiness from
heartbeats, a worker killed mid-job (its job runs again elsewhere once its lease expires), SIGTERM drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from tests.server.helpers import data_uri, png_bytes, wait_status, wait_until

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
REQUESTS = "/queue/fal-ai/seedvr/requests"


@pytest.fixture
def store() -> str:
    return "postgresql"  # worker processes share the job database: the fleet's engine


def _worker(settings, log_path, lease_s: float = 3.0) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "seedvr_local.cli", "worker", "--model", "tiny", "--devices", "cpu",
        "--database-url", settings.database_url, "--data-dir", str(settings.data_dir), "--lease-seconds", str(lease_s),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env={**os.environ})


def test_a_killed_worker_s_job_runs_again_on_another_and_sigterm_drains(settings, tmp_path):
    settings.worker_in_process = False
    settings.lease_s = 3.0
    log_path = tmp_path / "workers.log"
    with TestClient(create_app(settings, lambda: None)) as client:
        assert client.get("/readyz").status_code == 503  # no worker yet
        first = _worker(settings, log_path)
        try:
            wait_until(lambda: client.get("/readyz").status_code == 200, "a worker ready", timeout=120)
            ids = [
                client.post(SUBMIT, json={"image_url": data_uri(png_bytes(64, 48)), "seed": n}).json()["request_id"]
                for n in range(3)
            ]
            running = wait_until(
                lambda: next(
                    (i for i in ids if client.get(f"{REQUESTS}/{i}/status").json()["status"] == "IN_PROGRESS"), None
                ),
                "a job running on the first worker",
                timeout=60,
            )
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            first.kill()
        second = _worker(settings, log_path)
        try:
            statuses = [wait_status(client, i, timeout=180, logs=True) for i in ids]
            assert all("error" not in status for status in statuses), statuses
            results = [client.get(f"{REQUESTS}/{i}") for i in ids]
            assert [r.status_code for r in results] == [200, 200, 200]
            assert all(r.json()["image"]["width"] == 128 for r in results)
            rerun = statuses[ids.index(running)]["logs"]
            assert any("its worker stopped" in entry["message"] for entry in rerun)
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0  # drained: it was idle, so it stops at once
        finally:
            second.kill()
        wait_until(lambda: client.get("/readyz").status_code == 503, "no live worker after the drain", timeout=30)
