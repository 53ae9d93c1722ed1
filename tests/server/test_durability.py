"""Jobs survive restarts and crashes: what was accepted is run (or reported failed) afterwards."""

from __future__ import annotations

import shutil
import threading

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import ServerSettings, create_app
from seedvr_local.server.db import Database, DataDirInUse
from seedvr_local.server.jobs import Completion, JobStore
from tests.server.helpers import FakeEngine, data_uri, open_when_stopping, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


def _submit(client, **headers) -> str:
    return client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers=headers).json()["request_id"]


def test_graceful_restart_requeues_the_running_job_and_keeps_the_queue(settings):
    gated = FakeEngine(gate=threading.Event())
    with TestClient(create_app(settings, lambda: gated)) as client:
        ids = [_submit(client) for _ in range(3)]
        assert gated.entered.wait(5)
        # shutting down: the running job stops at its next phase boundary and goes back to the queue
        open_when_stopping(client.app.state.server.worker, gated.gate)
    fresh = FakeEngine()
    with TestClient(create_app(settings, lambda: fresh)) as client:
        statuses = [wait_status(client, request_id, logs=True) for request_id in ids]
        results = [client.get(f"/queue/fal-ai/seedvr/requests/{request_id}") for request_id in ids]
    assert [r.status_code for r in results] == [200, 200, 200]
    assert len(fresh.calls) == 3  # the interrupted job ran again, from the start
    assert all("error" not in status for status in statuses)


@pytest.mark.parametrize("store", ["sqlite"])  # on PostgreSQL a dead worker's job comes back by its lease
def test_crash_with_jobs_queued_and_running(tmp_path, settings, store):
    """A crash is simulated by copying the data dir while a job runs: that is what the disk holds
    if the process dies at that moment."""
    gated = FakeEngine(gate=threading.Event())
    crashed = tmp_path / "after-crash"
    with TestClient(create_app(settings, lambda: gated)) as client:
        running = _submit(client)
        assert gated.entered.wait(5)
        queued = [_submit(client), _submit(client, **{"x-fal-queue-priority": "low"})]
        shutil.copytree(settings.data_dir, crashed)
        gated.gate.set()

    restarted = ServerSettings(data_dir=crashed)
    fresh = FakeEngine()
    with TestClient(create_app(restarted, lambda: fresh)) as client:
        for request_id in [running, *queued]:
            status = wait_status(client, request_id, logs=True)
            assert "error" not in status, status
            assert client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").status_code == 200
        rerun_logs = [entry["message"] for entry in wait_status(client, running, logs=True)["logs"]]
    assert any("restarted" in message for message in rerun_logs)
    assert len(fresh.calls) == 3


def test_recovery_rules(tmp_path):
    db = Database(tmp_path / "jobs.sqlite3")
    jobs = JobStore(db, max_attempts=2)
    queued = jobs.create("queue", {"image_url": "data:,"}, "http://x")
    sync = jobs.create("sync", {"image_url": "data:,"}, "http://x")
    twice = jobs.create("queue", {"image_url": "data:,"}, "http://x")
    cancelling = jobs.create("queue", {"image_url": "data:,"}, "http://x")
    done = jobs.create("queue", {"image_url": "data:,"}, "http://x")
    db.execute("UPDATE jobs SET status = 'IN_PROGRESS', attempts = 2 WHERE id = ?", (twice.id,))
    db.execute(
        "UPDATE jobs SET status = 'IN_PROGRESS', attempts = 1, cancel_requested = 1 WHERE id = ?", (cancelling.id,)
    )
    jobs.complete(done.id, Completion.success({"image": {}, "seed": 1}, 0.1))

    report = jobs.recover()

    assert report["requeued"] == [] and set(report["failed"]) == {sync.id, twice.id, cancelling.id}
    assert jobs.get(queued.id).status == "IN_QUEUE"
    assert jobs.get(sync.id).response_status == 503  # its caller's connection is gone
    assert jobs.get(twice.id).error_type == "runner_disconnected"  # it may be what brings the server down
    assert jobs.get(cancelling.id).error_type == "client_cancelled"
    assert jobs.get(done.id).outcome == "ok"


def test_webhook_of_a_job_is_queued_with_its_completion(tmp_path):
    db = Database(tmp_path / "jobs.sqlite3")
    jobs = JobStore(db)
    job = jobs.create("queue", {"image_url": "data:,"}, "http://x", webhook_url="https://hooks.example/x")
    assert db.query_one("SELECT COUNT(*) FROM webhooks")[0] == 0
    jobs.complete(job.id, Completion.success({"image": {}, "seed": 1}, 0.1))
    jobs.complete(job.id, Completion.success({"image": {}, "seed": 2}, 0.1))  # a second completion is ignored
    assert db.query_one("SELECT COUNT(*) FROM webhooks")[0] == 1


def test_accepted_job_is_on_disk_before_the_response(settings):
    gated = FakeEngine(gate=threading.Event())
    with TestClient(create_app(settings, lambda: gated)) as client:
        request_id = _submit(client)
        other = Database(settings.database_url or settings.database_path)  # another process's view
        row = other.query_one("SELECT status FROM jobs WHERE id = ?", (request_id,))
        other.close()
        gated.gate.set()
        wait_status(client, request_id)  # shut down only once the job is done
    assert row is not None


@pytest.mark.parametrize("store", ["sqlite"])  # PostgreSQL is shared by design
def test_one_server_per_data_dir(settings, tiny_bundle, capsys, monkeypatch, store):
    import uvicorn

    from seedvr_local.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("a second server started"))
    with TestClient(create_app(settings, FakeEngine)):
        with pytest.raises(DataDirInUse, match="another seedvr-local server"):
            with TestClient(create_app(settings, FakeEngine)):
                pass
        code = main(
            ["serve", "--weights-dir", str(tiny_bundle), "--data-dir", str(settings.data_dir), "--device", "cpu"]
        )
        assert code == 2 and "another seedvr-local server" in capsys.readouterr().err
    with TestClient(create_app(settings, FakeEngine)):  # released at shutdown
        pass
