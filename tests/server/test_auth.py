"""API keys: every API route needs `Authorization: Key <key>` when keys are set; files stay open."""

from __future__ import annotations

import pytest

from tests.server.helpers import data_uri, png_bytes, wait_status

KEY = "key-id:key-secret"
RUN = "/fal-ai/seedvr/upscale/image"


@pytest.fixture
def keyed(make_client):
    with make_client(api_keys=(KEY, "second-key")) as client:
        yield client


PROTECTED = [
    ("POST", RUN),
    ("POST", "/run" + RUN),
    ("POST", "/queue" + RUN),
    ("GET", "/queue/fal-ai/seedvr/requests/x/status"),
    ("GET", "/queue/fal-ai/seedvr/requests/x/status/stream"),
    ("GET", "/queue/fal-ai/seedvr/requests/x"),
    ("PUT", "/queue/fal-ai/seedvr/requests/x/cancel"),
    ("POST", "/storage/upload/initiate"),
    ("POST", "/storage/upload/initiate-multipart"),
    ("POST", "/storage/auth/token"),
    ("POST", "/files/upload"),
    ("POST", "/files/upload/multipart"),
]


BAD_AUTHORIZATIONS = [None, "", "Key wrong", "Key", "Basic a2V5", "Bearer nope", f"Key {KEY}x", f"Key {KEY[:-1]}"]


def test_missing_or_wrong_key_is_401_everywhere(keyed):
    for method, path in PROTECTED:
        for authorization in BAD_AUTHORIZATIONS:
            headers = {} if authorization is None else {"authorization": authorization}
            response = keyed.request(method, path, headers=headers, json={"image_url": data_uri(png_bytes())})
            assert response.status_code == 401, (method, path, authorization)
            assert isinstance(response.json()["detail"], str) and response.json()["detail"]
            assert response.headers["x-fal-request-id"]
    assert not keyed.app.state.server.jobs.counts()["IN_QUEUE"]  # nothing got through


def test_right_key_works_and_the_proxy_forwards_it(keyed):
    ok = keyed.post(RUN, json={"image_url": data_uri(png_bytes())}, headers={"authorization": f"Key {KEY}"})
    assert ok.status_code == 200
    also = keyed.post(RUN, json={"image_url": data_uri(png_bytes())}, headers={"authorization": "Bearer second-key"})
    assert also.status_code == 200
    proxied = keyed.post("/api/fal/proxy", json={}, headers={"x-fal-target-url": "https://fal.run" + RUN})
    assert proxied.status_code == 401
    proxied = keyed.post(
        "/api/fal/proxy",
        json={"image_url": data_uri(png_bytes())},
        headers={"x-fal-target-url": "https://fal.run" + RUN, "authorization": f"Key {KEY}"},
    )
    assert proxied.status_code == 200


def test_files_and_health_stay_open(keyed):
    auth = {"authorization": f"Key {KEY}"}
    image_url = keyed.post(RUN, json={"image_url": data_uri(png_bytes())}, headers=auth).json()["image"]["url"]
    assert keyed.get(image_url).status_code == 200
    target = keyed.post("/storage/upload/initiate", json={}, headers=auth).json()
    assert keyed.put(target["upload_url"], content=b"x").status_code == 200  # the JS client sends no key here
    for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    # /metrics names hosts, processes and the queue: behind the key when there are keys (docs/security.md)
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers=auth).status_code == 200


def test_upload_tokens_authorise_python_uploads(keyed):
    token = keyed.post("/storage/auth/token", json={}, headers={"authorization": f"Key {KEY}"}).json()["token"]
    ok = keyed.post("/files/upload", content=b"x", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    assert keyed.post("/files/upload", content=b"x", headers={"authorization": f"Bearer {forged}"}).status_code == 401


def test_expired_upload_token_is_refused(make_client):
    with make_client(api_keys=(KEY,), upload_token_ttl_s=-1) as client:
        token = client.post("/storage/auth/token", json={}, headers={"authorization": f"Key {KEY}"}).json()["token"]
        assert (
            client.post("/files/upload", content=b"x", headers={"authorization": f"Bearer {token}"}).status_code == 401
        )


def test_without_keys_the_server_is_open(client):
    request_id = client.post("/queue" + RUN, json={"image_url": data_uri(png_bytes())}).json()["request_id"]
    assert wait_status(client, request_id)["status"] == "COMPLETED"
