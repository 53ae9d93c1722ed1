"""`seedvr-local serve`: flags, settings, the start banner, and one-line errors."""

from __future__ import annotations

import argparse
import http.client
import signal
import socket
import subprocess
import sys

import pytest
import torch

from seedvr_local.cli import build_parser, main
from seedvr_local.server.cli import banner, settings_from_args


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_defaults():
    args = parse("--model", "3b")
    settings = settings_from_args(args)
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert str(settings.data_dir) == "seedvr-data" and settings.api_keys == ()
    assert not settings.allow_private_urls and settings.cors_origins == ("*",)
    assert args.kernels == "auto" and not args.compile
    assert settings.retention_s == 24 * 3600
    assert settings_from_args(parse("--model", "3b", "--retention-hours", "0")).retention_s is None
    assert settings_from_args(parse("--model", "3b", "--retention-hours", "0.5")).retention_s == 1800
    assert parse("--model", "3b", "--compile", "--kernels", "torch").compile


def test_keys_from_flags_and_environment(monkeypatch):
    monkeypatch.setenv("SEEDVR_API_KEYS", "env-1, env-2,,")
    settings = settings_from_args(parse("--model", "7b", "--api-key", "flag-1", "--api-key", "env-1"))
    assert settings.api_keys == ("flag-1", "env-1", "env-2")


def test_model_choice_is_required_and_exclusive(capsys):
    assert main(["serve"]) == 2
    assert "serve needs --model or --weights-dir" in _one_error_line(capsys)
    with pytest.raises(SystemExit):
        parse("--model", "3b", "--weights-dir", "x")


@pytest.mark.parametrize(
    "flags", [["--model", "tiny"], ["--weights-dir", "w"], ["--device", "cpu", "--compile"], ["--devices", "cpu"],
              ["--kernels", "torch"], ["--cpu-memory", "release"], ["--dtype", "fp32", "--warm-up-sizes", "64x64"]]
)  # fmt: skip
def test_an_api_only_server_refuses_model_flags(capsys, flags):
    assert main(["serve", "--workers", "0", *flags]) == 2
    line = _one_error_line(capsys)
    assert "serve --workers 0 runs no model" in line and all(f in line for f in flags if f.startswith("--"))


def test_the_model_flags_unset_values_are_the_parsers_defaults():
    """What check_model_flags takes for "not given" is what the parser leaves when a flag is not given."""
    from seedvr_local.server.cli import MODEL_FLAGS

    args = vars(parse("--workers", "0"))
    assert {flag: args[flag[2:].replace("-", "_")] for flag in MODEL_FLAGS} == MODEL_FLAGS


