"""Results a client can make large: a sync_mode output is capped before it is encoded into the job row; status polls
and SSE never read the result column; a result the database refuses fails its job instead of wedging the queue."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from tests.hostile.tools import serve_settings
from tests.server.helpers import FakeEngine, data_uri, wait_status

RUN = "/fal-ai/seedvr/upscale/image"
SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
REQUESTS = "/queue/fal-ai/seedvr/requests"


def noise_png(size: int) -> bytes:
    """A PNG that does not compress: its upscaled output is about 3 bytes a pixel."""
    pixels = np.random.default_rng(7).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def sync_png(size: int) -> dict:
    """The input of a sync_mode request whose PNG output is about 12 * size**2 bytes."""
    return {"image_url": data_uri(noise_png(size)), "sync_mode": True, "upscale_factor": 2, "output_format": "png"}


def test_a_sync_mode_output_over_the_cap_is_a_422_before_it_is_stored(make_client):
    with make_client(FakeEngine(), max_sync_result_bytes=20_000) as client:
        small = client.post(RUN, json=sync_png(16))
        large = client.post(RUN, json=sync_png(64))
        stored = client.app.state.server.db.query_one(
            "SELECT MAX(LENGTH(response_body)) FROM jobs WHERE outcome = 'invalid'"
        )[0]
    assert small.status_code == 200 and small.json()["image"]["url"].startswith("data:image/png;base64,")
    assert large.status_code == 422, large.text
    error = large.json()["detail"][0]
    assert error["loc"] == ["body", "sync_mode"] and error["type"] == "output_too_large"
    assert error["ctx"] == {"max_bytes": 20_000}
    assert "20,000 bytes" in error["msg"] and "without sync_mode" in error["msg"]
    assert stored < 2_000  # the refused output never reached the row


@pytest.mark.parametrize("store", ["sqlite"])
def test_status_polls_and_sse_never_read_the_result_column(make_client):
    statements: list[str] = []
    with make_client(FakeEngine()) as client:
        request_id = client.post(
            SUBMIT, json=sync_png(16)
        ).json()["request_id"]
        wait_status(client, request_id)
        engine = client.app.state.server.db.engine

        def record(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement)

        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            for logs in (0, 1):
                assert client.get(f"{REQUESTS}/{request_id}/status", params={"logs": logs}).status_code == 200
            with client.stream("GET", f"{REQUESTS}/{request_id}/status/stream", params={"logs": 1}) as events:
                assert b"COMPLETED" in b"".join(events.iter_bytes())
            polled = list(statements)
            result = client.get(f"{REQUESTS}/{request_id}")
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert any("FROM jobs" in statement for statement in polled)  # the recorder saw the polls
    assert not [statement for statement in polled if "response_body" in statement]
    assert result.status_code == 200 and result.json()["image"]["url"].startswith("data:image/png;base64,")
    assert any("response_body" in statement for statement in statements[len(polled):])  # the result route reads it


RESULT_FIELD_LIMIT = 20_000  # characters: the database's field limit, lowered for the test


@pytest.fixture
def small_result_field(store):
    """The job database refuses a result longer than RESULT_FIELD_LIMIT, as a real one does past its field limit:
    SQLite's length limit lowered on every connection; PostgreSQL's column made a varchar (set by the test once the
    server made its schema)."""
    if store != "sqlite":
        yield "ALTER TABLE jobs ALTER COLUMN response_body TYPE varchar({})".format(RESULT_FIELD_LIMIT)
        return

    def lower_limit(dbapi_connection, record):
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, RESULT_FIELD_LIMIT)

    sa.event.listen(sa.pool.Pool, "connect", lower_limit)
    try:
        yield None
    finally:
        sa.event.remove(sa.pool.Pool, "connect", lower_limit)


def test_a_result_the_database_refuses_fails_its_job_and_the_queue_goes_on(make_client, small_result_field):
    with make_client(FakeEngine()) as client:
        if small_result_field is not None:
            client.app.state.server.db.execute(small_result_field)
        too_long = client.post(
            SUBMIT, json=sync_png(64)
        ).json()["request_id"]
        after = client.post(SUBMIT, json={"image_url": data_uri(noise_png(8))}).json()["request_id"]
        failed = wait_status(client, too_long, timeout=20)
        result = client.get(f"{REQUESTS}/{too_long}")
        wait_status(client, after, timeout=20)
        next_result = client.get(f"{REQUESTS}/{after}")
    assert failed["error_type"] == "runner_server_error"
    assert result.status_code == 500 and result.json()["detail"].startswith("the result could not be stored: ")
    assert ("too big" if small_result_field is None else "too long") in result.json()["detail"]
    assert next_result.status_code == 200 and next_result.json()["image"]["url"].startswith("http")


def test_the_cap_is_a_serve_flag():
    assert serve_settings().max_sync_result_bytes == 64 * 1024 * 1024
    assert serve_settings("--max-sync-result-bytes", "1000").max_sync_result_bytes == 1000
    with pytest.raises(ValueError, match="--max-sync-result-bytes must be positive"):
        serve_settings("--max-sync-result-bytes", "0")
