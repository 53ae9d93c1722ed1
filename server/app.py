"""`create_app`: the FastAPI application, its routers, middleware and background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from seedvr_local import __version__
from seedvr_local.server.endpoint import ENDPOINT_ID
from seedvr_local.server.engine import EngineFactory
from seedvr_local.server.errors import install_handlers
from seedvr_local.server.middleware import CrashGuardMiddleware, RequestIdMiddleware
from seedvr_local.server.netguard import NetGuard
from seedvr_local.server.proxy import PROXY_PATH, FalProxyMiddleware, openapi_path
from seedvr_local.server.routers import health, playground, queue, run, storage, wellknown
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.state import ServerState
from seedvr_local.server.sweeper import Sweeper

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
        if state.lock is not None:  # the only server on this database: what was running when it stopped is its own
            recovered = await asyncio.to_thread(state.jobs.recover)
            if recovered["requeued"] or recovered["failed"]:
                log.info(
                    "recovered after restart: %d request(s) run again, %d failed",
                    len(recovered["requeued"]),
                    len(recovered["failed"]),
                )
        if state.listener is not None:
            state.listener.start()
        if settings.worker_in_process:
            state.worker.start()
        tasks = [asyncio.create_task(state.webhooks.run()), asyncio.create_task(_expire_deadlines(state))]
        sweeps = [(Sweeper(state.db, state.files, settings.orphan_files_after_s).sweep, "sweeping orphan files")]
        if state.retention is not None:
            sweeps.append((state.retention.sweep, "retention sweep"))
        for sweep, what in sweeps:
            tasks.append(asyncio.create_task(_sweep_periodically(sweep, settings.retention_sweep_s, what)))
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
            if state.listener is not None:
                await asyncio.to_thread(state.listener.stop)
            if stopped:
                state.db.close()
            if state.lock is not None:
                state.lock.release()

    app = FastAPI(
        title="seedvr-local",
        summary=f"Self-hosted SeedVR2 speaking fal's {ENDPOINT_ID} protocol",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served by `_serve_docs`, from this server's own files
        redoc_url=None,
    )
    _serve_docs(app)
    _document_proxy(app)
    install_handlers(app)
    for router in (run.router, queue.router, storage.router, health.router, wellknown.router, playground.router):
        app.include_router(router)
    app.mount(playground.ASSETS_URL, playground.assets(), name="playground-assets")
    # Starlette runs the last added middleware first: request ids, CORS, the crash guard, the proxy rewrite.
    app.add_middleware(FalProxyMiddleware)
    app.add_middleware(CrashGuardMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        # a page on the internet may reach a server on a private network only from an origin named with
        # --cors-origin: never with "*", which would let any web page drive a key-less server on a LAN
        allow_private_network="*" not in settings.cors_origins,
    )
    app.add_middleware(RequestIdMiddleware)
    return app


#: Swagger UI and ReDoc as the fastapi-offline package ships them (kept current with their releases).
DOCS_ASSETS = importlib.resources.files("fastapi_offline") / "static"
DOCS_ASSETS_URL = "/docs-assets"


def _serve_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with every script, style and icon from this server, not a CDN:
    the pages work on a host without internet."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            # no validator badge: it would send the document to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _document_proxy(app: FastAPI) -> None:
    """The proxy is middleware, invisible to FastAPI: its path joins the generated document."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            FastAPI.openapi(app)["paths"][PROXY_PATH] = openapi_path("#/components/schemas/RequestErrorBody")
        return app.openapi_schema

    app.openapi = openapi


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_coro(), exc_info=task.exception())


async def _sweep_periodically(sweep: Callable[[], object], interval_s: float, what: str) -> None:
    """`sweep()` in a thread, the first at start (a server that was down a while catches up), then every
    `interval_s`: retention, and the sweep of what killed processes left (server/sweeper.py)."""
    while True:
        try:
            await asyncio.to_thread(sweep)
        except Exception:  # a full disk, a locked file, an unreachable bucket: try again at the next sweep
            log.exception("%s failed", what)
        await asyncio.sleep(interval_s)


async def _expire_deadlines(state: ServerState) -> None:
    """Requests still queued past their x-fal-request-timeout end with a 504 (checked twice a second); running
    requests whose worker stopped renewing its lease run again. In a thread: the event loop never waits on the
    database."""
    while True:
        try:
            await asyncio.to_thread(state.jobs.expire_overdue)
            await asyncio.to_thread(state.jobs.reclaim_expired)
        except SQLAlchemyError as exc:  # the database restarts: try again at the next tick
            log.warning("deadline check failed: %s", type(exc).__name__)
        await asyncio.sleep(0.5)
