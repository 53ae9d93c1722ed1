"""File storage: the upload flows of both fal clients, and the stored files served back.

JS (`fal.storage.upload`): POST /storage/upload/initiate -> PUT the bytes to the upload_url handed out
(no Authorization on that PUT); over 90 MiB, initiate-multipart -> PUT <upload_url>/<n> -> POST
<upload_url>/complete. Python (`fal_client.upload*`): POST /storage/auth/token -> POST /files/upload
(+ a multipart variant), with the `storage_type=gcs` initiate flow as its fallback.
"""

from __future__ import annotations

import json
from urllib.parse import quote
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from seedvr_local.server.auth import require_key, require_upload_auth
from seedvr_local.server.errors import FalError, error_responses
from seedvr_local.server.routers.common import read_body
from seedvr_local.server.schema import validation_detail
from seedvr_local.server.state import ServerState, StateDep
from seedvr_local.server.storage import ID_PATTERN, MAX_PARTS, StorageError, StoredFile


class _IdConvertor(Convertor[str]):
    """Path segments shaped like a file id or upload token. A route only matches such a segment, so
    `/files/upload` or `/storage/upload/initiate` never reach a `{file_id}` or `{token}` route: another
    method on them is a 405, not a lookup of the id "upload"."""

    regex = ID_PATTERN

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("storage_id", _IdConvertor())

router = APIRouter(tags=["storage"])
authorized = [Depends(require_key)]

_ID_DOC = {"pattern": f"^{ID_PATTERN}$"}
FileId = Annotated[str, Path(description="The file's id, from its URL", json_schema_extra=_ID_DOC)]
Token = Annotated[str, Path(description="The secret token of the upload URL", json_schema_extra=_ID_DOC)]
PartNumber = Annotated[int, Path(ge=1, le=MAX_PARTS, description="1 to 10,000, as in S3")]
_BINARY_BODY = {"requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}}
_ETAG = {"ETag": {"description": "The part's ETag, to list in complete", "schema": {"type": "string"}}}


class StoredUpload(BaseModel):
    file_url: str
    size: int | None = None


class UploadedPart(BaseModel):
    partNumber: int
    etag: str


class AccessUrl(BaseModel):
    access_url: str


class MultipartUpload(BaseModel):
    access_url: str
    uploadId: str


class UploadToken(BaseModel):
    token: str
    token_type: str
    expires_at: str
    base_url: str


class InitiateUpload(BaseModel):
    content_type: str | None = None
    file_name: str | None = None


#: The body of a multipart complete (read by hand in `_complete`, which says what is wrong with one).
_COMPLETE_SCHEMA = {
    "type": "object",
    "required": ["parts"],
    "properties": {
        "parts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["partNumber"],
                "properties": {"partNumber": {"type": "integer"}, "etag": {"type": "string"}},
            },
        }
    },
}


#: The most bytes of a JSON body of these routes: a complete listing 10,000 parts takes about 600 KB.
JSON_BODY_LIMIT = 1024 * 1024


def _json_body(schema: dict[str, Any], required: bool) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON by hand."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


class UploadTarget(BaseModel):
    upload_url: str
    file_url: str


# --- JS flow (and Python's fallback) ----------------------------------------------------------------


@router.post(
    "/storage/upload/initiate",
    response_model=UploadTarget,
    dependencies=authorized,
    responses=error_responses(400, 401, 413, 422),
    openapi_extra=_json_body(InitiateUpload.model_json_schema(), required=False),
)
async def initiate(request: Request, state: StateDep) -> JSONResponse:
    """Reserve a file; PUT its bytes to `upload_url`, then use `file_url` as an image_url."""
    spec = await _initiate_body(request)
    stored, token = await run_in_threadpool(state.files.new_upload, spec.file_name, spec.content_type)
    base = state.base_url(request)
    return JSONResponse({"upload_url": f"{base}/storage/upload/{token}", "file_url": stored.url(base)})


@router.post(
    "/storage/upload/initiate-multipart",
    response_model=UploadTarget,
    dependencies=authorized,
    responses=error_responses(400, 401, 413, 422),
    openapi_extra=_json_body(InitiateUpload.model_json_schema(), required=False),
)
async def initiate_multipart(request: Request, state: StateDep) -> JSONResponse:
    spec = await _initiate_body(request)
    stored, token = await run_in_threadpool(state.files.new_upload, spec.file_name, spec.content_type, True)
    base = state.base_url(request)
    return JSONResponse({"upload_url": f"{base}/storage/multipart/{token}", "file_url": stored.url(base)})


