"""Pieces the run and queue surfaces share: reading the input, fal's headers, status bodies."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from seedvr_local.server.endpoint import request_urls
from seedvr_local.server.errors import FalError, request_error
from seedvr_local.server.jobs import COMPLETED, IN_QUEUE, PRIORITIES, Job, LogEntry
from seedvr_local.server.schema import SeedVRImageInput, parse_input
from seedvr_local.server.state import ServerState

#: The input model in the OpenAPI document (the body is parsed by hand, see `read_input`).
INPUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SeedVRImageInput.model_json_schema()}},
    }
}

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
    """Room for a data: URI of the largest image accepted, plus the rest of the input."""
    return state.settings.max_download_bytes * 4 // 3 + 1024 * 1024


async def read_input(request: Request, state: ServerState) -> SeedVRImageInput:
    """The validated input; raises InputError (a 422) for an invalid one."""
    return parse_input(await read_body(request, body_limit(state)))


def parse_priority(value: str | None) -> int:
    if value is None or not value.strip():
        return PRIORITIES["normal"]
    name = value.strip().lower()
    if name == "high":  # in fal's queue API, sent by no official client; no one jumps this queue
        name = "normal"
    if name not in PRIORITIES:
        raise request_error(400, f"x-fal-queue-priority must be 'normal' or 'low', got {value!r}", "bad_request")
    return PRIORITIES[name]


def parse_start_deadline(value: str | None) -> float | None:
    """x-fal-request-timeout: seconds the request may wait to start (the JS client sends "30", Python "30.0")."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise request_error(
            400, f"x-fal-request-timeout must be a positive number of seconds, got {value!r}", "bad_request"
        )
    return time.time() + seconds


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


def status_body(state: ServerState, job: Job, with_logs: bool, logs: list[LogEntry] | None = None) -> dict[str, Any]:
    """fal's status object: queue_position while queued; logs (null unless asked) after; metrics at the end."""
    body: dict[str, Any] = {"status": job.status, "request_id": job.id, **request_urls(job.base_url, job.id)}
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


def result_response(job: Job) -> JSONResponse:
    """What fal answers for a completed request: the output, or the error's own status, headers and body."""
    headers = {**job.response_headers, "x-fal-request-id": job.id}
    return JSONResponse(job.response_body, status_code=job.response_status or 500, headers=headers)


def not_found(request_id: str) -> FalError:
    return FalError(404, f"Request {request_id!r} not found")
