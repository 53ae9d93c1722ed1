"""ASGI middleware: `x-fal-request-id` on every response, and no bare crash pages.

Pure ASGI (not BaseHTTPMiddleware) so SSE streams pass through unbuffered. The request id goes on
outermost (even CORS preflights carry one); the crash guard sits inside CORS, so a browser can read
the 500 too.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("seedvr_local.server")


class RequestIdMiddleware:
    """Adds a fresh `x-fal-request-id` to responses that carry none (job routes set the job's id)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-fal-request-id" not in headers:
                    headers["x-fal-request-id"] = str(uuid.uuid4())
            await send(message)

        await self.app(scope, receive, send_with_id)


class CrashGuardMiddleware:
    """An unexpected exception becomes fal's shape of a 500 (a bug, not a client mistake: logged)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            return  # the client left while sending its body: nobody to answer
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = json.dumps({"detail": "internal server error", "error_type": "internal_error"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-fal-error-type", b"internal_error"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
