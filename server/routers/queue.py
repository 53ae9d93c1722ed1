"""The queue: submit, status (polling and SSE), result, cancel — fal's `queue.fal.run` surface.

Served under `/queue` (FAL_QUEUE_RUN_HOST=host:port/queue, and the JS proxy); the request routes also
answer without the prefix and with the full endpoint id, as some clients build them that way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, NamedTuple, Union

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from seedvr_local.server.auth import require_key
from seedvr_local.server.endpoint import APP_ID, ENDPOINTS, Endpoint, request_urls
from seedvr_local.server.errors import FalError, error_responses
from seedvr_local.server.jobs import COMPLETED, IN_QUEUE
from seedvr_local.server.netguard import BlockedURLError
from seedvr_local.server.routers.common import (
    PriorityHeader,
    RequestIdPath,
    TimeoutHeader,
    find_job,
    input_body,
    lookup_job,
    parse_priority,
    parse_start_deadline,
    read_input,
    request_not_found,
    result_response,
    status_body,
    truthy,
)
from seedvr_local.server.schema import CancelResult, QueueStatus
from seedvr_local.server.state import ServerState, StateDep

router = APIRouter(tags=["queue"], dependencies=[Depends(require_key)], responses=error_responses(401))

#: Operation ids of the request routes, and the OpenAPI links from a submit's `request_id` to them
#: (what lets a contract fuzzer follow a request through its life).
_OPERATIONS = {
    "status": "queue_status",
    "status_stream": "queue_status_stream",
    "result": "queue_result",
    "cancel": "queue_cancel",
}
_SUBMIT_LINKS = {
    name.title().replace("_", ""): {
        "operationId": operation_id,
        "parameters": {"request_id": "$response.body#/request_id"},
    }
    for name, operation_id in _OPERATIONS.items()
}
_HEADER_ID = {"x-fal-request-id": {"description": "The request's id", "schema": {"type": "string"}}}


#: fal_webhook: where to POST the outcome.
WebhookQuery = Annotated[
    str | None,
    Query(
        description="http(s) URL to POST the result to when it completes",
        pattern=r"^[hH][tT][tT][pP][sS]?://[^/?#\s]+",
    ),
]


def _submit_route(endpoint: Endpoint):
    async def submit(
        request: Request,
        state: StateDep,
        x_fal_queue_priority: PriorityHeader = None,
        x_fal_request_timeout: TimeoutHeader = None,
        fal_webhook: WebhookQuery = None,
    ) -> JSONResponse:
        priority = parse_priority(x_fal_queue_priority)
        deadline = parse_start_deadline(x_fal_request_timeout)
        if fal_webhook is not None:
            await _check_webhook(state, fal_webhook)
        data = await read_input(request, state, endpoint)
        job = await run_in_threadpool(
            state.jobs.create, "queue", data, state.base_url(request), priority, fal_webhook, deadline
        )
        state.worker.wake()
        position = await run_in_threadpool(state.jobs.queue_position, job) if job.status == IN_QUEUE else 0
        body = {
            "status": IN_QUEUE,
            "request_id": job.id,
            "gateway_request_id": job.id,
            **request_urls(job.base_url, job.id),
            "queue_position": position,
        }
        return JSONResponse(body, headers={"x-fal-request-id": job.id})

    submit.__doc__ = (
        f"{endpoint.summary}, queued; an invalid input is refused at once with fal's 422 (the clients raise the "
        "same ValidationError they raise when a result answers 422)."
    )
    return submit


for _endpoint in ENDPOINTS:
    router.add_api_route(
        f"/queue/{_endpoint.id}",
        _submit_route(_endpoint),
        methods=["POST"],
        response_model=QueueStatus,
        openapi_extra=input_body(_endpoint),
        summary=f"Submit: {_endpoint.summary.lower()}",
        name=f"queue_submit{_endpoint.operation_suffix}",
        operation_id=f"queue_submit{_endpoint.operation_suffix}",
        responses={
            200: {"description": "Queued (status IN_QUEUE)", "links": _SUBMIT_LINKS, "headers": _HEADER_ID},
            **error_responses(413, 422, 429, 507),
        },
    )


async def _check_webhook(state: ServerState, url: str) -> None:
    try:
        await asyncio.to_thread(state.webhooks.guard.prepare, url)
    except BlockedURLError as exc:
        detail = [
            {
                "type": "value_error",
                "loc": ["query", "fal_webhook"],
                "msg": f"unusable webhook URL: {exc}",
                "input": url,
            }
        ]
        raise FalError(422, detail) from None


class EventStreamResponse(StreamingResponse):
    """Server-sent events (the JS client reads a body as events only under this content type)."""

    media_type = "text/event-stream"


LogsQuery = Annotated[str | None, Query(description="1 or true to include the request's logs")]


def status(request: Request, request_id: RequestIdPath, state: StateDep, logs: LogsQuery = None) -> JSONResponse:
    """IN_QUEUE (202), IN_PROGRESS (202) or COMPLETED (200)."""
    job = find_job(state, request_id, with_result=False)
    body = status_body(state, job, truthy(logs), base_url=state.base_url(request))
    return JSONResponse(body, status_code=200 if job.status == COMPLETED else 202, headers={"x-fal-request-id": job.id})


async def status_stream(
    request: Request, request_id: RequestIdPath, state: StateDep, logs: LogsQuery = None
) -> EventStreamResponse:
    """Server-sent events: one `data:` status per change, closed after COMPLETED."""
    job = await run_in_threadpool(find_job, state, request_id, False)
    headers = {"x-fal-request-id": job.id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStreamResponse(_events(state, job.id, truthy(logs), state.base_url(request)), headers=headers)


async def _events(state: ServerState, request_id: str, with_logs: bool, base_url: str) -> AsyncIterator[str]:
    """Each event carries only the log entries new since the previous one: the JS client accumulates them."""
    last_log, last_sent = 0, None
    with state.notifier.subscribe(request_id) as changes:
        while True:
            job = await run_in_threadpool(state.jobs.get, request_id, False, False)
            if with_logs and job.status != IN_QUEUE:
                new_logs = await run_in_threadpool(state.jobs.logs, request_id, last_log)
            else:
                new_logs = []
            if new_logs:
                last_log = new_logs[-1].seq
            body = await run_in_threadpool(status_body, state, job, with_logs, new_logs, base_url)
            fingerprint = {key: value for key, value in body.items() if key != "logs"}
            if new_logs or fingerprint != last_sent:
                last_sent = fingerprint
                yield f"data: {json.dumps(body)}\n\n"
            if job.status == COMPLETED:
                return
            if not await changes.wait(state.settings.sse_keepalive_s):
                yield ": keep-alive\n\n"


def result(request: Request, request_id: RequestIdPath, state: StateDep) -> JSONResponse:
    """The output (200), or the request's error with its own status and body (e.g. 422)."""
    job = find_job(state, request_id)
    if job.status != COMPLETED:
        raise FalError(400, "Request is still in progress", headers={"x-fal-request-id": job.id})
    return result_response(job, state.base_url(request))


