"""Pieces the run and queue surfaces share: reading the input, fal's headers, status bodies."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from fastapi import Header, Path, Request
from fastapi.responses import JSONResponse

from seedvr_local.server.endpoint import Endpoint, request_urls, stored_input
from seedvr_local.server.errors import FalError
from seedvr_local.server.jobs import COMPLETED, IN_QUEUE, PRIORITIES, Job, LogEntry
from seedvr_local.server.schema import parse_input
from seedvr_local.server.state import ServerState
from seedvr_local.server.urls import absolute_urls


def input_body(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint's input model in the OpenAPI document (the body is parsed by hand, see `read_input`)."""
    schema = endpoint.input_model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}

TRUE_VALUES = ("1", "true", "yes", "on")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FalError(413, f"the request body is larger than the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FalError(413, f"the request body is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def body_limit(state: ServerState) -> int:
    """Room for a data: URI of the largest file (image or video) accepted, plus the rest of the input."""
    return state.settings.max_download_bytes * 4 // 3 + 1024 * 1024


async def read_input(request: Request, state: ServerState, endpoint: Endpoint) -> dict[str, Any]:
    """The validated input of `endpoint`, as a job stores it; raises InputError (a 422) for an invalid one."""
    return stored_input(endpoint, parse_input(await read_body(request, body_limit(state)), endpoint.input_model))


#: x-fal-queue-priority: fal's values ("high" is in fal's queue API, sent by no official client, and
#: jumps no queue here). An absent header is "normal".
PriorityHeader = Annotated[
    Literal[tuple([*PRIORITIES, "high"])] | None,  # type: ignore[misc]
    Header(description="normal (the default) or low; high is accepted and treated as normal"),
]

#: x-fal-request-timeout: seconds the request may wait to start, a positive decimal number below 10^9
#: (the JS client sends "30", the Python client "30.0").
TimeoutHeader = Annotated[
    str | None,
    Header(
        pattern=r"^(?:0*[1-9][0-9]{0,8}(?:\.[0-9]*)?|0*\.[0-9]*[1-9][0-9]*)$",
        description="Seconds the request may wait in the queue before it fails with 504",
        examples=["30"],
    ),
]


def parse_priority(value: str | None) -> int:
    return PRIORITIES.get(value or "normal", PRIORITIES["normal"])


def parse_start_deadline(value: str | None) -> float | None:
    """The deadline of an x-fal-request-timeout header (validated by `TimeoutHeader`)."""
    return None if value is None else time.time() + float(value)


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


def status_body(
    state: ServerState, job: Job, with_logs: bool, logs: list[LogEntry] | None = None, base_url: str | None = None
) -> dict[str, Any]:
    """fal's status object: queue_position while queued; logs (null unless asked) after; metrics at the end. Its
    URLs on `base_url`: the answering front-end's (default: the one that accepted the job)."""
    urls = request_urls(base_url or job.base_url, job.id)
    body: dict[str, Any] = {"status": job.status, "request_id": job.id, **urls}
    if job.status == IN_QUEUE:
        body["queue_position"] = state.jobs.queue_position(job)
        return body
    if with_logs:
        entries = state.jobs.logs(job.id) if logs is None else logs
        body["logs"] = [entry.as_fal() for entry in entries]
    else:
        body["logs"] = None
    if job.status == COMPLETED:
        body["metrics"] = {"inference_time": round(job.inference_time, 4)} if job.inference_time is not None else {}
        if job.outcome != "ok":
            body["error"] = job.error
            body["error_type"] = job.error_type
    return body


def result_response(job: Job, base_url: str) -> JSONResponse:
    """What fal answers for a completed request: the output (its files' URLs on `base_url`, the answering
    front-end's), or the error's own status, headers and body."""
    headers = {**job.response_headers, "x-fal-request-id": job.id}
    body = absolute_urls(job.response_body, base_url)
    return JSONResponse(body, status_code=job.response_status or 500, headers=headers)


#: Request ids are the server's own: lowercase UUIDs. Anything else is no request of this server.
REQUEST_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)

#: The request id path parameter. The pattern is documented, not enforced by FastAPI: its 422 would
#: echo the id; `find_job` answers 404 instead, without repeating what the client sent.
RequestIdPath = Annotated[
    str,
    Path(
        description="The request_id the submit answered",
        json_schema_extra={"pattern": REQUEST_ID_PATTERN, "format": "uuid"},
    ),
]


def lookup_job(state: ServerState, request_id: str, with_result: bool = True) -> Job | None:
    """The job with this id, if it is one of the server's ids and the job exists (`with_result`: read its output,
    which only the result route needs)."""
    return state.jobs.get(request_id, with_result=with_result) if _REQUEST_ID.match(request_id) else None


def request_not_found() -> FalError:
    """The 404 of an unknown request id; it does not repeat the id (which may hold anything)."""
    return FalError(404, "No request with this request_id on this server", "request_not_found")


def find_job(state: ServerState, request_id: str, with_result: bool = True) -> Job:
    job = lookup_job(state, request_id, with_result)
    if job is None:
        raise request_not_found()
    return job
