"""Output URLs in a fleet: two API front-ends on one job database and file store. A result read through either
front-end names one that is alive (the one answering, or --public-url), not the one that accepted the job; results
stored with absolute URLs (before this) are answered unchanged."""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from seedvr_local.server.db import Database
from tests.server.conftest import database_url, file_store, postgres_admin_url, settings  # noqa: F401 (fixtures)
from tests.server.helpers import FakeEngine, LocalHTTP, data_uri, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
REQUESTS = "/queue/fal-ai/seedvr/requests"


@pytest.fixture
def store() -> str:
    return "postgresql"  # front-ends of a fleet share a PostgreSQL database


def _front_end(settings, base_url: str, runs_jobs: bool, **overrides) -> TestClient:
    own = dataclasses.replace(settings, worker_in_process=runs_jobs, **overrides)
    return TestClient(create_app(own, lambda: FakeEngine()), base_url=base_url, raise_server_exceptions=False)


def test_a_result_read_through_another_front_end_names_that_one(settings):
    with _front_end(settings, "http://front-b:8000", runs_jobs=False) as front_b:
        with _front_end(settings, "http://front-a:8000", runs_jobs=True) as front_a:
            request_id = front_a.post(SUBMIT, json={"image_url": data_uri(png_bytes()), "output_format": "png"})
            request_id = request_id.json()["request_id"]
            wait_status(front_a, request_id)
        # front-a is gone: front-b answers for the job it accepted
        status = front_b.get(f"{REQUESTS}/{request_id}/status").json()
        assert status["response_url"].startswith("http://front-b:8000/"), status
        image = front_b.get(f"{REQUESTS}/{request_id}").json()["image"]
        url = urlsplit(image["url"])
        assert (url.scheme, url.netloc) == ("http", "front-b:8000"), image["url"]
        served = front_b.get(url.path)  # and the file is there
        assert served.status_code == 200 and served.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(served.content) == image["file_size"]


def test_public_url_names_every_file_whichever_front_end_answers(settings):
    with _front_end(settings, "http://front-a:8000", runs_jobs=True, public_url="https://upscale.example.com/") as a:
        request_id = a.post(SUBMIT, json={"image_url": data_uri(png_bytes())}).json()["request_id"]
        wait_status(a, request_id)
    with _front_end(settings, "http://front-b:8000", runs_jobs=False, public_url="https://upscale.example.com") as b:
        url = b.get(f"{REQUESTS}/{request_id}").json()["image"]["url"]
    assert url.startswith("https://upscale.example.com/files/"), url


def test_a_result_stored_with_an_absolute_url_is_answered_unchanged(settings):
    with _front_end(settings, "http://front-a:8000", runs_jobs=True) as front_a:
        request_id = front_a.post(SUBMIT, json={"image_url": data_uri(png_bytes())}).json()["request_id"]
        wait_status(front_a, request_id)
        db = Database(settings.database_url)
        body = json.loads(db.query_one("SELECT response_body FROM jobs WHERE id = ?", (request_id,))[0])
        old = {**body, "image": {**body["image"], "url": "http://old-host:8000" + body["image"]["url"]}}
        db.execute("UPDATE jobs SET response_body = ? WHERE id = ?", (json.dumps(old), request_id))
        db.close()
        assert front_a.get(f"{REQUESTS}/{request_id}").json() == old


def test_a_webhook_names_the_files_on_an_absolute_url(settings):
    with LocalHTTP({"/hook": (200, {}, b"ok")}) as receiver:
        hook = f"{receiver.url}/hook"
        with _front_end(settings, "http://front-a:8000", runs_jobs=True, allow_private_urls=True) as front_a:
            body = {"image_url": data_uri(png_bytes())}
            front_a.post(SUBMIT, json=body, params={"fal_webhook": hook})
            delivered = receiver.wait_for(1)
    payload = json.loads(delivered[0][3])["payload"]
    assert payload["image"]["url"].startswith("http://front-a:8000/files/"), payload
