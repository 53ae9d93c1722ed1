"""The fal endpoints this server implements, and the URLs of a request on them.

fal addresses submit/run with the full id (owner/alias/path) and status/result/cancel with
owner/alias only; see the protocol doc, section 1. All endpoints share one alias, so one queue and one
set of request routes serve them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from seedvr_local.server.schema import (
    SeedVRImageInput,
    SeedVRImageOutput,
    SeedVRSeamlessImageInput,
    SeedVRVideoInput,
    SeedVRVideoOutput,
)

OWNER = "fal-ai"
ALIAS = "seedvr"
APP_ID = f"{OWNER}/{ALIAS}"


@dataclass(frozen=True)
class Endpoint:
    path: str  # after owner/alias
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    url_field: str  # the input field naming the file to upscale
    summary: str  # what one request does, for the OpenAPI document
    operation_suffix: str  # of the OpenAPI operation ids: "" for the image endpoint, which had them first

    @property
    def id(self) -> str:
        return f"{APP_ID}/{self.path}"


IMAGE = Endpoint("upscale/image", SeedVRImageInput, SeedVRImageOutput, "image_url", "Upscale an image", "")
VIDEO = Endpoint("upscale/video", SeedVRVideoInput, SeedVRVideoOutput, "video_url", "Upscale a video", "_video")
#: An image upscale of a tileable texture whose result tiles too (`UpscaleOptions.seamless`).
SEAMLESS = Endpoint(
    "upscale/image/seamless", SeedVRSeamlessImageInput, SeedVRImageOutput, "image_url",
    "Upscale a tileable image so that the result tiles", "_seamless",
)  # fmt: skip
ENDPOINTS = (IMAGE, VIDEO, SEAMLESS)
ENDPOINT_ID = IMAGE.id
_BY_ID = {endpoint.id: endpoint for endpoint in ENDPOINTS}

#: The key of a job's stored input that names its endpoint (jobs stored before there were two have none: images).
ENDPOINT_KEY = "fal_endpoint"


def stored_input(endpoint: Endpoint, params: BaseModel) -> dict[str, Any]:
    """What a job row keeps as its input: the validated input and the endpoint it was sent to."""
    return {**params.model_dump(), ENDPOINT_KEY: endpoint.id}


def endpoint_of(stored: dict[str, Any]) -> Endpoint:
    return _BY_ID[stored.get(ENDPOINT_KEY, IMAGE.id)]


def request_urls(base_url: str, request_id: str) -> dict[str, str]:
    """`response_url`, `status_url` and `cancel_url` of a queued request, on this server."""
    root = f"{base_url.rstrip('/')}/queue/{APP_ID}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}
