"""The database schema, as numbered migrations applied in order (both engines), recorded in `schema_migrations`.

A migration is never edited once released: a change of schema is a new migration at the end. Processes that
start together (an API and its workers) migrate one at a time: PostgreSQL takes an advisory lock for the
migration's transaction, SQLite's BEGIN IMMEDIATE holds the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# server/db.py's Connection and Database (not imported: the database module runs these migrations)
Connection = Database = Any

#: A constant key for pg_advisory_xact_lock: "seedvr" in ASCII.
_MIGRATION_LOCK = 0x736565647672


def _types(db: Database) -> dict[str, str]:
    """Column types that differ: PostgreSQL's REAL is 4 bytes, too coarse for timestamps in seconds."""
    if db.is_postgres:
        return {"serial": "BIGSERIAL PRIMARY KEY", "float": "DOUBLE PRECISION"}
    return {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "float": "REAL"}


def _initial(conn: Connection, db: Database) -> None:
    """The schema of the first release (on SQLite it may exist already: then it is left as it is)."""
    statements = """
CREATE TABLE IF NOT EXISTS jobs (
    seq              {serial},                           -- arrival order
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,                      -- 'queue' or 'sync'
    priority         INTEGER NOT NULL,                   -- 0 normal, 1 low
    status           TEXT NOT NULL,                      -- IN_QUEUE, IN_PROGRESS, COMPLETED
    input            TEXT NOT NULL,                      -- the validated input, JSON
    base_url         TEXT NOT NULL,                      -- for the URLs of the outputs
    webhook_url      TEXT,
    created_at       {float} NOT NULL,
    started_at       {float},
    finished_at      {float},
    start_deadline   {float},                            -- from x-fal-request-timeout
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    outcome          TEXT,                               -- ok, invalid, error, cancelled, timeout
    response_status  INTEGER,
    response_body    TEXT,
    response_headers TEXT,
    error            TEXT,
    error_type       TEXT,
    inference_time   {float}
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority, seq);
CREATE TABLE IF NOT EXISTS job_logs (
    seq       {serial},
    job_id    TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    level     TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs (job_id, seq);
CREATE TABLE IF NOT EXISTS webhooks (
    id           {serial},
    job_id       TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt {float} NOT NULL,
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
    created_at   {float} NOT NULL
)
"""
    _run(conn, statements.format(**_types(db)))


def _fleet(conn: Connection, db: Database) -> None:
    """Several workers on one database: leases on claimed jobs, the workers' heartbeats, per-key owners."""
    statements = """
ALTER TABLE jobs ADD COLUMN owner TEXT;                      -- a digest of the API key that submitted it
ALTER TABLE jobs ADD COLUMN worker_id TEXT;                  -- who holds the claim
ALTER TABLE jobs ADD COLUMN lease_expires_at {float};        -- a claim not renewed by then is given up
CREATE INDEX jobs_leases ON jobs (status, lease_expires_at);
CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    device        TEXT NOT NULL,
    model_state   TEXT NOT NULL,                             -- loading, ready, failed
    current_job   TEXT,
    jobs_done     INTEGER NOT NULL DEFAULT 0,
    started_at    {float} NOT NULL,
    heartbeat_at  {float} NOT NULL,
    stopped_at    {float}
)
"""
    _run(conn, statements.format(**_types(db)))


def _shared_secrets_and_webhook_claims(conn: Connection, db: Database) -> None:
    """Several front-ends on one database: the keys they must share (server/secret_store.py), and a claim per
    webhook delivery so that one front-end posts each try (server/webhooks.py)."""
    statements = """
CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,                                -- base64 of the secret's bytes
    created_at {float} NOT NULL
);
ALTER TABLE webhooks ADD COLUMN claimed_by TEXT;             -- the sender trying it now, or that made the last try
ALTER TABLE webhooks ADD COLUMN claim_expires_at {float}     -- a claim not released by then is free again
"""
    _run(conn, statements.format(**_types(db)))


