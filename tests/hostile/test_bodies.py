"""Bodies a client controls: a webhook receiver's answer, JSON bodies, multipart parts sent in parallel, a second PUT
to a finished upload, a malformed upload token. None may grow this process past a bound, exceed the upload limit,
replace a stored file, or make the server answer 500."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.hostile.tools import MIB, PeakMemory, raw_request, repeated
from tests.server.helpers import LiveServer, LocalHTTP, FakeEngine, allow_loopback_only, data_uri, png_bytes
from tests.server.helpers import wait_status, wait_until

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
#: How much this process may grow while it refuses or skims a body hundreds of MB long (a Python process's own
#: noise, thread stacks and buffers included): far below the body, so reading it whole cannot pass.
MEMORY_BOUND = 64 * MIB
HUGE = 300 * MIB


def test_a_webhook_receiver_answering_300_mb_is_skimmed_not_read(make_client):
    block = b"x" * MIB
    answered: list[int] = []

    def huge_answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(HUGE))
        handler.end_headers()
        sent = 0
        try:
            for chunk in repeated(block, HUGE):  # generated as it goes: never held whole
                handler.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the sender hung up: what it should do
        answered.append(sent)
        return None

    with LocalHTTP({"/hook": huge_answer}) as receiver, PeakMemory() as memory:
        with make_client(FakeEngine(), guard=allow_loopback_only()) as client:
            request_id = client.post(
                SUBMIT, params={"fal_webhook": f"{receiver.url}/hook"}, json={"image_url": data_uri(png_bytes())}
            ).json()["request_id"]
            db = client.app.state.server.db

            def tried() -> str | None:
                row = db.query_one("SELECT state FROM webhooks WHERE job_id = ?", (request_id,))
                return row["state"] if row is not None and row["state"] != "pending" else None

            state = wait_until(tried, "the webhook tried", timeout=60)
        wait_until(lambda: answered, "the receiver finished", timeout=60)
    assert state == "delivered"
    assert answered[0] < HUGE  # cut off: the sender closed the connection
    assert memory.growth < MEMORY_BOUND, f"grew by {memory.growth / MIB:.0f} MiB"


@pytest.fixture
def live(settings):
    # a submit's body may hold a data URI of a whole download (--max-download-bytes): read up to that limit, so it
    # is kept small here, where what counts is that nothing past the limit is read
    settings.max_download_bytes = MIB
    with LiveServer(settings, FakeEngine) as server:
        yield server


@pytest.mark.parametrize("store", ["sqlite"])
@pytest.mark.parametrize("route", ["initiate", "complete", "submit"])
def test_a_huge_json_body_is_a_413_without_being_buffered(live, route):
    with httpx.Client(base_url=live.url) as client:
        target = client.post("/storage/upload/initiate-multipart", json={"content_type": "image/png"}).json()
    path = {
        "initiate": "/storage/upload/initiate",
        "complete": httpx.URL(target["upload_url"]).path + "/complete",
        "submit": SUBMIT,
    }[route]
    block = b" " * MIB  # JSON whitespace: a valid start of a body, as long as the client likes
    with PeakMemory() as memory:
        status, answer, sent = raw_request(
            live.url, "POST", path, {"Content-Type": "application/json"}, repeated(block, HUGE)
        )
    assert status == 413, answer[:300]
    assert sent < HUGE
    assert memory.growth < MEMORY_BOUND, f"grew by {memory.growth / MIB:.0f} MiB"


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_parallel_multipart_parts_cannot_add_up_past_the_upload_limit(settings, store):
    limit = MIB
    settings.max_upload_bytes = limit
    part = 9 * MIB // 10
    barrier = threading.Barrier(4, timeout=10)
    results: dict[int, object] = {}

    def body(number: int):
        yield bytes([number]) * 65536  # the server has started on every part before any is complete
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        yield from repeated(bytes([number]) * 65536, part - 65536)

    with LiveServer(settings, FakeEngine) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        upload_url = client.post("/storage/upload/initiate-multipart", json={"content_type": "image/png"}).json()[
            "upload_url"
        ]
        base = httpx.URL(upload_url).path

        def send(number: int) -> None:
            try:
                results[number] = client.put(f"{base}/{number}", content=body(number)).status_code
            except httpx.HTTPError as exc:  # refused while sending: the connection closed under the body
                results[number] = type(exc).__name__

        threads = [threading.Thread(target=send, args=(n,)) for n in range(1, 5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        accepted = [number for number, status in results.items() if status == 200]
        everything = client.post(f"{base}/complete", json={"parts": [{"partNumber": n} for n in range(1, 5)]})
        if accepted:
            done = client.post(f"{base}/complete", json={"parts": [{"partNumber": n} for n in accepted]})
            assert done.status_code == 200, done.text
            stored = client.get(httpx.URL(done.json()["file_url"]).path).content
            assert len(stored) == part * len(accepted)
    assert len(results) == 4 and len(accepted) * part <= limit, results
    assert everything.status_code in (400, 413)  # some part is missing, or the parts are over the limit


@pytest.mark.parametrize("store", ["sqlite"])
def test_a_part_sent_again_replaces_its_reservation(make_client):
    with make_client(max_upload_bytes=MIB) as client:
        base = httpx.URL(client.post("/storage/upload/initiate-multipart", json={}).json()["upload_url"]).path
        for _ in range(3):  # a retried part counts once
            assert client.put(f"{base}/1", content=b"a" * (MIB // 2)).status_code == 200
        assert client.put(f"{base}/2", content=b"b" * (MIB // 2)).status_code == 200
        assert client.put(f"{base}/3", content=b"c").status_code == 413
        done = client.post(f"{base}/complete", json={"parts": [{"partNumber": 1}, {"partNumber": 2}]})
        assert done.status_code == 200, done.text
        assert client.get(httpx.URL(done.json()["file_url"]).path).content == b"a" * (MIB // 2) + b"b" * (MIB // 2)


@pytest.mark.parametrize("store", ["sqlite"])
def test_a_finished_upload_refuses_another_put(client):
    target = client.post("/storage/upload/initiate", json={"content_type": "image/png"}).json()
    upload = httpx.URL(target["upload_url"]).path
    first = png_bytes()
    assert client.put(upload, content=first, headers={"Content-Type": "image/png"}).status_code == 200
    again = client.put(upload, content=b"<script>alert(1)</script>", headers={"Content-Type": "text/html"})
    assert again.status_code == 400 and "already complete" in again.json()["detail"]
    served = client.get(httpx.URL(target["file_url"]).path)
    assert served.content == first and served.headers["content-type"] == "image/png"


@pytest.mark.parametrize("store", ["sqlite"])
@pytest.mark.parametrize(
    "credentials",
    ["Bearer \xe9t\xe9.\xe9t\xe9", "Bearer \xff", "Bearer x.\xe9", "Bearer .", "Bearer e30.", "Key \xe9", "Bearer"],
)
def test_a_malformed_upload_token_is_a_401(make_client, credentials):
    with make_client(api_keys=("the-key",)) as client:
        response = client.post(
            "/files/upload", content=b"data", headers={"Authorization": credentials.encode("latin-1")}
        )
    assert response.status_code == 401, response.text
    assert "upload token" in response.json()["detail"]
