"""The JS proxy route: ANY /api/fal/proxy dispatching on x-fal-target-url, and CORS for browsers."""

from __future__ import annotations

import json

import pytest

from tests.server.helpers import data_uri, png_bytes, wait_status

PROXY = "/api/fal/proxy"


def via_proxy(client, method, target, **kwargs):
    headers = {"x-fal-target-url": target, **kwargs.pop("headers", {})}
    return client.request(method, PROXY, headers=headers, **kwargs)


def test_run_through_the_proxy(client):
    response = via_proxy(
        client, "POST", "https://fal.run/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(png_bytes())}
    )
    assert response.status_code == 200 and response.json()["image"]["width"] == 48
    assert response.headers["x-fal-request-id"]


def test_queue_flow_through_the_proxy(client):
    submitted = via_proxy(
        client,
        "POST",
        "https://queue.fal.run/fal-ai/seedvr/upscale/image",
        json={"image_url": data_uri(png_bytes())},
        headers={"x-fal-queue-priority": "normal"},
    )
    assert submitted.status_code == 200
    request_id = submitted.json()["request_id"]
    assert submitted.json()["status_url"].startswith("http://testserver/queue/")
    wait_status(client, request_id)
    base = f"https://queue.fal.run/fal-ai/seedvr/requests/{request_id}"
    status = via_proxy(client, "GET", f"{base}/status?logs=1")
    assert status.status_code == 200 and status.json()["logs"]  # the query comes from the target URL
    assert via_proxy(client, "GET", f"{base}/status?logs=0").json()["logs"] is None
    result = via_proxy(client, "GET", base)
    assert result.status_code == 200 and result.headers["x-fal-request-id"] == request_id
    with client.stream("GET", PROXY, headers={"x-fal-target-url": f"{base}/status/stream?logs=0"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1]["status"] == "COMPLETED"
    cancel = via_proxy(client, "PUT", f"{base}/cancel")
    assert cancel.status_code == 400 and cancel.json()["status"] == "ALREADY_COMPLETED"


def test_webhook_query_parameter_survives_the_proxy(make_client):
    with make_client(allow_private_urls=True) as client:
        target = "https://queue.fal.run/fal-ai/seedvr/upscale/image?fal_webhook=http%3A%2F%2F127.0.0.1%3A9%2Fhook"
        request_id = via_proxy(client, "POST", target, json={"image_url": data_uri(png_bytes())}).json()["request_id"]
        assert client.app.state.server.jobs.get(request_id).webhook_url == "http://127.0.0.1:9/hook"


@pytest.mark.parametrize("host", ["rest.fal.ai", "rest.alpha.fal.ai"])
def test_storage_through_the_proxy(client, host):
    response = via_proxy(
        client,
        "POST",
        f"https://{host}/storage/upload/initiate?storage_type=fal-cdn-v3",
        json={"content_type": "image/png", "file_name": "a.png"},
    )
    assert response.status_code == 200
    upload_url = response.json()["upload_url"]
    assert upload_url.startswith("http://testserver/storage/upload/")
    assert client.put(upload_url, content=b"png").status_code == 200  # the PUT goes direct, not via the proxy
    multipart = via_proxy(
        client, "POST", f"https://{host}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3", json={}
    )
    assert multipart.status_code == 200


def test_validation_error_through_the_proxy_is_422(client):
    response = via_proxy(client, "POST", "https://fal.run/fal-ai/seedvr/upscale/image", content=b"")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "image_url"]


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        "https://evil.example.com/fal-ai/seedvr/upscale/image",
        "file:///etc/passwd",
        "not a url",
        "https://fal.run.evil.com/x",
    ],
)
def test_bad_targets_are_400(client, target):
    headers = {} if target is None else {"x-fal-target-url": target}
    response = client.post(PROXY, headers=headers, json={})
    assert response.status_code == 400 and "detail" in response.json()
    assert response.headers["x-fal-request-id"]


def test_unknown_path_on_a_fal_host_is_404(client):
    assert via_proxy(client, "POST", "https://rest.fal.ai/tokens/", json={}).status_code == 404


def test_cors_preflight_and_exposed_headers(client):
    preflight = client.options(
        PROXY,
        headers={
            "origin": "http://localhost:3000",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-fal-target-url, x-fal-queue-priority",
        },
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "x-fal-target-url" in allowed and "authorization" in allowed
    response = via_proxy(
        client,
        "POST",
        "https://fal.run/fal-ai/seedvr/upscale/image",
        json={"image_url": data_uri(png_bytes())},
        headers={"origin": "http://localhost:3000"},
    )
    assert response.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")
    assert "x-fal-request-id" in response.headers["access-control-expose-headers"].lower()


def test_cors_on_upload_targets(client):
    upload_url = client.post("/storage/upload/initiate", json={}).json()["upload_url"]
    preflight = client.options(
        upload_url,
        headers={
            "origin": "http://app.test",
            "access-control-request-method": "PUT",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 200 and "PUT" in preflight.headers["access-control-allow-methods"]


def test_every_response_has_a_request_id_even_preflights_and_crashes(make_client, monkeypatch):
    with make_client() as client:
        preflight = client.options(PROXY, headers={"origin": "http://a.test", "access-control-request-method": "PUT"})
        assert preflight.headers["x-fal-request-id"]
        state = client.app.state.server
        monkeypatch.setattr(state.jobs, "queue_position", lambda job: 1 / 0)  # a bug in a route
        crash = client.post(
            "/queue/fal-ai/seedvr/upscale/image",
            json={"image_url": data_uri(png_bytes())},
            headers={"origin": "http://a.test"},
        )
    assert crash.status_code == 500 and crash.json()["error_type"] == "internal_error"
    assert crash.headers["x-fal-request-id"] and crash.headers["access-control-allow-origin"]
