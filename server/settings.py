"""Everything the server can be configured with; the CLI fills it from its flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from seedvr_local.video.limits import DEFAULT_MAX_FRAMES

DEFAULT_MAX_OUTPUT_PIXELS = 8192 * 8192
#: The environment variables naming the job database and the file store when the flags do not.
DATABASE_URL_ENV = "SEEDVR_DATABASE_URL"
#: The ServerSettings a job runs under that the API process which accepted it chose (`serve --max-...`): stored
#: with the job, and applied by whichever worker runs it, so a worker started with other flags, or none, cannot
#: refuse what the API accepted (or run what it would refuse). `max_output_pixels` None still means what the
#: worker's own device fits.
JOB_LIMITS = (
    "max_input_pixels", "max_output_pixels", "max_video_frames", "max_video_pixel_frames", "max_video_clip_frames",
    "max_sync_result_bytes",
    "max_storage_bytes",
)  # fmt: skip
STORAGE_URL_ENV = "SEEDVR_STORAGE_URL"


def add_store_arguments(parser) -> None:
    """The job database and file store flags, the same for `serve` and `worker` (read by `store_settings`)."""
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help=f"postgresql://user:pass@host/db: the job database shared by API processes and workers "
        f"(also {DATABASE_URL_ENV}; default: SQLite in the data dir)",
    )
    parser.add_argument(
        "--storage-url",
        default=None,
        metavar="s3://BUCKET/PREFIX",
        help="keep uploads and outputs in an S3-compatible bucket (credentials from the AWS variables; "
        f"also {STORAGE_URL_ENV}; default: the data dir)",
    )
    parser.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                        help="the S3 endpoint of a store other than AWS (MinIO, R2, ...)")
    parser.add_argument("--storage-public-urls", choices=("server", "presigned"), default="server",
                        help="output URLs served through the API (default) or presigned URLs of the bucket")



def store_settings(args) -> dict:
    """The job database and file store the flags (`--database-url`, `--storage-url`, `--s3-endpoint-url`,
    `--storage-public-urls`) or the environment name, as ServerSettings fields: the same for `serve` and
    `worker`. ValueError for presigned URLs without a bucket."""
    storage_url = args.storage_url or os.environ.get(STORAGE_URL_ENV) or None
    if args.storage_public_urls == "presigned" and storage_url is None:
        raise ValueError("--storage-public-urls presigned needs --storage-url s3://...")

    return dict(
        database_url=args.database_url or os.environ.get(DATABASE_URL_ENV) or None,
        storage_url=storage_url,
        s3_endpoint_url=args.s3_endpoint_url,
        storage_public_urls=args.storage_public_urls,
    )


@dataclass
class ServerSettings:
    data_dir: Path = Path("seedvr-data")
    #: Accepted `Authorization: Key <key>` values; empty means the server is open. Each key sees only the
    #: requests it submitted.
    api_keys: tuple[str, ...] = ()
    #: Those of `api_keys` that see (and may cancel) every request.
    admin_keys: tuple[str, ...] = ()
    #: The job database: None for SQLite in the data dir, else a postgresql:// URL (server/db.py).
    database_url: str | None = None
    #: Where stored files' bytes live: None for `<data dir>/files`, else s3://bucket/prefix (server/blobs.py).
    storage_url: str | None = None
    #: The S3 endpoint for a store other than AWS (MinIO, R2, ...); credentials come from the AWS variables.
    s3_endpoint_url: str | None = None
    #: Output URLs: "server" (served through this server) or "presigned" (the bucket's, signed; S3 only).
    storage_public_urls: str = "server"
    #: The most bytes stored files may take together (uploads and outputs); None: no budget.
    max_storage_bytes: int | None = None
    #: Per-key quotas (server/quotas.py): queued requests per key (one more is a 429), running requests per key.
    max_queued_per_key: int | None = None
    max_running_per_key: int | None = None
    #: How long a presigned output URL is valid.
    presigned_url_ttl_s: int = 24 * 3600
    #: Lets image_url and webhooks reach loopback, private and link-local addresses.
    allow_private_urls: bool = False
    #: Base URL for the URLs the server hands out (behind a reverse proxy); default: from each request.
    public_url: str | None = None
    #: Origins allowed to call the API from a browser ("*" for any). Only origins named here may call it from a
    #: public page into a private network (Private Network Access), never "*".
    cors_origins: tuple[str, ...] = ("*",)
    #: The key /metrics requires (`Authorization: Bearer <key>`); None: an admin key when there are API keys (any
    #: API key when none is an admin's), nothing on a key-less server.
    metrics_key: str | None = None

    # Limits on what a request may make the server do.
    max_input_pixels: int = 40_000_000
    #: None: from the memory planner for the loaded model on this device (at most DEFAULT_MAX_OUTPUT_PIXELS).
    max_output_pixels: int | None = None
    max_download_bytes: int = 64 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    download_timeout_s: float = 30.0
    max_redirects: int = 5
    #: The most frames a video may have.
    max_video_frames: int = DEFAULT_MAX_FRAMES
    #: The most output pixels times frames a video job may make (what fal prices); None: no such limit.
    max_video_pixel_frames: int | None = None
    #: The longest clip (4n+1 frames) a video is restored in; the memory planner may choose shorter ones.
    #: Longer clips share more context (less flicker at seams); a cancel waits for the clip in progress.
    max_video_clip_frames: int = 81
    #: The largest output (bytes before base64) a sync_mode request gets inline; a larger one fails with a 422
    #: before it is encoded, since the result is kept in the job database (use a file URL for larger outputs).
    max_sync_result_bytes: int = 64 * 1024 * 1024

    # Webhooks: up to `webhook_max_attempts` POSTs, waiting base * 2**n (capped) between them.
    webhook_max_attempts: int = 10
    webhook_backoff_s: float = 15.0
    webhook_backoff_max_s: float = 1800.0
    #: The most one try may take (resolving the host, connecting, sending, reading the answer).
    webhook_timeout_s: float = 15.0
    #: How long a front-end holds the delivery it is trying: longer than a try, so that no other front-end posts
    #: it meanwhile; a front-end that died holding it frees it when this runs out.
    webhook_claim_s: float = 30.0
    #: The `X-Fal-Webhook-User-Id` of signed webhooks (fal sends the account's id).
    webhook_user_id: str = "seedvr-local"

    #: A job that was running when the server stopped this many times is failed instead of rerun.
    max_job_attempts: int = 2
    #: False: this process serves the API only; workers in other processes (or hosts) run the jobs.
    worker_in_process: bool = True
    #: A claimed job's lease: a worker renews it every third of this; a job whose lease expired runs again.
    lease_s: float = 30.0
    #: How long shutdown waits for the running job to reach a phase boundary.
    shutdown_grace_s: float = 10.0
    #: Seconds between SSE keep-alive comments.
    sse_keepalive_s: float = 15.0
    #: Lifetime of the upload tokens handed to the Python client (`/storage/auth/token`).
    upload_token_ttl_s: int = 3600
    #: Finished requests and stored files older than this are deleted (server/retention.py); None keeps them.
    retention_s: float | None = 24 * 3600.0
    #: Seconds between retention sweeps (and sweeps of orphan files: server/sweeper.py).
    retention_sweep_s: float = 300.0
    #: Scratch files and stored blobs that no record names are swept once they are this old.
    orphan_files_after_s: float = 3600.0

    def job_limits(self) -> dict[str, int | None]:
        """The limits a job accepted here runs under, wherever it runs (stored with it: server/jobs.py)."""
        return {name: getattr(self, name) for name in JOB_LIMITS}

    def with_job_limits(self, limits: dict[str, int | None]) -> ServerSettings:
        """These settings under a job's stored limits (a job stored before limits were has none: these apply)."""
        return dataclasses.replace(self, **{name: value for name, value in limits.items() if name in JOB_LIMITS})

    @property
    def database_path(self) -> Path:
        return self.data_dir / "seedvr.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"
