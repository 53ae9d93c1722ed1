"""The server's secrets (webhook signing key, upload-token secret) live in the job database: front-ends sharing it
share them without sharing a data dir, processes starting together agree on one value, and the files an older
release kept in the data dir are adopted."""

from __future__ import annotations

import base64
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from seedvr_local.server.auth import LEGACY_UPLOAD_TOKEN_FILE, UploadTokens
from seedvr_local.server.db import Database
from seedvr_local.server.secret_store import SecretStore
from seedvr_local.server.signing import LEGACY_KEY_FILE, WebhookSigner
from tests.server.helpers import FakeEngine

KEY = "the-api-key"
AUTH = {"authorization": f"Key {KEY}"}


def _database(settings) -> Database:
    return Database(settings.database_url or settings.database_path)


def _upload(client, token: str) -> int:
    return client.post("/files/upload", content=b"x", headers={"authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("store", ["postgresql"])
def test_two_front_ends_on_one_postgres_with_their_own_data_dirs_share_the_keys(settings, tmp_path):
    front_ends = [
        dataclasses.replace(settings, data_dir=tmp_path / name, api_keys=(KEY,), worker_in_process=False)
        for name in ("host-a", "host-b")
    ]
    with (
        TestClient(create_app(front_ends[0], FakeEngine)) as first,
        TestClient(create_app(front_ends[1], FakeEngine)) as second,
    ):
        jwks = [client.get("/.well-known/jwks.json").json() for client in (first, second)]
        token = first.post("/storage/auth/token", json={}, headers=AUTH).json()["token"]
        assert _upload(second, token) == 200  # a token from one front-end is good at the other
    assert jwks[0] == jwks[1] and len(jwks[0]["keys"]) == 1
    for front_end in front_ends:  # nothing secret was written to the data dirs
        assert not (front_end.data_dir / LEGACY_KEY_FILE).exists()
        assert not (front_end.data_dir / LEGACY_UPLOAD_TOKEN_FILE).exists()


def test_the_keys_an_older_release_kept_in_the_data_dir_are_adopted(make_client, settings):
    old_key = Ed25519PrivateKey.generate()
    old_secret = b"s" * 32
    settings.data_dir.mkdir(parents=True)
    pem = old_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (settings.data_dir / LEGACY_KEY_FILE).write_bytes(pem)
    (settings.data_dir / LEGACY_UPLOAD_TOKEN_FILE).write_bytes(old_secret)
    outstanding = UploadTokens(old_secret, 3600).issue()["token"]  # handed out by the older release
    public = old_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    with make_client(api_keys=(KEY,)) as client:
        [served] = client.get("/.well-known/jwks.json").json()["keys"]
        assert _upload(client, outstanding) == 200
    assert base64.urlsafe_b64decode(served["x"] + "=" * (-len(served["x"]) % 4)) == public

    # adopted into the database: the files are no longer needed
    (settings.data_dir / LEGACY_KEY_FILE).unlink()
    (settings.data_dir / LEGACY_UPLOAD_TOKEN_FILE).unlink()
    with make_client(api_keys=(KEY,)) as client:
        assert client.get("/.well-known/jwks.json").json()["keys"] == [served]
        assert _upload(client, outstanding) == 200


def test_processes_starting_together_agree_on_one_secret(settings):
    racers = 4
    databases = [_database(settings) for _ in range(racers)]
    # every racer has found no secret and made its own before any stores it: the insert race at its widest
    all_made = threading.Barrier(racers, timeout=20)

    def make(n: int) -> bytes:
        all_made.wait()
        return f"secret of racer {n}".encode()

    try:
        with ThreadPoolExecutor(racers) as pool:
            values = list(
                pool.map(lambda n: SecretStore(databases[n]).get_or_create("shared", lambda: make(n)), range(racers))
            )
    finally:
        for database in databases:
            database.close()
    assert len(set(values)) == 1 and values[0].startswith(b"secret of racer ")


def test_an_unusable_key_file_is_named_and_not_adopted(settings):
    settings.data_dir.mkdir(parents=True)
    legacy = settings.data_dir / LEGACY_KEY_FILE
    legacy.write_bytes(b"not a key")
    db = _database(settings)
    try:
        with pytest.raises(RuntimeError, match=str(legacy)):
            WebhookSigner.from_database(db, settings.data_dir, "seedvr-local")
        assert db.query("SELECT name FROM server_secrets") == []
    finally:
        db.close()
