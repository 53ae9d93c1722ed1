"""The fal-compatible HTTP server for `fal-ai/seedvr/upscale/image` (`seedvr-local serve`).

`create_app(settings, engine_factory)` builds the FastAPI app; the engine is injected so that tests
can run the whole server with a fast stand-in for the model.
"""

from seedvr_local.server.app import create_app
from seedvr_local.server.engine import Engine, EngineFactory
from seedvr_local.server.settings import ServerSettings

__all__ = ["create_app", "Engine", "EngineFactory", "ServerSettings"]