def cancel(request_id: RequestIdPath, state: StateDep) -> JSONResponse:
    """202 CANCELLATION_REQUESTED (queued: never runs; running: stops at the next phase), 400 ALREADY_COMPLETED, 404."""
    job = lookup_job(state, request_id, with_result=False)
    outcome = state.jobs.request_cancel(job.id) if job is not None else "NOT_FOUND"
    if outcome == "NOT_FOUND":  # fal's outcome, in the body as the other outcomes are
        error = request_not_found()
        return JSONResponse({"status": outcome, **error.body}, error.status_code, error.response_headers)
    headers = {"x-fal-request-id": job.id}
    if outcome == "ALREADY_COMPLETED":
        return JSONResponse({"status": outcome, "detail": "Request already completed"}, 400, headers)
    return JSONResponse({"status": outcome}, 202, headers)


#: One server-sent event of the stream: its data is a status object in JSON.
_STATUS_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/QueueStatus"},
        },
        "event": {"type": "string"},
    },
}


class _RequestRoute(NamedTuple):
    suffix: str
    endpoint: Callable
    method: str
    model: type | None
    summary: str
    status_code: int
    responses: dict


# The request routes: canonical /queue/<owner>/<alias>/requests/..., plus tolerated spellings.
_SPELLINGS = [
    f"/queue/{APP_ID}",
    *(f"/queue/{endpoint.id}" for endpoint in ENDPOINTS),
    f"/{APP_ID}",
    *(f"/{endpoint.id}" for endpoint in ENDPOINTS),
]
_ROUTES = [
    _RequestRoute(
        "/requests/{request_id}/status",
        status,
        "GET",
        QueueStatus,
        "Status",
        200,
        {
            200: {"description": "COMPLETED (also when it failed or was cancelled)", "headers": _HEADER_ID},
            202: {"model": QueueStatus, "description": "IN_QUEUE or IN_PROGRESS", "headers": _HEADER_ID},
            **error_responses(404),
        },
    ),
    _RequestRoute(
        "/requests/{request_id}/status/stream",
        status_stream,
        "GET",
        None,
        "Status stream (SSE)",
        200,
        {
            200: {
                "description": "Server-sent events, each `data:` a status object; closed after COMPLETED",
                "content": {"text/event-stream": {"schema": _STATUS_EVENT}},
                "headers": _HEADER_ID,
            },
            **error_responses(404),
        },
    ),
    _RequestRoute(
        "/requests/{request_id}",
        result,
        "GET",
        Union[tuple(endpoint.output_model for endpoint in ENDPOINTS)],  # the output of the request's endpoint
        "Result",
        200,
        {
            200: {"description": "The output", "headers": _HEADER_ID},
            400: {**error_responses(400)[400], "description": "Not completed yet (IN_QUEUE or IN_PROGRESS)"},
            **error_responses(404, 422, 499, 500, 503, 504, 507),
        },
    ),
    _RequestRoute(
        "/requests/{request_id}/cancel",
        cancel,
        "PUT",
        CancelResult,
        "Cancel",
        202,
        {
            202: {"description": "CANCELLATION_REQUESTED: a queued request never runs, a running one stops"},
            400: {"model": CancelResult, "description": "ALREADY_COMPLETED"},
            404: {"model": CancelResult, "description": "NOT_FOUND (with `detail` and `error_type`)"},
        },
    ),
]
for _index, _prefix in enumerate(_SPELLINGS):
    for _route in _ROUTES:
        _name = _route.endpoint.__name__
        router.add_api_route(
            _prefix + _route.suffix,
            _route.endpoint,
            methods=[_route.method],
            response_model=_route.model,
            # no media type for the stream's route: its errors are JSON, its 200 is declared as events
            response_class=StreamingResponse if _route.endpoint is status_stream else JSONResponse,
            status_code=_route.status_code,
            responses=_route.responses,
            include_in_schema=_index == 0,
            name=f"{_name}{_index}",
            operation_id=_OPERATIONS[_name] if _index == 0 else None,
            summary=_route.summary,
        )
