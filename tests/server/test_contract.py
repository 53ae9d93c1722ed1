"""The API contract: what the OpenAPI document promises is what the server does.

The full fuzzing run is tests/contract/run.sh (part of .ci/run); these are the cases it found, one by one.
"""

from __future__ import annotations

import base64
import re
import uuid

import httpx
import pytest

from tests.server.helpers import FakeEngine, LiveServer, data_uri, png_bomb, png_bytes

REQUESTS = "/queue/fal-ai/seedvr/requests"
SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
RUN = "/fal-ai/seedvr/upscale/image"


def _operation(client, path: str, method: str) -> dict:
    return client.get("/openapi.json").json()["paths"][path][method]


# --- request ids are the server's own, and never echoed ------------------------------------------


@pytest.mark.parametrize("raw_id", ["%E4%B8%AD", "not-a-request", "%22%3Cscript%3E", "0" * 36])
@pytest.mark.parametrize("route", ["/cancel", "/status", "", "/status/stream"])
def test_an_id_that_is_not_ours_is_a_404_that_repeats_nothing(client, raw_id, route):
    method = "PUT" if route == "/cancel" else "GET"
    response = client.request(method, f"{REQUESTS}/{raw_id}{route}")
    assert response.status_code == 404
    body = response.json()
    assert body["error_type"] == "request_not_found"
    assert raw_id not in response.text and httpx.URL(f"/{raw_id}").path.strip("/") not in response.text
    uuid.UUID(response.headers["x-fal-request-id"])  # a fresh id of the server, not the path's
    if route == "/cancel":
        assert body["status"] == "NOT_FOUND"  # fal's cancel outcome


def test_a_header_breaking_id_gets_an_http_answer(settings):
    """Over a real HTTP server: a CR LF in the id used to end the connection without any reply."""
    with LiveServer(settings, FakeEngine) as server, httpx.Client(base_url=server.url) as http:
        for raw_id in ("%0d%0aX-Injected:%201", "%E4%B8%AD", "%00"):
            response = http.put(f"{REQUESTS}/{raw_id}/cancel")
            assert response.status_code == 404, raw_id
            assert "x-injected" not in response.headers


def test_job_headers_carry_the_jobs_own_id(client):
    request_id = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}).json()["request_id"]
    # an upper-case spelling of a real id is not the server's id: found by nobody, echoed by nobody
    assert client.get(f"{REQUESTS}/{request_id.upper()}/status").status_code == 404
    assert client.get(f"{REQUESTS}/{request_id}/status").headers["x-fal-request-id"] == request_id


# --- the document tells the truth ---------------------------------------------------------------


def test_status_and_cancel_declare_what_they_answer(client):
    status = _operation(client, f"{REQUESTS}/{{request_id}}/status", "get")["responses"]
    assert {"200", "202", "404"} <= set(status)
    cancel = _operation(client, f"{REQUESTS}/{{request_id}}/cancel", "put")["responses"]
    assert {"202", "400", "404"} <= set(cancel) and "200" not in cancel
    result = _operation(client, f"{REQUESTS}/{{request_id}}", "get")["responses"]
    assert {"200", "400", "404", "422", "499", "504"} <= set(result)
    parameter = _operation(client, f"{REQUESTS}/{{request_id}}/status", "get")["parameters"][0]
    assert re.fullmatch(parameter["schema"]["pattern"], str(uuid.uuid4()))


def test_every_error_answer_is_declared_with_fals_error_body(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert set(schemas["ModelErrorBody"]["required"]) == {"detail"}
    assert schemas["RequestErrorBody"]["properties"]["detail"]["type"] == "string"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code == "default" or int(code) >= 400:
                    assert response.get("content"), (method, path, code)


def test_stored_files_and_the_event_stream_declare_their_content_types(client):
    stored = _operation(client, "/files/{file_id}/{name}", "get")["responses"]["200"]["content"]
    assert list(stored) == ["*/*"]
    stream = _operation(client, f"{REQUESTS}/{{request_id}}/status/stream", "get")["responses"]
    assert list(stream["200"]["content"]) == ["text/event-stream"]
    assert list(stream["404"]["content"]) == ["application/json"]
    upload = client.post("/files/upload", content=b"\xce\x00 not yaml", headers={"content-type": "application/yaml"})
    assert upload.status_code == 200 and upload.headers["content-type"] == "application/json"
    served = client.get(httpx.URL(upload.json()["access_url"]).path)
    assert served.headers["content-type"] == "application/octet-stream"  # not a type it cannot be read as


def test_submit_links_its_request_id_to_the_request_routes(client):
    links = _operation(client, SUBMIT, "post")["responses"]["200"]["links"]
    targets = {link["operationId"] for link in links.values()}
    assert targets == {"queue_status", "queue_status_stream", "queue_result", "queue_cancel"}
    assert all(link["parameters"] == {"request_id": "$response.body#/request_id"} for link in links.values())


@pytest.mark.parametrize("value", ["null", "", "urgent"])
def test_priority_header_outside_its_documented_values_is_refused_as_documented(client, value):
    parameters = {p["name"]: p for p in _operation(client, SUBMIT, "post")["parameters"]}
    allowed = parameters["x-fal-queue-priority"]["schema"]["anyOf"][0]["enum"]
    assert value not in allowed and {"normal", "low"} <= set(allowed)
    response = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers={"x-fal-queue-priority": value})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "x-fal-queue-priority"]