@router.put(
    "/storage/upload/{token:storage_id}",
    response_model=StoredUpload,
    responses=error_responses(404, 413),
    openapi_extra=_BINARY_BODY,
)
async def upload(token: Token, request: Request, state: StateDep) -> JSONResponse:
    """The bytes of a single-part upload (the secret token is the authorisation)."""
    stored = await run_in_threadpool(_by_token, state, token, False)
    stored = await _receive(state, stored, request)
    return JSONResponse({"file_url": stored.url(state.base_url(request)), "size": stored.size})


@router.put(
    "/storage/multipart/{token:storage_id}/{part:int}",
    response_model=UploadedPart,
    responses={200: {"headers": _ETAG}, **error_responses(400, 404, 413)},
    openapi_extra=_BINARY_BODY,
)
async def upload_part(token: Token, part: PartNumber, request: Request, state: StateDep) -> JSONResponse:
    """One part; the JS client reads partNumber and etag from this JSON body."""
    stored = await run_in_threadpool(_by_token, state, token, True)
    etag = await _receive_part(state, stored, part, request)
    return JSONResponse({"partNumber": part, "etag": etag}, headers={"ETag": etag})


@router.post(
    "/storage/multipart/{token:storage_id}/complete",
    response_model=StoredUpload,
    responses=error_responses(400, 404, 413),
    openapi_extra=_json_body(_COMPLETE_SCHEMA, required=True),
)
async def complete_multipart(token: Token, request: Request, state: StateDep) -> JSONResponse:
    stored = await run_in_threadpool(_by_token, state, token, True)
    stored = await run_in_threadpool(_complete, state, stored, await _json(request))
    return JSONResponse({"file_url": stored.url(state.base_url(request))})


# --- Python flow -------------------------------------------------------------------------------------


@router.post(
    "/storage/auth/token", dependencies=authorized, response_model=UploadToken, responses=error_responses(401)
)
async def upload_token(request: Request, state: StateDep) -> JSONResponse:
    """A token for POST {base_url}/files/upload."""
    return JSONResponse({**state.upload_tokens.issue(), "base_url": state.base_url(request)})


@router.post(
    "/files/upload",
    dependencies=[Depends(require_upload_auth)],
    response_model=AccessUrl,
    responses=error_responses(401, 413),
    openapi_extra=_BINARY_BODY,
)
async def files_upload(request: Request, state: StateDep) -> JSONResponse:
    """Raw bytes in the body, the name in X-Fal-File-Name; answers the file's `access_url`."""
    stored, _ = await run_in_threadpool(
        state.files.new_upload, request.headers.get("x-fal-file-name"), request.headers.get("content-type")
    )
    stored = await _receive(state, stored, request)
    return JSONResponse({"access_url": stored.url(state.base_url(request))})


@router.post(
    "/files/upload/multipart",
    dependencies=[Depends(require_upload_auth)],
    response_model=MultipartUpload,
    responses=error_responses(401),
)
async def files_upload_multipart(request: Request, state: StateDep) -> JSONResponse:
    stored, token = await run_in_threadpool(
        state.files.new_upload, request.headers.get("x-fal-file-name"), request.headers.get("content-type"), True
    )
    return JSONResponse({"access_url": stored.url(state.base_url(request)), "uploadId": token})


@router.put(
    "/files/{file_id:storage_id}/{name}/multipart/{token:storage_id}/{part:int}",
    response_model=UploadedPart,
    responses={200: {"headers": _ETAG}, **error_responses(400, 404, 413)},
    openapi_extra=_BINARY_BODY,
)
async def files_upload_part(
    file_id: FileId, name: str, token: Token, part: PartNumber, request: Request, state: StateDep
) -> Response:
    """The Python client reads the part's ETag from the response header."""
    stored = await run_in_threadpool(_by_token, state, token, True, file_id)
    etag = await _receive_part(state, stored, part, request)
    return JSONResponse({"partNumber": part, "etag": etag}, headers={"ETag": etag})


@router.post(
    "/files/{file_id:storage_id}/{name}/multipart/{token:storage_id}/complete",
    response_model=AccessUrl,
    responses=error_responses(400, 404, 413),
    openapi_extra=_json_body(_COMPLETE_SCHEMA, required=True),
)
async def files_complete(file_id: FileId, name: str, token: Token, request: Request, state: StateDep) -> JSONResponse:
    stored = await run_in_threadpool(_by_token, state, token, True, file_id)
    stored = await run_in_threadpool(_complete, state, stored, await _json(request))
    return JSONResponse({"access_url": stored.url(state.base_url(request))})


