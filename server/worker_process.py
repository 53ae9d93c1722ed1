"""`seedvr-local worker` and `serve --devices`: job workers in processes of their own, one per device; and the
checks and the model factory `serve` shares with them. Torch-free at import (the flags build `--help`).

A worker process has no HTTP server: it claims jobs from the shared job database (server/jobs.py), reads inputs
and writes outputs through the file store, and stops on SIGTERM after the current phase (its job goes back to
the queue). Its model loads before it claims anything; a worker whose model cannot load claims no job.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import threading

from pathlib import Path

from seedvr_local.model_home import TINY_MODEL, find_installed_weights
from seedvr_local.server.settings import ServerSettings, add_store_arguments, store_settings

log = logging.getLogger("seedvr_local.server")

#: --cpu-memory: see `device_memory.keep_freed_cpu_memory`.
CPU_MEMORY_POLICIES = ("keep", "release")


def add_cpu_memory_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cpu-memory",
        choices=CPU_MEMORY_POLICIES,
        default=CPU_MEMORY_POLICIES[0],
        help="a worker on the CPU: where freed memory goes. keep (default) holds it for the next tensors and jobs, "
        "sparing their page faults and the slow first job after an idle spell on VMs that hand free memory to "
        "their host; release returns it to the system (lower resident memory between jobs, more page faults)",
    )


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """`seedvr-local worker`'s own flags (the model flags are seedvr_local.cli's). No limit flags: a job runs under
    the limits of the API process that accepted it (settings.JOB_LIMITS, stored with the job)."""
    parser.add_argument(
        "--devices",
        required=True,
        metavar="cpu|cuda:0,cuda:1|all",
        help="one worker process per device; all: every CUDA device (else the CPU)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("seedvr-data"),
        help="the API's data dir: its SQLite database and files when no URLs are given",
    )
    add_store_arguments(parser)
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let image_url reach loopback, private and link-local addresses",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (see serve --compile)")
    add_cpu_memory_argument(parser)
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=ServerSettings.lease_s,
        help=f"a claimed job runs again elsewhere when its worker is silent this long, 1 or more seconds "
        f"(default {ServerSettings.lease_s:g})",
    )


def worker_settings(args: argparse.Namespace) -> ServerSettings:
    if args.device is not None:  # the model flags every command shares bring --device: here it would be ignored
        raise ValueError(f"worker runs on --devices (one process each), not --device: use --devices {args.device}")
    if not args.lease_seconds >= 1:
        raise ValueError(f"--lease-seconds must be at least 1, got {args.lease_seconds:g}")
    return ServerSettings(
        data_dir=args.data_dir.expanduser(),
        **store_settings(args),
        allow_private_urls=args.allow_private_urls,
        lease_s=args.lease_seconds,
    )


def model_weights_dir(args: argparse.Namespace) -> Path | None:
    """The weights directory the model flags name (None: the tiny model, built in memory); no weights for
    `--model 3b` is one line here, before torch is imported."""
    if args.model == TINY_MODEL:
        return None
    return args.weights_dir.expanduser() if args.weights_dir else find_installed_weights(args.model)


def engine_for(args: argparse.Namespace, device_name: str | None):
    """(factory, description) of the model the flags name, on `device_name`; every check that can fail (weights,
    device, kernels, dtype) runs here, in one line, before anything loads."""
    weights_dir = model_weights_dir(args)
    from seedvr_local import kernels
    from seedvr_local.compilation import compile_pipeline
    from seedvr_local.devices import resolve_device, resolve_dtype
    from seedvr_local.upscaler import Upscaler
    from seedvr_local.weights.bundle import inspect_weights_dir
    from seedvr_local.weights.tiny import RANDOM_WEIGHTS_NOTICE

    # A missing or incomplete directory fails here, in one line.
    info = inspect_weights_dir(weights_dir) if weights_dir is not None else None
    device = resolve_device(device_name)
    kernels.backend.resolve(args.kernels, device)  # a forced backend this machine cannot run fails here, in one line
    resolve_dtype(args.dtype, device)  # bf16 on a GPU without it fails here, in one line
    warm_up_sizes = getattr(args, "warm_up_sizes", ())

    def load() -> Upscaler:
        upscaler = (
            Upscaler.tiny(device=str(device), dtype=args.dtype, kernels=args.kernels, offload=args.offload)
            if weights_dir is None
            else Upscaler.from_weights_dir(
                weights_dir, device=str(device), dtype=args.dtype, kernels=args.kernels, offload=args.offload
            )
        )
        # /readyz says "loading" until this is done, so no request pays for the device's one-time setup. Before
        # compiling: compiled graphs are per size, and no request has the warm-up's.
        log.info("warmed up in %.1f s", upscaler.warm_up())
        if args.compile:
            compile_pipeline(upscaler.pipeline)
        if warm_up_sizes:
            sizes = ", ".join(f"{w}x{h}" for w, h in warm_up_sizes)
            log.info("ran %s in %.1f s", sizes, upscaler.warm_up(warm_up_sizes))
        return upscaler

    if info is None:
        log.warning("the tiny test model has %s", RANDOM_WEIGHTS_NOTICE)
    description = (
        f"tiny test model on {device} ({RANDOM_WEIGHTS_NOTICE})"
        if info is None
        else f"SeedVR2 {info.variant.upper()} from {weights_dir} on {device}"
    )
    return load, description


def check_stores(settings: ServerSettings, server: bool) -> None:
    """The database, the data dir (SQLite: one server) and the bucket are usable: else one line, before any model
    loads."""
    from seedvr_local.server.db import Database, DataDirLock
    from seedvr_local.server.state import open_blobs

    if server and settings.database_url is None:
        lock = DataDirLock(settings.data_dir)  # another server on this data dir: say so now, in one line
        lock.acquire()
        lock.release()
    Database(settings.database_url or settings.database_path).close()  # unreachable or too new: one line, now
    open_blobs(settings)  # a missing bucket or refused credentials: one line, now


def parse_devices(text: str) -> list[str]:
    """`all` (every CUDA device, else the CPU), or a comma-separated list (`cpu,cpu`, `cuda:0,cuda:1`); ValueError
    naming a device this machine does not have."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if text.strip() == "all":
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if not devices:
        raise ValueError("--devices needs at least one device: cpu, cuda:N or all")
    for device in devices:
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ValueError(f"--devices: {device!r} is not a device (cpu, cuda:N or all)") from None
        if parsed.type == "cuda" and (parsed.index or 0) >= count:
            raise ValueError(f"--devices: {device} does not exist (this machine has {count} CUDA device(s))")
        if parsed.type not in ("cpu", "cuda"):
            raise ValueError(f"--devices: {device!r} is not a device (cpu, cuda:N or all)")
    return devices


