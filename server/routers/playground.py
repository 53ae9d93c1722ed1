"""The playground: a page of this server to try its endpoints in a browser, at `/` and `/playground`.

The page and its assets are files of this package (server/playground/), served from here: it works on a
host without internet. It builds its form from this server's /openapi.json and talks to the same routes
the fal clients use, so it is not part of the API document itself.
"""

from __future__ import annotations

import importlib.resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = importlib.resources.files("seedvr_local.server") / "playground"
#: Where the page's script, style and icon are served; index.html names them relative to the page.
ASSETS_URL = "/playground-assets"
PAGE_PATHS = ("/", "/playground")

router = APIRouter()


def assets() -> StaticFiles:
    return StaticFiles(directory=str(ASSETS))


#: The page's own code comes from this server only. Images, videos and requests may go elsewhere: a pasted
#: image URL is shown as the "before" side, and --public-url can name another host for the files.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src * data: blob:; media-src * data: blob:; connect-src *; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def page() -> HTMLResponse:
    headers = {
        # after an upgrade the page and the API document it reads must be of the same version
        "Cache-Control": "no-cache",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
    return HTMLResponse((ASSETS / "index.html").read_text(encoding="utf-8"), headers=headers)


for _path in PAGE_PATHS:
    router.add_api_route(_path, page, methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
