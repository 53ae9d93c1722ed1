"""The job database: SQLite under the data dir (the default), or PostgreSQL for a fleet of processes and hosts.

One SQL layer for both: SQLAlchemy 2 Core (its engine, connection pool and dialects; psycopg 3 for PostgreSQL).
Statements are written once with `?` placeholders and turned into SQLAlchemy bind parameters, so the same text
runs on both engines; the few places where the dialects differ ask `Database.is_postgres`.

SQLite: WAL mode with `synchronous=FULL`, so every accepted job is on disk before the client hears about it;
a writing transaction starts with BEGIN IMMEDIATE (writers queue at its start, never deadlock halfway), a read
with a plain BEGIN (readers never wait for the writer). PostgreSQL: READ COMMITTED, with row locks where two
processes could race (`FOR UPDATE`, and `SKIP LOCKED` for claims).

The schema is versioned: server/migrations.py, applied in order when the database is opened.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # not on Windows: there the lock is not taken
    fcntl = None

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("seedvr_local.server")
T = TypeVar("T")

#: How long a read or a single statement waits for an unreachable database (PostgreSQL restarting) before failing.
RETRY_S = 30.0


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or used; the message names the host and the reason, in one line."""


def is_connection_error(exc: BaseException) -> bool:
    """The database could not be reached or used for now (worth another try), as opposed to a statement it refused
    (a data error, a constraint): SQLAlchemy's OperationalError and InterfaceError (SQLite's "database is locked"
    among them)."""
    return isinstance(exc, (OperationalError, InterfaceError))


class Record:
    """A row, by column name (`row["id"]`) or by position (`row[0]`)."""

    __slots__ = ("_row",)

    def __init__(self, row: sa.Row):
        self._row = row

    def __getitem__(self, key: str | int) -> Any:
        return self._row._mapping[key] if isinstance(key, str) else self._row[key]

    def keys(self) -> list[str]:
        return list(self._row._mapping.keys())


class Result:
    """The rows of one statement, already fetched (the connection is free again)."""

    def __init__(self, rows: list[Record], rowcount: int):
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Record | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Record]:
        return self.rows

    def __iter__(self) -> Iterator[Record]:
        return iter(self.rows)


@lru_cache(maxsize=512)
def _statement(sql: str) -> sa.TextClause:
    """`?` placeholders -> SQLAlchemy's `:p0, :p1, ...` (none of our statements has a `?` or `:` elsewhere)."""
    counter = iter(range(10_000))
    return sa.text(re.sub(r"\?", lambda _m: f":p{next(counter)}", sql))


def _params(params: Sequence | dict) -> dict:
    return dict(params) if isinstance(params, dict) else {f"p{i}": value for i, value in enumerate(params)}


class Connection:
    """One transaction's statements (what `Database.transaction()` yields)."""

    def __init__(self, conn: sa.Connection):
        self._conn = conn

    def execute(self, sql: str, params: Sequence | dict = ()) -> Result:
        result = self._conn.execute(_statement(sql), _params(params))
        rows = [Record(row) for row in result] if result.returns_rows else []
        return Result(rows, result.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence | dict]) -> None:
        rows = list(rows)
        if rows:
            self._conn.execute(_statement(sql), [_params(row) for row in rows])


def database_url(value: str | Path) -> sa.URL:
    """A SQLAlchemy URL for a file path (SQLite) or a postgresql:// URL (psycopg 3); ValueError otherwise."""
    if isinstance(value, Path):
        return sa.URL.create("sqlite", database=str(value))
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            f"not a database URL: {_redacted(value)!r} (expected postgresql://user:pass@host/db)"
        ) from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername == "sqlite" and url.database:
        return url
    raise ValueError(f"unsupported database URL {_redacted(value)!r}: use postgresql://... (or none for SQLite)")


def _redacted(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


class Database:
    def __init__(self, url: str | Path, pool_size: int = 5):
        self.url = database_url(url)
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        if self.is_postgres:
            # pre-ping: a pooled connection that PostgreSQL dropped (a restart) is replaced, not handed out
            self.engine = sa.create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=pool_size,
                max_overflow=pool_size * 2,
                connect_args={"connect_timeout": 10, "application_name": "seedvr-local"},
            )
        else:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_transactions(self.engine)
        self._check_connection()
        from seedvr_local.server.migrations import migrate  # the schema's history lives there

        self.schema_version = migrate(self)

    @property
    def where(self) -> str:
        """Where the database is, for messages (no password)."""
        if self.is_postgres:
            return f"{self.url.host or 'localhost'}:{self.url.port or 5432}/{self.url.database or ''}"
        return str(self.url.database)

    #: Appended to a SELECT whose rows the transaction will update: locks them on PostgreSQL (SQLite's
    #: BEGIN IMMEDIATE already holds the whole database).
    @property
    def for_update(self) -> str:
        return " FOR UPDATE" if self.is_postgres else ""

    def _check_connection(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except (OperationalError, DBAPIError) as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            self.engine.dispose()
            raise DatabaseUnavailable(f"cannot use the database at {self.where}: {reason}") from None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A writing transaction: committed when the block ends, rolled back when it raises."""
        with self.engine.begin() as conn:
            yield Connection(conn)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction (on SQLite, it does not wait for a writer)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(seedvr_read_only=True)
            with conn.begin():
                yield Connection(conn)

    def retrying(self, call: Callable[[], T]) -> T:
        """`call()`, again while the database is unreachable (a restart, a failover), for up to RETRY_S seconds.
        Only for what may run twice: reads, and single statements whose repetition is harmless."""
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                return call()
            except (OperationalError, InterfaceError) as exc:
                if not self.is_postgres or time.monotonic() > deadline:
                    raise
                log.warning("the database is unavailable (%s); retrying", str(exc.orig).strip().split("\n")[0])
                time.sleep(0.5)

    def query(self, sql: str, params: Sequence | dict = ()) -> list[Record]:
        def read() -> list[Record]:
            with self.reading() as conn:
                return conn.execute(sql, params).fetchall()

        return self.retrying(read)

    def query_one(self, sql: str, params: Sequence | dict = ()) -> Record | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence | dict = ()) -> Result:
        """One statement in its own transaction (retried while the database is away: see `retrying`)."""

        def write() -> Result:
            with self.transaction() as conn:
                return conn.execute(sql, params)

        return self.retrying(write)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_transactions(engine: sa.Engine) -> None:
    """SQLAlchemy's recipe: let pysqlite leave transactions alone, and begin them ourselves."""

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN from the driver
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")

    @event.listens_for(engine, "begin")
    def begin(conn: sa.Connection) -> None:
        read_only = conn.get_execution_options().get("seedvr_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


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