# --- serving ---------------------------------------------------------------------------------------


async def get_file(file_id: FileId, request: Request, state: StateDep, name: str | None = None) -> Response:
    """A stored file (upload or output), by its unguessable URL; no key needed."""
    stored = await run_in_threadpool(state.files.read, file_id)
    if stored is None:
        raise FalError(404, "File not found")
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        # uploads can be anything: never let one run as a page of this origin
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    media_type = _served_type(stored.content_type)
    path = state.files.blobs.local_path(stored.id)
    if path is not None:
        return FileResponse(
            path, media_type=media_type, headers=headers, filename=stored.name, content_disposition_type="inline"
        )
    # in the bucket: relayed through this server, so its URL works without access to the bucket
    headers["Content-Disposition"] = f"inline; filename*=utf-8''{quote(stored.name)}"
    if stored.size is not None:
        headers["Content-Length"] = str(stored.size)
    if request.method == "HEAD":
        return Response(headers=headers, media_type=media_type)
    chunks = await run_in_threadpool(state.files.blobs.iter_bytes, stored.id)
    if chunks is None:
        raise FalError(404, "File not found")
    return StreamingResponse(iterate_in_threadpool(chunks), headers=headers, media_type=media_type)


_FILE_RESPONSES = {
    200: {
        "description": "The file's bytes, with the content type it was stored with",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    },
    **error_responses(404),
}
for _path, _methods, _visible in (
    ("/files/{file_id:storage_id}/{name}", ["GET"], True),
    ("/files/{file_id:storage_id}/{name}", ["HEAD"], False),
    ("/files/{file_id:storage_id}", ["GET", "HEAD"], False),
):
    router.add_api_route(
        _path,
        get_file,
        methods=_methods,
        include_in_schema=_visible,
        name=f"get_file{len(_path)}{_methods[0]}",
        response_class=Response,
        responses=_FILE_RESPONSES,
    )


def _served_type(content_type: str) -> str:
    """Images and videos (what the server reads and writes) keep their type; any other upload is served as plain
    bytes, so a browser or client never interprets what a client labelled HTML, JSON or YAML."""
    return content_type if content_type.startswith(("image/", "video/")) else "application/octet-stream"


# --- helpers ---------------------------------------------------------------------------------------


async def _json(request: Request) -> Any:
    raw = await read_body(request, JSON_BODY_LIMIT)
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise FalError(400, "the body is not valid JSON") from None


async def _initiate_body(request: Request) -> InitiateUpload:
    try:
        return InitiateUpload.model_validate(await _json(request))
    except ValidationError as exc:
        raise FalError(422, validation_detail(exc)) from None


def _by_token(state: ServerState, token: str, multipart: bool, file_id: str | None = None) -> StoredFile:
    stored = state.files.by_upload_token(token)
    if stored is None or stored.multipart != multipart or (file_id is not None and stored.id != file_id):
        raise FalError(404, "Unknown upload URL")
    if stored.state != "pending":  # served as immutable: never replaced, nor added to
        raise FalError(400, f"this {'multipart ' if multipart else ''}upload is already complete")
    return stored


async def _receive(state: ServerState, stored: StoredFile, request: Request) -> StoredFile:
    try:
        return await state.files.receive(stored, request.stream(), request.headers.get("content-type"))
    except StorageError as exc:
        raise FalError(exc.status_code, str(exc)) from None


async def _receive_part(state: ServerState, stored: StoredFile, part: int, request: Request) -> str:
    try:
        return await state.files.receive_part(stored, part, request.stream())
    except StorageError as exc:
        raise FalError(exc.status_code, str(exc)) from None


def _complete(state: ServerState, stored: StoredFile, data: Any) -> StoredFile:
    parts = data.get("parts") if isinstance(data, dict) else None
    if not isinstance(parts, list):
        raise FalError(400, 'complete needs a JSON body {"parts": [{"partNumber": 1, "etag": "..."}, ...]}')
    numbers: list[tuple[int, str | None]] = []
    for item in parts:
        number = item.get("partNumber", item.get("part_number")) if isinstance(item, dict) else None
        if not isinstance(number, int) or isinstance(number, bool):
            raise FalError(400, f"every part needs an integer partNumber, got {item!r}")
        etag = item.get("etag")
        numbers.append((number, etag if isinstance(etag, str) else None))
    try:
        return state.files.complete_multipart(stored, numbers)
    except StorageError as exc:
        raise FalError(exc.status_code, str(exc)) from None
