"""The fal-compatible HTTP server for `fal-ai/seedvr/upscale/image` (`seedvr-local serve`).

`create_app(settings, engine_factory)` builds the FastAPI app; the engine is injected so that tests
can run the whole server with a fast stand-in for the model. The names below load on first use, so that
importing a light part (the request schema, the CLI flags) loads neither the app nor torch.
"""

from __future__ import annotations

__all__ = ["create_app", "Engine", "EngineFactory", "ServerSettings"]


def __getattr__(name: str):
    if name == "create_app":
        from seedvr_local.server.app import create_app

        return create_app
    if name in ("Engine", "EngineFactory"):
        from seedvr_local.server import engine

        return getattr(engine, name)
    if name == "ServerSettings":
        from seedvr_local.server.settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module 'seedvr_local.server' has no attribute {name!r}")
