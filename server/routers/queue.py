"""The queue: submit, status (polling and SSE), result, cancel — fal's `queue.fal.run` surface.

Served under `/queue` (FAL_QUEUE_RUN_HOST=host:port/queue, and the JS proxy); the request routes also
answer without the prefix and with the full endpoint id, as some clients build them that way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from seedvr_local.server.auth import require_key
from seedvr_local.server.endpoint import APP_ID, ENDPOINT_ID, request_urls
from seedvr_local.server.errors import FalError
from seedvr_local.server.jobs import COMPLETED, IN_QUEUE, Completion
from seedvr_local.server.netguard import BlockedURLError
from seedvr_local.server.routers.common import (
    INPUT_BODY,
    body_limit,
    not_found,
    parse_priority,
    parse_start_deadline,
    read_body,
    result_response,
    status_body,
    truthy,
)
from seedvr_local.server.schema import CancelResult, InputError, QueueStatus, SeedVRImageOutput, parse_input
from seedvr_local.server.state import ServerState, StateDep

router = APIRouter(tags=["queue"], dependencies=[Depends(require_key)])


@router.post(f"/queue/{ENDPOINT_ID}", response_model=QueueStatus, openapi_extra=INPUT_BODY, summary="Submit")
async def submit(
    request: Request,
    state: StateDep,
    fal_webhook: Annotated[str | None, Query(description="URL to POST the result to when it completes")] = None,
    x_fal_queue_priority: Annotated[str | None, Header()] = None,
    x_fal_request_timeout: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue a request. An invalid input is accepted too, as on fal: it completes at once with its 422."""
    priority = parse_priority(x_fal_queue_priority)
    deadline = parse_start_deadline(x_fal_request_timeout)
    if fal_webhook is not None:
        await _check_webhook(state, fal_webhook)
    raw = await read_body(request, body_limit(state))
    completion, data = None, {}
    try:
        data = parse_input(raw).model_dump()
    except InputError as exc:
        completion = Completion.failure(FalError(422, exc.detail))
    job = state.jobs.create("queue", data, state.base_url(request), priority, fal_webhook or None, deadline, completion)
    state.worker.wake()
    body = {
        "status": IN_QUEUE,
        "request_id": job.id,
        "gateway_request_id": job.id,
        **request_urls(job.base_url, job.id),
        "queue_position": state.jobs.queue_position(job) if job.status == IN_QUEUE else 0,
    }
    return JSONResponse(body, headers={"x-fal-request-id": job.id})


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


async def status(
    request_id: str,
    state: StateDep,
    logs: Annotated[str | None, Query(description="1 or true to include the request's logs")] = None,
) -> JSONResponse:
    """IN_QUEUE (202), IN_PROGRESS (202) or COMPLETED (200)."""
    job = state.jobs.get(request_id)
    if job is None:
        raise not_found(request_id)
    body = status_body(state, job, truthy(logs))
    return JSONResponse(body, status_code=200 if job.status == COMPLETED else 202, headers={"x-fal-request-id": job.id})


async def status_stream(
    request_id: str,
    state: StateDep,
    logs: Annotated[str | None, Query(description="1 or true to include the request's logs")] = None,
) -> StreamingResponse:
    """Server-sent events: one `data:` status per change, closed after COMPLETED."""
    if state.jobs.get(request_id) is None:
        raise not_found(request_id)
    headers = {"x-fal-request-id": request_id, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(state, request_id, truthy(logs)), media_type="text/event-stream", headers=headers)


async def _events(state: ServerState, request_id: str, with_logs: bool) -> AsyncIterator[str]:
    """Each event carries only the log entries new since the previous one: the JS client accumulates them."""
    last_log, last_sent = 0, None
    with state.notifier.subscribe(request_id) as changes:
        while True:
            job = state.jobs.get(request_id)
            new_logs = state.jobs.logs(request_id, after=last_log) if with_logs and job.status != IN_QUEUE else []
            if new_logs:
                last_log = new_logs[-1].seq
            body = status_body(state, job, with_logs, new_logs)
            fingerprint = {key: value for key, value in body.items() if key != "logs"}
            if new_logs or fingerprint != last_sent:
                last_sent = fingerprint
                yield f"data: {json.dumps(body)}\n\n"
            if job.status == COMPLETED:
                return
            if not await changes.wait(state.settings.sse_keepalive_s):
                yield ": keep-alive\n\n"


async def result(request_id: str, state: StateDep) -> JSONResponse:
    """The output (200), or the request's error with its own status and body (e.g. 422)."""
    job = state.jobs.get(request_id)
    if job is None:
        raise not_found(request_id)
    if job.status != COMPLETED:
        raise FalError(400, "Request is still in progress", headers={"x-fal-request-id": job.id})
    return result_response(job)


async def cancel(request_id: str, state: StateDep) -> JSONResponse:
    """202 CANCELLATION_REQUESTED (queued: never runs; running: stops at the next phase), 400 ALREADY_COMPLETED, 404."""
    outcome = state.jobs.request_cancel(request_id)
    headers = {"x-fal-request-id": request_id}
    if outcome == "NOT_FOUND":
        return JSONResponse({"status": outcome, "detail": f"Request {request_id!r} not found"}, 404, headers)
    if outcome == "ALREADY_COMPLETED":
        return JSONResponse({"status": outcome, "detail": "Request already completed"}, 400, headers)
    return JSONResponse({"status": outcome}, 202, headers)


# The request routes: canonical /queue/<owner>/<alias>/requests/..., plus tolerated spellings.
_SPELLINGS = [f"/queue/{APP_ID}", f"/queue/{ENDPOINT_ID}", f"/{APP_ID}", f"/{ENDPOINT_ID}"]
_ROUTES = [
    ("/requests/{request_id}/status", status, ["GET"], QueueStatus, "Status"),
    ("/requests/{request_id}/status/stream", status_stream, ["GET"], None, "Status stream (SSE)"),
    ("/requests/{request_id}", result, ["GET"], SeedVRImageOutput, "Result"),
    ("/requests/{request_id}/cancel", cancel, ["PUT"], CancelResult, "Cancel"),
]
for _index, _prefix in enumerate(_SPELLINGS):
    for _suffix, _endpoint, _methods, _model, _summary in _ROUTES:
        router.add_api_route(
            _prefix + _suffix,
            _endpoint,
            methods=_methods,
            response_model=_model,
            include_in_schema=_index == 0,
            name=f"{_endpoint.__name__}{_index}",
            summary=_summary,
        )
