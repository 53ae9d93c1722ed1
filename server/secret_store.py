"""The server's own secrets (the webhook signing key, the upload-token secret), kept in the job database.

Every process that shares the database uses the same secrets, so front-ends on several hosts need no shared
filesystem. A secret is made by whichever process needs it first; processes that start together agree on one
value (insert-if-absent, then read what won). Releases before this one kept each secret in a file of the data
dir: when the database has no value yet, such a file's value is adopted, so a deployment keeps its keys.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from pathlib import Path

from seedvr_local.server.db import Database

log = logging.getLogger("seedvr_local.server")


class SecretStore:
    def __init__(self, db: Database):
        self.db = db

    def get_or_create(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret `name`; when there is none yet, `make()`'s value, unless another process stored its own
        first (then that one: every process gets the same bytes)."""
        stored = self._read(name)
        if stored is not None:
            return stored
        value = base64.b64encode(make()).decode()
        # insert-if-absent: of processes racing here, the first insert wins and the others keep its value
        self.db.execute(
            "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (name, value, time.time()),
        )
        return self._read(name)

    def get_or_adopt(
        self, name: str, legacy_file: Path, make: Callable[[], bytes], check: Callable[[bytes], object] | None = None
    ) -> bytes:
        """`get_or_create`, where the first value is `legacy_file`'s bytes when that file exists (how an older
        release kept the secret), else `make()`'s. The file is left in place (an older release still reads it).
        `check(value)` raises ValueError for a file that cannot be adopted (RuntimeError here, naming it)."""

        def first_value() -> bytes:
            if not legacy_file.exists():
                return make()
            value = legacy_file.read_bytes()
            if check is not None:
                try:
                    check(value)
                except ValueError as exc:
                    raise RuntimeError(
                        f"{legacy_file} cannot be adopted as the secret {name!r} ({exc}): delete it to make a new one"
                    ) from None
            log.info("adopting %s into the database as the secret %r", legacy_file, name)
            return value

        value = self.get_or_create(name, first_value)
        if legacy_file.exists() and legacy_file.read_bytes() != value:
            log.warning(
                "%s differs from the secret %r in the database at %s; the database's is used", legacy_file, name,
                self.db.where,
            )
        return value

    def _read(self, name: str) -> bytes | None:
        row = self.db.query_one("SELECT value FROM server_secrets WHERE name = ?", (name,))
        return None if row is None else base64.b64decode(row["value"])
