"""Sync run: `POST /fal-ai/seedvr/upscale/image`, `/fal-ai/seedvr/upscale/image/seamless` and
`/fal-ai/seedvr/upscale/video` (and `/run/...`, for FAL_RUN_HOST=host:port/run).

The request joins the same queue as queued ones (one device, one worker) and the response is sent
when it completes. A client that hangs up cancels its request.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from seedvr_local.server.auth import require_key
from seedvr_local.server.endpoint import ENDPOINTS, Endpoint
from seedvr_local.server.errors import error_responses
from seedvr_local.server.jobs import COMPLETED, Job
from seedvr_local.server.routers.common import (
    PriorityHeader,
    TimeoutHeader,
    input_body,
    parse_priority,
    parse_start_deadline,
    read_input,
    result_response,
)
from seedvr_local.server.state import ServerState, StateDep

router = APIRouter(tags=["run"], dependencies=[Depends(require_key)], responses=error_responses(401))

#: The request's own outcome, as its result call would answer it (a client that hangs up gets nothing).
_RESPONSES = {
    200: {"headers": {"x-fal-request-id": {"description": "The request's id", "schema": {"type": "string"}}}},
    **error_responses(413, 422, 429, 499, 500, 503, 504, 507),
}


def _run_route(endpoint: Endpoint):
    async def run(
        request: Request,
        state: StateDep,
        x_fal_queue_priority: PriorityHeader = None,
        x_fal_request_timeout: TimeoutHeader = None,
    ) -> JSONResponse:
        priority = parse_priority(x_fal_queue_priority)
        deadline = parse_start_deadline(x_fal_request_timeout)
        data = await read_input(request, state, endpoint)
        job = await run_in_threadpool(
            state.jobs.create, "sync", data, state.base_url(request), priority, start_deadline=deadline
        )
        state.worker.wake()
        done = await _wait(state, job, request)
        if done is None:  # the client has gone; nobody reads this
            return JSONResponse({"detail": "client disconnected"}, status_code=499)
        return result_response(done, state.base_url(request))

    run.__doc__ = f"{endpoint.summary} and wait for the result."
    return run


async def _wait(state: ServerState, job: Job, request: Request) -> Job | None:
    with state.notifier.subscribe(job.id) as changes:
        while True:
            current = await run_in_threadpool(state.jobs.get, job.id, False, False)
            if current.status == COMPLETED:  # the result is read once, when there is one
                return await run_in_threadpool(state.jobs.get, job.id)
            if await request.is_disconnected():
                await run_in_threadpool(state.jobs.request_cancel, job.id)
                return None
            await changes.wait(1.0)


for _endpoint in ENDPOINTS:
    _run = _run_route(_endpoint)
    for _path, _visible in ((f"/{_endpoint.id}", True), (f"/run/{_endpoint.id}", False)):
        router.add_api_route(
            _path,
            _run,
            methods=["POST"],
            response_model=_endpoint.output_model,
            responses=_RESPONSES,
            openapi_extra=input_body(_endpoint),
            include_in_schema=_visible,
            name=f"run{_path.replace('/', '_')}",
            operation_id=f"run{_endpoint.operation_suffix}" if _visible else None,
            summary=f"Run (sync): {_endpoint.summary.lower()}",
        )
