"""What the hostile-client tests share: the memory of this process sampled while an attack runs, crafted videos,
and a raw HTTP client that reads the answer while it is still sending (as an attacker's client does)."""

from __future__ import annotations

import io
import os
import select
import socket
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

MIB = 1024 * 1024


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """`with PeakMemory() as memory: ...` then `memory.growth`: the most this process's resident memory rose above
    where it was at the start, sampled every 5 ms."""

    def __init__(self):
        self.start = self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def serve_settings(*flags: str):
    """The ServerSettings `seedvr-local serve --model tiny <flags>` runs with."""
    from seedvr_local.cli import build_parser
    from seedvr_local.server.cli import settings_from_args

    return settings_from_args(build_parser().parse_args(["serve", "--model", "tiny", *flags]))


def png_frame(width: int, height: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, 255 - value, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_mov(path: Path, sizes: list[tuple[int, int]], fps: int = 10) -> Path:
    """A MOV of PNG frames whose stream header declares the first frame's size: each frame is its own PNG, muxed
    as it is, so later frames can be any size (what an encoder would never write, and a crafted file does)."""
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("png", rate=fps)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "rgb24"
        stream.time_base = Fraction(1, fps)
        container.start_encoding()  # the muxer settles the stream's time base here: the timestamps follow it
        ticks = round(1 / (fps * stream.time_base))
        for index, (width, height) in enumerate(sizes):
            packet = av.Packet(png_frame(width, height, index * 20 % 256))
            packet.stream = stream
            packet.pts = packet.dts = index * ticks
            packet.duration = ticks
            packet.time_base = stream.time_base
            container.mux(packet)
    return path


def raw_request(url: str, method: str, path: str, headers: dict[str, str], body_chunks, timeout: float = 30.0):
    """Send a request with a chunked body from `body_chunks` over a plain socket, stopping as soon as the server
    answers (or closes); returns (status, the answer's first bytes, bytes of the body sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Transfer-Encoding: chunked"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sent = 0
    answer = b""
    deadline = time.monotonic() + timeout
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed) before the end of the body
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except OSError:
                break
            sent += len(chunk)
            if time.monotonic() > deadline:
                raise AssertionError("the body was still being sent at the deadline")
        else:
            sock.sendall(b"0\r\n\r\n")
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, answer, sent


def repeated(block: bytes, total: int):
    """`total` bytes as chunks of one block, generated as they are sent (never held whole)."""
    for start in range(0, total, len(block)):
        yield block[: min(len(block), total - start)]
