"""File storage: the upload flows of both fal clients, and the stored files served back.

JS (`fal.storage.upload`): POST /storage/upload/initiate -> PUT the bytes to the upload_url handed out
(no Authorization on that PUT); over 90 MiB, initiate-multipart -> PUT <upload_url>/<n> -> POST
<upload_url>/complete. Python (`fal_client.upload*`): POST /storage/auth/token -> POST /files/upload
(+ a multipart variant), with the `storage_type=gcs` initiate flow as its fallback.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from seedvr_local.server.auth import require_key, require_upload_auth
from seedvr_local.server.errors import FalError
from seedvr_local.server.state import ServerState, StateDep
from seedvr_local.server.storage import StorageError, StoredFile

router = APIRouter(tags=["storage"])
authorized = [Depends(require_key)]


class InitiateUpload(BaseModel):
    content_type: str | None = None
    file_name: str | None = None


class UploadTarget(BaseModel):
    upload_url: str
    file_url: str


# --- JS flow (and Python's fallback) ----------------------------------------------------------------


@router.post("/storage/upload/initiate", response_model=UploadTarget, dependencies=authorized)
async def initiate(request: Request, state: StateDep) -> JSONResponse:
    """Reserve a file; PUT its bytes to `upload_url`, then use `file_url` as an image_url."""
    spec = await _initiate_body(request)
    stored, token = state.files.new_upload(spec.file_name, spec.content_type)
    base = state.base_url(request)
    return JSONResponse({"upload_url": f"{base}/storage/upload/{token}", "file_url": stored.url(base)})


@router.post("/storage/upload/initiate-multipart", response_model=UploadTarget, dependencies=authorized)
async def initiate_multipart(request: Request, state: StateDep) -> JSONResponse:
    spec = await _initiate_body(request)
    stored, token = state.files.new_upload(spec.file_name, spec.content_type, multipart=True)
    base = state.base_url(request)
    return JSONResponse({"upload_url": f"{base}/storage/multipart/{token}", "file_url": stored.url(base)})


@router.put("/storage/upload/{token}")
async def upload(token: str, request: Request, state: StateDep) -> JSONResponse:
    """The bytes of a single-part upload (the secret token is the authorisation)."""
    stored = _by_token(state, token, multipart=False)
    stored = await _receive(state, stored, request)
    return JSONResponse({"file_url": stored.url(state.base_url(request)), "size": stored.size})


@router.put("/storage/multipart/{token}/{part}")
async def upload_part(token: str, part: int, request: Request, state: StateDep) -> JSONResponse:
    """One part; the JS client reads partNumber and etag from this JSON body."""
    stored = _by_token(state, token, multipart=True)
    etag = await _receive_part(state, stored, part, request)
    return JSONResponse({"partNumber": part, "etag": etag}, headers={"ETag": etag})


@router.post("/storage/multipart/{token}/complete")
async def complete_multipart(token: str, request: Request, state: StateDep) -> JSONResponse:
    stored = _by_token(state, token, multipart=True)
    stored = _complete(state, stored, await _json(request))
    return JSONResponse({"file_url": stored.url(state.base_url(request))})


# --- Python flow -------------------------------------------------------------------------------------


@router.post("/storage/auth/token", dependencies=authorized)
async def upload_token(request: Request, state: StateDep) -> JSONResponse:
    """A token for POST {base_url}/files/upload."""
    return JSONResponse({**state.upload_tokens.issue(), "base_url": state.base_url(request)})


@router.post("/files/upload", dependencies=[Depends(require_upload_auth)])
async def files_upload(request: Request, state: StateDep) -> JSONResponse:
    """Raw bytes in the body, the name in X-Fal-File-Name; answers the file's `access_url`."""
    stored, _ = state.files.new_upload(request.headers.get("x-fal-file-name"), request.headers.get("content-type"))
    stored = await _receive(state, stored, request)
    return JSONResponse({"access_url": stored.url(state.base_url(request))})


@router.post("/files/upload/multipart", dependencies=[Depends(require_upload_auth)])
async def files_upload_multipart(request: Request, state: StateDep) -> JSONResponse:
    stored, token = state.files.new_upload(
        request.headers.get("x-fal-file-name"), request.headers.get("content-type"), multipart=True
    )
    return JSONResponse({"access_url": stored.url(state.base_url(request)), "uploadId": token})


@router.put("/files/{file_id}/{name}/multipart/{token}/{part}")
async def files_upload_part(
    file_id: str, name: str, token: str, part: int, request: Request, state: StateDep
) -> Response:
    """The Python client reads the part's ETag from the response header."""
    stored = _by_token(state, token, multipart=True, file_id=file_id)
    etag = await _receive_part(state, stored, part, request)
    return JSONResponse({"partNumber": part, "etag": etag}, headers={"ETag": etag})


@router.post("/files/{file_id}/{name}/multipart/{token}/complete")
async def files_complete(file_id: str, name: str, token: str, request: Request, state: StateDep) -> JSONResponse:
    stored = _by_token(state, token, multipart=True, file_id=file_id)
    stored = _complete(state, stored, await _json(request))
    return JSONResponse({"access_url": stored.url(state.base_url(request))})


# --- serving ---------------------------------------------------------------------------------------


async def get_file(file_id: str, state: StateDep, name: str | None = None) -> FileResponse:
    """A stored file (upload or output), by its unguessable URL; no key needed."""
    stored = state.files.read(file_id)
    if stored is None:
        raise FalError(404, "File not found")
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
        # uploads can be anything: never let one run as a page of this origin
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }
    return FileResponse(
        state.files.path(stored),
        media_type=stored.content_type,
        headers=headers,
        filename=stored.name,
        content_disposition_type="inline",
    )


for _path, _methods, _visible in (
    ("/files/{file_id}/{name}", ["GET"], True),
    ("/files/{file_id}/{name}", ["HEAD"], False),
    ("/files/{file_id}", ["GET", "HEAD"], False),
):
    router.add_api_route(
        _path, get_file, methods=_methods, include_in_schema=_visible, name=f"get_file{len(_path)}{_methods[0]}"
    )


# --- helpers ---------------------------------------------------------------------------------------


async def _json(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 1024 * 1024:
        raise FalError(413, "the request body is too large")
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise FalError(400, "the body is not valid JSON") from None


async def _initiate_body(request: Request) -> InitiateUpload:
    data = await _json(request)
    if not isinstance(data, dict):
        raise FalError(422, [{"type": "model_type", "loc": ["body"], "msg": "expected a JSON object", "input": None}])
    return InitiateUpload(
        content_type=str(data.get("content_type") or "") or None,
        file_name=str(data.get("file_name") or "") or None,
    )


def _by_token(state: ServerState, token: str, multipart: bool, file_id: str | None = None) -> StoredFile:
    stored = state.files.by_upload_token(token)
    if stored is None or stored.multipart != multipart or (file_id is not None and stored.id != file_id):
        raise FalError(404, "Unknown upload URL")
    if multipart and stored.state == "complete":
        raise FalError(400, "this multipart upload is already complete")
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
