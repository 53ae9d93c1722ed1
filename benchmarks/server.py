"""HTTP server benchmark: latency and throughput under N concurrent clients, sync and queue.

    python -m benchmarks.server --model tiny --clients 1,4 --requests 8
    python -m benchmarks.server --model 3b --device cuda --input 960x540 --clients 1,2,8 --requests 32
    python -m benchmarks.server --model tiny --workers 1 --pin --pollers 0,100 --poll-hz 2 --big-input-mb 50

`--workers N`: the API alone (`serve --workers 0`) and N worker processes (`seedvr-local worker`) on its data
dir, instead of the embedded worker thread; `--pin` puts the workers on CPU 0 and the API and this load generator
on CPU 1 (taskset), so the figures measure isolation rather than the size of the machine. `--pollers P` runs P
clients polling a request's status at `--poll-hz` during every load row, and reports their latency; with
`--big-input-mb M` the polled request carries an M MB data URI.

Starts `seedvr-local serve` as a separate process on a free port with a fresh data dir (or uses `--url` of a
running server), then each client sends requests back to back: `sync` posts to the run endpoint and waits for
the response; `queue` submits, polls the status every 50 ms until COMPLETED and fetches the result, as the fal
clients do. Latency is from sending the request to holding the result.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from benchmarks.models import TINY
from benchmarks.restore import parse_size, random_png

ENDPOINT = "fal-ai/seedvr/upscale/image"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready within 10 minutes")


def start_server(
    model: str, device: str | None, data_dir: Path, workers: int | None = None, pin: bool = False
) -> tuple[list[subprocess.Popen], str]:
    """The server (and with `workers`, that many worker processes beside an API-only server); its URL."""
    port = _free_port()
    source = ["--model", model] if model in (TINY, "3b", "7b") else ["--weights-dir", model]
    api_cpu, worker_cpu = (["taskset", "-c", "1"], ["taskset", "-c", "0"]) if pin else ([], [])
    model_flags = source + (["--device", device] if device else [])
    serve = [*api_cpu, sys.executable, "-m", "seedvr_local.cli", "serve", "--port", str(port), "--data-dir",
             str(data_dir), *(["--workers", "0"] if workers else model_flags)]  # fmt: skip
    log = data_dir / "server.log"  # a file, not a pipe: a full pipe would block the server
    processes = [subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=log.open("w"))]
    if workers:
        devices = ",".join([device or "cpu"] * workers)
        worker = [*worker_cpu, sys.executable, "-m", "seedvr_local.cli", "worker", *source, "--devices", devices,
                  "--data-dir", str(data_dir)]  # fmt: skip
        processes.append(subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=(data_dir / "workers.log").open("w")))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(processes[0], url, log)
    except BaseException:
        for process in processes:
            process.kill()
        raise
    return processes, url


async def sync_request(client: httpx.AsyncClient, url: str, body: dict) -> None:
    response = await client.post(f"{url}/{ENDPOINT}", json=body)
    response.raise_for_status()


async def queue_request(client: httpx.AsyncClient, url: str, body: dict) -> None:
    submitted = await client.post(f"{url}/queue/{ENDPOINT}", json=body)
    submitted.raise_for_status()
    ticket = submitted.json()
    while True:
        status = await client.get(ticket["status_url"])
        status.raise_for_status()
        if status.json()["status"] == "COMPLETED":
            break
        await asyncio.sleep(0.05)
    (await client.get(ticket["response_url"])).raise_for_status()


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class StatusPoller:
    """One client polling one URL over a keep-alive HTTP/1.1 connection, written by hand: httpx spends about 3 ms
    of CPU a request, so 100 httpx pollers would saturate the core they share with the API (`--pin`) and measure
    the load generator instead of the server."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.address = (parts.hostname, parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self) -> int:
        """The response's status code, its body read and dropped."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(*self.address)
        reader, writer = self.streams
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


async def poll(status_url: str, hz: float, latencies: list[float], stop: asyncio.Event) -> None:
    """One poller: GET the status at `hz`, as a fal client polling its request does. Each starts at a random
    point of the period: clients polling in lockstep would send every request in one burst."""
    poller = StatusPoller(status_url)
    await asyncio.sleep(random.uniform(0, 1 / hz))
    try:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = (await poller.get()) < 400
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
                poller.close()
                poller = StatusPoller(status_url)  # a new connection, as a client would open
            latencies.append(time.perf_counter() - started if ok else float("inf"))
            await asyncio.sleep(max(0.0, 1 / hz - (time.perf_counter() - started)))
    finally:
        poller.close()


async def load(
    url: str, mode: str, clients: int, requests: int, body: dict, pollers: int = 0, poll_hz: float = 2.0,
    polled: str | None = None,
) -> dict:
    send = sync_request if mode == "sync" else queue_request
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(requests))
    poll_latencies: list[float] = []
    stop_polling = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failures
        for _ in remaining:  # shared iterator: `requests` in all, spread over the clients
            started = time.perf_counter()
            try:
                await send(client, url, body)
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                failures += 1

    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        polling = [
            asyncio.create_task(poll(polled, poll_hz, poll_latencies, stop_polling)) for _ in range(pollers)
        ]
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        wall = time.perf_counter() - started
        stop_polling.set()
        await asyncio.gather(*polling)
    ordered = sorted(latencies) or [float("nan")]
    polls = sorted(poll_latencies)
    return {
        "mode": mode, "clients": clients, "requests": requests, "failed": failures, "wall_s": wall,
        "p50_s": statistics.median(ordered), "p95_s": _percentile(ordered, 0.95),
        "max_s": ordered[-1], "requests_per_s": len(latencies) / wall,
        "pollers": pollers, "poll_hz": poll_hz if pollers else 0, "polls": len(polls),
        "poll_p50_ms": 1000 * _percentile(polls, 0.5), "poll_p95_ms": 1000 * _percentile(polls, 0.95),
    }  # fmt: skip


def polled_request(url: str, big_input_mb: float, body: dict) -> str:
    """The status URL the pollers poll: a request of its own (carrying an M MB data URI when asked)."""
    image_url = body["image_url"]
    if big_input_mb:
        # random bytes in a valid data URI: the request fails at decode, but its row and its input exist
        image_url = "data:image/png;base64," + base64.b64encode(os.urandom(int(big_input_mb * 2**20 * 3 / 4))).decode()
    submitted = httpx.post(f"{url}/queue/{ENDPOINT}", json={**body, "image_url": image_url}, timeout=600)
    submitted.raise_for_status()
    return submitted.json()["status_url"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TINY, help="tiny, 3b, 7b (downloaded) or a weights directory")
    parser.add_argument("--url", default=None, help="benchmark this running server instead of starting one")
    parser.add_argument("--device", default=None)
    parser.add_argument("--input", type=parse_size, default=(64, 48), help="input image size (default 64x48)")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--clients", default="1,4", help="comma-separated concurrent client counts")
    parser.add_argument("--requests", type=int, default=8, help="requests per (mode, client count)")
    parser.add_argument("--modes", default="sync,queue")
    parser.add_argument("--json", default=None)
    parser.add_argument("--workers", type=int, default=None,
                        help="N worker processes beside an API-only server (default: the embedded worker thread)")
    parser.add_argument("--pin", action="store_true", help="workers on CPU 0, the API and this process on CPU 1")
    parser.add_argument("--pollers", default="0", help="comma-separated counts of status pollers during the load")
    parser.add_argument("--poll-hz", type=float, default=2.0, help="polls per second of each poller (default 2)")
    parser.add_argument("--big-input-mb", type=float, default=0.0,
                        help="the polled request carries a data URI of this many MB")
    args = parser.parse_args(argv)
    if args.pin:
        os.sched_setaffinity(0, {1})

    png = random_png(*args.input)
    body = {"image_url": "data:image/png;base64," + base64.b64encode(png).decode(), "upscale_factor": args.factor,
            "seed": 0, "output_format": "png"}  # fmt: skip
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as data_dir:
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                processes, url = start_server(args.model, args.device, Path(data_dir), args.workers, args.pin)
            asyncio.run(load(url, "sync", 1, 1, body))  # warm-up
            polled = polled_request(url, args.big_input_mb, body) if args.pollers != "0" else None
            rows = [
                asyncio.run(load(url, mode, int(clients), args.requests, body, int(pollers), args.poll_hz, polled))
                for mode in args.modes.split(",")
                for clients in args.clients.split(",")
                for pollers in args.pollers.split(",")
            ]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)

    width, height = args.input
    workers = f"{args.workers} worker process(es)" if args.workers else "embedded worker"
    print(f"# {args.model}; input {width}x{height} x{args.factor:g}; {os.cpu_count()} CPUs; {workers}"
          + ("; pinned" if args.pin else "") + (f"; polled request carries {args.big_input_mb:g} MB" if args.big_input_mb else ""))
    print(f"{'mode':>6} {'clients':>7} {'requests':>8} {'failed':>6} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'req/s':>7}"
          f" {'pollers':>7} {'polls':>6} {'poll p50 ms':>11} {'poll p95 ms':>11}")
    for r in rows:
        print(f"{r['mode']:>6} {r['clients']:>7} {r['requests']:>8} {r['failed']:>6} {r['p50_s']:>8.3f} "
              f"{r['p95_s']:>8.3f} {r['max_s']:>8.3f} {r['requests_per_s']:>7.2f} {r['pollers']:>7} {r['polls']:>6}"
              f" {r['poll_p50_ms']:>11.1f} {r['poll_p95_ms']:>11.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "input": [width, height], "results": rows}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
