"""The server's listening socket, bound before the model loads, and the uvicorn server that says when it listens."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import uvicorn


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), as uvicorn binds one (SO_REUSEADDR: a restart need not wait for the
    old connections' TIME_WAIT); port 0 picks a free one. OSError becomes one line that names the cause."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(_bind_error(host, port, exc)) from None
    except UnicodeError:  # a host name longer than DNS allows
        sock.close()
        raise ValueError(f"--host {host!r} is not an address or host name") from None
    sock.set_inheritable(True)
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):  # its errno is a resolver code, not errno's
        return f"--host {host}: cannot resolve it ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use: stop what is listening there or pass another --port"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {host}:{port}: ports below 1024 need privileges; pass --port 1024 or above"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"--host {host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


class ListeningServer(uvicorn.Server):
    """uvicorn's server, calling `on_listening` once its sockets accept connections: nothing says "listening"
    before it is true."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None]):
        super().__init__(config)
        self.on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_listening()
