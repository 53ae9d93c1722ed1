"""Where the bytes of stored files live: a local directory (the default) or an S3-compatible bucket.

Keys are built by FileStore from validated ids only: `<file id>` for a file, `parts/<file id>/<n>` for a part of
a multipart upload. Both backends take whole files from a local temporary file (`put_file`), which S3 receives
as a multipart upload when it is large (boto3's transfer manager).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit


class StorageUnavailable(RuntimeError):
    """The file store cannot be used (a missing bucket, refused credentials); one line naming it and why."""


class Blobs(Protocol):
    def put_file(self, key: str, source: Path, content_type: str, metadata: dict[str, str] | None = None) -> None:
        """Store `source` under `key` (the source may be moved away)."""
        ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def iter_bytes(self, key: str) -> Iterator[bytes] | None: ...

    def metadata(self, key: str) -> dict[str, str] | None:
        """The metadata stored with `key` (None when there is no such blob)."""
        ...

    def sizes(self, prefix: str) -> dict[str, int]:
        """{key: size} of the blobs directly under `prefix` ("" or a folder ending in "/")."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Delete these keys (those that do not exist are no error)."""
        ...

    def modified(self, prefix: str) -> dict[str, float]:
        """{key: when it was last written, Unix time} of the blobs directly under `prefix` ("" or a folder ending
        in "/"; not those in folders below it)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A path to serve the blob from, when it is on this machine's disk."""
        ...

    def presigned_url(self, key: str, file_name: str, content_type: str, expires_s: int) -> str | None: ...


class LocalBlobs:
    def __init__(self, root: Path):
        self.root = root
        (root / "parts").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, key: str, source: Path, content_type: str, metadata: dict[str, str] | None = None) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)  # sources are written (and fsynced) under root/tmp: same file system
        if metadata:
            target.with_name(target.name + ".meta").write_text("\n".join(f"{k}={v}" for k, v in metadata.items()))

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def iter_bytes(self, key: str) -> Iterator[bytes] | None:
        path = self._path(key)
        if not path.is_file():
            return None

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    yield chunk

        return chunks()

    def metadata(self, key: str) -> dict[str, str] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        meta = path.with_name(path.name + ".meta")
        lines = meta.read_text().splitlines() if meta.is_file() else []
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def sizes(self, prefix: str) -> dict[str, int]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return {}
        return {
            prefix + path.name: path.stat().st_size
            for path in folder.iterdir()
            if path.is_file() and not path.name.endswith(".meta")
        }

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".meta").unlink(missing_ok=True)
            if key.startswith("parts/") and path.parent.is_dir() and not any(path.parent.iterdir()):
                shutil.rmtree(path.parent, ignore_errors=True)

    def modified(self, prefix: str) -> dict[str, float]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return {}
        found = {}
        for path in folder.iterdir():
            try:
                if path.is_file() and not path.name.endswith(".meta"):
                    found[prefix + path.name] = path.stat().st_mtime
            except FileNotFoundError:  # deleted meanwhile
                continue
        return found

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def presigned_url(self, key: str, file_name: str, content_type: str, expires_s: int) -> str | None:
        return None


class S3Blobs:
    """A bucket (and key prefix) of S3 or an S3-compatible store (MinIO, R2, ...), through boto3. Credentials and
    region come from the standard AWS variables and files; `endpoint_url` for a store other than AWS."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"--storage-url must look like s3://bucket/prefix, got {url!r}")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        self.where = f"s3://{self.bucket}/{self.prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, config=Config(retries={"max_attempts": 5, "mode": "standard"})
        )
        self._check()

    def _check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = {
                "404": "the bucket does not exist",
                "NoSuchBucket": "the bucket does not exist",
                "403": "access denied (check the credentials)",
            }.get(code, f"{code}: {exc}")
            raise StorageUnavailable(f"cannot use the file store {self.where}: {reason}") from None
        except BotoCoreError as exc:  # no credentials, no endpoint
            raise StorageUnavailable(f"cannot use the file store {self.where}: {exc}") from None

    def _key(self, key: str) -> str:
        return self.prefix + key

    def put_file(self, key: str, source: Path, content_type: str, metadata: dict[str, str] | None = None) -> None:
        extra = {"ContentType": content_type, **({"Metadata": metadata} if metadata else {})}
        self.client.upload_file(str(source), self.bucket, self._key(key), ExtraArgs=extra)
        source.unlink(missing_ok=True)

    def _get(self, key: str):
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            return None

    def get_bytes(self, key: str) -> bytes | None:
        response = self._get(key)
        return None if response is None else response["Body"].read()

    def iter_bytes(self, key: str) -> Iterator[bytes] | None:
        response = self._get(key)
        return None if response is None else response["Body"].iter_chunks(1024 * 1024)

    def metadata(self, key: str) -> dict[str, str] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["Metadata"]
        except ClientError:
            return None

    def sizes(self, prefix: str) -> dict[str, int]:
        found = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                found[item["Key"][len(self.prefix) :]] = item["Size"]
        return found

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # S3's limit per DeleteObjects
            batch = keys[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(key)} for key in batch], "Quiet": True}
            )

    def modified(self, prefix: str) -> dict[str, float]:
        found = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix), Delimiter="/"):
            for item in page.get("Contents", []):
                found[item["Key"][len(self.prefix) :]] = item["LastModified"].timestamp()
        return found

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_url(self, key: str, file_name: str, content_type: str, expires_s: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": f'inline; filename="{file_name}"',
            },
            ExpiresIn=expires_s,
        )
