"""The playground in a real browser: Debian's headless `chromium`, driven by playwright-core (tests/js) through
tests/js/playground.mjs, which reports what it saw as JSON; the assertions are here.

The image and video runs use `seedvr-local serve --model tiny` (the real pipeline, random weights); the key,
queue and cancel run uses the fake engine in this process, held in its "dit" phase until the page script says
"RELEASE". Every request the browser makes is recorded: none may leave 127.0.0.1.

Set SEEDVR_PLAYGROUND_SCREENSHOT=<file.png> to save a screenshot of the finished image run (docs/playground.png
is made so).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw

from seedvr_local.server.errors import cancelled_error
from tests import requires
from tests.server.helpers import FakeEngine, LiveServer, free_port, wait_until

JS_DIR = Path(__file__).resolve().parents[1] / "js"
LOOPBACK = "127.0.0.1"
IMAGE_ENDPOINT = "fal-ai/seedvr/upscale/image"
VIDEO_ENDPOINT = "fal-ai/seedvr/upscale/video"
KEY = "playground-key"


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    """node with tests/js's packages (`npm ci` when they are missing), and the chromium executable."""
    chromium = requires.executable("chromium", "Debian's chromium package: apt-get install chromium")
    node = requires.executable("node", "the browser tests drive chromium from node >= 20 (playwright-core)")
    if not (JS_DIR / "node_modules" / "playwright-core").is_dir():
        npm = requires.executable("npm", "needed to install tests/js: npm ci --prefix tests/js")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"npm ci in tests/js failed:\n{done.stderr[-2000:]}"
    return node, chromium


