"""The one fal endpoint this server implements, and the URLs of a request on it.

fal addresses submit/run with the full id (owner/alias/path) and status/result/cancel with
owner/alias only; see the protocol doc, section 1.
"""

from __future__ import annotations

OWNER = "fal-ai"
ALIAS = "seedvr"
PATH = "upscale/image"
ENDPOINT_ID = f"{OWNER}/{ALIAS}/{PATH}"
APP_ID = f"{OWNER}/{ALIAS}"


def request_urls(base_url: str, request_id: str) -> dict[str, str]:
    """`response_url`, `status_url` and `cancel_url` of a queued request, on this server."""
    root = f"{base_url.rstrip('/')}/queue/{APP_ID}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}
