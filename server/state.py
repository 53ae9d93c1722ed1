"""The server's parts, wired together once per app (FastAPI dependencies read them from here)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from seedvr_local.server.auth import UploadTokens, key_matches
from seedvr_local.server.blobs import Blobs, LocalBlobs, S3Blobs
from seedvr_local.server.db import Database, DataDirLock
from seedvr_local.server.engine import EngineFactory, EngineHolder
from seedvr_local.server.errors import FalError
from seedvr_local.server.events import ChangeNotifier
from seedvr_local.server.fetch import FetchError, ImageFetcher
from seedvr_local.server.change_feed import ChangeFeed, change_feed
from seedvr_local.server.fleet import WorkerRegistry, owner_of
from seedvr_local.server.jobs import JobStore, OwnedJobs
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.netguard import NetGuard
from seedvr_local.server.processing import JobProcessor
from seedvr_local.server.retention import Retention
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.signing import WebhookSigner
from seedvr_local.server.storage import FileStore, StorageFull
from seedvr_local.server.webhooks import WebhookSender
from seedvr_local.server.worker import Worker, log_job

#: An input URL longer than this that is a data URI is decoded at submit and kept in the file store, the job
#: row naming the stored file: a row stays small, whatever the client sent.
INLINE_INPUT_LIMIT = 16 * 1024


@dataclass
class ServerState:
    settings: ServerSettings
    db: Database
    notifier: ChangeNotifier
    jobs: JobStore
    files: FileStore
    engines: EngineHolder
    worker: Worker
    webhooks: WebhookSender
    metrics: Metrics
    upload_tokens: UploadTokens
    lock: DataDirLock | None
    retention: Retention | None
    signer: WebhookSigner
    registry: WorkerRegistry
    listener: ChangeFeed | None  # changes made by other processes (None: every change is made here)

    @classmethod
    def open(
        cls, settings: ServerSettings, engine_factory: EngineFactory, description: str, guard: NetGuard | None = None
    ) -> ServerState:
        # SQLite: one server per data dir. PostgreSQL: any number of processes share the database.
        lock = DataDirLock(settings.data_dir) if settings.database_url is None else None
        if lock is not None:
            lock.acquire()
        guard = guard or NetGuard(allow_private=settings.allow_private_urls)
        db = Database(settings.database_url or settings.database_path)
        notifier = ChangeNotifier()
        metrics = Metrics(db)
        files = open_files(settings, db)
        fetcher = ImageFetcher(
            files, guard, settings.max_download_bytes, settings.download_timeout_s, settings.max_redirects
        )
        jobs = JobStore(
            db,
            settings.max_job_attempts,
            on_change=notifier.notify,
            on_completed=log_job,
            write_input=lambda input, base_url: _inputs_out_of_line(input, base_url, fetcher, files),
            limits=settings.job_limits(),
            max_queued_per_owner=settings.max_queued_per_key,
            max_running_per_owner=settings.max_running_per_key,
        )
        engines = EngineHolder(engine_factory, description)
        processor = JobProcessor(jobs, files, fetcher, engines, settings, metrics)
        signer = WebhookSigner.from_database(db, settings.data_dir, settings.webhook_user_id)
        registry = WorkerRegistry(db)
        return cls(
            settings=settings,
            db=db,
            notifier=notifier,
            jobs=jobs,
            files=files,
            engines=engines,
            worker=Worker(jobs, processor, engines, registry, settings.lease_s),
            webhooks=WebhookSender(db, guard, settings, metrics, notifier, signer),
            metrics=metrics,
            upload_tokens=UploadTokens.from_database(db, settings.data_dir, settings.upload_token_ttl_s),
            lock=lock,
            retention=Retention(db, files, settings.retention_s) if settings.retention_s else None,
            signer=signer,
            registry=registry,
            listener=(
                change_feed(db, notifier.notify) if db.is_postgres or not settings.worker_in_process else None
            ),
        )

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: --public-url, else what this request was addressed to."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    def for_key(self, api_key: str | None) -> ServerState:
        """The state as the caller with this key sees it: its own requests only (all of them for an admin key);
        the same state when the server has no keys."""
        if not self.settings.api_keys or not api_key:
            return self
        admin = key_matches(api_key, self.settings.admin_keys)
        return dataclasses.replace(self, jobs=OwnedJobs(self.jobs, owner_of(api_key), sees_all=admin))


def open_files(settings: ServerSettings, db: Database) -> FileStore:
    """The file store the settings name (records in `db`, bytes on disk or in a bucket)."""
    return FileStore(
        db,
        settings.files_dir,
        settings.max_upload_bytes,
        blobs=open_blobs(settings),
        presign_s=settings.presigned_url_ttl_s if settings.storage_public_urls == "presigned" else 0,
        max_total_bytes=settings.max_storage_bytes,
    )


def open_blobs(settings: ServerSettings) -> Blobs:
    """The file store's backend; StorageUnavailable (one line) when the bucket cannot be used."""
    if settings.storage_url is None:
        return LocalBlobs(settings.files_dir)
    return S3Blobs(settings.storage_url, settings.s3_endpoint_url)


def _inputs_out_of_line(input: dict[str, Any], base_url: str, fetcher: ImageFetcher, files: FileStore) -> dict:
    """The input with each large data URI (`*_url` fields) decoded once into the file store and replaced by the
    stored file's URL. One that does not decode stays as it is: the job reports it as it reports any bad URI."""
    replaced = {}
    for name, value in input.items():
        if not (name.endswith("_url") and isinstance(value, str) and len(value) > INLINE_INPUT_LIMIT):
            continue
        if value[:5].lower() != "data:":
            continue
        try:
            data, _ = fetcher.fetch(value)
        except FetchError:
            continue
        content_type = value[5:].split(",", 1)[0].split(";", 1)[0]
        try:
            replaced[name] = files.save(data, "input", content_type).url(base_url)
        except StorageFull as exc:
            raise FalError(exc.status_code, str(exc), exc.error_type) from None
    return {**input, **replaced} if replaced else input


def _api_key(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    return credentials.strip() if scheme.lower() in ("key", "bearer") else None


def get_state(request: Request) -> ServerState:
    """The caller's view of the server's state (routes behind `require_key` only see their key's requests)."""
    return request.app.state.server.for_key(_api_key(request))


#: The server's parts, as a route parameter: `state: StateDep`.
StateDep = Annotated[ServerState, Depends(get_state)]