def drive_page(
    browser: tuple[str, str], scenario: str, on_release: Callable[[], None] | None = None, **env: str
) -> dict:
    """Runs tests/js/playground.mjs; calls `on_release` for each "RELEASE" line; returns its JSON summary."""
    node, chromium = browser
    process = subprocess.Popen(
        [node, "playground.mjs"],
        cwd=JS_DIR,
        env={**os.environ, "CHROMIUM": chromium, "SCENARIO": scenario, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    drain.start()
    lines = []
    try:
        for line in process.stdout:
            if line.strip() == "RELEASE" and on_release is not None:
                on_release()
            lines.append(line)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    drain.join(timeout=10)
    assert returncode == 0, "".join(errors)[-4000:] + "".join(lines)[-2000:]
    summary = json.loads(lines[-1])
    assert summary["consoleErrors"] == []
    return summary


def assert_on_loopback(requests: list[str]) -> None:
    """Every request the browser made went to 127.0.0.1 (blob: URLs are the page's own, named after it)."""
    assert requests
    hosts = {urlsplit(url.removeprefix("blob:")).hostname for url in requests}
    assert hosts == {LOOPBACK}, [url for url in requests if urlsplit(url.removeprefix("blob:")).hostname != LOOPBACK]


def draw_image(tmp_path: Path) -> Path:
    """An image with edges and colours, so the before/after view shows something."""
    image = Image.new("RGB", (96, 64), (30, 60, 120))
    draw = ImageDraw.Draw(image)
    for x in range(0, 96, 12):
        draw.line([(x, 0), (95 - x, 63)], fill=(250, 200, 40), width=2)
    draw.ellipse([30, 14, 66, 50], outline=(255, 255, 255), width=3)
    path = tmp_path / "input.png"
    image.save(path)
    return path


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory) -> Iterator[tuple[str, dict]]:
    """`seedvr-local serve --model tiny` on loopback: its URL and its OpenAPI document."""
    work = tmp_path_factory.mktemp("tiny-server")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "seedvr_local.cli", "serve", "--model", "tiny", "--device", "cpu",
         "--host", LOOPBACK, "--port", str(port), "--data-dir", str(work / "data")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def ready() -> bool:
        assert server.poll() is None, (work / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "the tiny server answers /readyz", timeout=120)
        yield url, httpx.get(f"{url}/openapi.json").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _size_in_bytes(fact: str) -> int:
    """"42.1 KiB (43,062 bytes)" -> 43062; "812 bytes" -> 812."""
    exact = fact.split("(")[-1] if "(" in fact else fact
    return int(exact.split()[0].replace(",", ""))


def test_an_image_runs_to_a_comparison_and_a_download(browser, tiny_server, tmp_path):
    url, document = tiny_server
    screenshot = os.environ.get("SEEDVR_PLAYGROUND_SCREENSHOT")
    summary = drive_page(
        browser,
        "image",
        BASE_URL=url,
        IMAGE_PATH=str(draw_image(tmp_path)),
        OUT_DIR=str(tmp_path),
        **({"SCREENSHOT": str(Path(screenshot).resolve())} if screenshot else {}),
    )
    offered = [path.removeprefix("/queue/") for path, ops in document["paths"].items()
               if path.startswith("/queue/") and "{" not in path and "post" in ops]  # fmt: skip
    assert summary["endpoints"] == offered and IMAGE_ENDPOINT in offered
    assert "fal-ai/seedvr/upscale/image/seamless" in offered
    run = summary["image"]
    assert run["state"] == "done" and run["error"] is None, run
    assert run["uploaded"].startswith(f"{url}/files/") and run["uploaded"].endswith("/input.png")

    # the run, watched: every phase done, the logs streamed
    assert "dit" in run["phases"] and "save" in run["phases"]
    assert "dit: " in run["logs"] and "done: 192x128" in run["logs"]

    # the result: the output's facts and the downloaded file agree
    facts = run["facts"]
    assert facts["Size"] == "192×128" and facts["Format"].startswith("image/jpeg")
    assert facts["Seed"].isdigit() and "inference" in facts["Timings"]
    downloaded = Path(run["download"]["path"]).read_bytes()
    assert len(downloaded) == _size_in_bytes(facts["File size"])
    assert Image.open(io.BytesIO(downloaded)).size == (192, 128)
    assert run["download"]["suggested"].endswith(".jpg") and run["download"]["href"].startswith(f"{url}/files/")

    # before and after: the input and the output, drawn at the same size, split at the slider
    fitted, moved, zoomed = run["fitted"], run["moved"], run["zoomed"]
    assert fitted["before"]["natural"] == [96, 64] and fitted["after"]["natural"] == [192, 128]
    assert fitted["before"]["box"] == fitted["after"]["box"]
    assert fitted["split"] == "50" and fitted["before"]["clip"] == "inset(0px 50% 0px 0px)"
    assert moved["split"] == "40" and moved["before"]["clip"] == "inset(0px 60% 0px 0px)"
    # zoom to 1:1: one output pixel on one device pixel
    assert zoomed["zoomPressed"] == "true"
    assert zoomed["after"]["box"]["width"] == pytest.approx(192 / zoomed["devicePixelRatio"])
    assert zoomed["before"]["box"] == zoomed["after"]["box"]
    phone = run["phone"]
    assert phone["scrollWidth"] <= phone["viewport"] and phone["stageWidth"] <= phone["viewport"]

    # the client code names this server and the input just used
    code = run["code"]
    host = url.removeprefix("http://")
    assert f'proxyUrl: {{ url: "{url}/api/fal/proxy", when: "always" }}' in code["js"]
    assert f'fal.subscribe("{IMAGE_ENDPOINT}"' in code["js"] and run["uploaded"] in code["js"]
    assert f'"FAL_RUN_HOST"] = "{host}/run"' in code["python"]
    assert f'"FAL_QUEUE_RUN_HOST"] = "{host}/queue"' in code["python"] and run["uploaded"] in code["python"]
    assert f'curl -X POST "{url}/queue/{IMAGE_ENDPOINT}"' in code["curl"]
    assert json.dumps({"image_url": run["uploaded"]}, separators=(",", ":")) in code["curl"]
    assert run["copied"]["clipboard"] == run["copied"]["shown"] == code["curl"]  # the tab shown last
    assert_runs_as_shown(browser[0], code["js"], tmp_path)

    assert_on_loopback(summary["requests"])
    requested = {urlsplit(request).path for request in summary["requests"]}
    assert {"/storage/upload/initiate", f"/queue/{IMAGE_ENDPOINT}"} <= requested
    assert any(path.endswith("/status/stream") for path in requested)


def assert_runs_as_shown(node: str, js_code: str, directory: Path) -> None:
    """The page's JavaScript, run by node with the real @fal-ai/client: it prints the output's URL."""
    (directory / "node_modules").symlink_to(JS_DIR / "node_modules", target_is_directory=True)
    script = directory / "client.mjs"
    script.write_text(js_code)
    done = subprocess.run([node, str(script)], cwd=directory, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("http://127.0.0.1:")


def test_a_video_runs_side_by_side_and_downloads(browser, tiny_server, tmp_path):
    url, document = tiny_server
    if f"/queue/{VIDEO_ENDPOINT}" not in document["paths"]:
        pytest.skip(f"this server's OpenAPI document has no {VIDEO_ENDPOINT} endpoint")
    requires.module("av", "PyAV writes the test video: pip install av")
    from seedvr_local.video.samples import make_video

    video = make_video(tmp_path / "input.mp4", width=32, height=24, frames=9)
    summary = drive_page(browser, "video", BASE_URL=url, VIDEO_PATH=str(video), OUT_DIR=str(tmp_path))
    run = summary["video"]
    assert run["state"] == "done" and run["error"] is None, run
    before, after = run["loaded"]
    assert before["size"] == [32, 24] and after["size"] == [64, 48]
    assert run["facts"]["Size"] == "64×48"
    # played together with one button, paused together
    assert all(not video["paused"] and video["time"] > 0 for video in run["playing"])
    assert all(video["paused"] for video in run["paused"])
    downloaded = Path(run["download"]["path"]).read_bytes()
    assert len(downloaded) == _size_in_bytes(run["facts"]["File size"])
    assert run["uploaded"] in run["code"]["js"] and f'fal.subscribe("{VIDEO_ENDPOINT}"' in run["code"]["js"]
    assert_on_loopback(summary["requests"])


class _Tokens:
    """A gate for FakeEngine that lets one held request through per `set()`."""

    def __init__(self) -> None:
        self.semaphore = threading.Semaphore(0)

    def wait(self, timeout: float) -> bool:
        return self.semaphore.acquire(timeout=timeout)

    def set(self) -> None:
        self.semaphore.release()


def test_key_prompt_errors_queue_and_cancel_with_the_keyboard(browser, settings, tmp_path):
    settings.api_keys = (KEY,)
    tokens = _Tokens()
    engine = FakeEngine(gate=tokens)
    with LiveServer(settings, lambda: engine) as server:
        # what the server itself answers, which the page must show as it is
        missing_key = httpx.post(f"{server.url}/storage/upload/initiate").json()["detail"]
        wrong_key = httpx.post(f"{server.url}/storage/upload/initiate", headers={"Authorization": "Key x"}).json()
        invalid = httpx.post(
            f"{server.url}/queue/{IMAGE_ENDPOINT}",
            json={"image_url": "not-a-url"},
            headers={"Authorization": f"Key {KEY}"},
        ).json()["detail"]
        image = draw_image(tmp_path)
        seen = drive_page(browser, "keyed", on_release=tokens.set, BASE_URL=server.url, KEY=KEY, IMAGE_PATH=str(image))

    assert seen["keyMissing"] == missing_key and seen["keyWrong"] == wrong_key["detail"]
    assert seen["storedKey"] == KEY
    # an invalid input: the server's detail, in the error box and at the field
    [problem] = invalid
    assert seen["invalid"]["state"] == "failed"
    assert seen["invalid"]["error"] == f"image_url: {problem['msg']}"
    assert seen["invalid"]["fieldError"] == problem["msg"] and seen["invalid"]["ariaInvalid"] == "true"
    # keyboard only: the file picker follows the endpoint chooser, Tab reaches Run
    assert seen["afterChooser"] == "f-image_url-file" and seen["reachedRun"] == "run"
    assert seen["uploaded"].startswith(f"{server.url}/files/")
    # queued behind the other request, then running (held in "dit"), then cancelled
    assert seen["firstStatus"] == "IN_PROGRESS"
    assert seen["queued"] == "In the queue: next to run"
    assert seen["running"].startswith("Running: dit: ") and seen["phasesRunning"][-1] == "current:dit"
    assert seen["cancelStatus"] == 202
    assert seen["cancelledRun"]["state"] == "failed"
    assert seen["cancelledRun"]["error"] == cancelled_error().detail
    # the code says where the key goes and never holds it
    assert '-H "Authorization: Key $FAL_KEY"' in seen["code"]["curl"] and "FAL_KEY" in seen["code"]["js"]
    assert all(KEY not in text for text in seen["code"].values())
    assert_on_loopback(seen["requests"])
