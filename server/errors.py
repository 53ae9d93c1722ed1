"""Error responses in fal's two shapes, and the handlers that make every failure one.

* model errors (the input cannot be processed): `{"detail": [{"loc", "msg", "type", ...}]}`, mostly 422;
* request errors (timeouts, cancellation, auth, ...): `{"detail": "<text>", "error_type": "<type>"}` with
  the same type in the `X-Fal-Error-Type` header.

A client mistake is always a 4xx: clients retry some 5xx, and a 5xx means this server is broken.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from seedvr_local.server.schema import InputError


class ErrorItem(BaseModel):
    """One invalid input: where (`loc`, starting with "body", "query", "header" or "path"), what and why."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class ModelErrorBody(BaseModel):
    """An input the model cannot process (FastAPI's shape, as fal answers it)."""

    detail: list[ErrorItem]


class RequestErrorBody(BaseModel):
    """Any other failure; `error_type` (also in the X-Fal-Error-Type header) when there is one."""

    detail: str
    error_type: str | None = Field(None, examples=["request_timeout", "client_cancelled", "bad_request"])


#: What each status code means, wherever a route can answer it (the OpenAPI document quotes these).
ERROR_MEANINGS: dict[int, tuple[type[BaseModel], str]] = {
    400: (RequestErrorBody, "The request is malformed (a header, a JSON body) or not possible in this state"),
    401: (RequestErrorBody, "The server has API keys and the request carries none of them"),
    404: (RequestErrorBody, "No such request, file or upload (ids are the server's own)"),
    413: (RequestErrorBody, "The body is larger than the server accepts"),
    422: (ModelErrorBody, "The input is invalid, or names an image that cannot be used (download, decode, size)"),
    429: (RequestErrorBody, "The API key has as many requests waiting as --max-queued-per-key allows (`rate_limited`,"
          " with Retry-After)"),
    499: (RequestErrorBody, "The request was cancelled (`client_cancelled`)"),
    500: (RequestErrorBody, "The model failed on this input (`runner_server_error`)"),
    503: (RequestErrorBody, "The model is not loaded, or ran out of device memory"),
    504: (RequestErrorBody, "The request did not start within its x-fal-request-timeout (`request_timeout`)"),
    507: (RequestErrorBody, "The file store is full: its --max-storage-bytes budget (`insufficient_storage`)"),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error codes, each with its body model and meaning."""
    return {code: {"model": ERROR_MEANINGS[code][0], "description": ERROR_MEANINGS[code][1]} for code in codes}


class FalError(Exception):
    def __init__(
        self, status_code: int, detail: Any, error_type: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(detail if isinstance(detail, str) else _first_message(detail))
        self.status_code = status_code
        self.detail = detail
        self.error_type = error_type
        self.headers = dict(headers or {})

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.detail}
        if self.error_type:
            body["error_type"] = self.error_type
        return body

    @property
    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.error_type:
            headers["x-fal-error-type"] = self.error_type
        return headers

    @property
    def message(self) -> str:
        return str(self)

    @property
    def kind(self) -> str:
        """error_type, or the first model error's type."""
        if self.error_type:
            return self.error_type
        if isinstance(self.detail, list) and self.detail and isinstance(self.detail[0], dict):
            return str(self.detail[0].get("type", "value_error"))
        return "error"

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status_code, headers=self.response_headers)


def model_error(
    field: str | None, message: str, error_type: str, ctx: dict | None = None, status_code: int = 422
) -> FalError:
    """An input the model cannot process, located on one input field (or the whole body)."""
    item: dict[str, Any] = {
        "loc": ["body", field] if field else ["body"],
        "msg": message,
        "type": error_type,
        "url": f"https://docs.fal.ai/errors#{error_type}",
    }
    if ctx:
        item["ctx"] = ctx
    return FalError(status_code, [item])


def request_error(status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> FalError:
    return FalError(status_code, message, error_type=error_type, headers=headers)


def timeout_error() -> FalError:
    """The request did not start before its `x-fal-request-timeout`; clients do not retry this one."""
    return request_error(504, "Request timed out", "request_timeout", {"x-fal-request-timeout-type": "user"})


def cancelled_error() -> FalError:
    return request_error(499, "Request was cancelled by the client", "client_cancelled")


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(FalError)
    async def _fal_error(request: Request, exc: FalError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=422)

    # Unexpected exceptions become fal-shaped 500s in server.middleware (which also adds the request id).


def _first_message(detail: Any) -> str:
    """ "image_url: Field required" for a model error list; the text itself for a string."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = [str(part) for part in detail[0].get("loc", []) if part != "body"]
        message = str(detail[0].get("msg", "invalid input"))
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        return f"{'.'.join(loc)}: {message}{more}" if loc else f"{message}{more}"
    return str(detail)


#: Seconds a client is told to wait after a 429 (a request of its own has to start first).
QUEUE_FULL_RETRY_AFTER_S = 5


def queue_full_error(limit: int) -> FalError:
    return request_error(
        429,
        f"this API key already has {limit} request(s) waiting in the queue, the most it may; retry once one of "
        "them has started",
        "rate_limited",
        {"retry-after": str(QUEUE_FULL_RETRY_AFTER_S)},
    )
