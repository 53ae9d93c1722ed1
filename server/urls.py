"""Output URLs that stay valid in a fleet: a result stores its files' paths (`/files/<id>/<name>`), never an
address, and whichever front-end answers makes them absolute with its own base URL (`--public-url`, else the
address the request was sent to). So a result read through any front-end names one that is alive.

Results stored before this hold absolute URLs, and are answered as they are.
"""

from __future__ import annotations

from typing import Any

#: How a stored file's path starts (server/storage.py's StoredFile.path); an absolute URL never does.
FILE_PATH_PREFIX = "/files/"


def absolute_urls(body: Any, base_url: str) -> Any:
    """`body` with every `url` that is a stored file's path made absolute on `base_url` (a copy where changed)."""
    if isinstance(body, dict):
        return {
            key: (
                base_url.rstrip("/") + value
                if key == "url" and isinstance(value, str) and value.startswith(FILE_PATH_PREFIX)
                else absolute_urls(value, base_url)
            )
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [absolute_urls(value, base_url) for value in body]
    return body
