from __future__ import annotations

import contextlib
import threading

import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import ServerSettings, create_app
from tests.server.helpers import FakeEngine


@pytest.fixture
def settings(tmp_path) -> ServerSettings:
    """Fast settings: a throwaway data dir, webhooks retried within milliseconds."""
    return ServerSettings(
        data_dir=tmp_path / "data", webhook_backoff_s=0.05, webhook_backoff_max_s=0.2, shutdown_grace_s=5.0
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
