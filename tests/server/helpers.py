"""Test doubles and tools for the server tests: a fast fake engine (images and videos), images, a live uvicorn
server."""

from __future__ import annotations

import base64
import io
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import torch
import uvicorn
from PIL import Image

from seedvr_local.image_io import DecodedImage, encode_image, from_pil, to_pil
from seedvr_local.memory_planner import MemoryPlanError, RunPlan
from seedvr_local.options import UpscaleOptions
from seedvr_local.server import ServerSettings, create_app
from seedvr_local.server.netguard import NetGuard

#: The file stores the storage tests run on (the `file_store` fixture of conftest.py).
FILE_STORES = ("local", "s3")

ENGINE_PHASES = ("resize", "encode", "dit", "vae_decode", "color_fix", "finish")


def png_bytes(width: int = 24, height: int = 16, color=(200, 40, 90), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height greyscale pixels (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)  # far fewer pixels than claimed: only the header matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FakeResult:
    rgb: object
    alpha: object
    seed: int
    timings: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[-1], self.rgb.shape[-2]

    def encode(self, fmt: str) -> bytes:
        return encode_image(self.rgb, self.alpha, fmt)


@dataclass(frozen=True)
class FakePrepared:
    image: DecodedImage
    options: UpscaleOptions
    output_size: tuple[int, int]


class FakeEngine:
    """Upscales with a plain bicubic resize, through the same phases and callbacks as the Upscaler.

    `gate`: when given, the engine waits in its "dit" phase until the test sets it (`entered` tells the
    test it got there), so tests can hold a job IN_PROGRESS. `fail`: raised from the "dit" phase.
    `slow_seeds`: {seed: seconds} spent in "dit" for requests with that seed (for clients in another
    process, which cannot reach a gate).
    """

    description = "fake engine (tests)"
    notice = None

    def __init__(
        self,
        gate: threading.Event | None = None,
        fail: Exception | None = None,
        phase_delay: float = 0.0,
        slow_seeds: dict[int, float] | None = None,
        max_clip_frames: int | None = None,
    ):
        self.gate = gate
        self.slow_seeds = slow_seeds or {}
        self.fail = fail
        self.phase_delay = phase_delay
        self.entered = threading.Event()
        self.calls: list[tuple[int, int, UpscaleOptions]] = []
        self.pipeline = IdentityPipeline(self)
        self.planner = FakePlanner(max_clip_frames)

    def enter_dit(self, seed: int | None) -> None:
        """The "dit" phase of an image, or of each video clip: where the gate, `fail` and `slow_seeds` act."""
        self.entered.set()
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the engine's gate")
        if self.fail is not None:
            raise self.fail
        time.sleep(self.slow_seeds.get(seed, 0.0))

    def max_output_pixels(self, aspect: tuple[int, int] = (1, 1)) -> int:
        return 2**62  # no memory limit: the server's own cap applies

    def prepare(self, image: DecodedImage, options: UpscaleOptions) -> FakePrepared:
        options.validate()
        return FakePrepared(image, options, options.output_size(image.width, image.height))

    def run(self, prepared: FakePrepared, progress=None) -> FakeResult:
        image, options = prepared.image, prepared.options
        self.calls.append((image.width, image.height, options))
        width, height = prepared.output_size
        timings = {}
        for phase in ENGINE_PHASES:
            if progress is not None:
                progress(phase)
            started = time.perf_counter()
            if phase == "dit":
                self.enter_dit(options.seed)
            if self.phase_delay:
                time.sleep(self.phase_delay)
            timings[phase] = time.perf_counter() - started
        resized = from_pil(to_pil(image.rgb, image.alpha).resize((width, height), Image.BICUBIC))
        seed = options.seed if options.seed is not None else 424242
        return FakeResult(resized.rgb, resized.alpha, seed, timings)


class IdentityPipeline:
    """The fake engine's `RestorationPipeline` for videos: each clip comes back as it went in (already resized by
    the video library), after the engine's "dit" phase. `clips` records the frames of each clip restored."""

    device = torch.device("cpu")
    size_multiple = 16

    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.clips: list[int] = []

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (1, 1, 1, 1)  # the noises are drawn, and unused

    def restore(self, video, noises, cond_noise_scale, color_fix, on_phase, crop, vae_tiling, offload=None):
        self.clips.append(video.shape[1])
        self.engine.enter_dit(None)
        height, width = crop
        return SimpleNamespace(colorfixed=video[..., :height, :width].clone())


class FakePlanner:
    """Every clip fits, up to `max_clip_frames` frames (None: any length)."""

    def __init__(self, max_clip_frames: int | None = None):
        self.max_clip_frames = max_clip_frames

    def plan(self, width: int, height: int, frames: int = 1) -> RunPlan:
        if self.max_clip_frames is not None and frames > self.max_clip_frames:
            raise MemoryPlanError(f"a clip of {frames} frames does not fit", 2, 1, None)
        return RunPlan(width, height, frames, None, {"dit": 0}, 2**40)


def open_when_stopping(worker, gate: threading.Event) -> None:
    """Open `gate` once `worker` is told to stop (the app's shutdown has begun): a job held at the gate then ends
    its phase with the shutdown under way, whatever the machine's speed."""

    def opener() -> None:
        worker._stopping.wait(60)
        gate.set()

    threading.Thread(target=opener, daemon=True).start()


def allow_loopback_only() -> NetGuard:
    """Treats 127.0.0.1 (and only it) as a public address, so SSRF checks can be tested on loopback."""
    import ipaddress

    return NetGuard(allow_private=False, policy=lambda ip: ip == ipaddress.ip_address("127.0.0.1"))


class LiveServer:
    """The app served by uvicorn in a thread of the test process, on a loopback port the system picks (bound here,
    so no other process can take it before the server listens)."""

    def __init__(self, settings: ServerSettings, engine_factory, ssl: tuple[Path, Path] | None = None, guard=None):
        from seedvr_local.server.listening import bind_socket

        self.settings = settings
        self.socket = bind_socket("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        scheme = "https" if ssl else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.app = create_app(settings, engine_factory, guard=guard)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            ssl_certfile=str(ssl[0]) if ssl else None,
            ssl_keyfile=str(ssl[1]) if ssl else None,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()

    @property
    def state(self):
        return self.app.state.server


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class LocalHTTP:
    """A stdlib HTTP server on 127.0.0.1 for image_url and webhook tests.

    `routes` maps a path to (status, headers, body) or to a callable(handler) returning that tuple, or
    None when it wrote the response itself; every request is recorded as (method, path, headers, body).
    """

    def __init__(self, routes: dict | None = None, host: str = "127.0.0.1"):
        import http.server

        self.routes = dict(routes or {})
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.received = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer.received:
                    outer.requests.append((self.command, self.path, dict(self.headers), body))
                    outer.received.notify_all()
                route = outer.routes.get(self.path.split("?")[0], (404, {}, b"not found"))
                result = route(self) if callable(route) else route
                if result is None:  # the route wrote its own response
                    return
                status, headers, payload = result
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _handle

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> LocalHTTP:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        """Block until `count` requests arrived; returns them."""
        with self.received:
            self.received.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)


def wait_until(condition, what: str, timeout: float = 10.0):
    """Poll `condition()` until it returns something truthy (returned), failing after `timeout` seconds with
    `what` in the message. The deadline only bounds a hang: it is generous, never part of what is tested."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what}")
        time.sleep(0.02)


LISTENING = re.compile(r"listening on (https?://\S+)")


def listening_url(log: Path, process: subprocess.Popen, timeout: float = 120.0) -> str:
    """The URL a `seedvr-local serve` started with `--port 0` prints in its log once it accepts connections."""

    def printed():
        assert process.poll() is None, f"the server exited: {log.read_text(errors='replace')[-2000:]}"
        found = LISTENING.search(log.read_text(errors="replace")) if log.exists() else None
        return found and found.group(1)

    return wait_until(printed, f"the server logging to {log} listening", timeout)


def wait_status(client, request_id: str, wanted: str = "COMPLETED", timeout: float = 10.0, logs: bool = False) -> dict:
    """Poll a TestClient's status route until the request reaches `wanted`."""
    last: dict = {}

    def reached():
        response = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}/status", params={"logs": int(logs)})
        last.update(body=response.json())
        return last["body"] if last["body"].get("status") == wanted else None

    try:
        return wait_until(reached, f"request {request_id} {wanted}", timeout)
    except AssertionError:
        raise AssertionError(f"request {request_id} still {last['body'].get('status')} after {timeout} s: {last['body']}")