def test_an_api_only_server_starts_without_a_model(monkeypatch, tmp_path, capsys):
    loads, seen = _no_model_loads(monkeypatch), {}
    _fake_serving(monkeypatch, seen)
    assert main(["serve", "--workers", "0", "--port", "0", "--data-dir", str(tmp_path)]) == 0
    assert "no model in this process (API only)" in capsys.readouterr().out
    assert loads == [] and "devices" not in seen  # nothing loaded, no worker process started


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ssl-certfile", "cert.pem"], "go together"),
        (["--ssl-certfile", "nope.pem", "--ssl-keyfile", "nope.key"], "no such file"),
        (["--port", "70000"], "--port"),
        (["--public-url", "example.com"], "--public-url"),
        (["--retention-hours", "-1"], "--retention-hours"),
        (["--retention-hours", "nan"], "--retention-hours"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, argv, message):
    assert main(["serve", "--model", "3b", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seedvr-local: error:") and message in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="triton can run here")
def test_impossible_kernels_are_one_line(capsys, tmp_path):
    assert main(["serve", "--model", "tiny", "--kernels", "triton", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--kernels triton needs" in err and "\n" not in err


def test_missing_weights_is_one_line(capsys, tmp_path):
    assert main(["serve", "--weights-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err


def test_banner_tells_clients_how_to_connect():
    settings = settings_from_args(parse("--model", "3b"))
    text = banner(settings, "127.0.0.1", 8123, tls=False, description="SeedVR2 3B")
    assert 'proxyUrl: { url: "http://127.0.0.1:8123/api/fal/proxy", when: "always" }' in text
    assert "FAL_RUN_HOST=127.0.0.1:8123/run FAL_QUEUE_RUN_HOST=127.0.0.1:8123/queue" in text
    assert "--ssl-certfile" in text and "OPEN" in text
    keyed = settings_from_args(parse("--model", "3b", "--api-key", "k"))
    tls_text = banner(keyed, "0.0.0.0", 8443, tls=True, description="x")
    assert "https://127.0.0.1:8443" in tls_text and "API key required" in tls_text and "OPEN" not in tls_text


def _fake_serving(monkeypatch, seen: dict) -> None:
    """ListeningServer.run records its config and socket and says it listens, instead of serving; the worker
    processes are recorded, not started."""
    from seedvr_local.server import worker_process
    from seedvr_local.server.listening import ListeningServer

    def run(self, sockets):
        seen.update(config=self.config, sockets=sockets, ports=[sock.getsockname()[1] for sock in sockets])
        self.on_listening()

    class Children:
        def stop(self, grace_s):
            seen["stopped"] = True

    def start_worker_processes(args, settings, devices):
        seen.update(worker_args=args, devices=devices)
        return Children()

    monkeypatch.setattr(ListeningServer, "run", run)
    monkeypatch.setattr(worker_process, "start_worker_processes", start_worker_processes)


def test_run_serve_wires_the_app(monkeypatch, tiny_bundle, tmp_path, capsys):
    seen = {}
    _fake_serving(monkeypatch, seen)
    code = main(["serve", "--weights-dir", str(tiny_bundle), "--port", "0", "--data-dir", str(tmp_path / "d")])
    assert code == 0
    config, (sock,), (port,) = seen["config"], seen["sockets"], seen["ports"]
    assert config.host == "127.0.0.1" and port > 0 and config.port == port and config.access_log is False
    assert sock.fileno() == -1  # closed once the server is done
    # the jobs run in one worker process per device (here: the machine's only one), stopped with the server
    assert seen["devices"] == ["cpu"] and seen["stopped"]
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/api/fal/proxy" in out and "3B" in out and "worker process" in out


@pytest.mark.parametrize("flags, devices", [(["--device", "cpu"], ["cpu"]), (["--devices", "cpu,cpu"], ["cpu", "cpu"])])
def test_serve_runs_a_worker_process_per_device(monkeypatch, tiny_bundle, tmp_path, flags, devices):
    seen = {}
    _fake_serving(monkeypatch, seen)
    assert main(["serve", "--weights-dir", str(tiny_bundle), "--port", "0", "--data-dir", str(tmp_path), *flags]) == 0
    assert seen["devices"] == devices


def test_device_and_devices_together_are_refused(capsys, tmp_path):
    assert main(["serve", "--model", "tiny", "--device", "cpu", "--devices", "cpu", "--data-dir", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("policy, device, applied", [("keep", "cpu", True), ("release", "cpu", False),
                                                     ("keep", "cuda:0", False)])  # fmt: skip
def test_a_cpu_worker_keeps_freed_memory_unless_told_to_release_it(monkeypatch, policy, device, applied):
    from seedvr_local import device_memory
    from seedvr_local.server.worker_process import apply_cpu_memory_policy

    kept = []
    monkeypatch.setattr(device_memory, "keep_freed_cpu_memory", lambda: kept.append(True) or True)
    assert apply_cpu_memory_policy(argparse.Namespace(cpu_memory=policy), device) is applied
    assert kept == ([True] if applied else [])


def test_served_model_is_warmed_up_before_it_is_ready(monkeypatch, tiny_bundle):
    """A worker's engine factory (run in the worker before it reports ready) loads the model and runs one image."""
    from seedvr_local.server.worker_process import engine_for
    from seedvr_local.upscaler import Upscaler

    warm_ups = []
    real_warm_up = Upscaler.warm_up

    def warm_up(self, sizes=()):
        warm_ups.append(sizes)
        return real_warm_up(self, sizes)

    monkeypatch.setattr(Upscaler, "warm_up", warm_up)
    args = parse("--weights-dir", str(tiny_bundle), "--warm-up-sizes", "48x32, 40x40")
    load, _description = engine_for(args, "cpu")
    assert not warm_ups  # nothing loads before the worker runs the factory
    upscaler = load()
    assert isinstance(upscaler, Upscaler) and warm_ups == [(), ((48, 32), (40, 40))]


def _no_model_loads(monkeypatch) -> list:
    """Records every model load instead of loading (a test of a start that must fail before any)."""
    from seedvr_local.upscaler import Upscaler

    loads = []
    monkeypatch.setattr(Upscaler, "tiny", classmethod(lambda cls, **kwargs: loads.append(kwargs)))
    monkeypatch.setattr(Upscaler, "from_weights_dir", classmethod(lambda cls, *a, **kwargs: loads.append(a)))
    return loads


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == "", "nothing about listening or clients before the server listens"
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seedvr-local: error:"), captured.err
    return lines[0]


def test_port_in_use_is_one_line_before_the_model_loads(monkeypatch, tmp_path, capsys):
    loads = _no_model_loads(monkeypatch)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main(["serve", "--model", "tiny", "--port", str(port), "--data-dir", str(tmp_path), "--device", "cpu"])
    assert code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in _one_error_line(capsys)
    assert loads == []


def test_a_file_that_is_not_a_certificate_is_one_line_before_the_model_loads(monkeypatch, tmp_path, capsys):
    loads = _no_model_loads(monkeypatch)
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    argv = ["serve", "--model", "tiny", "--port", "0", "--data-dir", str(tmp_path / "d"), "--device", "cpu",
            "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem")]  # fmt: skip
    assert main(argv) == 2
    assert "not a PEM certificate and its key" in _one_error_line(capsys)
    assert loads == []


@pytest.mark.parametrize("make_dir", [lambda d: d / "nothing", lambda d: (d / "empty").mkdir() or d / "empty"])
def test_a_bad_weights_dir_is_one_line_and_binds_nothing(monkeypatch, tmp_path, capsys, make_dir):
    from seedvr_local.server import listening

    bound = []
    monkeypatch.setattr(listening, "bind_socket", lambda *a: bound.append(a))
    code = main(["serve", "--weights-dir", str(make_dir(tmp_path)), "--data-dir", str(tmp_path / "d")])
    assert code == 2 and "weights directory" in _one_error_line(capsys) and bound == []


def test_the_banner_comes_once_the_port_accepts_connections(tmp_path):
    """The "listening on" line is true when it is printed: a client that connects at once gets an answer."""
    server = subprocess.Popen(
        [sys.executable, "-m", "seedvr_local.cli", "serve", "--model", "tiny", "--port", "0", "--device", "cpu",
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        for line in server.stdout:
            if "listening on" in line:
                break
        else:
            pytest.fail(f"the server exited with {server.wait()} before saying where it listens")
        host_port = line.split("listening on http://", 1)[1].split()[0]
        client = http.client.HTTPConnection(host_port, timeout=30)
        client.request("GET", "/readyz")
        assert client.getresponse().status in (200, 503)  # ready, or "loading": an answer either way
        client.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        server.stdout.close()


@pytest.mark.parametrize("sizes", ["1920", "1920x", "axb", "8x8"])
def test_bad_warm_up_sizes_are_refused(sizes, capsys):
    with pytest.raises(SystemExit) as exited:
        parse("--model", "3b", "--warm-up-sizes", sizes)
    assert exited.value.code == 2 and "--warm-up-sizes" in capsys.readouterr().err
    assert parse("--model", "3b", "--warm-up-sizes", "1920x1080,3840X2160").warm_up_sizes == ((1920, 1080), (3840, 2160))


def test_bf16_on_a_gpu_without_it_fails_before_the_server_starts(monkeypatch, tiny_bundle, tmp_path, capsys):
    from seedvr_local import devices

    monkeypatch.setattr(devices, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(devices, "cuda_capability", lambda device: (7, 5))
    argv = ["serve", "--weights-dir", str(tiny_bundle), "--data-dir", str(tmp_path), "--dtype", "bf16"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no bf16 arithmetic: use --dtype fp16" in err and len(err.strip().splitlines()) == 1


def test_a_worker_refuses_device_for_devices(capsys):
    assert main(["worker", "--model", "tiny", "--device", "cuda:1", "--devices", "cpu"]) == 2
    assert "use --devices cuda:1" in _one_error_line(capsys)
