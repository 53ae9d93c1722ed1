"""Webhook signatures made the way fal makes them, so receivers that verify fal's webhooks verify ours.

Each delivery carries `X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp` (unix seconds) and `-Signature`: the
hex Ed25519 signature of `"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"`. The public key is served
as a JWKS at `/.well-known/jwks.json`: a receiver points the JWKS URL it would fetch from fal at this server.
The private key lives in the data dir (created on first start), so signatures stay verifiable across restarts.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILE = "webhook-signing-key.pem"


def signed_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


class WebhookSigner:
    def __init__(self, private_key: Ed25519PrivateKey, user_id: str):
        self.private_key = private_key
        self.user_id = user_id
        public = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._public_bytes = public
        self.key_id = hashlib.sha256(public).hexdigest()[:16]

    @classmethod
    def from_data_dir(cls, data_dir: Path, user_id: str) -> WebhookSigner:
        path = data_dir / KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            path.touch(mode=0o600)
            path.write_bytes(pem)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise RuntimeError(f"{path} does not hold an Ed25519 private key: delete it to make a new one")
        return cls(key, user_id)

    def headers(self, request_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        signature = self.private_key.sign(signed_message(request_id, self.user_id, timestamp, body))
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": signature.hex(),
        }

    def jwks(self) -> dict:
        x = base64.urlsafe_b64encode(self._public_bytes).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.key_id, "use": "sig", "alg": "EdDSA"}]}
