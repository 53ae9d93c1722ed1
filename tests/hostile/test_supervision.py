"""A worker process that dies (kill -9, the OOM killer) is restarted, its job runs again or fails clearly, and
/readyz and /metrics say what happened: with a real `serve --model tiny` and a real `seedvr-local worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from seedvr_local.server.db import Database
from seedvr_local.server.metrics import Metrics
from tests.hostile.real_serve import RealServe
from tests.server import prometheus
from tests.server.helpers import data_uri, png_bytes, wait_until

QUEUE = "/queue/fal-ai/seedvr/upscale/image"
REQUESTS = "/queue/fal-ai/seedvr/requests"
#: An image job that keeps the tiny model busy for a second or two on a CPU: long enough to be killed mid-run (to
#: 512x512); the slow lane's twice-killed job runs for longer (to 768x768), to be killed twice.
SLOW_IMAGE = {"image_url": data_uri(png_bytes(128, 128)), "upscale_factor": 4, "seed": 5}
SLOWER_IMAGE = {**SLOW_IMAGE, "image_url": data_uri(png_bytes(192, 192))}


def _submit(serve: RealServe, body: dict) -> str:
    response = serve.client.post(QUEUE, json=body)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def _kill_the_worker_running(serve: RealServe, request_id: str, timeout_s: float = 60.0) -> int:
    """SIGKILL to the worker process that runs `request_id` (the only worker), once it runs it; its pid."""

    def running() -> int | None:
        busy = serve.worker_pids(busy_only=True)
        status = serve.client.get(f"{REQUESTS}/{request_id}/status").json()["status"]
        assert status != "COMPLETED", "the job ended before its worker could be killed"
        return busy[0] if busy and status == "IN_PROGRESS" else None

    pid = wait_until(running, "the job to run", timeout=timeout_s)
    os.kill(pid, signal.SIGKILL)
    return pid


def _readyz_says_restarting(serve: RealServe) -> dict:
    def restarting():
        answer = serve.client.get("/readyz")
        return answer.json() if answer.status_code == 503 and answer.json()["status"] == "restarting" else None

    return wait_until(restarting, "/readyz to say the worker is restarting", timeout=10)


def _wait_completed(serve: RealServe, request_id: str, timeout_s: float = 120.0) -> dict:
    def completed():
        status = serve.client.get(f"{REQUESTS}/{request_id}/status", params={"logs": 1}).json()
        return status if status["status"] == "COMPLETED" else None

    return wait_until(completed, f"request {request_id} to complete", timeout=timeout_s)


def test_a_killed_worker_is_restarted_and_its_job_completes(tmp_path):
    with RealServe(tmp_path / "data", "--devices", "cpu") as serve:
        serve.wait_ready()
        request_id = _submit(serve, SLOW_IMAGE)
        dead = _kill_the_worker_running(serve, request_id)

        not_ready = _readyz_says_restarting(serve)  # the truth, not "loading" and not a stale "ready"
        assert "killed by SIGKILL" in not_ready["detail"] and "cpu" in not_ready["detail"], not_ready
        serve.wait_ready()
        status = _wait_completed(serve, request_id)
        assert "error" not in status, status
        assert any("runs again" in entry["message"] for entry in status["logs"]), status["logs"]
        result = serve.client.get(f"{REQUESTS}/{request_id}")
        assert result.status_code == 200 and result.json()["image"]["width"] == 512, result.text

        assert serve.restarts() == 1
        assert dead not in serve.worker_pids() and len(serve.worker_pids()) == 1
        assert all(state != "Z" for _, state in serve.children()), serve.children()  # no defunct child
        assert "exited (killed by SIGKILL)" in serve.output()


@pytest.mark.slow
def test_a_job_that_kills_its_worker_every_time_fails_clearly_and_the_queue_goes_on(tmp_path):
    """Each run of the job kills its worker (as an input that makes the OOM killer strike would): after its two
    attempts it fails with fal's error shape, and the next job runs."""
    with RealServe(tmp_path / "data", "--devices", "cpu") as serve:
        serve.wait_ready()
        request_id = _submit(serve, SLOWER_IMAGE)
        _kill_the_worker_running(serve, request_id)
        _readyz_says_restarting(serve)
        serve.wait_ready()
        _kill_the_worker_running(serve, request_id)

        status = _wait_completed(serve, request_id, timeout_s=30)
        assert status["error_type"] == "runner_disconnected", status
        assert "2 times while running this request" in status["error"], status
        result = serve.client.get(f"{REQUESTS}/{request_id}")
        assert result.status_code == 503 and result.json()["detail"] == status["error"], result.text

        serve.wait_ready()
        after = _submit(serve, {**SLOW_IMAGE, "upscale_factor": 2})
        assert "error" not in _wait_completed(serve, after), "the queue is wedged"
        assert serve.restarts() == 2


def _children_of(pid: int) -> set[int]:
    children = set()
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                children.add(int(stat))
    return children


@pytest.mark.slow
def test_worker_devices_restarts_a_killed_child(tmp_path):
    """`seedvr-local worker --devices cpu,cpu`: a child killed with SIGKILL is replaced, and counted."""
    data = tmp_path / "data"
    command = [sys.executable, "-m", "seedvr_local.cli", "worker", "--model", "tiny", "--devices", "cpu,cpu",
               "--data-dir", str(data)]  # fmt: skip
    log = (tmp_path / "worker.log").open("wb")
    parent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        db = wait_until(
            lambda: (data / "seedvr.sqlite3").exists() and Database(data / "seedvr.sqlite3"), "the db", timeout=120
        )

        def two_ready():
            rows = db.query("SELECT pid FROM workers WHERE model_state = 'ready' AND stopped_at IS NULL")
            return {row[0] for row in rows} if len(rows) == 2 else None

        first = wait_until(two_ready, "two ready workers", timeout=120)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(
            lambda: (pids := two_ready()) and victim not in pids and pids, "a replacement worker", timeout=120
        )
        assert len(replaced & first) == 1 and victim not in _children_of(parent.pid)
        text = Metrics(db).render(0, 0, True)
        assert prometheus.value(prometheus.parse(text), "seedvr_worker_restarts_total") == 1
        db.close()
    finally:
        parent.send_signal(signal.SIGTERM)
        code = parent.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()
