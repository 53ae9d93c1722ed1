"""`create_app`: the FastAPI application, its routers, middleware and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from seedvr_local import __version__
from seedvr_local.server.endpoint import ENDPOINT_ID
from seedvr_local.server.engine import EngineFactory
from seedvr_local.server.errors import install_handlers
from seedvr_local.server.middleware import CrashGuardMiddleware, RequestIdMiddleware
from seedvr_local.server.netguard import NetGuard
from seedvr_local.server.proxy import FalProxyMiddleware
from seedvr_local.server.retention import Retention
from seedvr_local.server.routers import health, queue, run, storage, wellknown
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.state import ServerState

log = logging.getLogger("seedvr_local.server")

EXPOSED_HEADERS = ["x-fal-request-id", "x-fal-request-timeout-type", "x-fal-error-type", "etag"]


def create_app(
    settings: ServerSettings,
    engine_factory: EngineFactory,
    description: str = "SeedVR2",
    guard: NetGuard | None = None,
) -> FastAPI:
    """The server for `settings`; `engine_factory` is called once, in the worker thread, to load the model.

    `guard` replaces the outgoing-URL policy built from `settings.allow_private_urls` (for tests).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServerState.open(settings, engine_factory, description, guard)
        app.state.server = state
        recovered = state.jobs.recover()
        if recovered["requeued"] or recovered["failed"]:
            log.info(
                "recovered after restart: %d request(s) run again, %d failed",
                len(recovered["requeued"]),
                len(recovered["failed"]),
            )
        state.worker.start()
        tasks = [asyncio.create_task(state.webhooks.run()), asyncio.create_task(_expire_deadlines(state))]
        if state.retention is not None:
            tasks.append(asyncio.create_task(_sweep_expired(state.retention, settings.retention_sweep_s)))
        for task in tasks:
            task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            stopped = await asyncio.to_thread(state.worker.stop, settings.shutdown_grace_s)
            if not stopped:
                log.warning(
                    "the running job did not stop within %.0f s; it runs again after the restart",
                    settings.shutdown_grace_s,
                )
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)  # bounded: a stuck task must not hang the shutdown
            if stopped:
                state.db.close()
            state.lock.release()

    app = FastAPI(
        title="seedvr-local",
        summary=f"Self-hosted SeedVR2 speaking fal's {ENDPOINT_ID} protocol",
        version=__version__,
        lifespan=lifespan,
    )
    install_handlers(app)
    for router in (run.router, queue.router, storage.router, health.router, wellknown.router):
        app.include_router(router)
    # Starlette runs the last added middleware first: request ids, CORS, the crash guard, the proxy rewrite.
    app.add_middleware(FalProxyMiddleware)
    app.add_middleware(CrashGuardMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        allow_private_network=True,
    )
    app.add_middleware(RequestIdMiddleware)
    return app


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_coro(), exc_info=task.exception())


async def _sweep_expired(retention: Retention, interval_s: float) -> None:
    """Retention sweeps, the first at start (a server that was down a while catches up)."""
    while True:
        try:
            await asyncio.to_thread(retention.sweep)
        except Exception:  # a full disk or a locked file: try again at the next sweep
            log.exception("retention sweep failed")
        await asyncio.sleep(interval_s)


async def _expire_deadlines(state: ServerState) -> None:
    """Requests still queued past their x-fal-request-timeout end with a 504 (checked twice a second)."""
    while True:
        state.jobs.expire_overdue()
        await asyncio.sleep(0.5)
