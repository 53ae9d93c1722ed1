"""Chaos: a real `serve --devices cpu,cpu --model tiny` under a stream of image and video jobs while its worker
processes are killed with SIGKILL at random moments. Every accepted job ends COMPLETED, with its output or with a
clear error; none is lost and none runs to completion twice; the API process's memory stays bounded; no child is
left defunct."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import httpx
import pytest

from seedvr_local.video.samples import make_video
from tests.hostile.real_serve import RealServe
from tests.server import prometheus
from tests.server.helpers import data_uri, png_bytes, wait_until

IMAGE = "/queue/fal-ai/seedvr/upscale/image"
VIDEO = "/queue/fal-ai/seedvr/upscale/video"
REQUESTS = "/queue/fal-ai/seedvr/requests"
#: What the API process may grow by over the run (it imports torch: its resident set starts at a few hundred MiB).
API_GROWTH_BOUND = 150 * 1024 * 1024
#: The errors a job may end with when its workers keep dying: fal's runner_disconnected (503), nothing else.
CLEAR_ERRORS = {"runner_disconnected"}


def _resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _run_chaos(tmp_path, jobs: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    video = data_uri(make_video(tmp_path / "in.mp4", 32, 24, frames=9, fps=12, audio=None).read_bytes(), "video/mp4")
    with RealServe(tmp_path / "data", "--devices", "cpu,cpu", "--max-video-clip-frames", "5") as serve:
        serve.wait_ready(workers=2)
        api_start = _resident_bytes(serve.process.pid)
        killed: list[int] = []

        def killer() -> None:
            """A SIGKILL at a random moment to a random live worker, one running a job when there is one."""
            while len(killed) < kills:
                time.sleep(rng.uniform(0.5, 2.5))  # the moments are random on purpose, not a synchronisation
                try:
                    busy, live = serve.worker_pids(busy_only=True), serve.worker_pids()
                except httpx.HTTPError:
                    continue
                candidates = [pid for pid in (busy or live) if pid not in killed]
                if not candidates:
                    continue
                victim = rng.choice(candidates)
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(victim)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        accepted = []
        for n in range(jobs):
            if n % 3 == 2:
                body, path = {"video_url": video, "seed": n, "upscale_factor": 2}, VIDEO
            else:
                body, path = {"image_url": data_uri(png_bytes(48 + n, 32)), "seed": n, "output_format": "png"}, IMAGE
            response = serve.client.post(path, json=body)
            assert response.status_code == 200, response.text
            accepted.append((response.json()["request_id"], "video" if path == VIDEO else "image", n))
            time.sleep(rng.uniform(0.0, 0.6))
        thread.join(timeout=240)
        assert len(killed) >= kills, f"only {len(killed)} kills"

        def all_completed():
            statuses = [serve.client.get(f"{REQUESTS}/{request_id}/status").json() for request_id, _, _ in accepted]
            return statuses if all(status["status"] == "COMPLETED" for status in statuses) else None

        wait_until(all_completed, "every accepted job to complete", timeout=300)
        outcomes = {"ok": 0, "error": 0}
        for request_id, kind, n in accepted:
            result = serve.client.get(f"{REQUESTS}/{request_id}")
            if result.status_code == 200:
                outcomes["ok"] += 1
                output = result.json()[kind]
                if kind == "image":
                    assert (output["width"], output["height"]) == (2 * (48 + n), 64), output
                served = serve.client.get(httpx.URL(output["url"]).path)
                assert served.status_code == 200 and len(served.content) == output["file_size"], request_id
            else:
                outcomes["error"] += 1
                error = result.json()
                assert 400 <= result.status_code < 600 and isinstance(error["detail"], str), result.text
                assert error["error_type"] in CLEAR_ERRORS, result.text
        assert outcomes["ok"] >= 1, outcomes

        families = serve.metrics()
        finished = sum(value for (_, _), value in families["seedvr_jobs_total"].samples.items())
        assert finished == len(accepted), f"{finished} completions for {len(accepted)} jobs"  # none lost, none twice
        wait_until(lambda: serve.restarts() == len(killed), "every kill to be counted as a restart", timeout=30)
        assert prometheus.value(families, "seedvr_queue_depth") == 0
        assert all(state != "Z" for _, state in serve.children()), serve.children()
        serve.wait_ready(workers=2)
        growth = _resident_bytes(serve.process.pid) - api_start
        assert growth < API_GROWTH_BOUND, f"the API process grew by {growth / 2**20:.0f} MiB"


@pytest.mark.slow
def test_jobs_survive_workers_killed_at_random_moments(tmp_path):
    _run_chaos(tmp_path, jobs=18, kills=6, seed=21)