class SlowSeeds:
    """A real engine that pauses at the start of its "dit" phase for requests with a chosen seed, so a
    client in another process can catch such a request running (and cancel it)."""

    def __init__(self, engine, slow_seeds: dict[int, float]):
        self.engine = engine
        self.slow_seeds = slow_seeds
        self.description = engine.description
        self.notice = engine.notice
        self.pipeline = engine.pipeline  # videos run at full speed
        self.planner = engine.planner
        self.calls: list[tuple[int, int, UpscaleOptions]] = []

    def max_output_pixels(self, aspect: tuple[int, int] = (1, 1)) -> int:
        return self.engine.max_output_pixels(aspect)

    def prepare(self, image: DecodedImage, options: UpscaleOptions):
        return self.engine.prepare(image, options)

    def run(self, prepared, progress=None):
        options = prepared.options
        self.calls.append((prepared.source.width, prepared.source.height, options))

        def on_phase(phase: str) -> None:
            if progress is not None:
                progress(phase)
            if phase == "dit":
                time.sleep(self.slow_seeds.get(options.seed, 0.0))

        return self.engine.run(prepared, on_phase)


#: A URL of another host in a page or its assets (a page that works offline names none).
EXTERNAL_URL = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def page_assets(html: str) -> list[str]:
    """Every src= and href= of a page."""

    class Assets(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.urls: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    parser = Assets()
    parser.feed(html)
    return parser.urls
