"""/metrics of a fleet: an API-only server shows what a worker elsewhere recorded (phase histograms, outcomes,
its heartbeat and memory) through the job database, on both stores; counters survive retention."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from seedvr_local.server.fleet import DeviceMemory, device_memory
from seedvr_local.server.metrics import PHASE_BUCKETS, Metrics
from seedvr_local.server.worker_process import open_worker
from tests.server.helpers import FakeEngine, data_uri, png_bytes, wait_status, wait_until
from tests.server.prometheus import parse, value

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


@pytest.fixture
def api_and_worker(settings):
    """An API-only server and a worker with its own database connections, as another process would have."""
    settings.worker_in_process = False
    with TestClient(create_app(settings, lambda: None)) as client:
        worker = open_worker(settings, "cpu", FakeEngine, FakeEngine.description)
        worker.start()
        try:
            wait_until(lambda: client.get("/readyz").status_code == 200, "the worker ready")
            yield client, worker
        finally:
            worker.stop(10)
            worker.jobs.db.close()


def test_an_api_only_server_shows_the_workers_phases_outcomes_and_memory(api_and_worker):
    client, worker = api_and_worker
    before = parse(client.get("/metrics").text)
    assert value(before, "seedvr_phase_seconds_count", phase="dit") is None  # nothing ran yet
    ok = client.post(SUBMIT, json={"image_url": data_uri(png_bytes(40, 30))}).json()["request_id"]
    bad = client.post(SUBMIT, json={"image_url": data_uri(png_bytes()[:40])}).json()["request_id"]  # cut short
    wait_status(client, ok)
    wait_status(client, bad)

    labels = {"worker": worker.id, "device": "cpu"}
    families = wait_until(lambda: _after_jobs_done(client, labels, 2), "the worker's count of its jobs")
    assert value(families, "seedvr_jobs_total", outcome="ok") == 1
    assert value(families, "seedvr_jobs_total", outcome="invalid") == 1
    assert value(families, "seedvr_megapixels_processed_total") == pytest.approx(80 * 60 / 1e6)
    assert value(families, "seedvr_model_loaded") == 1  # an API-only server: a live worker has its model
    # both jobs fetched their input; the bad one failed decoding, and a phase that fails is not timed
    for phase, count in (("download", 2), ("decode", 1), ("dit", 1), ("vae_decode", 1), ("save", 1)):
        assert value(families, "seedvr_phase_seconds_count", phase=phase) == count, phase
        buckets = [value(families, "seedvr_phase_seconds_bucket", phase=phase, le=_le(b)) for b in PHASE_BUCKETS]
        assert buckets[-1] == count and None not in buckets
    assert value(families, "seedvr_phase_seconds_sum", phase="dit") > 0

    assert value(families, "seedvr_workers") == 1
    assert 0 <= value(families, "seedvr_worker_heartbeat_age_seconds", **labels) < 2 * 30
    reserved = value(families, "seedvr_worker_memory_reserved_bytes", **labels)
    total = value(families, "seedvr_worker_memory_total_bytes", **labels)
    assert 10 * 2**20 < reserved < total  # this test process's resident set, and the host's RAM
    assert value(families, "seedvr_worker_memory_allocated_bytes", **labels) is None  # no allocator on the CPU


def test_counters_do_not_come_from_job_rows(api_and_worker):
    """Retention deletes finished jobs; the counters and histograms stay as they were (monotonic)."""
    client, worker = api_and_worker
    wait_status(client, client.post(SUBMIT, json={"image_url": data_uri(png_bytes(32, 32))}).json()["request_id"])
    before = client.get("/metrics").text
    worker.jobs.db.execute("DELETE FROM jobs")
    after = parse(client.get("/metrics").text)
    assert value(after, "seedvr_jobs_total", outcome="ok") == 1
    assert value(after, "seedvr_phase_seconds_count", phase="dit") == 1
    assert [line for line in before.splitlines() if "phase_seconds" in line] == [
        line for line in client.get("/metrics").text.splitlines() if "phase_seconds" in line
    ]


@pytest.mark.parametrize("store", ["sqlite"])
def test_a_histogram_observation_lands_in_every_bucket_it_fits(settings):
    """Observations at a bucket's bound, between bounds and beyond the last finite one (only in +Inf)."""
    from seedvr_local.server.db import Database

    db = Database(settings.database_path)
    metrics = Metrics(db)
    metrics.phases([("dit", seconds) for seconds in (0.01, 0.3, 700.0)])  # a job's phases: one transaction
    families = parse(metrics.render(0, 0, False))
    counts = {b: value(families, "seedvr_phase_seconds_bucket", phase="dit", le=_le(b)) for b in PHASE_BUCKETS}
    assert counts[0.01] == 1 and counts[0.25] == 1 and counts[0.5] == 2 and counts[600.0] == 2
    assert counts[math.inf] == 3 and value(families, "seedvr_phase_seconds_sum", phase="dit") == pytest.approx(700.31)
    db.close()


def test_device_memory_on_the_cpu():
    memory = device_memory("cpu")
    assert memory.allocated is None and 0 < memory.reserved < memory.total


def test_device_memory_on_a_gpu_asks_cuda_for_that_device(monkeypatch):
    """(No GPU here: torch.cuda's answers are stood in for, to check which are asked and where they go.)"""
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: asked.append(device) or 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: asked.append(device) or 5 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * 2**30))
    memory = device_memory("cuda:1")
    assert (memory.allocated, memory.reserved, memory.total) == (3 * 2**30, 5 * 2**30, 80 * 2**30)
    assert asked == ["cuda:1", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a worker whose model has not loaded yet
    assert device_memory("cuda:1") == DeviceMemory(None, None, None)  # not the host's figures under a GPU's name


def _after_jobs_done(client, labels: dict, jobs: int):
    """The parsed metrics once the worker counted `jobs` (it does, just after each job completed), else None."""
    families = parse(client.get("/metrics").text)
    return families if value(families, "seedvr_worker_jobs_total", **labels) == jobs else None


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"
