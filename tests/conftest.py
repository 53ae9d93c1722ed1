from __future__ import annotations

import ipaddress
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reference_data import MissingReferenceCase
from tests.tiny_weights import write_tiny_weights_dir

# Names the tests may resolve: the machine itself. Anything else would make a test depend on DNS.
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _is_loopback(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the wildcard or loopback address of a server socket
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class NetworkAttempts(list):
    """The non-loopback hosts or addresses a test tried to reach (each attempt was refused)."""


@pytest.fixture(autouse=True)
def network_attempts(monkeypatch) -> NetworkAttempts:
    """No test reaches beyond loopback, in this process: a DNS lookup of another name fails as on a machine without
    DNS (socket.gaierror), and a connection to another address as on one without a route (OSError), so a test
    that leans on the network fails the same way everywhere. IP literals are not looked up (no DNS), so
    `getaddrinfo` passes them through; `connect` refuses the non-loopback ones. Tests that check something never
    goes out read the returned list."""
    attempts = NetworkAttempts()
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        literal = host is not None and _is_ip_literal(host)
        if not (literal or _is_loopback(host)):
            attempts.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"the tests use no DNS ({host!r} is not this machine)")
        return real_getaddrinfo(host, *args, **kwargs)

    def refuse_remote(sock, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(address[0])
            raise OSError(101, f"the tests reach no network beyond loopback ({address[0]})")

    def connect(sock, address):
        refuse_remote(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        refuse_remote(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts


def _is_ip_literal(host) -> bool:
    """An address written out, which getaddrinfo parses without DNS, including the legacy IPv4 forms
    (`2130706433`, `0x7f.1`) that inet_aton accepts."""
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def fixed_seeds() -> None:
    """Every test starts from the same random state, so a test that draws without its own generator still sees
    the same numbers on every run (and a failure reproduces)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The built-in tiny model (`--model tiny`) as a real weights directory, written once per run: a
    `config.json` with its architecture, the DiT and VAE checkpoints under their official file names, and the
    text embeddings. Loading it gives the same models as `Upscaler.tiny()`."""
    return write_tiny_weights_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_upscaler():
    from seedvr_local.upscaler import Upscaler

    return Upscaler.tiny(device="cpu")


def pytest_runtest_setup(item) -> None:
    """A reference test parametrised over no case at all fails before its fixtures run, naming where it looked
    (never a skip, never an error from deep inside a fixture)."""
    callspec = getattr(item, "callspec", None)
    for value in callspec.params.values() if callspec else ():
        if isinstance(value, MissingReferenceCase):
            pytest.fail(str(value), pytrace=False)