def _operations(conn: Connection, db: Database) -> None:
    """/metrics and /readyz for a fleet: each worker's device memory and model in its heartbeat; phase-time
    histograms and counters that every process adds to and any API process reads (never deleted by retention: they
    only grow). A job's limits, chosen by the API process that accepted it, for the worker that runs it."""
    statements = """
ALTER TABLE jobs ADD COLUMN limits TEXT;                    -- JSON: settings.JOB_LIMITS (NULL: the worker's own)
ALTER TABLE workers ADD COLUMN memory_allocated BIGINT;     -- bytes of tensors on the device (NULL on the CPU)
ALTER TABLE workers ADD COLUMN memory_reserved BIGINT;      -- bytes held: CUDA's caching allocator, the CPU's RSS
ALTER TABLE workers ADD COLUMN memory_total BIGINT;         -- the device's memory, or the host's RAM
ALTER TABLE workers ADD COLUMN model TEXT;                  -- what its /readyz would call its model
ALTER TABLE workers ADD COLUMN model_notice TEXT;           -- the model's warning (random weights), if any
CREATE TABLE phase_seconds (
    phase        TEXT NOT NULL,
    le           {float} NOT NULL,                          -- a bucket's upper bound, seconds (the last: infinity)
    observations BIGINT NOT NULL DEFAULT 0,                 -- phases that took at most `le` seconds
    seconds      {float} NOT NULL DEFAULT 0,                -- their total time
    PRIMARY KEY (phase, le)
);
CREATE TABLE counters (
    name         TEXT NOT NULL,                             -- jobs, webhook_deliveries, megapixels
    label        TEXT NOT NULL,                             -- an outcome, or ''
    value        {float} NOT NULL DEFAULT 0,
    PRIMARY KEY (name, label)
)
"""
    _run(conn, statements.format(**_types(db)))


def _clip_tasks(conn: Connection, db: Database) -> None:
    """The clips of a video job shared out to every worker (server/clip_tasks.py): one row per clip of a run."""
    statements = """
CREATE TABLE clip_tasks (
    run_id           TEXT NOT NULL,                          -- one run of a video job (a rerun is another)
    clip_index       INTEGER NOT NULL,
    job_id           TEXT NOT NULL,
    coordinator      TEXT NOT NULL,                          -- the worker running the job: void once it lost it
    state            TEXT NOT NULL,                          -- queued, running, done, failed
    worker_id        TEXT,                                   -- who restores (restored) it
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_expires_at {float},                                -- a clip not renewed by then is claimed again
    input_key        TEXT NOT NULL,                          -- blob keys of the task and of the restored clip
    output_key       TEXT,
    error_type       TEXT,
    error            TEXT,
    created_at       {float} NOT NULL,
    started_at       {float},
    finished_at      {float},
    PRIMARY KEY (run_id, clip_index)
);
CREATE INDEX clip_tasks_claim ON clip_tasks (state, lease_expires_at);
CREATE INDEX clip_tasks_job ON clip_tasks (job_id)
"""
    _run(conn, statements.format(**_types(db)))


def _quotas(conn: Connection, db: Database) -> None:
    """Per-key quotas (server/quotas.py): the most of its owner's jobs that may run at once, chosen by the API
    process that accepted the job, for the workers' claims."""
    statements = """
ALTER TABLE jobs ADD COLUMN running_cap INTEGER;            -- NULL: no cap
CREATE INDEX jobs_owner_status ON jobs (owner, status)
"""
    _run(conn, statements)


def _run(conn: Connection, script: str) -> None:
    for statement in script.split(";"):
        lines = [line.split("--")[0].rstrip() for line in statement.strip().splitlines()]
        text = "\n".join(line for line in lines if line)
        if text:
            conn.execute(text)


#: (version, what it does, apply). Append only.
MIGRATIONS: list[tuple[int, str, Callable[[Connection, Database], None]]] = [
    (1, "jobs, logs, webhooks, files", _initial),
    (2, "leases, worker heartbeats, owners", _fleet),
    (3, "shared secrets, webhook delivery claims", _shared_secrets_and_webhook_claims),
    (4, "worker memory and model, fleet-wide phase histograms and counters, job limits", _operations),
    (5, "clip tasks: the clips of a video restored by every worker", _clip_tasks),
    (6, "per-key quotas: a job's running cap", _quotas),
]
LATEST = MIGRATIONS[-1][0]


def migrate(db: Database) -> int:
    """Bring the schema up to LATEST; returns it. RuntimeError for a database written by a newer release."""
    types = _types(db)
    with db.transaction() as conn:
        if db.is_postgres:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            f" (version INTEGER PRIMARY KEY, applied_at {types['float']} NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        newest = max(applied, default=0)
        if newest > LATEST:
            raise RuntimeError(f"the database at {db.where} was written by a newer seedvr-local (schema {newest})")
        for version, _what, apply in MIGRATIONS:
            if version not in applied:
                apply(conn, db)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time())
                )
    return LATEST
