"""Stored files: client uploads and the upscaled outputs, served back by URL. Their records are in the job
database, their bytes under `<data dir>/files` or in an S3 bucket (server/blobs.py).

A file's id is 128 random bits and its URL is the only way to it (no listing), the way fal's CDN
URLs work. Uploads go to a separate secret upload URL, so knowing a file's URL does not let anyone
overwrite it. Every path is built from a validated id, never from a client-supplied name.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool

from seedvr_local.server.blobs import Blobs, LocalBlobs
from seedvr_local.server.db import Database
from seedvr_local.server.upload_budget import UploadBudget
from seedvr_local.server.urls import FILE_PATH_PREFIX

#: File ids and upload tokens: what `secrets.token_urlsafe` makes, 16 to 64 characters.
ID_PATTERN = "[A-Za-z0-9_-]{16,64}"
_ID = re.compile(f"^{ID_PATTERN}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PARTS = 10_000
#: Where the clips of a video shared by a fleet keep their blobs (server/clip_tasks.py; swept by server/sweeper.py).
CLIP_BLOB_PREFIX = "clips/"


class StorageError(Exception):
    """A client mistake on an upload; `status_code` is the 4xx to answer with."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


class StorageFull(StorageError):
    """A file that does not fit the storage budget (`--max-storage-bytes`): 507, or 413 when it alone is larger
    than the whole budget."""

    error_type = "insufficient_storage"


@dataclass
class StoredFile:
    id: str
    name: str
    content_type: str
    size: int | None
    state: str
    multipart: bool

    @property
    def path(self) -> str:
        """Its URL's path on any front-end (what a result stores: server/urls.py)."""
        return f"{FILE_PATH_PREFIX}{self.id}/{quote(self.name)}"

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{self.path}"


