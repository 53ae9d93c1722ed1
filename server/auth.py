"""API keys (`Authorization: Key <key>`) and the short-lived upload tokens of the Python upload flow.

Without keys the server is open. Stored files are not behind the key: their unguessable URLs are the
capability, as with fal's CDN, so they can be put in <img> tags and handed to other services.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Request

from seedvr_local.server.db import Database
from seedvr_local.server.errors import FalError
from seedvr_local.server.secret_store import SecretStore

#: The upload-token HMAC secret's name in the database's secrets.
UPLOAD_TOKEN_SECRET = "upload-token-key"
#: Where releases before the secret moved to the database kept it, in the data dir.
LEGACY_UPLOAD_TOKEN_FILE = "upload-token.key"


def require_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries one of the server's keys."""
    keys = request.app.state.server.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "").strip()
    if not header:
        raise FalError(401, "Missing Authorization header: send 'Authorization: Key <your key>'")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() not in ("key", "bearer") or not credentials:
        raise FalError(401, "Invalid Authorization header format: expected 'Key <your key>'")
    if not key_matches(credentials, keys):
        raise FalError(401, "Invalid API key")


def require_metrics_key(request: Request) -> None:
    """FastAPI dependency of /metrics (it names hosts, processes and the queue): `--metrics-key` when given, else
    an admin key (any API key when none is an admin's); open on a key-less server without `--metrics-key`."""
    settings = request.app.state.server.settings
    keys = (settings.metrics_key,) if settings.metrics_key else (settings.admin_keys or settings.api_keys)
    if not keys:
        return
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() not in ("key", "bearer") or not key_matches(credentials, tuple(keys)):
        what = "the metrics key" if settings.metrics_key else "an admin key" if settings.admin_keys else "an API key"
        raise FalError(401, f"/metrics needs {what}: send 'Authorization: Bearer <key>'")


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    # compare every key, in constant time, so timing tells nothing about which one was close
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate.encode(), key.encode())
    return matched


class UploadTokens:
    """Signed, expiring tokens: what `/storage/auth/token` hands out and `/files/upload` accepts."""

    def __init__(self, secret: bytes, ttl_s: int):
        self.secret = secret
        self.ttl_s = ttl_s

    @classmethod
    def from_database(cls, db: Database, data_dir: Path, ttl_s: int) -> UploadTokens:
        """The signing secret lives in the job database, so tokens survive restarts and a token from one front-end
        is good at every other; a secret an older release kept in `data_dir` is adopted (its tokens stay valid)."""
        secret = SecretStore(db).get_or_adopt(
            UPLOAD_TOKEN_SECRET, data_dir / LEGACY_UPLOAD_TOKEN_FILE, lambda: secrets.token_bytes(32)
        )
        return cls(secret, ttl_s)

    def issue(self) -> dict[str, str]:
        expires = int(time.time()) + self.ttl_s
        payload = base64.urlsafe_b64encode(json.dumps({"exp": expires}).encode()).decode().rstrip("=")
        token = f"{payload}.{self._sign(payload)}"
        # an explicit offset: fal-client compares it with an aware datetime
        expires_at = datetime.fromtimestamp(expires, timezone.utc).isoformat()
        return {"token": token, "token_type": "Bearer", "expires_at": expires_at}

    def valid(self, token: str) -> bool:
        """Any string: a malformed one (not ASCII, no signature, not JSON) is simply not valid."""
        payload, _, signature = token.partition(".")
        # compared as bytes: compare_digest refuses str with characters outside ASCII (a header may carry them)
        if not signature or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return float(claims["exp"]) > time.time()
        except (ValueError, KeyError, TypeError):
            return False

    def _sign(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()


def require_upload_auth(request: Request) -> None:
    """For `/files/upload`: an upload token (`Bearer`), or an API key, when the server has keys."""
    state = request.app.state.server
    if not state.settings.api_keys:
        return
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and state.upload_tokens.valid(credentials):
        return
    if scheme.lower() in ("key", "bearer") and key_matches(credentials, state.settings.api_keys):
        return
    raise FalError(401, "Missing or invalid upload token: get one from POST /storage/auth/token")
