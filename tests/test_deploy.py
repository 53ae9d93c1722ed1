"""The systemd units in deploy/systemd: `systemd-analyze verify` accepts them, and their ExecStart command lines,
run as systemd would run them (the unit's Environment= and EnvironmentFile= applied, specifiers and variables
expanded), start an API and a worker that serve a job with the tiny model and stop cleanly on SIGTERM.

systemd is not PID 1 on the test machines, so the units are not started by systemd itself: the test runs their
command lines. Only the install paths are replaced (the package's prefix, the state directory, the environment
file) and, so the test owns its socket, the address and port (port 0: the system picks a free one).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests import requires
from tests.server.helpers import listening_url

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
API, WORKER = "seedvr-local-api.service", "seedvr-local-worker@.service"
PREFIX, STATE, ENV_FILE = "/opt/seedvr-local/bin/", "/var/lib/seedvr-local", "/etc/seedvr-local/seedvr-local.env"


def _installed(tmp_path: Path, port: int) -> Path:
    """The units as installed for this test: paths into the test's virtualenv and temporary directory."""
    units = tmp_path / "units"
    units.mkdir()
    for unit in (API, WORKER):
        text = (UNITS / unit).read_text()
        replacements = [
            (PREFIX, f"{Path(sys.executable).parent}/"),
            (STATE, str(tmp_path / "state")),
            (ENV_FILE, str(tmp_path / "seedvr-local.env")),
        ]
        if unit == API:
            replacements.append(("--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {port}"))
        for installed, here in replacements:
            assert installed in text, f"{unit} no longer has {installed!r}: update this test"
            text = text.replace(installed, here)
        (units / unit).write_text(text)
    return units


def test_systemd_analyze_verifies_the_units(tmp_path):
    analyze = requires.executable("systemd-analyze", "apt-get install systemd")
    units = _installed(tmp_path, 8000)
    # the template, and an instance of it (a name with a colon, such as cuda:0, is taken by verify for FILE:ALIAS)
    names = [API, WORKER, "seedvr-local-worker@cpu.service"]
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}  # the trailing colon keeps the system's unit paths
    run = subprocess.run([analyze, "verify", "--man=no", *names], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout + run.stderr == "", run.stdout + run.stderr


def test_systemd_verify_is_strict_enough_to_catch_a_mistake(tmp_path):
    """The check above fails for a unit that systemd would warn about (an unknown key), not only for broken ones."""
    analyze = requires.executable("systemd-analyze", "apt-get install systemd")
    units = _installed(tmp_path, 8000)
    broken = units / API
    broken.write_text(broken.read_text().replace("TimeoutStopSec=", "TimeoutStopSex="))
    run = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True)
    assert "Unknown key" in run.stderr


def test_the_units_command_lines_serve_a_job_and_stop_on_sigterm(tmp_path):
    units = _installed(tmp_path, 0)  # the system picks the port; the API prints it once it listens
    (tmp_path / "state").mkdir()  # StateDirectory= makes it
    (tmp_path / "seedvr-local.env").write_text("SEEDVR_MODEL_FLAGS=--model tiny\n")  # the admin's settings
    api = _start(units / API, None, tmp_path / "api.log")
    worker = _start(units / WORKER, "cpu", tmp_path / "worker.log")
    try:
        port = int(listening_url(tmp_path / "api.log", api, timeout=180).rsplit(":", 1)[1])
        _wait_ready(port, [api, worker], tmp_path)
        status, body = _request(port, "POST", "/fal-ai/seedvr/upscale/image", {"image_url": _png_data_uri()})
        assert status == 200 and body["image"]["width"] == 64, body
        status, metrics = _request(port, "GET", "/metrics")
        assert status == 200 and 'seedvr_jobs_total{outcome="ok"} 1' in metrics
        # KillSignal=SIGTERM, within TimeoutStopSec; clean stops for systemd: the worker drains and exits 0, the API
        # dies of the SIGTERM once shut down gracefully (uvicorn re-raises it), which systemd counts as a success
        for process, unit, clean in ((worker, WORKER, 0), (api, API, -signal.SIGTERM)):
            process.send_signal(signal.SIGTERM)
            assert process.wait(_stop_timeout(units / unit)) == clean
        assert "Application shutdown complete" in (tmp_path / "api.log").read_text()
        assert "stopping" in (tmp_path / "worker.log").read_text()
    finally:
        for process in (api, worker):
            process.kill()
            process.wait()


def _service(unit: Path) -> dict[str, list[str]]:
    """The [Service] section's settings, each key's values in order (no line continuations are used)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _environment(service: dict[str, list[str]]) -> dict[str, str]:
    """Environment= then EnvironmentFile= (whose variables override those of Environment=, as systemd does)."""
    env = {}
    for line in service.get("Environment", []):
        env.update(assignment.split("=", 1) for assignment in shlex.split(line))
    for path in service.get("EnvironmentFile", []):
        path = Path(path.removeprefix("-"))  # "-": optional
        if path.exists():
            env.update(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return env


def _command(service: dict[str, list[str]], instance: str | None, env: dict[str, str]) -> list[str]:
    """ExecStart as systemd expands it: %i/%I the instance; a word that is $VAR alone splits the value into words,
    ${VAR} inside a word is replaced as it is."""
    [line] = service["ExecStart"]
    if instance is not None:
        line = line.replace("%I", instance).replace("%i", instance)
    assert "%" not in line, f"an unexpanded specifier: {line}"
    words = []
    for word in shlex.split(line):
        alone = re.fullmatch(r"\$(\w+)", word)
        if alone:
            words += env.get(alone.group(1), "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def _start(unit: Path, instance: str | None, log: Path) -> subprocess.Popen:
    service = _service(unit)
    env = _environment(service)
    command = _command(service, instance, env)
    # systemd starts a service with a clean environment: PATH, HOME, and what the unit sets
    clean = {"PATH": os.environ["PATH"], "HOME": str(log.parent), "LANG": "C.UTF-8", **env}
    cwd = service["WorkingDirectory"][0]
    return subprocess.Popen(command, env=clean, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _stop_timeout(unit: Path) -> float:
    return float(_service(unit)["TimeoutStopSec"][0])


def _wait_ready(port: int, processes: list[subprocess.Popen], tmp_path: Path) -> None:
    deadline = time.monotonic() + 180  # two cold Python processes loading torch on a loaded 2-core machine
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))
                pytest.fail(f"a unit's process exited with {process.returncode}:\n{logs}")
        try:
            if _request(port, "GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail("the API did not report a ready worker")


def _request(port: int, method: str, path: str, body: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, payload, {"Content-Type": "application/json"} if payload else {})
        response = connection.getresponse()
        text = response.read().decode()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(text) if is_json else text
    finally:
        connection.close()


def _png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 80, 40)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
