"""Turn an `image_url` into bytes, or a `video_url` into a file: a data: URI, a file of this server, or an http(s)
download.

The server's own file URLs are read from storage directly (whatever host name the client used), so
uploads work without the server ever fetching itself. Downloads are guarded (see netguard) and
capped in size, time and redirects. Every failure is a `FetchError` meant for the user.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

import httpx

from seedvr_local.server.netguard import BlockedURLError, NetGuard
from seedvr_local.server.storage import ID_PATTERN, FileStore, StoredFile

_OWN_FILE = re.compile(rf"/files/(?P<id>{ID_PATTERN})(?:/[^/]*)?$")
USER_AGENT = "seedvr-local (image_url and video_url fetch)"


def own_file_id(url: str) -> str | None:
    """The id in a URL shaped like one of this server's file URLs (`.../files/<id>[/<name>]`), else None.
    Whether such a file exists is the caller's question."""
    try:
        path = httpx.URL(url).path
    except (httpx.InvalidURL, ValueError):
        return None
    match = _OWN_FILE.search(path)
    return match["id"] if match else None


class FetchError(Exception):
    """`error_type` is fal's: file_download_error or file_too_large."""

    def __init__(self, message: str, error_type: str = "file_download_error"):
        super().__init__(message)
        self.error_type = error_type


def _decode_base64(payload: str) -> bytes:
    """Standard or URL-safe base64 (some encoders use that alphabet), padding optional; anything else
    is refused, never skipped (skipping turned broken base64 into an "empty image")."""
    padded = payload + "=" * (-len(payload) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    bad = next((c for c in payload if not (c.isascii() and (c.isalnum() or c in "+/-_="))), None)
    why = f"the character {bad!r} is not a base64 digit" if bad is not None else "its padding or length is wrong"
    raise FetchError(f"the data URI is not valid base64: {why}")


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes of a `data:` URI of at most `max_bytes`; FetchError (one line) for a malformed one."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise FetchError("the data URI has no ',' before its data")
    if header.lower().endswith(";base64"):
        payload = re.sub(r"\s+", "", payload)
        if len(payload) * 3 // 4 > max_bytes:
            raise _too_large(max_bytes)
        data = _decode_base64(payload)
    else:
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def _too_large(max_bytes: int) -> FetchError:
    return FetchError(f"the file is larger than the limit of {max_bytes:,} bytes", "file_too_large")


class ImageFetcher:
    def __init__(
        self,
        files: FileStore,
        guard: NetGuard,
        max_bytes: int,
        timeout_s: float = 30.0,
        max_redirects: int = 5,
        transport: httpx.BaseTransport | None = None,
    ):
        self.files = files
        self.guard = guard
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.transport = transport

    def fetch(self, url: str, field: str = "image_url") -> tuple[bytes, str]:
        """(bytes, where they came from: "data URI", "stored file", or the host). `field` names the URL in
        error messages."""
        if url[:5].lower() == "data:":
            return decode_data_uri(url, self.max_bytes), "data URI"
        stored = self._own_file(url, field)
        if stored is not None:
            data = self.files.read_bytes(stored)
            if data is None:
                raise FetchError(f"{field} names a file of this server whose bytes are gone")
            return data, "stored file"
        sink = io.BytesIO()
        self._download(url, field, sink)
        return sink.getvalue(), httpx.URL(url).host

    def fetch_to_file(self, url: str, target: Path, field: str) -> tuple[Path, str]:
        """(the path of the file's bytes, where they came from): a stored file on this machine's disk is read
        where it is, anything else (a download, a data URI, a file in a bucket) is written to `target`, never
        held whole in memory when downloaded."""
        stored = self._own_file(url, field)
        if stored is not None:
            local = self.files.blobs.local_path(stored.id)
            if local is not None:
                return local, "stored file"
            chunks = self.files.blobs.iter_bytes(stored.id)
            if chunks is None:
                raise FetchError(f"{field} names a file of this server whose bytes are gone")
            with open(target, "wb") as sink:
                for chunk in chunks:
                    sink.write(chunk)
            return target, "stored file"
        if url[:5].lower() == "data:":  # already in memory: it came in the request body
            target.write_bytes(decode_data_uri(url, self.max_bytes))
            return target, "data URI"
        with open(target, "wb") as sink:
            self._download(url, field, sink)
        return target, httpx.URL(url).host

    def _own_file(self, url: str, field: str) -> StoredFile | None:
        """The complete file of this server that `url` names, or None for any other URL."""
        if url[:5].lower() == "data:":
            return None
        file_id = own_file_id(url)
        known = self.files.get(file_id) if file_id is not None else None
        if known is None:
            return None  # not one of ours after all: fetch it like any other URL
        stored = self.files.read(known.id)
        if stored is None:
            raise FetchError(f"{field} names a file of this server whose upload has not finished")
        return stored

    def _download(self, url: str, field: str, sink: BinaryIO) -> None:
        deadline = time.monotonic() + self.timeout_s
        timeout = httpx.Timeout(min(10.0, self.timeout_s), read=self.timeout_s)
        current = url
        with httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout, transport=self.transport) as client:
            for _ in range(self.max_redirects + 1):
                try:
                    target = self.guard.prepare(current)
                except BlockedURLError as exc:
                    raise FetchError(f"refused to fetch {field}: {exc}") from None
                headers = {"User-Agent": USER_AGENT, "Accept": "image/*,video/*,*/*;q=0.5", **target.headers}
                try:
                    with client.stream("GET", target.url, headers=headers, extensions=target.extensions) as response:
                        if response.is_redirect and "location" in response.headers:
                            current = str(httpx.URL(current).join(response.headers["location"]))
                            continue
                        if response.status_code != 200:
                            raise FetchError(
                                f"could not download {field}: the server answered HTTP {response.status_code}"
                            )
                        self._read_capped(response, deadline, field, sink)
                        return
                except httpx.TimeoutException:
                    raise FetchError(f"could not download {field}: timed out after {self.timeout_s:g} s") from None
                except httpx.HTTPError as exc:
                    raise FetchError(f"could not download {field}: {type(exc).__name__}: {exc}") from None
        raise FetchError(f"could not download {field}: more than {self.max_redirects} redirects")

    def _read_capped(self, response: httpx.Response, deadline: float, field: str, sink: BinaryIO) -> None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large()
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large()
            if time.monotonic() > deadline:
                raise FetchError(f"could not download {field}: took longer than {self.timeout_s:g} s")
            sink.write(chunk)

    def _too_large(self) -> FetchError:
        return _too_large(self.max_bytes)