def test_the_documented_priorities_are_accepted(client):
    for value in ("normal", "low", "high"):
        headers = {"x-fal-queue-priority": value}
        assert client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers=headers).status_code == 200


@pytest.mark.parametrize("value", ["30", "30.0", "0.5", ".5"])
def test_request_timeouts_of_both_clients_are_accepted(client, value):
    response = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers={"x-fal-request-timeout": value})
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["0", "1e3", "inf", "null", ""])
def test_request_timeouts_outside_the_documented_pattern_are_refused(client, value):
    response = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers={"x-fal-request-timeout": value})
    assert response.status_code == 422


def test_invalid_input_is_refused_before_it_is_queued(client):
    response = client.post(SUBMIT, json=[1, {}, None])
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "model_type"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/files/upload"),
        ("GET", "/files/upload/multipart"),
        ("GET", "/storage/upload/initiate"),
        ("PUT", "/storage/multipart/{token}/complete"),
        ("PUT", "/files/{file}/a.png/multipart/{token}/complete"),
    ],
)
def test_undeclared_methods_are_405(client, method, path):
    token, file_id = "t" * 32, "f" * 22
    response = client.request(method, path.format(token=token, file=file_id))
    assert response.status_code == 405
    assert response.headers["allow"]


def test_multipart_complete_is_not_taken_for_a_part(client):
    upload = httpx.URL(client.post("/storage/upload/initiate-multipart", json={}).json()["upload_url"]).path
    etag = client.put(f"{upload}/1", content=b"one").json()["etag"]
    done = client.post(f"{upload}/complete", json={"parts": [{"partNumber": 1, "etag": etag}]})
    assert done.status_code == 200 and client.get(httpx.URL(done.json()["file_url"]).path).content == b"one"


def test_initiate_refuses_fields_of_the_wrong_type(client):
    response = client.post("/storage/upload/initiate", json={"content_type": 5})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "content_type"]


# --- messages name the real cause and the real limit ---------------------------------------------


def test_broken_base64_says_so(client):
    response = client.post(RUN, json={"image_url": "data:image/png;base64,@@not*base64@@"})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "not valid base64" in message and "'@'" in message and "empty" not in message


def test_url_safe_base64_without_padding_still_decodes(client):
    encoded = base64.urlsafe_b64encode(png_bytes()).decode().rstrip("=")
    assert client.post(RUN, json={"image_url": f"data:image/png;base64,{encoded}"}).status_code == 200


def test_a_decompression_bomb_quotes_the_servers_pixel_limit(make_client):
    with make_client(max_input_pixels=1_234_567) as client:
        response = client.post(RUN, json={"image_url": data_uri(png_bomb(50_000, 50_000))})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "1,234,567" in message and "178,956,970" not in message


# --- the proxy route is in the document and keeps to it -----------------------------------------


def test_the_proxy_is_documented(client):
    operations = client.get("/openapi.json").json()["paths"]["/api/fal/proxy"]
    assert set(operations) == {"get", "post", "put"}
    [header] = operations["post"]["parameters"]
    assert header["name"] == "x-fal-target-url" and header["required"]
    assert re.match(header["schema"]["pattern"], "https://queue.fal.run/fal-ai/seedvr/upscale/image")
    assert not re.match(header["schema"]["pattern"], "https://fal.run.evil.com/x")


def test_the_proxy_answers_405_to_other_methods(client):
    target = {"x-fal-target-url": "https://fal.run/fal-ai/seedvr/upscale/image"}
    response = client.delete("/api/fal/proxy", headers=target)
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST, PUT"


@pytest.mark.parametrize("target", ["https://fal.run:[/x", "https://fal.run:1@evil.com/", "https://FAL.run/x"])
def test_malformed_proxy_targets_are_400_not_a_crash(client, target):
    response = client.post("/api/fal/proxy", headers={"x-fal-target-url": target}, json={})
    assert response.status_code == 400 and "detail" in response.json()
