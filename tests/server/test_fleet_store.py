"""The job store on both engines: migrations, atomic claims, leases, cross-process change notices, per-key
owners, inputs kept out of the job row."""

from __future__ import annotations

import asyncio
import io
import json
import random
import sqlite3
import threading
import time

import pytest
from PIL import Image

from seedvr_local.server.change_feed import change_feed
from seedvr_local.server.db import Database, DatabaseUnavailable
from seedvr_local.server.events import ChangeNotifier
from seedvr_local.server.jobs import COMPLETED, IN_PROGRESS, IN_QUEUE, Completion, JobStore
from seedvr_local.server.migrations import LATEST
from tests.server.helpers import FakeEngine, data_uri, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


@pytest.fixture
def open_db(settings):
    """Opens the test's database once more, as another process would."""
    opened = []

    def factory() -> Database:
        opened.append(Database(settings.database_url or settings.database_path))
        return opened[-1]

    yield factory
    for database in opened:
        database.close()


@pytest.fixture
def db(open_db):
    return open_db()


def _job(jobs: JobStore, kind="queue"):
    return jobs.create(kind, {"image_url": "data:,"}, "http://x")


def test_fresh_database_is_at_the_latest_schema(db, open_db):
    assert db.schema_version == LATEST
    versions = [row[0] for row in db.query("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))
    assert open_db().schema_version == LATEST  # a second open applies nothing


@pytest.mark.parametrize("store", ["sqlite"])
def test_a_database_of_the_first_release_is_upgraded_in_place(tmp_path, store):
    """The first release wrote its schema with PRAGMA user_version=1 and no migrations table."""
    path = tmp_path / "seedvr.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,"
        " priority INTEGER NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL, base_url TEXT NOT NULL,"
        " webhook_url TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL, start_deadline REAL,"
        " attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0, outcome TEXT,"
        " response_status INTEGER, response_body TEXT, response_headers TEXT, error TEXT, error_type TEXT,"
        " inference_time REAL);"
        "INSERT INTO jobs (id, kind, priority, status, input, base_url, created_at)"
        " VALUES ('00000000-0000-4000-8000-000000000000', 'queue', 0, 'IN_QUEUE', '{}', 'http://x', 1.0);"
        "PRAGMA user_version=1;"
    )
    old.close()
    jobs = JobStore(Database(path))
    claimed = jobs.claim_next("w", 30)
    assert claimed.id == "00000000-0000-4000-8000-000000000000" and claimed.worker_id == "w"


def test_a_newer_schema_is_refused(db, open_db):
    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (LATEST + 1, time.time()))
    with pytest.raises(RuntimeError, match="newer seedvr-local"):
        open_db()


def test_concurrent_workers_claim_each_job_exactly_once(db, open_db):
    jobs = JobStore(db)
    created = {_job(jobs).id for _ in range(40)}
    claims: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker(name: str) -> None:
        store = JobStore(open_db())
        start.wait()
        while (job := store.claim_next(name, 30)) is not None:
            with lock:
                claims.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(claims) == sorted(created)  # every job once, none twice


def test_an_expired_lease_is_claimed_again_up_to_the_attempts(db):
    jobs = JobStore(db, max_attempts=2)
    job = _job(jobs)
    first = jobs.claim_next("dead-worker", lease_s=0.05)
    assert first.id == job.id and first.status == IN_PROGRESS
    assert jobs.reclaim_expired(now=time.time() - 1) == {"requeued": [], "failed": []}  # not expired yet
    assert jobs.reclaim_expired(now=time.time() + 1)["requeued"] == [job.id]
    assert jobs.get(job.id).status == IN_QUEUE
    assert not jobs.renew(job.id, "dead-worker", 30)  # the dead worker's lease is gone

    second = jobs.claim_next("another-worker", lease_s=0.05)
    assert second.id == job.id and second.attempts == 2
    assert jobs.renew(job.id, "another-worker", 0.05)
    report = jobs.reclaim_expired(now=time.time() + 1)
    assert report["failed"] == [job.id]
    failed = jobs.get(job.id)
    assert failed.status == COMPLETED and failed.error_type == "runner_disconnected"
    assert "2 times" in failed.error


