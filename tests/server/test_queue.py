"""The queue surface: submit, status, SSE stream, result, cancel, priorities and start deadlines."""

from __future__ import annotations

import json
import sys

import pytest

from tests.server.helpers import data_uri, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
REQUESTS = "/queue/fal-ai/seedvr/requests"
URL_KEYS = ("response_url", "status_url", "cancel_url")


def submit(client, body=None, headers=None, params=None):
    body = {"image_url": data_uri(png_bytes())} if body is None else body
    response = client.post(SUBMIT, json=body, headers=headers or {}, params=params or {})
    assert response.status_code == 200, response.text
    return response.json()


def test_submit_shape_and_urls_point_at_this_server(client):
    response = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())})
    body = response.json()
    request_id = body["request_id"]
    assert response.headers["x-fal-request-id"] == request_id
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0 and body["gateway_request_id"] == request_id
    root = f"http://testserver/queue/fal-ai/seedvr/requests/{request_id}"
    assert (body["response_url"], body["status_url"], body["cancel_url"]) == (root, root + "/status", root + "/cancel")
    wait_status(client, request_id)
    # the returned URLs work as they are
    assert client.get(body["status_url"]).status_code == 200
    assert client.get(body["response_url"]).json()["image"]["width"] == 48


def test_status_shapes_in_each_state(make_client, gated_engine):
    with make_client(gated_engine) as client:
        first = submit(client)["request_id"]
        assert gated_engine.entered.wait(5)
        second = submit(client)["request_id"]

        queued = client.get(f"{REQUESTS}/{second}/status")
        assert queued.status_code == 202
        assert queued.headers["x-fal-request-id"] == second
        body = queued.json()
        assert body["status"] == "IN_QUEUE" and body["queue_position"] == 0 and all(body[k] for k in URL_KEYS)

        running = client.get(f"{REQUESTS}/{first}/status")
        assert running.status_code == 202
        assert running.json()["status"] == "IN_PROGRESS" and running.json()["logs"] is None
        with_logs = client.get(f"{REQUESTS}/{first}/status", params={"logs": "1"}).json()
        messages = [entry["message"] for entry in with_logs["logs"]]
        assert any(m.startswith("download") for m in messages) and any(m.startswith("dit") for m in messages)
        entry = with_logs["logs"][0]
        assert set(entry) == {"message", "level", "source", "timestamp"} and entry["source"] == "USER"
        assert entry["level"] == "INFO" and entry["timestamp"].endswith("Z")

        gated_engine.gate.set()
        wait_status(client, second)
        done = client.get(f"{REQUESTS}/{first}/status")
        assert done.status_code == 200
        body = done.json()
        assert body["status"] == "COMPLETED" and body["logs"] is None
        assert body["metrics"]["inference_time"] > 0 and "error" not in body
        python_style = client.get(f"{REQUESTS}/{first}/status", params={"logs": "true"}).json()
        assert [e["message"] for e in python_style["logs"]][-1].startswith("done:")
        assert client.get(f"{REQUESTS}/{first}/status", params={"logs": "false"}).json()["logs"] is None


def test_result_before_completion_is_400_and_unknown_ids_404(make_client, gated_engine):
    with make_client(gated_engine) as client:
        request_id = submit(client)["request_id"]
        assert gated_engine.entered.wait(5)
        early = client.get(f"{REQUESTS}/{request_id}")
        gated_engine.gate.set()
        assert early.status_code == 400 and early.json()["detail"] == "Request is still in progress"
        for path in ("", "/status", "/status/stream"):
            missing = client.get(f"{REQUESTS}/not-a-request{path}")
            assert missing.status_code == 404 and "detail" in missing.json()


def test_invalid_input_is_refused_at_submit_with_fals_422(client):
    """The document promises a 422 for an input that breaks the schema, so no request is queued for one."""
    response = client.post(SUBMIT, json={"image_url": "https://example.com/a.png", "output_format": "gif"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "output_format"]
    assert client.app.state.server.db.query("SELECT COUNT(*) FROM jobs")[0][0] == 0


def test_empty_submit_body_is_an_empty_input(client):
    response = client.post(SUBMIT, content=b"")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "image_url"]


def test_bad_image_fails_the_job_with_422(client):
    request_id = submit(client, {"image_url": data_uri(b"GIF89a garbage")})["request_id"]
    status = wait_status(client, request_id, logs=True)
    assert status["error_type"] == "image_load_error"
    assert status["logs"][-1]["level"] == "ERROR"
    assert client.get(f"{REQUESTS}/{request_id}").status_code == 422


