"""`seedvr-local --help` and argument errors answer without loading torch, and the request schema loads without
it: checked on the modules a fresh interpreter ends up with, not on wall-clock time (the CI machine is shared;
the timings are printed for information)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

#: What a quick answer must not have loaded: seconds of imports each (torch alone takes several).
HEAVY = ("torch", "diffusers", "fastapi", "seedvr_local.server.app", "seedvr_local.upscaler")

# Runs the CLI's main() in-process, then reports its exit code, output and the heavy modules it loaded.
_CLI_WRAPPER = """
import contextlib, io, json, sys
from seedvr_local.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
heavy = [name for name in {heavy!r} if name in sys.modules]
print(json.dumps({{"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy}}))
""".format(heavy=HEAVY)


def _cli(*argv: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CLI_WRAPPER, *argv], capture_output=True, text=True, timeout=120, check=True
    )
    print(f"seedvr-local {' '.join(argv)}: {time.perf_counter() - started:.2f} s")
    return json.loads(done.stdout)


@pytest.mark.parametrize("argv", [["--help"], ["upscale", "--help"], ["serve", "--help"], ["eval", "--help"], ["--version"]])
def test_help_loads_nothing_heavy(argv):
    result = _cli(*argv)
    assert result["code"] == 0 and result["out"].strip()
    assert result["heavy"] == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["upscale"], "required: input"),
        (["upscale", "in.png", "--upscale-factor", "2", "--target-resolution", "720p"], "not allowed with"),
        (["upscale", "in.png", "--color-fix", "sepia"], "invalid choice"),
        (["upscale", "in.png", "--vae-tile", "4"], "at least 8 pixels"),
        (["upscale", "in.png", "-o", "out.png", "--upscale-factor", "20"], "upscale_factor must be between"),
        (["upscale", "in.png", "-o", "out.png", "--seed", "-1"], "seed must be between"),
        (["upscale", "missing.png", "-o", "out.png"], "no such file"),
        (["upscale", "in.png", "-o", "out.bmp"], "unknown image extension"),
        (["serve"], "serve needs --model or --weights-dir"),
        (["eval", "set", "--out", "run", "--metrics", "psnr,vmaf"], "unknown metric 'vmaf'"),
        (["eval", "missing-set", "--out", "run", "--model", "tiny"], "not a dataset folder"),
        (["eval", "set", "--out", "run", "--model", "3b"], "no SeedVR2 3B weights"),
        (["serve", "--workers", "0", "--model", "tiny"], "serve --workers 0 runs no model"),
        (["serve", "--model", "tiny", "--max-video-clip-frames", "8"], "--max-video-clip-frames"),
        (["serve", "--model", "tiny", "--port", "70000"], "--port must be between"),
        (["serve", "--model", "tiny", "--ssl-certfile", "cert.pem"], "go together"),
        (["serve", "--model", "3b", "--warm-up-sizes", "big"], "--warm-up-sizes"),
        (["download", "--model", "tiny"], "invalid choice"),
    ],
)
def test_argument_errors_load_nothing_heavy(argv, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDVR_HOME", str(tmp_path / "home"))  # no weights installed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.png").write_bytes(b"not read before the arguments are checked")
    result = _cli(*argv)
    assert result["code"] == 2 and message in result["err"], result
    assert result["heavy"] == []


def test_missing_downloaded_weights_load_nothing_heavy(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDVR_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.png").write_bytes(b"")
    for command in (["serve", "--model", "3b"], ["upscale", "in.png", "-o", "out.png", "--model", "7b"]):
        result = _cli(*command)
        assert result["code"] == 2 and "seedvr-local download --model" in result["err"], result
        assert result["err"].count("\n") == 1 and result["heavy"] == []


def test_the_wrapper_sees_heavy_imports():
    """The check above can fail: an import that needs torch shows up."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, seedvr_local.options, seedvr_local.pipeline; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "True"


def test_request_schema_loads_without_torch():
    code = (
        "import sys\n"
        "from seedvr_local.server.schema import SeedVRImageInput, parse_input\n"
        "from seedvr_local.options import UpscaleOptions\n"
        "parse_input(b'{\"image_url\": \"https://example.com/a.png\", \"target_resolution\": \"720p\"}')\n"
        "UpscaleOptions(upscale_factor=3).validate()\n"
        f"print([name for name in {HEAVY!r} if name in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