def start_worker_processes(args: argparse.Namespace, settings: ServerSettings, devices: list[str]):
    """One process per device (spawned: CUDA cannot be forked), each with its own model copy, restarted by a
    supervisor when it exits (server/supervisor.py)."""
    from seedvr_local.server.db import Database
    from seedvr_local.server.supervisor import WorkerSupervisor

    for device in dict.fromkeys(devices):
        engine_for(args, device)  # every device's checks, in one line each, before a process starts
    context = multiprocessing.get_context("spawn")

    def start(device: str) -> multiprocessing.Process:
        process = context.Process(
            target=_worker_main, args=(args, settings, device, os.getpid()), name=f"seedvr-worker-{device}"
        )
        process.start()
        return process

    db = Database(settings.database_url or settings.database_path)
    return WorkerSupervisor(start, devices, db, settings.max_job_attempts).start()


def _worker_main(args: argparse.Namespace, settings: ServerSettings, device: str, parent_pid: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{device}] %(message)s")
    run_worker_process(args, settings, device, parent_pid)


def apply_cpu_memory_policy(args: argparse.Namespace, device: str) -> bool:
    """`--cpu-memory keep` on a CPU worker, before its threads start (the model allocates from the one heap);
    True when applied."""
    if args.cpu_memory != "keep" or not device.startswith("cpu"):
        return False
    from seedvr_local.device_memory import keep_freed_cpu_memory

    return keep_freed_cpu_memory()


