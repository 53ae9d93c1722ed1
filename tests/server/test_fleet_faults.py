"""The fleet under faults: PostgreSQL + an S3-compatible store + 2 API-only front-ends + 3
worker processes, all real processes on loopback with the tiny model. Jobs go in through both front-ends (queued
and sync) and are polled and streamed through the other; one worker is killed with SIGKILL in the middle of a
job, one front-end in the middle of an SSE stream, and PostgreSQL restarts once. Every job completes exactly once
with the result the tiny model gives for its seed in this process (it is deterministic), read through every
front-end (the killed one started again), and every webhook is delivered with its request id. The processes share
only the database and the bucket, as on separate hosts: each has its own data dir.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from seedvr_local.server.db import Database
from tests import requires
from tests.server.helpers import LocalHTTP, data_uri, listening_url, png_bytes, wait_until

ENDPOINT = "fal-ai/seedvr/upscale/image"
# Enough jobs for every fault to strike while work is queued and running; each one's output is checked pixel for
# pixel.
QUEUED, SYNC = 10, 5
SOURCE_SIZE = (48, 32)


@pytest.fixture
def store() -> str:
    return "postgresql"


@pytest.fixture
def file_store() -> str:
    return "s3"


def _spawn(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seedvr_local.cli", *args], stdout=log, stderr=subprocess.STDOUT)


def _front_end(stores: list[str], tmp_path, name: str) -> tuple[subprocess.Popen, str]:
    """An API-only `serve` on a port the system picks, and the URL it prints once it listens."""
    log_path = tmp_path / f"{name}.log"
    with log_path.open("ab") as log:
        process = _spawn(
            ["serve", "--workers", "0", "--port", "0", "--allow-private-urls", *stores,
             "--data-dir", str(tmp_path / name)], log,
        )  # fmt: skip
    return process, listening_url(log_path, process, timeout=120)


def _expected(seeds: list[int]) -> dict[int, np.ndarray]:
    """What the tiny model makes of the source for each seed, run in this process."""
    from seedvr_local.image_io import decode_image
    from seedvr_local.options import UpscaleOptions
    from seedvr_local.upscaler import Upscaler

    upscaler = Upscaler.tiny(device="cpu")
    image = decode_image(png_bytes(*SOURCE_SIZE))
    return {seed: upscaler.upscale(image, UpscaleOptions(seed=seed)).pixels.permute(1, 2, 0).numpy() for seed in seeds}


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


# Five processes each importing torch (six with the restarted front-end), 15 jobs on 3 CPU workers.
@pytest.mark.timeout(600)
def test_jobs_survive_a_killed_worker_a_killed_front_end_and_a_database_restart(settings, tmp_path):
    restart_postgres = requires.environment(
        "SEEDVR_TEST_POSTGRES_RESTART", "a shell command restarting the test PostgreSQL server; .ci/run sets it"
    )
    # what the hosts of a fleet share: the database and the bucket; every process has a data dir of its own
    stores = [
        "--database-url", settings.database_url, "--storage-url", settings.storage_url,
        "--s3-endpoint-url", settings.s3_endpoint_url,
    ]  # fmt: skip
    log = (tmp_path / "fleet.log").open("ab")
    front_ends, urls = [], []
    workers = [
        _spawn(["worker", "--model", "tiny", "--devices", "cpu", "--lease-seconds", "3", *stores,
                "--data-dir", str(tmp_path / f"worker-{n}")], log)  # fmt: skip
        for n in range(3)
    ]
    db = Database(settings.database_url)
    hooks = LocalHTTP(routes={"/hook": (200, {}, b"ok")})
    try:
        for n in range(2):
            process, url = _front_end(stores, tmp_path, f"front-end-{n}")
            front_ends.append(process)
            urls.append(url)
        with hooks, httpx.Client(timeout=120) as http:

            def ready(url: str) -> bool:
                try:
                    return http.get(f"{url}/readyz").json().get("workers") == 3
                except (httpx.HTTPError, ValueError):
                    return False

            for url in urls:
                wait_until(lambda url=url: ready(url), f"{url} ready with 3 workers", timeout=240)

            image = data_uri(png_bytes(*SOURCE_SIZE))
            queued = []
            for n in range(QUEUED):  # through both front-ends
                body = {"image_url": image, "seed": n, "output_format": "png"}
                answer = http.post(
                    f"{urls[n % 2]}/queue/{ENDPOINT}", json=body, params={"fal_webhook": f"{hooks.url}/hook"}
                )
                queued.append(answer.json()["request_id"])

            def sync_run(n: int) -> httpx.Response:  # through the front-end that stays up
                body = {"image_url": image, "seed": 1000 + n, "output_format": "png"}
                return http.post(f"{urls[0]}/{ENDPOINT}", json=body)

            with ThreadPoolExecutor(SYNC) as pool:
                sync_answers = [pool.submit(sync_run, n) for n in range(SYNC)]

                # an SSE stream on front-end 1, killed mid-stream; the stream continues on front-end 0
                streamed = queued[-1]
                with http.stream("GET", f"{urls[1]}/queue/fal-ai/seedvr/requests/{streamed}/status/stream") as sse:
                    next(sse.iter_lines())
                    front_ends[1].send_signal(signal.SIGKILL)
                    front_ends[1].wait(10)

                # a worker killed in the middle of a job
                busy = wait_until(
                    lambda: db.query_one(
                        "SELECT pid FROM workers WHERE current_job IS NOT NULL AND stopped_at IS NULL"
                    ),
                    "a worker running a job",
                    timeout=60,
                )
                victim = next(w for w in workers if w.pid == busy[0])
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)

                subprocess.run(restart_postgres, shell=True, check=True, timeout=60)

                final = []
                with http.stream("GET", f"{urls[0]}/queue/fal-ai/seedvr/requests/{streamed}/status/stream") as sse:
                    for line in sse.iter_lines():
                        if line.startswith("data: "):
                            final.append(json.loads(line[6:]))
                assert final[-1]["status"] == "COMPLETED"
                sync_results = [answer.result() for answer in sync_answers]

            assert [r.status_code for r in sync_results] == [200] * SYNC, [
                r.text for r in sync_results if r.status_code != 200
            ]

            def all_completed() -> bool:
                rows = db.query("SELECT COUNT(*) FROM jobs WHERE status != 'COMPLETED'")
                return rows[0][0] == 0

            wait_until(all_completed, "every job COMPLETED", timeout=240)
            expected = _expected([*range(QUEUED), *(1000 + n for n in range(SYNC))])
            for n, answer in enumerate(sync_results):
                body = answer.json()
                assert body["seed"] == 1000 + n
                served = _served(http, urls[0], body["image"]["url"])
                assert np.array_equal(_pixels(served), expected[1000 + n]), f"sync job of seed {1000 + n}"

            # the killed front-end started again: every front-end serves every job's own output
            front_ends[1], urls[1] = _front_end(stores, tmp_path, "front-end-1-again")
            for url in urls:
                for n, request_id in enumerate(queued):
                    result = http.get(f"{url}/queue/fal-ai/seedvr/requests/{request_id}")
                    assert result.status_code == 200, result.text
                    assert result.json()["seed"] == n
                    output = result.json()["image"]
                    assert (output["width"], output["height"]) == (2 * SOURCE_SIZE[0], 2 * SOURCE_SIZE[1])
                    served = _served(http, url, output["url"])
                    assert len(served) == output["file_size"]
                    assert np.array_equal(_pixels(served), expected[n]), f"{request_id} (seed {n}) through {url}"
            # completed exactly once: one webhook row per queued job (written in the completing transaction)
            counts = db.query("SELECT job_id, COUNT(*) FROM webhooks GROUP BY job_id")
            assert sorted(row[0] for row in counts) == sorted(queued) and {row[1] for row in counts} == {1}
            delivered = wait_until(lambda: _delivered(hooks) >= set(queued) and _delivered(hooks), "every webhook", 120)
            assert delivered >= set(queued)
            rerun = db.query("SELECT COUNT(*) FROM jobs WHERE attempts > 1")[0][0]
            assert rerun >= 1  # the killed worker's job ran again
    finally:
        for process in [*front_ends, *workers]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*front_ends, *workers]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        db.close()
        log.close()


def _served(http: httpx.Client, base: str, url: str) -> bytes:
    """The bytes behind an output URL: a data URI's, or the file the front-end at `base` serves at its path."""
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    served = http.get(f"{base}{urlsplit(url).path}")
    assert served.status_code == 200, served.text
    return served.content


def _delivered(hooks: LocalHTTP) -> set[str]:
    ids = set()
    for _method, _path, _headers, body in list(hooks.requests):
        ids.add(json.loads(body)["request_id"])
    return ids
