"""`seedvr-local serve`: flags, settings, the start banner, and one-line errors."""

from __future__ import annotations

import argparse

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


def test_model_choice_is_required_and_exclusive():
    with pytest.raises(SystemExit):
        parse()
    with pytest.raises(SystemExit):
        parse("--model", "3b", "--weights-dir", "x")


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


def test_run_serve_wires_the_app(monkeypatch, tiny_bundle, tmp_path, capsys):
    import uvicorn

    seen = {}

    def fake_run(app, **kwargs):
        seen.update(kwargs, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    code = main(
        [
            "serve",
            "--weights-dir",
            str(tiny_bundle),
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "d"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] > 0 and seen["access_log"] is False
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{seen['port']}/api/fal/proxy" in out and "3B" in out


def test_served_model_is_warmed_up_before_it_is_ready(monkeypatch, tiny_bundle, tmp_path):
    """The engine factory (run in the worker before /readyz turns ready) loads the model and runs one image."""
    import uvicorn

    from seedvr_local.server import app as server_app
    from seedvr_local.upscaler import Upscaler

    factories, warm_ups = [], []
    real_create_app, real_warm_up = server_app.create_app, Upscaler.warm_up
    def create_app(settings, factory, description):
        factories.append(factory)
        return real_create_app(settings, factory, description)

    monkeypatch.setattr(server_app, "create_app", create_app)
    def warm_up(self, sizes=()):
        warm_ups.append(sizes)
        return real_warm_up(self, sizes)

    monkeypatch.setattr(Upscaler, "warm_up", warm_up)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    argv = ["serve", "--weights-dir", str(tiny_bundle), "--port", "0", "--data-dir", str(tmp_path), "--device", "cpu",
            "--warm-up-sizes", "48x32, 40x40"]  # fmt: skip
    assert main(argv) == 0
    assert not warm_ups  # nothing loads before the server is up
    upscaler = factories[0]()
    assert isinstance(upscaler, Upscaler) and warm_ups == [(), ((48, 32), (40, 40))]


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
