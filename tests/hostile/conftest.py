"""The hostile-client tests run on the server tests' fixtures (stores, settings, clients)."""

from tests.server.conftest import *  # noqa: F401,F403 (pytest finds the fixtures by name)
