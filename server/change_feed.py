"""Job changes made by other processes, heard in this one: what wakes SSE streams, sync runs and idle workers.

Within one process the job store calls its `on_change` directly. Across processes and hosts:
- PostgreSQL: every change is announced with NOTIFY (`jobs.CHANGES_CHANNEL`); `PostgresChanges` LISTENs on a
  connection of its own and forwards each job id.
- SQLite (processes of one host): SQLite has no notifications, but `PRAGMA data_version` changes whenever another
  connection commits, and reading it costs microseconds without taking a lock. `SqliteChanges` reads it every
  few milliseconds and reports "something changed" (None: every waiter re-reads what it waits on).
So an idle worker starts a new job, and a front-end hears that a job finished, within milliseconds on both.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Callable, Protocol

from seedvr_local.server.db import Database
from seedvr_local.server.jobs import CHANGES_CHANNEL

log = logging.getLogger("seedvr_local.server")

#: Called with the changed job's id, or None for "anything may have changed"; from the feed's own thread.
OnChange = Callable[[str | None], None]

#: Seconds between two reads of SQLite's data_version: the delay a change can wait, for about 0.1% of a core.
SQLITE_PERIOD_S = 0.01


class ChangeFeed(Protocol):
    connected: threading.Event

    def start(self) -> None: ...

    def stop(self) -> None: ...


def change_feed(db: Database, on_change: OnChange) -> ChangeFeed:
    return PostgresChanges(db, on_change) if db.is_postgres else SqliteChanges(db, on_change)


class _FeedThread:
    def __init__(self, db: Database, on_change: OnChange, name: str):
        self.db = db
        self.on_change = on_change
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        raise NotImplementedError


class PostgresChanges(_FeedThread):
    """LISTEN on a connection that stays open; when it drops (a database restart) every waiter is woken, so it
    re-reads what it waits on, and the feed connects again."""

    def __init__(self, db: Database, on_change: OnChange):
        super().__init__(db, on_change, "seedvr-listen")

    def _run(self) -> None:
        import psycopg

        conninfo = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    self.connected.set()
                    self.on_change(None)  # changes made while not listening: re-read
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=100):
                            self.on_change(note.payload or None)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                self.on_change(None)
                log.warning("job change feed: %s; reconnecting", str(exc).strip().splitlines()[0] if str(exc) else exc)
                self._stopping.wait(1.0)


class SqliteChanges(_FeedThread):
    def __init__(self, db: Database, on_change: OnChange, period_s: float = SQLITE_PERIOD_S):
        super().__init__(db, on_change, "seedvr-sqlite-changes")
        self.period_s = period_s

    def _run(self) -> None:
        # Its own read-only connection: data_version only moves for commits made by *other* connections.
        path = urllib.parse.quote(str(Path(self.db.url.database).resolve()))  # a path with '?' or '#' stays a path
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            self.connected.set()
            while not self._stopping.wait(self.period_s):
                now = conn.execute("PRAGMA data_version").fetchone()[0]
                if now != version:
                    version = now
                    self.on_change(None)
        finally:
            conn.close()
