"""The server's parts, wired together once per app (FastAPI dependencies read them from here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from seedvr_local.server.auth import UploadTokens
from seedvr_local.server.db import Database, DataDirLock
from seedvr_local.server.engine import EngineFactory, EngineHolder
from seedvr_local.server.events import ChangeNotifier
from seedvr_local.server.fetch import ImageFetcher
from seedvr_local.server.jobs import Completion, Job, JobStore
from seedvr_local.server.metrics import Metrics
from seedvr_local.server.netguard import NetGuard
from seedvr_local.server.processing import JobProcessor
from seedvr_local.server.retention import Retention
from seedvr_local.server.settings import ServerSettings
from seedvr_local.server.signing import WebhookSigner
from seedvr_local.server.storage import FileStore
from seedvr_local.server.webhooks import WebhookSender
from seedvr_local.server.worker import Worker, log_job


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
    lock: DataDirLock
    retention: Retention | None
    signer: WebhookSigner

    @classmethod
    def open(
        cls, settings: ServerSettings, engine_factory: EngineFactory, description: str, guard: NetGuard | None = None
    ) -> ServerState:
        lock = DataDirLock(settings.data_dir)
        lock.acquire()
        guard = guard or NetGuard(allow_private=settings.allow_private_urls)
        db = Database(settings.database_path)
        notifier = ChangeNotifier()
        metrics = Metrics()

        def completed(job: Job, completion: Completion) -> None:
            metrics.job(completion.outcome)
            log_job(job, completion)

        jobs = JobStore(db, settings.max_job_attempts, on_change=notifier.notify, on_completed=completed)
        files = FileStore(db, settings.files_dir, settings.max_upload_bytes)
        engines = EngineHolder(engine_factory, description)
        fetcher = ImageFetcher(
            files, guard, settings.max_download_bytes, settings.download_timeout_s, settings.max_redirects
        )
        processor = JobProcessor(jobs, files, fetcher, engines, settings, metrics)
        signer = WebhookSigner.from_data_dir(settings.data_dir, settings.webhook_user_id)
        return cls(
            settings=settings,
            db=db,
            notifier=notifier,
            jobs=jobs,
            files=files,
            engines=engines,
            worker=Worker(jobs, processor, engines),
            webhooks=WebhookSender(db, guard, settings, metrics, notifier, signer),
            metrics=metrics,
            upload_tokens=UploadTokens.from_data_dir(settings.data_dir, settings.upload_token_ttl_s),
            lock=lock,
            retention=Retention(db, files, settings.retention_s) if settings.retention_s else None,
            signer=signer,
        )

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: --public-url, else what this request was addressed to."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")


def get_state(request: Request) -> ServerState:
    return request.app.state.server


#: The server's parts, as a route parameter: `state: StateDep`.
StateDep = Annotated[ServerState, Depends(get_state)]
