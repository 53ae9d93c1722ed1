"""Per-key quotas and the storage budget: one key cannot fill the queue, hold every worker, or fill the disk."""

from __future__ import annotations

import io
import os
import threading
from urllib.parse import urlsplit

import pytest
from PIL import Image

from seedvr_local.server.db import Database
from seedvr_local.server.jobs import COMPLETED, Completion, JobStore
from seedvr_local.server.state import INLINE_INPUT_LIMIT
from tests.server.conftest import (  # noqa: F401 (fixtures)
    database_url,
    engine,
    file_store,
    gated_engine,
    make_client,
    postgres_admin_url,
    settings,
    store,
)
from tests.server.helpers import data_uri, png_bytes, wait_status, wait_until

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
RUN = "/fal-ai/seedvr/upscale/image"
KEYS = ("key-one", "key-two")


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def test_a_key_with_a_full_queue_gets_429_with_retry_after_and_others_do_not(make_client, gated_engine):
    with make_client(gated_engine, api_keys=KEYS, max_queued_per_key=2) as client:
        body = {"image_url": data_uri(png_bytes())}
        first = client.post(SUBMIT, json=body, headers=_as("key-one")).json()["request_id"]
        assert gated_engine.entered.wait(5)  # running: it no longer waits in the queue
        for _ in range(2):
            assert client.post(SUBMIT, json=body, headers=_as("key-one")).status_code == 200
        refused = client.post(SUBMIT, json=body, headers=_as("key-one"))
        assert refused.status_code == 429, refused.text
        assert refused.json()["error_type"] == "rate_limited" and "2 request(s) waiting" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) > 0 and refused.headers["x-fal-error-type"] == "rate_limited"
        assert client.post(RUN, json=body, headers=_as("key-one")).status_code == 429  # sync requests queue too
        assert client.post(SUBMIT, json=body, headers=_as("key-two")).status_code == 200  # another key's queue

        gated_engine.gate.set()  # key-one's requests run and leave the queue: it may queue again
        jobs = client.app.state.server.jobs
        wait_until(lambda: jobs.counts()["IN_QUEUE"] == 0 and jobs.counts()["IN_PROGRESS"] == 0, "the queue to drain")
        assert client.post(SUBMIT, json=body, headers=_as("key-one")).status_code == 200
        assert jobs.get(first).status == COMPLETED


def _jobs(settings, **quotas) -> JobStore:
    return JobStore(Database(settings.database_url or settings.database_path), **quotas)


def test_a_key_at_its_running_cap_waits_while_other_keys_run(settings):
    jobs = _jobs(settings, max_running_per_owner=1)
    a1, a2 = (jobs.create("queue", {"n": n}, "http://x", owner="a") for n in (1, 2))
    b1 = jobs.create("queue", {"n": 3}, "http://x", owner="b")
    assert jobs.claim_next("w1").id == a1.id
    assert jobs.claim_next("w2").id == b1.id  # a2 came first, but its key already runs its one
    assert jobs.claim_next("w3") is None
    jobs.complete(a1.id, Completion.success({}, 0.0))
    assert jobs.claim_next("w3").id == a2.id  # its turn, in its place
    jobs.db.close()


def test_concurrent_claims_never_pass_a_running_cap(settings):
    """Eight workers claiming at once from one key's queue: at most its cap of two run."""
    jobs = _jobs(settings, max_running_per_owner=2)
    for n in range(8):
        jobs.create("queue", {"n": n}, "http://x", owner="a")
    start = threading.Barrier(8)
    claimed = []

    def claim(worker: str) -> None:
        store = _jobs(settings)
        start.wait()
        claimed.append(store.claim_next(worker))
        store.db.close()

    threads = [threading.Thread(target=claim, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len([job for job in claimed if job is not None]) == 2
    jobs.db.close()


def test_concurrent_submits_never_pass_a_queue_quota(settings):
    jobs = _jobs(settings, max_queued_per_owner=3)
    start = threading.Barrier(8)
    outcomes = []

    def submit() -> None:
        store = _jobs(settings, max_queued_per_owner=3)
        start.wait()
        try:
            store.create("queue", {}, "http://x", owner="a")
            outcomes.append(200)
        except Exception as exc:
            outcomes.append(getattr(exc, "status_code", repr(exc)))
        store.db.close()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == [200] * 3 + [429] * 5
    assert jobs.counts()["IN_QUEUE"] == 3
    jobs.db.close()


def _upload(client, data: bytes):
    upload = client.post("/storage/upload/initiate", json={"content_type": "image/png", "file_name": "a.png"}).json()
    return client.put(urlsplit(upload["upload_url"]).path, content=data, headers={"content-type": "image/png"})


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("store", ["sqlite"])
def test_the_storage_budget_refuses_uploads_inputs_and_outputs_that_do_not_fit(make_client, settings, store):
    budget = 20_000
    with make_client(max_storage_bytes=budget) as client:
        too_large = _upload(client, b"x" * (budget + 1))
        assert too_large.status_code == 413 and "larger than the storage budget" in too_large.json()["detail"]
        for _ in range(3):
            assert _upload(client, b"x" * 6000).status_code == 200
        full = _upload(client, b"x" * 6000)
        assert full.status_code == 507, full.text
        assert "the file store is full: 18,000 of its 20,000 bytes are in use" in full.json()["detail"]

        large_input = data_uri(_noise_png(64))  # kept as a stored file at submit: it does not fit
        assert INLINE_INPUT_LIMIT < len(large_input) and 2000 < len(large_input) * 3 // 4 < budget
        refused = client.post(SUBMIT, json={"image_url": large_input})
        assert refused.status_code == 507 and refused.json()["error_type"] == "insufficient_storage", refused.text

        assert _upload(client, b"x" * 1990).status_code == 200  # 10 bytes left: less than any output
        request_id = client.post(SUBMIT, json={"image_url": data_uri(png_bytes()), "output_format": "png"})
        status = wait_status(client, request_id.json()["request_id"])
        assert status["error_type"] == "insufficient_storage", status
        result = client.get(f"/queue/fal-ai/seedvr/requests/{status['request_id']}")
        assert result.status_code == 507 and "the file store is full" in result.json()["detail"], result.text
        sync = client.post(RUN, json={"image_url": data_uri(png_bytes()), "sync_mode": True})
        assert sync.status_code == 200, sync.text  # an inline result takes no storage


def test_the_quota_flags_reach_the_settings_and_refuse_nonsense():
    from seedvr_local.cli import build_parser
    from seedvr_local.server.cli import settings_from_args

    def parse(*flags):
        return settings_from_args(build_parser().parse_args(["serve", "--model", "tiny", *flags]))

    settings = parse("--max-queued-per-key", "7", "--max-running-per-key", "2", "--max-storage-bytes", "1000")
    assert (settings.max_queued_per_key, settings.max_running_per_key, settings.max_storage_bytes) == (7, 2, 1000)
    assert parse().max_queued_per_key is None and parse().max_storage_bytes is None
    for flag in ("--max-queued-per-key", "--max-running-per-key", "--max-storage-bytes"):
        with pytest.raises(ValueError, match=flag):
            parse(flag, "0")
