"""fal's input and output schemas of `fal-ai/seedvr/upscale/image`, `fal-ai/seedvr/upscale/image/seamless` and
`fal-ai/seedvr/upscale/video`, and of their queue, as pydantic models.

The input model is the validation: unknown fields are ignored, every invalid value is a 422 with a
FastAPI-style `detail` list (what fal, itself FastAPI, returns).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from seedvr_local.options import OUTPUT_FORMATS as IMAGE_OUTPUT_FORMATS
from seedvr_local.options import MAX_SEED, OutputFormat, TargetResolution, UpscaleMode
from seedvr_local.sizes import MAX_UPSCALE_FACTOR, MIN_UPSCALE_FACTOR
from seedvr_local.video.formats import (
    DEFAULT_FORMAT,
    DEFAULT_QUALITY,
    DEFAULT_WRITE_MODE,
    OUTPUT_FORMATS,
    OUTPUT_QUALITIES,
    OUTPUT_WRITE_MODES,
)

#: What an image_url or video_url may be: an http(s) URL (this server's file URLs are ones) or a data: URI.
URL_SCHEMES = ("http://", "https://", "data:")

# Literal types of the video choices, from the table in seedvr_local.video.formats (fal's strings, verbatim).
VideoOutputFormat = Literal[tuple(fmt.fal_name for fmt in OUTPUT_FORMATS)]  # type: ignore[valid-type]
VideoQuality = Literal[OUTPUT_QUALITIES]  # type: ignore[valid-type]
VideoWriteMode = Literal[OUTPUT_WRITE_MODES]  # type: ignore[valid-type]


def _any_case_prefix(prefixes: tuple[str, ...]) -> str:
    """A JSON Schema regex (ECMA syntax, no flags) for a string starting with one of `prefixes`, in any case."""
    def any_case(text: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)

    return f"^(?:{'|'.join(any_case(prefix) for prefix in prefixes)})"


def _url_field(kind: str, example: str) -> Any:
    return Field(
        description=(
            f"The {kind} to upscale: an http(s) URL, a data: URI, or the URL of a file uploaded to this server."
        ),
        examples=[example],
        # Documented for clients and the contract fuzzer; enforced by `_check_url` with a plainer message.
        json_schema_extra={"pattern": _any_case_prefix(URL_SCHEMES)},
    )


def _check_url(field: str, value: str) -> str:
    if not value.lower().startswith(URL_SCHEMES):
        raise ValueError(f"{field} must be an http(s) URL, a data: URI or the URL of a file of this server")
    return value


class _UpscaleInput(BaseModel):
    """The fields the image and the video endpoints share, with the same rules."""

    model_config = ConfigDict(extra="ignore")

    upscale_mode: UpscaleMode = Field(
        "factor", description="'factor' multiplies both sides by upscale_factor; 'target' sets the short side."
    )
    upscale_factor: float = Field(
        2.0,
        ge=MIN_UPSCALE_FACTOR,
        le=MAX_UPSCALE_FACTOR,
        allow_inf_nan=False,
        description="Multiplies the width and height when upscale_mode is 'factor'.",
    )
    target_resolution: TargetResolution = Field(
        "1080p", description="Short side of the output when upscale_mode is 'target'."
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="The same seed and input give the same output.")
    noise_scale: float = Field(0.1, ge=0.0, le=1.0, allow_inf_nan=False, description="Condition noise augmentation.")


class SeedVRImageInput(_UpscaleInput):
    model_config = ConfigDict(title="SeedVRImageInput")

    image_url: str = _url_field("image", "https://example.com/photo.jpg")
    output_format: OutputFormat = Field("jpg", description="Format of the output image.")
    sync_mode: bool = Field(
        False, description="Return the image inline as a data URI instead of a URL; it is then not stored."
    )

    @field_validator("image_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _check_url("image_url", value)


#: fal's seamless endpoint spells JPEG "jpeg" where the image endpoint says "jpg" (`image_io` writes both).
SEAMLESS_OUTPUT_FORMATS = tuple("jpeg" if fmt == "jpg" else fmt for fmt in IMAGE_OUTPUT_FORMATS)
SeamlessOutputFormat = Literal[SEAMLESS_OUTPUT_FORMATS]  # type: ignore[valid-type]


class SeedVRSeamlessImageInput(SeedVRImageInput):
    """The image endpoint's input, as fal's `fal-ai/seedvr/upscale/image/seamless` differs from it: the output
    format's spelling of JPEG, a PNG default, and a safety checker switch."""

    model_config = ConfigDict(title="SeedVRSeamlessImageInput")

    output_format: SeamlessOutputFormat = Field(
        "png", description=SeedVRImageInput.model_fields["output_format"].description
    )
    enable_safety_checker: bool = Field(
        True, description="Accepted as fal's schema has it; this server runs no safety checker, so it changes nothing."
    )


