"""Liveness, readiness (the model is loaded) and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from seedvr_local.server.auth import require_metrics_key
from seedvr_local.server.errors import error_responses
from seedvr_local.server.fleet import RESTARTING
from seedvr_local.server.jobs import IN_PROGRESS, IN_QUEUE
from seedvr_local.server.state import StateDep

router = APIRouter(tags=["health"])


class NotReady(BaseModel):
    detail: str
    status: Literal["loading", "failed", "restarting"]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "model": NotReady,
            "description": "the model is loading or failed to load, no worker is live, or a worker process died and "
            "is restarting",
        }
    },
)
def readyz(state: StateDep) -> JSONResponse:
    """200 once the model is loaded (with the model's `notice`, if it has one); 503 while it loads or when it
    failed to. An API-only server (its workers in other processes) is ready while at least one worker with its
    model loaded has a fresh heartbeat."""
    if not state.settings.worker_in_process:
        workers = state.registry.live(fresh_s=2 * state.settings.lease_s)
        ready = [worker for worker in workers if worker.model_state == "ready"]
        if ready:
            models = "; ".join(sorted({worker.model or "unknown model" for worker in ready}))
            notices = sorted({worker.model_notice for worker in ready if worker.model_notice})
            notice = {"notice": "; ".join(notices)} if notices else {}
            restarting = sum(worker.model_state == RESTARTING for worker in workers)
            more = {"restarting": restarting} if restarting else {}
            return JSONResponse({"status": "ready", "model": models, "workers": len(ready), **more, **notice})
        restarting = [worker for worker in workers if worker.model_state == RESTARTING]
        if restarting:  # a worker process died: say so, and how, rather than "loading"
            detail = "; ".join(f"worker {worker.device}: {worker.model_notice}" for worker in restarting)
            return JSONResponse({"detail": detail, "status": RESTARTING}, 503)
        status = "failed" if workers and all(w.model_state == "failed" for w in workers) else "loading"
        detail = "every live worker failed to load its model" if status == "failed" else "no worker is ready yet"
        return JSONResponse({"detail": detail, "status": status}, 503)
    engines = state.engines
    if engines.state == "ready":
        notice = {"notice": engines.notice} if engines.notice else {}
        return JSONResponse({"status": "ready", "model": engines.description, **notice})
    if engines.state == "failed":
        return JSONResponse({"detail": f"the model failed to load: {engines.error}", "status": "failed"}, 503)
    return JSONResponse({"detail": "the model is loading", "status": "loading"}, 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require_metrics_key)],
    responses=error_responses(401),
)
def metrics(state: StateDep) -> PlainTextResponse:
    """Prometheus metrics of the whole fleet: its queue, the counters and phase histograms every process records in
    the job database, and each live worker's heartbeat and device memory (a plain `def`: FastAPI runs it in its
    thread pool, so the database reads never hold the event loop)."""
    counts = state.jobs.counts()
    workers = state.registry.live(fresh_s=2 * state.settings.lease_s)
    if state.settings.worker_in_process:
        model_loaded = state.engines.state == "ready"
    else:  # API only: as /readyz, ready while a live worker has its model
        model_loaded = any(worker.model_state == "ready" for worker in workers)
    text = state.metrics.render(counts[IN_QUEUE], counts[IN_PROGRESS], model_loaded, workers)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
