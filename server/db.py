"""The SQLite database under the data dir: jobs, their logs, pending webhooks and stored files.

WAL mode with `synchronous=FULL`: every accepted job is on disk before the client hears about it, and
readers (status polls) never wait for the writer. One connection shared by the event loop, the worker
and the webhook sender, behind a lock: every statement is short.
"""

from __future__ import annotations

import sqlite3
import threading

try:
    import fcntl
except ImportError:  # not on Windows: there the lock is not taken
    fcntl = None
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,                      -- 'queue' or 'sync'
    priority         INTEGER NOT NULL,                   -- 0 normal, 1 low
    status           TEXT NOT NULL,                      -- IN_QUEUE, IN_PROGRESS, COMPLETED
    input            TEXT NOT NULL,                      -- the validated input, JSON
    base_url         TEXT NOT NULL,                      -- for the URLs of the outputs
    webhook_url      TEXT,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    start_deadline   REAL,                               -- from x-fal-request-timeout
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    outcome          TEXT,                               -- ok, invalid, error, cancelled, timeout
    response_status  INTEGER,
    response_body    TEXT,
    response_headers TEXT,
    error            TEXT,
    error_type       TEXT,
    inference_time   REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority, seq);

CREATE TABLE IF NOT EXISTS job_logs (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    level     TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id, seq);

CREATE TABLE IF NOT EXISTS webhooks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state        TEXT NOT NULL,                          -- pending, delivered, failed
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (state, next_attempt);

CREATE TABLE IF NOT EXISTS files (
    id           TEXT PRIMARY KEY,                       -- unguessable: the URL is the capability
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER,
    state        TEXT NOT NULL,                          -- pending (upload handed out) or complete
    upload_token TEXT UNIQUE,                            -- secret of the upload URL, separate from the id
    multipart    INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL
);
"""


class Database:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path} was written by a newer seedvr-local (schema {version})")
            self._conn.executescript(SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: tuple | dict = ()) -> Any:
        with self._lock:
            return self._conn.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class DataDirInUse(RuntimeError):
    pass


class DataDirLock:
    """One server per data dir: two would run the same queue, and rerun each other's jobs on restart.

    An advisory lock on `<data dir>/server.lock`, held while the server runs; the OS drops it when the
    process dies, so a crash never leaves the data dir locked.
    """

    def __init__(self, data_dir: Path):
        self.path = data_dir / "server.lock"
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise DataDirInUse(
                    f"another seedvr-local server is using {self.path.parent}: stop it or pass another --data-dir"
                ) from None
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None