class SeedVRVideoInput(_UpscaleInput):
    model_config = ConfigDict(title="SeedVRVideoInput")

    video_url: str = _url_field("video", "https://example.com/clip.mp4")
    output_format: VideoOutputFormat = Field(
        DEFAULT_FORMAT.fal_name, description="Container and codec of the output video (fal's names, verbatim)."
    )
    output_quality: VideoQuality = Field(DEFAULT_QUALITY, description="How much detail the encoder keeps.")
    output_write_mode: VideoWriteMode = Field(
        DEFAULT_WRITE_MODE, description="The encoder's trade-off: fast to write, balanced, or small files."
    )
    sync_mode: bool = Field(
        False, description="Return the video inline as a data URI instead of a URL; it is then not stored."
    )

    @field_validator("video_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _check_url("video_url", value)


class Image(BaseModel):
    url: str = Field(description="Where to download the image; a data: URI with sync_mode.")
    content_type: str = Field(examples=["image/jpeg"])
    file_name: str
    file_size: int
    width: int
    height: int


class SeedVRImageOutput(BaseModel):
    image: Image
    seed: int = Field(description="The seed used; pass it back to get the same image.")


class File(BaseModel):
    """fal's File: a video has no width or height in it."""

    url: str = Field(description="Where to download the file; a data: URI with sync_mode.")
    content_type: str = Field(examples=["video/mp4"])
    file_name: str
    file_size: int


class SeedVRVideoOutput(BaseModel):
    video: File
    seed: int = Field(description="The seed used; pass it back to get the same video.")


class RequestLog(BaseModel):
    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]
    source: Literal["USER"] = "USER"
    timestamp: str


class QueueStatus(BaseModel):
    """One of IN_QUEUE (with queue_position), IN_PROGRESS (with logs) or COMPLETED (with logs, metrics
    and, for failed or cancelled requests, error and error_type)."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[RequestLog] | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    error_type: str | None = None


class CancelResult(BaseModel):
    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


class InputError(Exception):
    """The request body is not a valid input; `detail` is the FastAPI-style error list."""

    def __init__(self, detail: list[dict[str, Any]]):
        super().__init__(detail[0]["msg"] if detail else "invalid input")
        self.detail = detail


def parse_input(raw: bytes, model: type[_UpscaleInput] = SeedVRImageInput) -> _UpscaleInput:
    """Validate a request body as `model`; an empty body is `{}` (the JS client sends none for an empty input)."""
    if not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _json_invalid(f"JSON decode error: {exc.msg}", exc.pos) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _json_invalid(
            f"JSON decode error: {exc}" if isinstance(exc, ValueError) else "body nests too deeply", 0
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(validation_detail(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_invalid(message: str, position: int) -> InputError:
    return InputError([{"type": "json_invalid", "loc": ["body", position], "msg": message, "input": {}}])


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as FastAPI writes them: `loc` starting with "body", without the docs URL."""
    detail = []
    for error in exc.errors(include_url=False):
        item: dict[str, Any] = {
            "type": error["type"],
            "loc": ["body", *error["loc"]],
            "msg": error["msg"],
            "input": _shorten(error.get("input")),
        }
        if error.get("ctx"):
            item["ctx"] = {key: _json_safe(value) for key, value in error["ctx"].items()}
        detail.append(item)
    return detail


def _shorten(value: Any, limit: int = 200) -> Any:
    """Echoed inputs without multi-megabyte data URIs."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}… ({len(value):,} characters)"
    if isinstance(value, dict):
        return {key: _shorten(item, limit) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten(item, limit) for item in value[:20]]
    return _json_safe(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)
