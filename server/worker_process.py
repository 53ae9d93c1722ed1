"""`seedvr-local worker` and `serve --devices`: job workers in processes of their own, one per device.

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

from seedvr_local.server.settings import ServerSettings

log = logging.getLogger("seedvr_local.server")


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


class WorkerProcesses:
    def __init__(self, processes: list[multiprocessing.Process]):
        self.processes = processes

    def stop(self, grace_s: float) -> None:
        """SIGTERM to each (it finishes or requeues its job), then wait; a process past the grace is killed, and
        its job comes back when its lease expires."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(grace_s + 5)
            if process.is_alive():
                process.kill()
                process.join()

    def wait(self, stop: threading.Event, grace_s: float) -> int:
        """Until every process ended, or `stop` is set (then stop them); the largest exit code."""
        while any(process.is_alive() for process in self.processes):
            if stop.wait(0.5):
                self.stop(grace_s)
                break
        return max((abs(process.exitcode or 0) for process in self.processes), default=0)


def start_worker_processes(args: argparse.Namespace, settings: ServerSettings, devices: list[str]) -> WorkerProcesses:
    """One process per device (spawned: CUDA cannot be forked), each with its own model copy."""
    from seedvr_local.server.cli import engine_for

    for device in dict.fromkeys(devices):
        engine_for(args, device)  # every device's checks, in one line each, before a process starts
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(args, settings, device, os.getpid()), name=f"seedvr-worker-{device}")
        for device in devices
    ]
    for process in processes:
        process.start()
    return WorkerProcesses(processes)


def _worker_main(args: argparse.Namespace, settings: ServerSettings, device: str, parent_pid: int) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{device}] %(message)s")
    run_worker_process(args, settings, device, parent_pid)


def run_worker_process(
    args: argparse.Namespace, settings: ServerSettings, device: str, parent_pid: int | None = None
) -> None:
    """Run one worker on `device` until SIGTERM or SIGINT, or until the process `parent_pid` is gone (a worker
    never outlives the server that started it, however that server ended)."""
    from seedvr_local.server.cli import engine_for
    from seedvr_local.server.db import Database
    from seedvr_local.server.engine import EngineHolder
    from seedvr_local.server.fetch import ImageFetcher
    from seedvr_local.server.fleet import WorkerRegistry
    from seedvr_local.server.jobs import JobStore
    from seedvr_local.server.metrics import Metrics
    from seedvr_local.server.netguard import NetGuard
    from seedvr_local.server.processing import JobProcessor
    from seedvr_local.server.state import open_blobs
    from seedvr_local.server.storage import FileStore
    from seedvr_local.server.worker import Worker, log_job

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    if parent_pid is not None:
        threading.Thread(target=_stop_with_parent, args=(parent_pid, stopping), daemon=True).start()
    load, description = engine_for(args, device)
    db = Database(settings.database_url or settings.database_path)
    files = FileStore(
        db,
        settings.files_dir,
        settings.max_upload_bytes,
        blobs=open_blobs(settings),
        presign_s=settings.presigned_url_ttl_s if settings.storage_public_urls == "presigned" else 0,
    )
    guard = NetGuard(allow_private=settings.allow_private_urls)
    fetcher = ImageFetcher(
        files, guard, settings.max_download_bytes, settings.download_timeout_s, settings.max_redirects
    )
    jobs = JobStore(db, settings.max_job_attempts, on_completed=log_job)
    engines = EngineHolder(load, description)
    processor = JobProcessor(jobs, files, fetcher, engines, settings, Metrics())
    worker = Worker(jobs, processor, engines, WorkerRegistry(db), settings.lease_s, device, claim_without_model=False)
    worker.start()
    log.info("worker %s started on %s", worker.id, device)
    stopping.wait()
    log.info("worker %s stopping", worker.id)
    if not worker.stop(settings.shutdown_grace_s):
        log.warning(
            "the running job did not stop within %.0f s; it runs again when its lease expires",
            settings.shutdown_grace_s,
        )
    db.close()


def _stop_with_parent(parent_pid: int, stopping: threading.Event) -> None:
    while not stopping.wait(1.0):
        if os.getppid() != parent_pid:
            stopping.set()


def run_worker(args: argparse.Namespace) -> int:
    """`seedvr-local worker`: one worker process per device of --devices, until SIGTERM."""
    from seedvr_local.server.cli import check_stores, worker_settings

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
