from __future__ import annotations

import contextlib
import os
import threading
import uuid

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import ServerSettings, create_app
from tests import requires
from tests.server.helpers import FakeEngine

POSTGRES_HINT = "a PostgreSQL server URL for the job store tests; .ci/run starts one"
STORES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """An S3-compatible server for the file store tests: $SEEDVR_TEST_S3_URL, else moto's standalone server on
    loopback, started for the test session."""
    url = os.environ.get("SEEDVR_TEST_S3_URL", "").strip()
    if url:
        yield url
        return
    moto_server = requires.module("moto.server", "pip install 'moto[server]' (in the test extra)")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A new, empty bucket; the AWS variables point boto3 at it (test credentials: moto takes any)."""
    import boto3

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, os.environ.get(f"SEEDVR_TEST_{name}", value))
    bucket = f"seedvr-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def file_store() -> str:
    """Where stored files live in the server tests: "local" (the data dir); the storage tests parametrize it."""
    return "local"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL server of the test run (a role that may create databases)."""
    return requires.environment("SEEDVR_TEST_POSTGRES_URL", POSTGRES_HINT)


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str):
    """A new, empty database on the test server for one test (dropped afterwards): tests never see each other's
    jobs, as with a fresh SQLite file."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"seedvr_test_{uuid.uuid4().hex[:12]}"
    admin = make_url(admin_url)
    with psycopg.connect(admin.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin.set(drivername="postgresql").render_as_string(False), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: The modules whose behaviour depends on the job store: their tests run on every store in STORES. The others test
#: what the store does not change (routes, schemas, files, clients, the model) and run on SQLite only.
STORE_DEPENDENT_MODULES = {
    "test_fleet_faults", "test_fleet_files", "test_fleet_processes", "test_fleet_store", "test_webhook_claims",
    "test_shared_secrets", "test_durability", "test_queue", "test_webhooks", "test_metrics", "test_video_fleet",
    "test_retention", "test_job_limits", "test_results", "test_bodies", "test_quotas", "test_sweeping",
    "test_fleet_urls",
}  # fmt: skip


def pytest_generate_tests(metafunc) -> None:
    """Every store for the tests of `STORE_DEPENDENT_MODULES` that do not choose their store themselves."""
    if "store" not in metafunc.fixturenames or metafunc.module.__name__.rsplit(".", 1)[-1] not in STORE_DEPENDENT_MODULES:
        return
    chosen = hasattr(metafunc.module, "store") or any(  # the module's own fixture, or the test's parameter
        "store" in str(mark.args[0]) for mark in metafunc.definition.iter_markers("parametrize")
    )
    if not chosen:
        metafunc.parametrize("store", STORES, indirect=True)


@pytest.fixture
def store(request) -> str:
    """The job store the server tests run on: SQLite, or each of STORES where the module depends on the store (a
    test of one store only parametrizes `store` itself)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(store, request):
    """None for SQLite in the data dir; a fresh PostgreSQL database's URL for "postgresql"."""
    if store == "sqlite":
        yield None
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    with fresh_postgres_database(admin_url) as url:
        yield url


@pytest.fixture
def settings(tmp_path, database_url, file_store, request) -> ServerSettings:
    """Fast settings: a throwaway data dir (and database, and bucket), webhooks retried within milliseconds."""
    storage = {}
    if file_store == "s3":
        storage = {
            "storage_url": f"s3://{request.getfixturevalue('s3_bucket')}/files",
            "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
        }
    return ServerSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        webhook_backoff_s=0.05,
        webhook_backoff_max_s=0.2,
        shutdown_grace_s=5.0,
        **storage,
    )


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def gated_engine() -> FakeEngine:
    """A fake engine that holds every job in its "dit" phase until `engine.gate.set()`."""
    return FakeEngine(gate=threading.Event())


@pytest.fixture
def make_client(settings):
    """`with make_client(engine, **overrides) as client:` a TestClient on a fresh app (lifespan included)."""

    @contextlib.contextmanager
    def factory(engine=None, guard=None, **overrides):
        for name, value in overrides.items():
            setattr(settings, name, value)
        app = create_app(settings, lambda: engine or FakeEngine(), guard=guard)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return factory


@pytest.fixture
def client(make_client, engine):
    with make_client(engine) as test_client:
        yield test_client