def test_priority_then_arrival_order(make_client, gated_engine):
    with make_client(gated_engine) as client:
        blocker = submit(client)["request_id"]
        assert gated_engine.entered.wait(5)
        low = submit(client, headers={"x-fal-queue-priority": "low"})
        normal_1 = submit(client, headers={"x-fal-queue-priority": "normal"})
        normal_2 = submit(client)
        assert (low["queue_position"], normal_1["queue_position"], normal_2["queue_position"]) == (0, 0, 1)
        assert client.get(f"{REQUESTS}/{low['request_id']}/status").json()["queue_position"] == 2
        gated_engine.gate.set()
        ids = [low["request_id"], normal_1["request_id"], normal_2["request_id"]]
        for request_id in ids:
            wait_status(client, request_id)
        state = client.app.state.server
        started = {request_id: state.jobs.get(request_id).started_at for request_id in [blocker, *ids]}
    assert sorted(started, key=started.get) == [
        blocker,
        normal_1["request_id"],
        normal_2["request_id"],
        low["request_id"],
    ]


@pytest.mark.parametrize(
    "headers",
    [{"x-fal-queue-priority": "urgent"}, {"x-fal-request-timeout": "soon"}, {"x-fal-request-timeout": "-3"}],
)
def test_bad_fal_headers_are_422_on_the_header(client, headers):
    response = client.post(SUBMIT, json={"image_url": data_uri(png_bytes())}, headers=headers)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", *headers]


def test_other_fal_headers_are_accepted(client):
    headers = {
        "x-fal-runner-hint": "gpu-a",
        "x-fal-object-lifecycle-preference": '{"expiration_duration_seconds": 60}',
        "x-fal-store-io": "0",
        "x-fal-no-retry": "1",
        "x-custom": "1",
        "x-fal-queue-priority": "high",
    }
    request_id = submit(client, headers=headers)["request_id"]
    assert wait_status(client, request_id)["status"] == "COMPLETED"


def test_start_deadline_expires_queued_request_with_user_504(make_client, gated_engine):
    with make_client(gated_engine) as client:
        submit(client)
        assert gated_engine.entered.wait(5)
        late = submit(client, headers={"x-fal-request-timeout": "0.2"})["request_id"]
        status = wait_status(client, late, timeout=5)
        gated_engine.gate.set()
        result = client.get(f"{REQUESTS}/{late}")
    assert status["error_type"] == "request_timeout"
    assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
    assert result.headers["x-fal-error-type"] == "request_timeout"
    assert len(gated_engine.calls) == 1  # the late one never ran


class TestCancel:
    def test_queued_request_never_runs(self, make_client, gated_engine):
        with make_client(gated_engine) as client:
            submit(client)
            assert gated_engine.entered.wait(5)
            queued = submit(client)["request_id"]
            response = client.put(f"{REQUESTS}/{queued}/cancel")
            assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
            status = client.get(f"{REQUESTS}/{queued}/status").json()
            gated_engine.gate.set()
            # The queue runs in order: once a request submitted after the cancelled one has completed, the
            # cancelled one had its turn (no waiting for something not to happen).
            wait_status(client, submit(client)["request_id"])
            result = client.get(f"{REQUESTS}/{queued}")
            metrics = client.get("/metrics").text
        assert status["status"] == "COMPLETED" and status["error_type"] == "client_cancelled"
        assert result.status_code == 499 and result.json()["error_type"] == "client_cancelled"
        assert len(gated_engine.calls) == 2  # the first and the last request
        assert 'seedvr_jobs_total{outcome="cancelled"} 1' in metrics

    def test_running_request_stops_at_next_phase(self, make_client, gated_engine, settings):
        with make_client(gated_engine) as client:
            running = submit(client)["request_id"]
            assert gated_engine.entered.wait(5)
            assert client.put(f"{REQUESTS}/{running}/cancel").status_code == 202
            assert client.get(f"{REQUESTS}/{running}/status").json()["status"] == "IN_PROGRESS"
            gated_engine.gate.set()  # the engine leaves "dit"; the next phase boundary stops it
            status = wait_status(client, running, logs=True)
        assert status["error_type"] == "client_cancelled"
        messages = [entry["message"] for entry in status["logs"]]
        assert messages[-1] == "cancelled" and not any(m.startswith("vae_decode") for m in messages)
        assert not [p for p in settings.files_dir.iterdir() if p.is_file()]  # no output was stored

    def test_completed_and_unknown(self, client):
        request_id = submit(client)["request_id"]
        wait_status(client, request_id)
        done = client.put(f"{REQUESTS}/{request_id}/cancel")
        assert done.status_code == 400 and done.json()["status"] == "ALREADY_COMPLETED"
        assert client.get(f"{REQUESTS}/{request_id}").status_code == 200  # the result is untouched
        missing = client.put(f"{REQUESTS}/nope/cancel")
        assert missing.status_code == 404 and missing.json()["status"] == "NOT_FOUND"
        assert missing.headers["x-fal-request-id"]


