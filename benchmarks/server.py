"""HTTP server benchmark: latency and throughput under N concurrent clients, sync and queue.

    python -m benchmarks.server --model tiny --clients 1,4 --requests 8
    python -m benchmarks.server --model 3b --device cuda --input 960x540 --clients 1,2,8 --requests 32

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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.models import TINY, tiny_bundle_dir
from benchmarks.restore import parse_size, random_png

ENDPOINT = "fal-ai/seedvr/upscale/image"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, device: str | None, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    source = ["--weights-dir", str(tiny_bundle_dir())] if model == TINY else (
        ["--model", model] if model in ("3b", "7b") else ["--weights-dir", model])
    command = [sys.executable, "-m", "seedvr_local.cli", "serve", *source, "--port", str(port),
               "--data-dir", str(data_dir)] + (["--device", device] if device else [])  # fmt: skip
    log = data_dir / "server.log"  # a file, not a pipe: a full pipe would block the server
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready within 10 minutes")


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


async def load(url: str, mode: str, clients: int, requests: int, body: dict) -> dict:
    send = sync_request if mode == "sync" else queue_request
    latencies: list[float] = []
    failures = 0
    remaining = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failures
        for _ in remaining:  # shared iterator: `requests` in all, spread over the clients
            started = time.perf_counter()
            try:
                await send(client, url, body)
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                failures += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=None) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "mode": mode, "clients": clients, "requests": requests, "failed": failures, "wall_s": wall,
        "p50_s": statistics.median(ordered), "p95_s": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max_s": ordered[-1], "requests_per_s": len(latencies) / wall,
    }  # fmt: skip


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
    args = parser.parse_args(argv)

    png = random_png(*args.input)
    body = {"image_url": "data:image/png;base64," + base64.b64encode(png).decode(), "upscale_factor": args.factor,
            "seed": 0, "output_format": "png"}  # fmt: skip
    process = None
    with tempfile.TemporaryDirectory() as data_dir:
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                process, url = start_server(args.model, args.device, Path(data_dir))
            asyncio.run(load(url, "sync", 1, 1, body))  # warm-up
            rows = [
                asyncio.run(load(url, mode, int(clients), args.requests, body))
                for mode in args.modes.split(",")
                for clients in args.clients.split(",")
            ]
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=60)

    width, height = args.input
    print(f"# {args.model}; input {width}x{height} x{args.factor:g}; {os.cpu_count()} CPUs")
    print(f"{'mode':>6} {'clients':>7} {'requests':>8} {'failed':>6} {'p50 s':>8} {'p95 s':>8} {'max s':>8} {'req/s':>7}")
    for r in rows:
        print(f"{r['mode']:>6} {r['clients']:>7} {r['requests']:>8} {r['failed']:>6} {r['p50_s']:>8.3f} "
              f"{r['p95_s']:>8.3f} {r['max_s']:>8.3f} {r['requests_per_s']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "input": [width, height], "results": rows}, indent=2))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
