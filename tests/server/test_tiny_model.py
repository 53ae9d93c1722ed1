"""The server with a real model, end to end: the tiny bundle of the reference data, and `--model tiny`."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from seedvr_local.server import create_app
from tests.server.helpers import data_uri, listening_url, png_bytes, wait_status, wait_until

RUN = "/fal-ai/seedvr/upscale/image"


def test_real_model_behind_every_surface(settings, tiny_upscaler):
    with TestClient(create_app(settings, lambda: tiny_upscaler)) as client:
        image_url = data_uri(png_bytes(24, 16, color=(30, 120, 220)))
        first = client.post(RUN, json={"image_url": image_url, "seed": 3, "output_format": "png"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["seed"] == 3 and (body["image"]["width"], body["image"]["height"]) == (48, 32)
        png = client.get(body["image"]["url"]).content
        assert Image.open(io.BytesIO(png)).size == (48, 32)

        # the queue, with the model's own phases in the logs, and the same seed giving the same image
        request_id = client.post(
            "/queue" + RUN, json={"image_url": image_url, "seed": 3, "output_format": "png", "sync_mode": True}
        ).json()["request_id"]
        status = wait_status(client, request_id, timeout=60, logs=True)
        messages = [entry["message"].split(":")[0] for entry in status["logs"]]
        for phase in ("download", "decode", "resize", "encode", "dit", "vae_decode", "color_fix", "save"):
            assert phase in messages, messages
        inline = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").json()["image"]["url"]
        assert base64.b64decode(inline.split(",", 1)[1]) == png


def test_serve_model_tiny_answers_readyz_and_a_sync_upscale(tmp_path):
    """`seedvr-local serve --model tiny` from a bare clone: no weights, ready with a note, one real upscale."""
    command = [sys.executable, "-m", "seedvr_local.cli", "serve", "--model", "tiny", "--port", "0",
               "--data-dir", str(tmp_path / "data"), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "SEEDVR_HOME": str(tmp_path / "empty-home")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = listening_url(log, server, timeout=120)
        ready = wait_until(
            lambda: (answer := httpx.get(f"{base}/readyz")).status_code == 200 and answer, "the server ready", 120
        )
        assert ready.json()["notice"] == "random weights: output is noise; for trying the plumbing"
        assert "tiny" in ready.json()["model"]
        response = httpx.post(
            f"{base}{RUN}", json={"image_url": data_uri(png_bytes(20, 12)), "seed": 9, "sync_mode": True}, timeout=120
        )
        assert response.status_code == 200, response.text
        image = response.json()["image"]
        assert (image["width"], image["height"]) == (40, 24) and image["url"].startswith("data:image/jpeg")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert "random weights: output is noise" in log.read_text()  # in the start-up log too


@pytest.mark.slow
def test_cli_server_survives_kill_9_with_jobs_queued(tmp_path, tiny_bundle):
    """The real `seedvr-local serve`, killed with SIGKILL mid-job and started again: every job completes."""
    command = [sys.executable, "-m", "seedvr_local.cli", "serve", "--weights-dir", str(tiny_bundle), "--port", "0",
               "--data-dir", str(tmp_path / "data"), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def start(name: str) -> tuple[subprocess.Popen, str, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = listening_url(log, process, timeout=120)
            wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, "the server ready", timeout=120)
        except BaseException:
            process.kill()
            raise
        return process, base, log

    first, base, first_log = start("first")
    try:
        ids = [
            httpx.post(f"{base}/queue{RUN}", json={"image_url": data_uri(png_bytes(16, 16)), "seed": n}).json()[
                "request_id"
            ]
            for n in range(3)
        ]
        wait_until(
            lambda: httpx.get(f"{base}/queue/fal-ai/seedvr/requests/{ids[0]}/status").json()["status"]
            in ("IN_PROGRESS", "COMPLETED"),  # the tiny model's job may finish between two polls
            "the first job started",
            timeout=120,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)

    second, base, second_log = start("second")
    try:
        for request_id in ids:
            status = wait_until(
                lambda: (body := httpx.get(f"{base}/queue/fal-ai/seedvr/requests/{request_id}/status").json())[
                    "status"
                ] == "COMPLETED" and body,
                f"request {request_id} completed after the restart",
                timeout=120,
            )
            assert "error" not in status, status
            result = httpx.get(f"{base}/queue/fal-ai/seedvr/requests/{request_id}")
            # the URL names the first server's port (where the job was submitted): the file is read here
            stored = httpx.get(base + httpx.URL(result.json()["image"]["url"]).path)
            assert result.status_code == 200 and stored.status_code == 200
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    # every job, the one killed mid-run included, completed exactly once: by the restarted server, or by the first
    # server's worker process, which notices within a second that its parent is gone and stops after the job in hand
    output = first_log.read_text() + second_log.read_text()
    assert [output.count(f"job {request_id} queue ok") for request_id in ids] == [1, 1, 1], output


def test_the_real_planner_refuses_through_the_api_and_the_size_it_names_runs(settings, tiny_upscaler, monkeypatch):
    from seedvr_local import memory_planner
    from tests.test_memory_planner import small_device_memory

    memory = small_device_memory(tiny_upscaler.planner, 12 * 2**20)
    monkeypatch.setattr(memory_planner, "available_memory", lambda device: memory)
    with TestClient(create_app(settings, lambda: tiny_upscaler)) as client:
        refused = client.post(RUN, json={"image_url": data_uri(png_bytes(100, 100)), "upscale_factor": 4})
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["detail"]
        assert error["loc"] == ["body", "upscale_factor"] and error["type"] == "image_too_large"
        assert error["msg"].startswith("a 400x400 output needs about")
        width, height = error["ctx"]["max_width"], error["ctx"]["max_height"]
        assert f"the largest 1:1 output that fits is {width}x{height}" in error["msg"]
        assert width == height and 16 <= width < 400

        image_url = data_uri(png_bytes(width // 4, height // 4))
        fits = client.post(RUN, json={"image_url": image_url, "upscale_factor": 4, "seed": 2})
        assert fits.status_code == 200, fits.text
        assert (fits.json()["image"]["width"], fits.json()["image"]["height"]) == (width, height)