@pytest.mark.parametrize(
    "prefix",
    ["/queue/fal-ai/seedvr/upscale/image/requests", "/fal-ai/seedvr/requests", "/fal-ai/seedvr/upscale/image/requests"],
)
def test_tolerated_url_spellings(client, prefix):
    request_id = submit(client)["request_id"]
    wait_status(client, request_id)
    assert client.get(f"{prefix}/{request_id}/status").json()["status"] == "COMPLETED"
    assert client.get(f"{prefix}/{request_id}").status_code == 200
    assert client.put(f"{prefix}/{request_id}/cancel").status_code == 400


def _events(response, on_comment=lambda: None) -> tuple[list[dict], list[str]]:
    events, comments = [], []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
        elif line.startswith(":"):
            comments.append(line)
            on_comment()
    return events, comments


def test_sse_stream_sends_each_state_and_closes_after_completed(make_client, gated_engine):
    with make_client(gated_engine, sse_keepalive_s=0.1) as client:
        submit(client)
        assert gated_engine.entered.wait(5)
        request_id = submit(client)["request_id"]
        with client.stream("GET", f"{REQUESTS}/{request_id}/status/stream", params={"logs": "1"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-fal-request-id"] == request_id
            # The jobs go on once the stream has shown it keeps a waiting client alive: no timing involved.
            events, comments = _events(response, on_comment=gated_engine.gate.set)
        full = [entry.message for entry in client.app.state.server.jobs.logs(request_id)]
    statuses = [event["status"] for event in events]
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "COMPLETED" and "IN_PROGRESS" in statuses
    assert statuses.index("IN_PROGRESS") > 0 and statuses.count("COMPLETED") == 1
    assert comments, "keep-alive comments while waiting"
    assert events[-1]["metrics"]["inference_time"] > 0
    # each event brings only new log entries; together they are the whole log, in order
    streamed = [entry["message"] for event in events for entry in (event.get("logs") or [])]
    assert streamed == full and streamed[0].startswith("download") and streamed[-1].startswith("done:")


def test_sse_for_a_completed_request_is_one_event(client):
    request_id = submit(client)["request_id"]
    wait_status(client, request_id)
    with client.stream("GET", f"{REQUESTS}/{request_id}/status/stream") as response:
        events, _ = _events(response)
    assert [event["status"] for event in events] == ["COMPLETED"] and events[0]["logs"] is None


def test_status_polling_is_cheap(client):
    """Clients poll status in a loop: a poll reads a few rows and writes nothing, however often it comes.
    Counted in database calls, not timed (a time limit fails on a loaded machine and passes a slow query)."""
    request_id = submit(client)["request_id"]
    wait_status(client, request_id)
    from seedvr_local.server.routers import queue as queue_routes

    db = client.app.state.server.db
    calls: list[str] = []

    def from_status_route() -> bool:  # the worker and other background threads use the database too
        frame = sys._getframe(2)
        while frame is not None and frame.f_code is not queue_routes.status.__code__:
            frame = frame.f_back
        return frame is not None

    def counting(name, method):
        def call(*args, **kwargs):
            if from_status_route():
                calls.append(name)
            return method(*args, **kwargs)

        return call

    for name in ("query", "query_one", "execute", "transaction"):
        setattr(db, name, counting(name, getattr(db, name)))
    try:
        polls = 100
        for _ in range(polls):
            response = client.get(f"{REQUESTS}/{request_id}/status", params={"logs": "true"})
            assert response.status_code == 200
    finally:
        for name in ("query", "query_one", "execute", "transaction"):
            delattr(db, name)
    assert len(calls) >= polls, "each poll reads the job: the counting missed the database"
    assert "execute" not in calls and "transaction" not in calls, f"a status poll writes: {set(calls)}"
    assert len(calls) <= 3 * polls, f"{len(calls) / polls:.1f} database reads per status poll"