def run_worker_process(
    args: argparse.Namespace, settings: ServerSettings, device: str, parent_pid: int | None = None
) -> None:
    """Run one worker on `device`, with the model the flags name, until it is told to stop (`run_until_stopped`)."""
    apply_cpu_memory_policy(args, device)
    load, description = engine_for(args, device)
    run_until_stopped(open_worker(settings, device, load, description), settings.shutdown_grace_s, parent_pid)


def run_until_stopped(worker, grace_s: float, parent_pid: int | None = None) -> None:
    """Start `worker` and run it until SIGTERM or SIGINT, or until the process `parent_pid` is gone (a worker
    never outlives the server that started it, however that server ended). Then it drains: its running job stops
    at the next phase boundary and goes back to the queue (or completes, when that came first)."""
    from seedvr_local.server.change_feed import change_feed

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    if parent_pid is not None:
        threading.Thread(target=_stop_with_parent, args=(parent_pid, stopping), daemon=True).start()
    feed = change_feed(worker.jobs.db, lambda _job_id: worker.wake())  # an idle worker starts a job at once
    feed.start()
    worker.start()
    log.info("worker %s started on %s", worker.id, worker.device)
    # a worker on a host of its own has scratch files no API process sweeps
    threading.Thread(target=_sweep_until, args=(worker, stopping), name="seedvr-sweeper", daemon=True).start()
    stopping.wait()
    log.info("worker %s stopping", worker.id)
    feed.stop()
    if not worker.stop(grace_s):
        log.warning("the running job did not stop within %.0f s; it runs again when its lease expires", grace_s)
    worker.jobs.db.close()


def open_worker(settings: ServerSettings, device: str, load, description: str):
    """A Worker (not started) for `device` on the stores the settings name, with its own database connections,
    file store and metrics: what a worker process runs, whatever its model (`load`)."""
    from seedvr_local.server.db import Database
    from seedvr_local.server.engine import EngineHolder
    from seedvr_local.server.fetch import ImageFetcher
    from seedvr_local.server.fleet import WorkerRegistry
    from seedvr_local.server.jobs import JobStore
    from seedvr_local.server.metrics import Metrics
    from seedvr_local.server.netguard import NetGuard
    from seedvr_local.server.processing import JobProcessor
    from seedvr_local.server.state import open_files
    from seedvr_local.server.worker import Worker, log_job

    db = Database(settings.database_url or settings.database_path)
    files = open_files(settings, db)
    guard = NetGuard(allow_private=settings.allow_private_urls)
    fetcher = ImageFetcher(
        files, guard, settings.max_download_bytes, settings.download_timeout_s, settings.max_redirects
    )
    metrics = Metrics(db)
    jobs = JobStore(db, settings.max_job_attempts, on_completed=log_job)
    engines = EngineHolder(load, description)
    processor = JobProcessor(jobs, files, fetcher, engines, settings, metrics)
    return Worker(jobs, processor, engines, WorkerRegistry(db), settings.lease_s, device, claim_without_model=False)


def _sweep_until(worker, stopping: threading.Event) -> None:
    """What killed processes left (server/sweeper.py): at start, then every retention interval, until stopped."""
    from seedvr_local.server.sweeper import Sweeper

    settings = worker.processor.settings
    sweeper = Sweeper(worker.jobs.db, worker.processor.files, settings.orphan_files_after_s)
    while True:
        try:
            sweeper.sweep()
        except Exception:  # a full disk or an unreachable bucket: try again at the next sweep
            log.exception("sweeping orphan files failed")
        if stopping.wait(settings.retention_sweep_s):
            return


def _stop_with_parent(parent_pid: int, stopping: threading.Event) -> None:
    while not stopping.wait(1.0):
        if os.getppid() != parent_pid:
            stopping.set()


def run_worker(args: argparse.Namespace) -> int:
    """`seedvr-local worker`: one worker process per device of --devices, until SIGTERM."""
    settings = worker_settings(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    devices = parse_devices(args.devices)
    check_stores(settings, server=False)
    if len(devices) == 1:
        run_worker_process(args, settings, devices[0])
        return 0
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # the handler only flags: the main loop stops the children
        signal.signal(signum, lambda *_: stopping.set())
    children = start_worker_processes(args, settings, devices)
    children.wait(stopping, settings.shutdown_grace_s)
    return 0
