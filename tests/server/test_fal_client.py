"""The real Python `fal-client` (from PyPI) against the server over TLS, configured by environment only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import requires
from tests.server.helpers import FakeEngine, LiveServer, SlowSeeds, make_certificate

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
    seeds = [options.seed for _, _, options in engine.calls]
    assert seeds.count(SLOW_SEED) == 1  # the slow job started, and was cancelled, once
