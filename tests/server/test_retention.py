"""Retention: finished requests and stored files past `--retention-hours` are deleted; nothing still needed is."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from tests.server.helpers import FILE_STORES, LocalHTTP, data_uri, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
#: Retention deletes from either file store.
pytestmark = pytest.mark.parametrize("file_store", FILE_STORES)

REQUESTS = "/queue/fal-ai/seedvr/requests"
DAY = 24 * 3600.0


def _submit(client, image_url: str | None = None, params=None) -> str:
    body = {"image_url": image_url or data_uri(png_bytes())}
    response = client.post(SUBMIT, json=body, params=params or {})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def _upload(client) -> str:
    target = client.post("/storage/upload/initiate", json={"content_type": "image/png", "file_name": "in.png"}).json()
    put = client.put(urlsplit(target["upload_url"]).path, content=png_bytes(), headers={"content-type": "image/png"})
    assert put.status_code == 200
    return target["file_url"]


def _sweep(client, after: float):
    """A sweep as if `after` seconds had passed."""
    return client.app.state.server.retention.sweep(now=time.time() + after)


def test_expired_requests_and_files_are_deleted(client, settings):
    request_id = _submit(client)
    wait_status(client, request_id)
    output_url = client.get(f"{REQUESTS}/{request_id}").json()["image"]["url"]
    upload_url = _upload(client)
    blobs = client.app.state.server.files.blobs
    assert len(blobs.sizes("")) == 2  # the output and the upload

    assert _sweep(client, after=DAY - 60).jobs == 0  # not yet
    assert client.get(f"{REQUESTS}/{request_id}/status").status_code == 200

    swept = _sweep(client, after=DAY + 60)
    assert (swept.jobs, swept.files) == (1, 2) and swept.bytes > 0
    assert client.get(f"{REQUESTS}/{request_id}/status").status_code == 404
    assert client.get(f"{REQUESTS}/{request_id}").status_code == 404
    for url in (output_url, upload_url):
        assert client.get(urlsplit(url).path).status_code == 404
    assert not blobs.sizes("")  # gone from the directory or the bucket
    db = client.app.state.server.db
    assert db.query_one("SELECT COUNT(*) FROM job_logs WHERE job_id = ?", (request_id,))[0] == 0


def test_files_of_unfinished_requests_and_pending_webhooks_are_kept(make_client, gated_engine):
    with LocalHTTP({"/hook": (500, {}, b"")}) as receiver, make_client(
        gated_engine, allow_private_urls=True, webhook_backoff_s=600
    ) as client:
        # a request whose webhook keeps failing stays until the retries are over
        hooked = _submit(client, params={"fal_webhook": f"{receiver.url}/hook"})
        wait_status(client, hooked, "IN_PROGRESS")
        gated_engine.gate.set()
        wait_status(client, hooked)
        receiver.wait_for(1)
        gated_engine.gate.clear()
        gated_engine.entered.clear()
        # an old upload that a running request reads
        upload_url = _upload(client)
        running = _submit(client, image_url=upload_url)
        assert gated_engine.entered.wait(5)

        swept = _sweep(client, after=DAY + 60)
        assert swept.jobs == 0
        assert client.get(urlsplit(upload_url).path).status_code == 200
        assert client.get(f"{REQUESTS}/{hooked}/status").status_code == 200

        gated_engine.gate.set()
        assert wait_status(client, running)["status"] == "COMPLETED"
        assert client.get(f"{REQUESTS}/{running}").status_code == 200


def test_zero_hours_keeps_everything(make_client):
    with make_client(retention_s=None) as client:
        assert client.app.state.server.retention is None