def safe_file_name(name: str | None, default: str = "file") -> str:
    """A file name that is only a name: no directories, no odd characters, not too long."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_NAME_CHARS.sub("_", base).strip("._")[:120]
    return cleaned or default


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


class FileStore:
    """The files' records in the job database, their bytes in `blobs` (a local directory or an S3 bucket).

    Uploads stream to a temporary file under `root/tmp` first (size limit, digest), then go to the blobs whole.
    """

    def __init__(
        self,
        db: Database,
        root: Path,
        max_bytes: int,
        blobs: Blobs | None = None,
        presign_s: int = 0,
        max_total_bytes: int | None = None,
    ):
        """`max_bytes`: the largest upload; `max_total_bytes`: the storage budget of every stored file together
        (None: none), checked before each file is stored (concurrent uploads may pass it by what they hold)."""
        self.db = db
        self.root = root
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.blobs = blobs or LocalBlobs(root)
        #: > 0: output URLs are presigned URLs of the bucket, valid this long (--storage-public-urls presigned)
        self.presign_s = presign_s
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    # --- lookups -------------------------------------------------------------------------------

    def get(self, file_id: str) -> StoredFile | None:
        if not valid_id(file_id):
            return None
        row = self.db.query_one("SELECT * FROM files WHERE id = ?", (file_id,))
        return self._from_row(row) if row else None

    def by_upload_token(self, token: str) -> StoredFile | None:
        if not valid_id(token):
            return None
        row = self.db.query_one("SELECT * FROM files WHERE upload_token = ?", (token,))
        return self._from_row(row) if row else None

    def read(self, file_id: str) -> StoredFile | None:
        """The complete file with this id, or None."""
        stored = self.get(file_id)
        if stored is None or stored.state != "complete":
            return None
        return stored

    def read_bytes(self, stored: StoredFile) -> bytes | None:
        return self.blobs.get_bytes(stored.id)

    def output_url(self, stored: StoredFile) -> str:
        """The URL a result stores for an output: a presigned URL of the bucket, else the file's path, which the
        front-end that answers makes absolute (server/urls.py)."""
        if self.presign_s:
            presigned = self.blobs.presigned_url(stored.id, stored.name, stored.content_type, self.presign_s)
            if presigned is not None:
                return presigned
        return stored.path

    # --- the storage budget ----------------------------------------------------------------------

    def used_bytes(self) -> int:
        """What the stored files take (finished uploads and outputs)."""
        return int(self.db.query_one("SELECT COALESCE(SUM(size), 0) FROM files")[0])

    def room(self, budget: int | None = None) -> int | None:
        """Bytes left in the storage budget, `budget` or this store's (None: no budget)."""
        budget = budget or self.max_total_bytes
        return None if budget is None else budget - self.used_bytes()

    def _check_room(self, size: int, room: int | None, budget: int | None = None) -> None:
        if room is None or size <= room:
            return
        budget = budget or self.max_total_bytes
        if size > budget:
            raise StorageFull(413, f"the file is larger than the storage budget of {budget:,} bytes")
        raise StorageFull(
            507,
            f"the file store is full: {budget - room:,} of its {budget:,} bytes are in use, and this file needs "
            f"more than the {max(room, 0):,} left; retry once older files have expired",
        )

    # --- writing -------------------------------------------------------------------------------

    def new_upload(self, name: str | None, content_type: str | None, multipart: bool = False) -> tuple[StoredFile, str]:
        """Reserve a file to be uploaded; returns it and the secret token of its upload URL."""
        file_id, token = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        self.db.execute(
            "INSERT INTO files (id, name, content_type, state, upload_token, multipart, created_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            (
                file_id,
                safe_file_name(name, "upload.bin"),
                _content_type(content_type),
                token,
                int(multipart),
                time.time(),
            ),
        )
        return self.get(file_id), token

    def save(self, data: bytes, name: str, content_type: str, budget: int | None = None) -> StoredFile:
        """Store bytes produced by the server (an output image, a decoded data URI). `budget`: the storage budget
        of the job it is for (its API's, stored with it), else this store's."""
        file_id = secrets.token_urlsafe(16)
        content_type = _content_type(content_type)
        self._check_room(len(data), self.room(budget), budget)
        self.blobs.put_file(file_id, self._write_tmp([data]), content_type)
        self.db.execute(
            "INSERT INTO files (id, name, content_type, size, state, created_at) VALUES (?, ?, ?, ?, 'complete', ?)",
            (file_id, safe_file_name(name), content_type, len(data), time.time()),
        )
        return self.get(file_id)

    def adopt(self, path: Path, name: str, content_type: str, budget: int | None = None) -> StoredFile:
        """Store a file the server wrote (an output video) by moving it in: `path` must be under `tmp_dir` (the
        local store moves it, a bucket uploads it). `budget` as for `save`."""
        file_id = secrets.token_urlsafe(16)
        with open(path, "rb") as written:  # on disk before the database names it, as `save` does
            os.fsync(written.fileno())
        size = path.stat().st_size
        self._check_room(size, self.room(budget), budget)
        self.blobs.put_file(file_id, path, content_type)
        self.db.execute(
            "INSERT INTO files (id, name, content_type, size, state, created_at) VALUES (?, ?, ?, ?, 'complete', ?)",
            (file_id, safe_file_name(name), content_type, size, time.time()),
        )
        return self.get(file_id)

    @property
    def tmp_dir(self) -> Path:
        """Scratch space on the store's file system (what `adopt` can move from)."""
        return self.root / "tmp"

    async def receive(
        self, stored: StoredFile, chunks: AsyncIterator[bytes], content_type: str | None = None
    ) -> StoredFile:
        """The body of a single-part upload: the whole file. A try that failed may be sent again; once one
        succeeded the upload is finished, and a further PUT is refused (the file is served as immutable)."""
        tmp, size = await self._stream_to_tmp(chunks, room=await run_in_threadpool(self.room))
        content_type = _content_type(content_type) if content_type else stored.content_type
        await run_in_threadpool(self._store_upload, stored.id, tmp, content_type, size)
        return await run_in_threadpool(self.get, stored.id)

    def _store_upload(self, file_id: str, tmp: Path, content_type: str, size: int) -> None:
        try:
            # claimed first: of two PUTs racing, one stores its bytes, the other is refused
            claimed = self.db.execute(
                "UPDATE files SET state = 'storing' WHERE id = ? AND state = 'pending'", (file_id,)
            )
            if claimed.rowcount != 1:
                raise StorageError(400, "this upload is already complete: its file cannot be replaced")
            try:
                self.blobs.put_file(file_id, tmp, content_type)
            except BaseException:
                self.db.execute("UPDATE files SET state = 'pending' WHERE id = ? AND state = 'storing'", (file_id,))
                raise
        finally:
            tmp.unlink(missing_ok=True)
        self.db.execute(
            "UPDATE files SET size = ?, state = 'complete', content_type = ? WHERE id = ?",
            (size, content_type, file_id),
        )

    async def receive_part(self, stored: StoredFile, number: int, chunks: AsyncIterator[bytes]) -> str:
        """One part of a multipart upload; returns its ETag (quoted, like S3's). The bytes of all the upload's
        parts are reserved against the size limit as they arrive (server/upload_budget.py), so parts sent in
        parallel cannot add up to more than the limit."""
        if not 1 <= number <= MAX_PARTS:
            raise StorageError(400, f"part number must be between 1 and {MAX_PARTS}, got {number}")
        key = _part_key(stored.id, number)
        budget = UploadBudget(self.db, stored.id, self.max_bytes)
        digest = hashlib.sha256()
        try:
            tmp, size = await self._stream_to_tmp(chunks, digest, budget, room=await run_in_threadpool(self.room))
            etag = digest.hexdigest()[:32]
            try:
                replaced = (await run_in_threadpool(self.blobs.sizes, _parts_prefix(stored.id))).get(key, 0)
                await run_in_threadpool(self.blobs.put_file, key, tmp, "application/octet-stream", {"etag": etag})
            finally:
                tmp.unlink(missing_ok=True)
        except BaseException:
            await run_in_threadpool(budget.release_unused, 0)
            raise
        await run_in_threadpool(budget.release_unused, size, replaced)
        return f'"{etag}"'

    def complete_multipart(self, stored: StoredFile, parts: list[tuple[int, str | None]]) -> StoredFile:
        """Join the listed parts in part-number order; an ETag given must match the part's, and the parts together
        must be within the size limit."""
        if not parts:
            raise StorageError(400, "complete needs the list of uploaded parts")
        ordered = sorted(set(parts))
        for number, etag in ordered:
            metadata = self.blobs.metadata(_part_key(stored.id, number))
            if metadata is None:
                raise StorageError(400, f"part {number} was not uploaded")
            if etag is not None and etag.strip('"') != metadata.get("etag"):
                raise StorageError(400, f"part {number}: etag {etag} does not match the uploaded data")
        sizes = self.blobs.sizes(_parts_prefix(stored.id))
        total = sum(sizes.get(_part_key(stored.id, number), 0) for number in {number for number, _ in ordered})
        if total > self.max_bytes:
            raise StorageError(413, f"the parts add up to {total:,} bytes, more than the limit of {self.max_bytes:,}")
        tmp = self.root / "tmp" / f"{stored.id}.{secrets.token_hex(4)}"
        size = 0
        try:
            with open(tmp, "wb") as out:
                for number, _ in ordered:
                    for chunk in self.blobs.iter_bytes(_part_key(stored.id, number)) or ():
                        out.write(chunk)
                        size += len(chunk)
                        if size > self.max_bytes:  # a part replaced since the check above
                            raise StorageError(413, f"the parts add up to more than the limit of {self.max_bytes:,}")
                out.flush()
                os.fsync(out.fileno())
            self._check_room(size, self.room())
            self.blobs.put_file(stored.id, tmp, stored.content_type)
        finally:
            tmp.unlink(missing_ok=True)
        self.blobs.delete(list(self.blobs.sizes(_parts_prefix(stored.id))))
        self.db.execute("UPDATE files SET size = ?, state = 'complete' WHERE id = ?", (size, stored.id))
        return self.get(stored.id)

    def delete(self, file_ids: list[str]) -> None:
        """The bytes of these files, and the parts of their unfinished uploads (their records are the caller's)."""
        keys = list(file_ids)
        for file_id in file_ids:
            keys += list(self.blobs.sizes(_parts_prefix(file_id)))
        self.blobs.delete(keys)

    # --- helpers -------------------------------------------------------------------------------

    async def _stream_to_tmp(
        self, chunks: AsyncIterator[bytes], digest=None, budget: UploadBudget | None = None, room: int | None = None
    ) -> tuple[Path, int]:
        """The body in a scratch file, refused (413) past the size limit, or past what `budget` can reserve; 507
        past `room`, the storage budget left (None: no storage budget)."""
        tmp = self.root / "tmp" / secrets.token_hex(12)
        size = 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes or (
                        budget is not None and size > budget.reserved
                        and not await run_in_threadpool(budget.reserve, size)
                    ):
                        raise StorageError(413, f"the upload is larger than the limit of {self.max_bytes:,} bytes")
                    self._check_room(size, room)
                    out.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size

    def _write_tmp(self, chunks: list[bytes]) -> Path:
        tmp = self.root / "tmp" / secrets.token_hex(12)
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return tmp

    @staticmethod
    def _from_row(row) -> StoredFile:
        return StoredFile(
            id=row["id"],
            name=row["name"],
            content_type=row["content_type"],
            size=row["size"],
            state=row["state"],
            multipart=bool(row["multipart"]),
        )


def _parts_prefix(file_id: str) -> str:
    return f"parts/{file_id}/"


def _part_key(file_id: str, number: int) -> str:
    return f"parts/{file_id}/{number}"


def _content_type(value: str | None) -> str:
    value = (value or "").split(";")[0].strip().lower()
    return value if re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", value) else "application/octet-stream"
