"""Webhooks: fal's OK/ERROR payloads, retries with backoff, giving up, and surviving a restart."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.server.helpers import LocalHTTP, data_uri, png_bytes, wait_status, wait_until

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


def _submit(client, hook: str, body=None) -> str:
    response = client.post(SUBMIT, params={"fal_webhook": hook}, json=body or {"image_url": data_uri(png_bytes())})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def test_ok_payload(make_client):
    with LocalHTTP({"/hook": (200, {}, b"")}) as receiver, make_client(allow_private_urls=True) as client:
        request_id = _submit(client, f"{receiver.url}/hook")
        [(method, path, headers, body)] = receiver.wait_for(1)
        result = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").json()
    payload = json.loads(body)
    assert method == "POST" and path == "/hook" and headers["Content-Type"] == "application/json"
    assert payload == {"request_id": request_id, "gateway_request_id": request_id, "status": "OK", "payload": result}


def test_error_payload_for_an_unreadable_image(make_client):
    with LocalHTTP({"/hook": (204, {}, b"")}) as receiver, make_client(allow_private_urls=True) as client:
        request_id = _submit(client, f"{receiver.url}/hook", {"image_url": data_uri(png_bytes()[:40])})  # cut short
        [(_, _, _, body)] = receiver.wait_for(1)
    payload = json.loads(body)
    assert payload["status"] == "ERROR" and payload["request_id"] == request_id
    assert payload["error"] == "Invalid status code: 422"
    assert payload["payload"]["detail"][0]["loc"] == ["body", "image_url"]


def _webhook_row(client, request_id: str, columns: str, until: str):
    """The webhook row of a job once its state is `until` (the delivery is recorded after the receiver answers)."""
    db = client.app.state.server.db

    def row():
        found = db.query_one(f"SELECT state, {columns} FROM webhooks WHERE job_id = ?", (request_id,))
        return tuple(found)[1:] if found is not None and found[0] == until else None

    return wait_until(row, f"the webhook of {request_id} {until}")


def test_retries_until_delivered(make_client):
    answers = iter([503, 500, 200])

    def flaky(handler):
        return next(answers), {}, b""

    with LocalHTTP({"/hook": flaky}) as receiver, make_client(allow_private_urls=True) as client:
        request_id = _submit(client, f"{receiver.url}/hook")
        calls = receiver.wait_for(3)
        row = _webhook_row(client, request_id, "state, attempts", until="delivered")
        metrics = client.get("/metrics").text
    assert len(calls) == 3 and calls[0][3] == calls[2][3]  # the same payload every time
    assert tuple(row) == ("delivered", 3)
    assert 'seedvr_webhook_deliveries_total{outcome="retried"} 2' in metrics


def test_gives_up_after_max_attempts(make_client):
    with (
        LocalHTTP({"/hook": (500, {}, b"")}) as receiver,
        make_client(allow_private_urls=True, webhook_max_attempts=3) as client,
    ):
        request_id = _submit(client, f"{receiver.url}/hook")
        receiver.wait_for(3)
        row = _webhook_row(client, request_id, "state, attempts, last_error", until="failed")
    assert len(receiver.requests) == 3
    assert tuple(row) == ("failed", 3, "HTTP 500")


def test_unreachable_receiver_does_not_block_the_worker(make_client):
    with socket.socket() as closed:  # a port bound and never listened on: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        hook = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
        with make_client(allow_private_urls=True, webhook_backoff_s=30) as client:
            first = _submit(client, hook)
            second = _submit(client, hook)
            assert wait_status(client, first)["status"] == wait_status(client, second)["status"] == "COMPLETED"


def test_private_webhook_is_refused_at_submit(client):
    response = client.post(
        SUBMIT, params={"fal_webhook": "http://127.0.0.1:8080/hook"}, json={"image_url": data_uri(png_bytes())}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    bad_scheme = client.post(
        SUBMIT, params={"fal_webhook": "javascript:alert(1)"}, json={"image_url": "https://x/y.png"}
    )
    assert bad_scheme.status_code == 422


def test_pending_webhook_is_delivered_after_a_restart(make_client):
    with LocalHTTP({"/hook": (200, {}, b"")}) as receiver:
        # the first server cannot reach the receiver (long backoff after a refused try) ...
        with make_client(allow_private_urls=True, webhook_backoff_s=600) as client:
            hook = f"http://127.0.0.1:{receiver.port}/hook"
            receiver.routes["/hook"] = (503, {}, b"")
            request_id = _submit(client, hook)
            receiver.wait_for(1)
            client.app.state.server.db.execute("UPDATE webhooks SET next_attempt = 0")  # due right after the restart
        receiver.routes["/hook"] = (200, {}, b"")
        # ... the next one, on the same data dir, delivers it
        with make_client(allow_private_urls=True) as client:
            calls = receiver.wait_for(2)
            state = _webhook_row(client, request_id, "state", until="delivered")[0]
    assert len(calls) == 2 and json.loads(calls[1][3])["request_id"] == request_id
    assert state == "delivered"


def test_deliveries_are_signed_like_fal_and_verify_against_the_jwks(make_client):
    import base64
    import hashlib

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def signed_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:  # fal's format
        return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()

    with LocalHTTP({"/hook": (200, {}, b"")}) as receiver, make_client(allow_private_urls=True) as client:
        submitted = int(time.time())  # the header holds whole seconds
        request_id = _submit(client, f"{receiver.url}/hook")
        [(_, _, headers, body)] = receiver.wait_for(1)
        jwks = client.get("/.well-known/jwks.json", headers={"Authorization": "Key wrong"}).json()
    [key] = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"]) == ("OKP", "Ed25519", "EdDSA")
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4)))
    assert headers["X-Fal-Webhook-Request-Id"] == request_id
    assert headers["X-Fal-Webhook-User-Id"] == "seedvr-local"
    timestamp = int(headers["X-Fal-Webhook-Timestamp"])
    assert submitted <= timestamp <= time.time()  # signed when sent: after the submit, before it arrived
    signature = bytes.fromhex(headers["X-Fal-Webhook-Signature"])
    public.verify(signature, signed_message(request_id, "seedvr-local", timestamp, body))  # raises if wrong
    with pytest.raises(InvalidSignature):  # the signature covers the body
        public.verify(signature, signed_message(request_id, "seedvr-local", timestamp, body + b" "))


def test_signing_key_survives_a_restart_and_is_public(make_client):
    with make_client() as client:
        first = client.get("/.well-known/jwks.json").json()
    with make_client(api_keys=("secret",)) as client:  # no key needed for the public key
        response = client.get("/.well-known/jwks.json")
        assert response.status_code == 200 and response.json() == first
