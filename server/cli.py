"""`seedvr-local serve`: its flags, and starting the server (seedvr_local.cli calls these two functions).

Torch-free at import: `seedvr-local --help` builds these flags; `run_serve` loads the rest after checking them."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from pathlib import Path

from seedvr_local.server.quotas import add_quota_arguments, quota_settings
from seedvr_local.server.settings import DEFAULT_MAX_OUTPUT_PIXELS, ServerSettings, add_store_arguments, store_settings
from seedvr_local.server.worker_process import CPU_MEMORY_POLICIES, add_cpu_memory_argument
from seedvr_local.video.limits import check_clip_frames

log = logging.getLogger("seedvr_local.server")

DEFAULT_PORT = 8000
#: The environment variable of the /metrics key when --metrics-key is not given.
METRICS_KEY_ENV = "SEEDVR_METRICS_KEY"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's own flags (seedvr_local.cli adds the model flags every command shares)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model and autotune cuDNN: faster once warm, but the first request of each output "
        "size compiles for seconds to minutes (see docs/performance.md)",
    )
    parser.add_argument(
        "--warm-up-sizes",
        type=_sizes,
        default=(),
        metavar="WxH,...",
        help="output sizes to run once before the server reports ready, e.g. 1920x1080,3840x2160: with --compile, "
        "requests of those sizes then start compiled",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"0 to 65535 (default {DEFAULT_PORT}); 0 picks a free port")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("seedvr-data"),
        help="job database and stored files (default ./seedvr-data)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require 'Authorization: Key KEY' (repeatable; also SEEDVR_API_KEYS=k1,k2)",
    )
    parser.add_argument(
        "--admin-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key that sees and may cancel every request (repeatable); other keys see only their own",
    )
    add_store_arguments(parser)
    parser.add_argument("--workers", type=int, choices=(0,), default=None,
                        help="0: the API alone, with no model (it refuses the model flags); workers run elsewhere "
                        "(`seedvr-local worker`)")
    parser.add_argument("--devices", default=None, metavar="cpu|cuda:0,cuda:1|all",
                        help="one worker process per device beside the API (default: --device if given, else all: "
                        "every visible GPU, else the CPU)")
    parser.add_argument("--ssl-certfile", type=Path, help="TLS certificate (PEM); fal-client for Python needs https")
    parser.add_argument("--ssl-keyfile", type=Path, help="TLS private key (PEM)")
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let image_url and webhooks reach loopback, private and link-local addresses",
    )
    parser.add_argument(
        "--public-url",
        help="base URL clients reach the server at, for the URLs it returns "
        "(default: the address each request was sent to)",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="origin allowed to call from a browser (repeatable; default any). Only origins named here may call a "
        "server on a private network from a public page",
    )
    parser.add_argument("--metrics-key", default=None, metavar="KEY",
                        help=f"the key /metrics requires, as 'Authorization: Bearer KEY' (also {METRICS_KEY_ENV}; "
                        "default: an admin key when API keys are set, none on a key-less server)")
    parser.add_argument("--max-input-pixels", type=int, default=ServerSettings.max_input_pixels,
                        help="refuse input images with more pixels than this, 1 or more "
                        f"(default {ServerSettings.max_input_pixels})")
    parser.add_argument("--max-output-pixels", type=int, default=None,
                        help="refuse requests for larger outputs, 1 or more (default: the largest output the model "
                        f"fits in this device's memory, at most {DEFAULT_MAX_OUTPUT_PIXELS})")
    # video limits, checked before any frame is restored (a 422 naming the largest allowed)
    parser.add_argument("--max-video-frames", type=int, default=ServerSettings.max_video_frames, metavar="N",
                        help=f"the most frames a video may have, 1 or more (default {ServerSettings.max_video_frames})")
    parser.add_argument("--max-video-pixel-frames", type=int, default=None, metavar="N",
                        help="the most output width x height x frames of one video, 1 or more, e.g. 1244160000 for 600 "
                        "frames of 1080p (default: no limit)")
    parser.add_argument("--max-video-clip-frames", type=int, default=ServerSettings.max_video_clip_frames,
                        metavar="N", help="the longest clip, 4n+1 frames (1, 5, 9, ...), 1 or more, a video is "
                        "restored in; the memory planner may choose shorter ones; longer clips flicker less at seams "
                        f"(default {ServerSettings.max_video_clip_frames})")
    parser.add_argument("--max-sync-result-bytes", type=int, default=ServerSettings.max_sync_result_bytes,
                        metavar="N", help="the largest output a sync_mode request gets inline as a data URI, 1 or "
                        f"more (default {ServerSettings.max_sync_result_bytes}: 64 MiB); larger ones fail with 422")
    parser.add_argument("--max-storage-bytes", type=int, default=None, metavar="N",
                        help="the most bytes stored files (uploads and outputs) may take together, 1 or more; past "
                        "it uploads and outputs are refused with 507 until retention frees room (default: no limit)")
    parser.add_argument("--webhook-user-id", default=ServerSettings.webhook_user_id,
                        help="X-Fal-Webhook-User-Id of the signed webhooks (default seedvr-local)")
    parser.add_argument("--retention-hours", type=float, default=ServerSettings.retention_s / 3600,
                        help="delete finished requests and stored files older than this many hours, 0 or more "
                        "(default 24; 0 keeps them)")
    add_quota_arguments(parser)
    add_cpu_memory_argument(parser)
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request (default: one line per job)")


#: The flags of a process that runs a model, each with its value when it is not given: `serve --workers 0` runs
#: none, so it refuses them rather than ignore them (tests/server/test_cli.py checks these against the parser).
MODEL_FLAGS = {
    "--model": None, "--weights-dir": None, "--device": None, "--dtype": None, "--kernels": "auto",
    "--compile": False, "--warm-up-sizes": (), "--devices": None, "--cpu-memory": CPU_MEMORY_POLICIES[0],
}  # fmt: skip


def check_model_flags(args: argparse.Namespace) -> None:
    """A model for a server that runs one, none for the API alone (`--workers 0`); ValueError (one line) else."""
    if args.workers == 0:
        given = [flag for flag, unset in MODEL_FLAGS.items() if getattr(args, _dest(flag)) != unset]
        if given:
            raise ValueError(
                f"serve --workers 0 runs no model: drop {' '.join(given)} (the workers take the model: "
                "seedvr-local worker --model ... --devices ...)"
            )
    elif args.model is None and args.weights_dir is None:
        raise ValueError("serve needs --model or --weights-dir (or --workers 0 for the API alone, with no model)")


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """ServerSettings from the parsed flags and SEEDVR_API_KEYS; ValueError for inconsistent ones."""
    check_model_flags(args)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    if args.device and args.devices:
        raise ValueError("give --device (one worker process) or --devices (one per device), not both")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_input_pixels < 1 or (args.max_output_pixels is not None and args.max_output_pixels < 1):
        raise ValueError("--max-input-pixels and --max-output-pixels must be positive")
    for flag, value in (("--max-video-frames", args.max_video_frames),
                        ("--max-video-pixel-frames", args.max_video_pixel_frames),
                        ("--max-video-clip-frames", args.max_video_clip_frames),
                        ("--max-storage-bytes", args.max_storage_bytes)):  # fmt: skip
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")
    try:
        check_clip_frames(args.max_video_clip_frames)
    except ValueError as exc:
        raise ValueError(f"--max-video-clip-frames: {exc}") from None
    if args.max_sync_result_bytes < 1:
        raise ValueError(f"--max-sync-result-bytes must be positive, got {args.max_sync_result_bytes}")
    if not args.retention_hours >= 0:
        raise ValueError(f"--retention-hours must be 0 (keep everything) or more, got {args.retention_hours:g}")
    env_keys = [key.strip() for key in os.environ.get("SEEDVR_API_KEYS", "").split(",")]
    admin_keys = tuple(key.strip() for key in args.admin_key if key.strip())
    keys = tuple(dict.fromkeys(key for key in [*args.api_key, *env_keys, *admin_keys] if key and key.strip()))
    stores = store_settings(args)
    if args.public_url and not args.public_url.startswith(("http://", "https://")):
        raise ValueError(f"--public-url must start with http:// or https://, got {args.public_url!r}")
    return ServerSettings(
        data_dir=args.data_dir.expanduser(),
        api_keys=keys,
        admin_keys=admin_keys,
        **stores,
        **quota_settings(args),
        allow_private_urls=args.allow_private_urls,
        public_url=args.public_url,
        cors_origins=tuple(args.cors_origin) if args.cors_origin else ("*",),
        max_input_pixels=args.max_input_pixels,
        max_output_pixels=args.max_output_pixels,
        max_video_frames=args.max_video_frames,
        max_video_pixel_frames=args.max_video_pixel_frames,
        max_video_clip_frames=args.max_video_clip_frames,
        max_storage_bytes=args.max_storage_bytes,
        retention_s=args.retention_hours * 3600 or None,
        max_sync_result_bytes=args.max_sync_result_bytes,
        metrics_key=(args.metrics_key or os.environ.get(METRICS_KEY_ENV, "")).strip() or None,
        webhook_user_id=args.webhook_user_id,
    )


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    from seedvr_local.server import worker_process

    # The jobs never run in this process: one worker process per device, or none here with --workers 0.
    settings.worker_in_process = False
    if args.workers == 0:
        devices, description = [], "no model in this process (API only)"
    else:  # missing weights, a device this machine lacks, a dtype it cannot run: one line, before anything loads
        worker_process.model_weights_dir(args)  # first: said without importing torch
        devices = worker_process.parse_devices(args.devices or args.device or "all")
        description = worker_process.engine_for(args, devices[0])[1]
        description += f", one worker process per device: {', '.join(devices)}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    worker_process.check_stores(settings, server=True)

    import uvicorn

    from seedvr_local.server.app import create_app
    from seedvr_local.server.listening import ListeningServer, bind_socket

    # Bound now, before any model loads: a port in use is one line here, not a failure after the load.
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    children = None
    try:
        app = create_app(settings, lambda: None, description)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=port,
            ssl_certfile=str(args.ssl_certfile) if args.ssl_certfile else None,
            ssl_keyfile=str(args.ssl_keyfile) if args.ssl_keyfile else None,
            access_log=args.access_log,
            log_level="info",
            timeout_graceful_shutdown=5,
        )
        text = banner(settings, args.host, port, tls=bool(args.ssl_certfile), description=description)
        _load_tls(config, args)
        # after every check
        children = worker_process.start_worker_processes(args, settings, devices) if devices else None
        server = ListeningServer(config, on_listening=lambda: print(text, flush=True))
        server.run(sockets=[sock])
    except SystemExit as exited:  # uvicorn exits when the app's startup fails; it has logged why
        raise RuntimeError(f"the server did not start (exit code {exited.code}): see the log above") from None
    finally:
        sock.close()
        if children is not None:
            children.stop(settings.shutdown_grace_s)
    return 0


def _load_tls(config, args: argparse.Namespace) -> None:
    """Build uvicorn's TLS context now: a certificate or key that is not PEM fails in one line, before the model
    loads (uvicorn would build it at startup)."""
    try:
        config.load()
    except ssl.SSLError as exc:
        raise ValueError(
            f"--ssl-certfile {args.ssl_certfile} and --ssl-keyfile {args.ssl_keyfile} are not a PEM certificate "
            f"and its key ({exc.reason or exc})"
        ) from None


def banner(settings: ServerSettings, host: str, port: int, tls: bool, description: str) -> str:
    """What to paste into each client to use this server."""
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    base = settings.public_url or f"{'https' if tls else 'http'}://{shown_host}:{port}"
    hostport = base.split("://", 1)[1].rstrip("/")
    key_hint = " FAL_KEY=<one of the keys>" if settings.api_keys else " FAL_KEY=anything"
    auth = (
        f"API key required ({len(settings.api_keys)} configured): clients send 'Authorization: Key <key>'"
        if settings.api_keys
        else "OPEN: no API key is required (use --api-key or SEEDVR_API_KEYS to require one)"
    )
    python = (
        f"      FAL_RUN_HOST={hostport}/run FAL_QUEUE_RUN_HOST={hostport}/queue SSL_CERT_FILE=<your cert.pem>{key_hint}"
        if tls
        else "      fal-client only speaks https: restart with --ssl-certfile/--ssl-keyfile (docs/http-api.md), then\n"
        f"      FAL_RUN_HOST={hostport}/run FAL_QUEUE_RUN_HOST={hostport}/queue SSL_CERT_FILE=<cert.pem>{key_hint}"
    )
    lines = [
        f"seedvr-local serve: {description}",
        f"  listening on {base}" + ("  (all interfaces)" if host in ("0.0.0.0", "::") else ""),
        f"  data dir:    {settings.data_dir.resolve()}",
        f"  auth:        {auth}",
        "  image_url:   "
        + (
            "private and loopback URLs allowed"
            if settings.allow_private_urls
            else "public http(s) URLs, data: URIs and files uploaded here"
        ),
        f"  API docs:    {base}/docs   health: {base}/readyz   metrics: {base}/metrics",
        "",
        "Use it from the fal clients:",
        "  JavaScript (@fal-ai/client >= 1.10):",
        f'      fal.config({{ proxyUrl: {{ url: "{base}/api/fal/proxy", when: "always" }} }});',
        "  Python (fal-client), environment set before importing fal_client:",
        python,
        "  HTTP:",
        f"      curl -X POST {base}/fal-ai/seedvr/upscale/image -H 'Content-Type: application/json'"
        + (" -H 'Authorization: Key <key>'" if settings.api_keys else "")
        + ' -d \'{"image_url": "https://..."}\'',
    ]
    return "\n".join(lines)


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    """`1920x1080,3840x2160` -> ((1920, 1080), (3840, 2160))."""
    sizes = []
    for part in text.split(","):
        try:
            width, height = (int(v) for v in part.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes look like 1920x1080,3840x2160, got {text!r}") from None
        if width < 16 or height < 16:
            raise argparse.ArgumentTypeError(f"a warm-up size must be at least 16x16, got {part.strip()!r}")
        sizes.append((width, height))
    return tuple(sizes)
