"""Webhook signatures made the way fal makes them, so receivers that verify fal's webhooks verify ours.

Each delivery carries `X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp` (unix seconds) and `-Signature`: the
hex Ed25519 signature of `"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256_hex(body)}"`. The public key is served
as a JWKS at `/.well-known/jwks.json`: a receiver points the JWKS URL it would fetch from fal at this server.
The private key lives in the job database (made on first start, server/secret_store.py), so signatures stay
verifiable across restarts and every front-end sharing the database signs with it and serves the same JWKS.
A key that an older release kept in the data dir (LEGACY_KEY_FILE) is adopted, so pinned JWKS keep verifying.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from seedvr_local.server.db import Database
from seedvr_local.server.secret_store import SecretStore

#: The key's name in the database's secrets; its value is the PKCS#8 PEM of the private key.
SECRET_NAME = "webhook-signing-key"
#: Where releases before the key moved to the database kept it, in the data dir.
LEGACY_KEY_FILE = "webhook-signing-key.pem"


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
    def from_database(cls, db: Database, data_dir: Path, user_id: str) -> WebhookSigner:
        """The key stored in `db` (made, or adopted from `data_dir`'s legacy key file, when there is none)."""

        def new_key() -> bytes:
            return Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )

        pem = SecretStore(db).get_or_adopt(SECRET_NAME, data_dir / LEGACY_KEY_FILE, new_key, check=_private_key)
        try:
            return cls(_private_key(pem), user_id)
        except ValueError as exc:
            raise RuntimeError(
                f"the webhook signing key in the database at {db.where} is unusable ({exc}): delete the row"
                f" '{SECRET_NAME}' of its server_secrets table to make a new one"
            ) from None

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


def _private_key(pem: bytes) -> Ed25519PrivateKey:
    """ValueError unless `pem` is an Ed25519 private key in PEM."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"not an Ed25519 private key but {type(key).__name__}")
    return key