def test_a_cancelled_job_whose_worker_died_is_cancelled(db):
    jobs = JobStore(db)
    job = _job(jobs)
    jobs.claim_next("w", lease_s=0.05)
    assert jobs.request_cancel(job.id) == "CANCELLATION_REQUESTED"
    assert jobs.reclaim_expired(now=time.time() + 1)["failed"] == [job.id]
    assert jobs.get(job.id).error_type == "client_cancelled"


def test_status_reads_leave_the_input_in_the_row(db):
    jobs = JobStore(db)
    job = jobs.create("queue", {"image_url": "data:,", "seed": 7}, "http://x")
    assert jobs.get(job.id).input == {}
    assert jobs.get(job.id, with_input=True).input == {"image_url": "data:,", "seed": 7}


def test_changes_reach_the_waiters_of_another_process(db, open_db):
    """A worker in another process completes a job: this process's waiters hear of it (PostgreSQL: LISTEN/NOTIFY,
    SQLite: its data_version)."""
    job = _job(JobStore(db))
    notifier = ChangeNotifier()
    listener = change_feed(db, notifier.notify)
    listener.start()
    elsewhere = JobStore(open_db())  # another process's store

    async def wait_for_change() -> bool:
        with notifier.subscribe(job.id) as changes:
            await asyncio.to_thread(listener.connected.wait, 10)
            changes.event.clear()  # the listener's "re-read" at connect is not what is tested
            await asyncio.to_thread(elsewhere.complete, job.id, Completion.success({"image": {}, "seed": 1}, 0.1))
            return await changes.wait(5)

    try:
        assert asyncio.run(wait_for_change())
    finally:
        listener.stop()


def test_database_unreachable_is_one_line_naming_the_host():
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1/jobs: .*(refused|failed)") as info:
        Database("postgresql://seedvr:secret@127.0.0.1:1/jobs")
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


def test_serve_with_an_unreachable_database_exits_2_before_loading(tmp_path, capsys, monkeypatch):
    import uvicorn

    from seedvr_local.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    code = main(
        ["serve", "--model", "tiny", "--data-dir", str(tmp_path), "--database-url", "postgresql://u@127.0.0.1:1/x"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "127.0.0.1:1" in err and len(err.strip().splitlines()) == 1


def test_each_key_sees_only_its_own_requests(make_client):
    headers = {key: {"Authorization": f"Key {key}"} for key in ("alice", "bob", "root")}
    with make_client(FakeEngine(), api_keys=("alice", "bob", "root"), admin_keys=("root",)) as client:
        request_id = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers=headers["alice"]).json()[
            "request_id"
        ]
        base = f"/queue/fal-ai/seedvr/requests/{request_id}"
        for suffix in ("/status", "/status/stream", ""):
            answer = client.get(base + suffix, headers=headers["bob"])
            assert answer.status_code == 404, suffix
        assert client.put(base + "/cancel", headers=headers["bob"]).status_code == 404
        for who in ("alice", "root"):
            client.headers.update(headers[who])
            assert wait_status(client, request_id)["status"] == COMPLETED
            assert client.get(base, headers=headers[who]).status_code == 200


def test_a_large_data_uri_is_stored_once_and_the_row_stays_small(make_client, settings):
    noise = Image.frombytes("RGB", (200, 150), random.Random(0).randbytes(200 * 150 * 3))  # does not compress
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    uri = data_uri(buffer.getvalue())
    assert len(uri) > 16 * 1024
    with make_client(FakeEngine()) as client:
        request_id = client.post(SUBMIT, json={"image_url": uri, "upscale_factor": 2}).json()["request_id"]
        wait_status(client, request_id)
        result = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").json()
        state = client.app.state.server
        stored = state.db.query_one("SELECT input FROM jobs WHERE id = ?", (request_id,))[0]
    assert (result["image"]["width"], result["image"]["height"]) == (400, 300)
    assert len(stored) < 1024 and "/files/" in json.loads(stored)["image_url"]
