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
import re
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

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
#: What the JS client sends through a proxy (CORS preflights are answered before the proxy).
METHODS = ("GET", "POST", "PUT")
#: A target this proxy answers (the check, and what the OpenAPI document states).
TARGET_PATTERN = (
    f"^[hH][tT][tT][pP][sS]?://(?:{'|'.join(re.escape(host) for host in HOST_PREFIXES)})(?::[0-9]{{1,5}})?(?:[/?#]|$)"
)
_TARGET = re.compile(TARGET_PATTERN)


class FalProxyMiddleware:
    def __init__(self, app: ASGIApp, path: str = PROXY_PATH):
        self.app = app
        self.path = path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in METHODS:
            detail = f"the proxy answers {', '.join(METHODS)}"
            await _error(send, 405, detail, [(b"allow", ", ".join(METHODS).encode())])
            return
        target = Headers(scope=scope).get(TARGET_HEADER)
        if not target:
            await _error(
                send, 400, f"missing the {TARGET_HEADER} header: configure the fal client with this URL as proxyUrl"
            )
            return
        parts = _fal_url(target)
        if parts is None:
            hosts = ", ".join(HOST_PREFIXES)
            await _error(send, 400, f"{TARGET_HEADER} {target!r} is not a fal URL this server answers ({hosts})")
            return
        raw_path = HOST_PREFIXES[parts.hostname] + (parts.path or "/")
        inner = dict(scope, path=unquote(raw_path), raw_path=raw_path.encode(), query_string=parts.query.encode())
        await self.app(inner, receive, send)


def _fal_url(target: str) -> SplitResult | None:
    """The parts of a target URL on one of the fal hosts, else None."""
    if not _TARGET.match(target):
        return None
    try:
        parts = urlsplit(target)
    except ValueError:  # e.g. an unclosed IPv6 bracket in the query's way
        return None
    return parts if parts.hostname in HOST_PREFIXES else None


async def _error(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def openapi_path(error_schema_ref: str) -> dict[str, Any]:
    """The proxy in the OpenAPI document (it is middleware, not a route FastAPI sees). Its answer is
    the target route's, whatever that is; its own are 400 (no or a foreign target) and 405."""
    own = {"description": "", "content": {"application/json": {"schema": {"$ref": error_schema_ref}}}}
    operation = {
        "tags": ["proxy"],
        "summary": "fal client proxy",
        "description": "Runs the route of this server that the fal URL in x-fal-target-url names "
        "(fal.run -> /run, queue.fal.run -> /queue, rest.fal.ai -> /); its answer is that route's.",
        "parameters": [
            {
                "name": TARGET_HEADER,
                "in": "header",
                "required": True,
                "schema": {"type": "string", "pattern": TARGET_PATTERN},
                "example": "https://queue.fal.run/fal-ai/seedvr/upscale/image",
            }
        ],
        "requestBody": {"required": False, "content": {"*/*": {"schema": {}}}},
        "responses": {
            "400": {**own, "description": f"No {TARGET_HEADER}, or not a fal URL this server answers"},
            "405": {**own, "description": f"Not one of {', '.join(METHODS)}"},
            "default": {"description": "The target route's answer", "content": {"*/*": {"schema": {}}}},
        },
    }
    return {method.lower(): {**operation, "operationId": f"proxy_{method.lower()}"} for method in METHODS}
