"""The real Python `fal-client` (from PyPI) against the server over TLS, configured by environment only."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import requires
from seedvr_local.video.samples import make_video
from tests.server.helpers import FakeEngine, LiveServer, SlowSeeds, make_certificate
from tests.video_helpers import read_video

SLOW_SEED = 777
KEY = "test-key-id:test-key-secret"


@pytest.fixture(params=["fake", "tiny"])
def flow_engine(request):
    """The fake engine (server logic alone), then the real model with the tiny bundle."""
    if request.param == "fake":
        return FakeEngine(slow_seeds={SLOW_SEED: 1.0})
    return SlowSeeds(request.getfixturevalue("tiny_upscaler"), {SLOW_SEED: 1.0})


def test_fal_client_flows_over_tls(tmp_path, settings, flow_engine):
    requires.module("fal_client", "it is in the test extra: pip install -e '.[test]'")
    cert, key = make_certificate(tmp_path)
    settings.api_keys = (KEY,)
    engine = flow_engine
    with LiveServer(settings, lambda: engine, ssl=(cert, key)) as server:
        host = f"127.0.0.1:{server.port}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FAL_")},
            "FAL_RUN_HOST": f"{host}/run",
            "FAL_QUEUE_RUN_HOST": f"{host}/queue",
            "SSL_CERT_FILE": str(cert),
            "FAL_KEY": KEY,
            "SLOW_SEED": str(SLOW_SEED),
            "VIDEO_PATH": str(make_video(tmp_path / "input.mp4", 32, 24, frames=9, fps=12, audio="aac")),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        }
        script = Path(__file__).parent / "clients" / "python_flows.py"
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        jobs = server.state.jobs
        # the server saw what the client did: the low priority, the cancelled slow job, the uploads
        assert jobs.get(summary["submit"]).priority == 1
        assert summary["run"].startswith(f"https://{host}/files/")
        assert summary["subscribe_updates"][-1] == "Completed"
        outputs, trust = [], ssl.create_default_context(cafile=str(cert))
        for name in ("video_run", "video_subscribe"):
            outputs.append(tmp_path / name)
            outputs[-1].write_bytes(httpx.get(summary[name], verify=trust).raise_for_status().content)
    mov, mp4 = (read_video(path) for path in outputs)
    assert (mov["codec"], mov["width"], mov["height"], mov["frames"], mov["audio"]) == ("prores", 64, 48, 9, "aac")
    assert (mp4["codec"], mp4["frames"], mp4["average_rate"], mp4["audio"]) == ("h264", 9, 12, "aac")
    seeds = [options.seed for _, _, options in engine.calls]
    assert seeds.count(SLOW_SEED) == 1  # the slow job started, and was cancelled, once
    assert sum(options.seamless for _, _, options in engine.calls) == 3  # the seamless endpoint's three jobs
