"""A real `seedvr-local serve` in a child process, on a port it picks itself (port 0, read back from its banner),
for the tests that kill its worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.server import prometheus

#: The worker label of a /metrics series: "<host>/<pid>/<device>/<suffix>".
_WORKER_PID = re.compile(r"^[^/]+/(\d+)/")


class RealServe:
    """`seedvr-local serve --model tiny --port 0 ...` with `flags`; its output is collected in `lines`."""

    def __init__(self, data_dir: Path, *flags: str, start_timeout_s: float = 120.0):
        command = [sys.executable, "-m", "seedvr_local.cli", "serve", "--model", "tiny", "--port", "0",
                   "--data-dir", str(data_dir), *flags]  # fmt: skip
        env = {**os.environ, "SEEDVR_HOME": str(data_dir / "no-weights-here"), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.base = ""
        threading.Thread(target=self._read, daemon=True).start()  # drained always: a full pipe would block it
        if not self._listening.wait(start_timeout_s):
            self.stop()
            raise AssertionError("serve did not say where it listens:\n" + self.output())
        self.client = httpx.Client(base_url=self.base, timeout=60)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if not self._listening.is_set() and "listening on http://" in line:
                self.base = "http://" + line.split("listening on http://", 1)[1].split()[0]
                self._listening.set()
        self._listening.set()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, workers: int = 1, timeout_s: float = 120.0) -> dict:
        """/readyz once it answers 200 with `workers` ready workers."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, "serve exited:\n" + self.output()
            ready = self.client.get("/readyz")
            if ready.status_code == 200 and ready.json().get("workers", 0) >= workers:
                return ready.json()
            assert time.monotonic() < deadline, f"not ready in {timeout_s} s: {ready.text}\n{self.output()}"
            time.sleep(0.1)

    def metrics(self) -> dict[str, prometheus.Family]:
        response = self.client.get("/metrics")
        assert response.status_code == 200, response.text
        return prometheus.parse(response.text)

    def worker_pids(self, busy_only: bool = False) -> list[int]:
        """The pids of the live worker processes, as /metrics names them (those running a job: `busy_only`)."""
        busy = self.metrics()["seedvr_worker_busy"].samples
        pids = []
        for (_, labels), value in busy.items():
            if busy_only and value != 1:
                continue
            pids.append(int(_WORKER_PID.match(dict(labels)["worker"])[1]))
        return sorted(pids)

    def restarts(self) -> float:
        return prometheus.value(self.metrics(), "seedvr_worker_restarts_total")

    def children(self) -> list[tuple[int, str]]:
        """(pid, state) of this server's child processes, from /proc: "Z" is a defunct (unreaped) one."""
        found = []
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.append((int(status.parent.name), fields[0]))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> RealServe:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
