"""The JS client's proxy protocol: `ANY /api/fal/proxy` with the real fal URL in `x-fal-target-url`.

`fal.config({ proxyUrl: { url: "http://HOST:PORT/api/fal/proxy", when: "always" } })` sends every
request here; this middleware maps the target's host to this server's own routes and runs them in
place (no HTTP hop, so SSE streams through as it is produced):

    fal.run/<id>                       -> /run/<id>
    queue.fal.run/<path>               -> /queue/<path>
    rest.fal.ai/<path>, rest.alpha.fal.ai/<path> -> /<path>   (storage)
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

PROXY_PATH = "/api/fal/proxy"
TARGET_HEADER = "x-fal-target-url"
HOST_PREFIXES = {
    "fal.run": "/run",
    "queue.fal.run": "/queue",
    "rest.fal.ai": "",
    "rest.alpha.fal.ai": "",
}


class FalProxyMiddleware:
    def __init__(self, app: ASGIApp, path: str = PROXY_PATH):
        self.app = app
        self.path = path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        target = Headers(scope=scope).get(TARGET_HEADER)
        if not target:
            await _error(
                send, 400, f"missing the {TARGET_HEADER} header: configure the fal client with this URL as proxyUrl"
            )
            return
        parts = urlsplit(target)
        prefix = HOST_PREFIXES.get((parts.hostname or "").lower())
        if parts.scheme not in ("http", "https") or prefix is None:
            hosts = ", ".join(HOST_PREFIXES)
            await _error(send, 400, f"{TARGET_HEADER} {target!r} is not a fal URL this server answers ({hosts})")
            return
        raw_path = prefix + (parts.path or "/")
        inner = dict(scope, path=unquote(raw_path), raw_path=raw_path.encode(), query_string=parts.query.encode())
        await self.app(inner, receive, send)


async def _error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
