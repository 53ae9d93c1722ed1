"""Files under `<data dir>/files`: client uploads and the upscaled outputs, served back by URL.

A file's id is 128 random bits and its URL is the only way to it (no listing), the way fal's CDN
URLs work. Uploads go to a separate secret upload URL, so knowing a file's URL does not let anyone
overwrite it. Every path is built from a validated id, never from a client-supplied name.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from seedvr_local.server.db import Database

#: File ids and upload tokens: what `secrets.token_urlsafe` makes, 16 to 64 characters.
ID_PATTERN = "[A-Za-z0-9_-]{16,64}"
_ID = re.compile(f"^{ID_PATTERN}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PARTS = 10_000


class StorageError(Exception):
    """A client mistake on an upload; `status_code` is the 4xx to answer with."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


@dataclass
class StoredFile:
    id: str
    name: str
    content_type: str
    size: int | None
    state: str
    multipart: bool

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{self.id}/{quote(self.name)}"


def safe_file_name(name: str | None, default: str = "file") -> str:
    """A file name that is only a name: no directories, no odd characters, not too long."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_NAME_CHARS.sub("_", base).strip("._")[:120]
    return cleaned or default


def valid_id(value: str) -> bool:
    return bool(_ID.match(value))


class FileStore:
    def __init__(self, db: Database, root: Path, max_bytes: int):
        self.db = db
        self.root = root
        self.max_bytes = max_bytes
        (root / "parts").mkdir(parents=True, exist_ok=True)
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

    def path(self, stored: StoredFile) -> Path:
        return self.root / stored.id

    def read(self, file_id: str) -> StoredFile | None:
        """The complete file with this id, or None."""
        stored = self.get(file_id)
        if stored is None or stored.state != "complete" or not self.path(stored).is_file():
            return None
        return stored

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

    def save(self, data: bytes, name: str, content_type: str) -> StoredFile:
        """Store bytes produced by the server (an output image)."""
        file_id = secrets.token_urlsafe(16)
        self._write_atomically(self.root / file_id, [data])
        self.db.execute(
            "INSERT INTO files (id, name, content_type, size, state, created_at) VALUES (?, ?, ?, ?, 'complete', ?)",
            (file_id, safe_file_name(name), content_type, len(data), time.time()),
        )
        return self.get(file_id)

    def adopt(self, path: Path, name: str, content_type: str) -> StoredFile:
        """Store a file the server wrote (an output video) by moving it in: `path` must be on the same file
        system, e.g. under `tmp_dir`."""
        file_id = secrets.token_urlsafe(16)
        with open(path, "rb") as written:  # on disk before the database names it, as `save` does
            os.fsync(written.fileno())
        size = path.stat().st_size
        os.replace(path, self.root / file_id)
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
        """The body of a single-part upload: the whole file, replacing what an earlier try sent."""
        size = await self._stream_to(self.root / stored.id, chunks)
        self.db.execute(
            "UPDATE files SET size = ?, state = 'complete', content_type = ? WHERE id = ?",
            (size, _content_type(content_type) if content_type else stored.content_type, stored.id),
        )
        return self.get(stored.id)

    async def receive_part(self, stored: StoredFile, number: int, chunks: AsyncIterator[bytes]) -> str:
        """One part of a multipart upload; returns its ETag (quoted, like S3's)."""
        if not 1 <= number <= MAX_PARTS:
            raise StorageError(400, f"part number must be between 1 and {MAX_PARTS}, got {number}")
        parts = self.root / "parts" / stored.id
        parts.mkdir(exist_ok=True)
        already = sum(p.stat().st_size for p in parts.iterdir() if p.name != str(number))
        digest = hashlib.sha256()
        await self._stream_to(parts / str(number), chunks, digest, budget=self.max_bytes - already)
        return f'"{digest.hexdigest()[:32]}"'

    def complete_multipart(self, stored: StoredFile, parts: list[tuple[int, str | None]]) -> StoredFile:
        """Join the listed parts in part-number order; an ETag given must match the part's."""
        if not parts:
            raise StorageError(400, "complete needs the list of uploaded parts")
        folder = self.root / "parts" / stored.id
        ordered = sorted(set(parts))
        files = []
        for number, etag in ordered:
            path = folder / str(number)
            if not path.is_file():
                raise StorageError(400, f"part {number} was not uploaded")
            if etag is not None and etag.strip('"') != hashlib.sha256(path.read_bytes()).hexdigest()[:32]:
                raise StorageError(400, f"part {number}: etag {etag} does not match the uploaded data")
            files.append(path)
        target = self.root / stored.id
        tmp = self.root / "tmp" / f"{stored.id}.{secrets.token_hex(4)}"
        with open(tmp, "wb") as out:
            for path in files:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        shutil.rmtree(folder, ignore_errors=True)
        self.db.execute(
            "UPDATE files SET size = ?, state = 'complete' WHERE id = ?", (target.stat().st_size, stored.id)
        )
        return self.get(stored.id)

    # --- helpers -------------------------------------------------------------------------------

    async def _stream_to(
        self, target: Path, chunks: AsyncIterator[bytes], digest=None, budget: int | None = None
    ) -> int:
        budget = self.max_bytes if budget is None else budget
        tmp = self.root / "tmp" / f"{target.name}.{secrets.token_hex(4)}"
        size = 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > budget:
                        raise StorageError(413, f"the upload is larger than the limit of {self.max_bytes:,} bytes")
                    out.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def _write_atomically(self, target: Path, chunks: list[bytes]) -> None:
        tmp = self.root / "tmp" / f"{target.name}.{secrets.token_hex(4)}"
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)

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


def _content_type(value: str | None) -> str:
    value = (value or "").split(";")[0].strip().lower()
    return value if re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", value) else "application/octet-stream"
