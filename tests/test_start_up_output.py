"""What a user reads when the tiny model starts: the random-weights notice once, and no warning from a library
about how the models were cast (the load keeps the float32 modules in float32 itself)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image

from seedvr_local.weights.bundle import load_models
from seedvr_local.weights.tiny import RANDOM_WEIGHTS_NOTICE, build_tiny_models

CAST_WARNING = "should be kept in float32"  # diffusers' warning when a model is cast with `to(dtype)`
CLI = [sys.executable, "-m", "seedvr_local.cli"]


def test_the_tiny_model_is_cast_as_a_loaded_one_is(tiny_bundle):
    """bf16: the modulation modules (`_keep_in_fp32_modules`) and the RoPE frequencies stay float32 in the
    built-in model exactly as in the same weights read from a directory."""
    built = build_tiny_models(dtype=torch.bfloat16)
    loaded = load_models(tiny_bundle, dtype=torch.bfloat16)
    for a, b in ((built.dit, loaded.dit), (built.vae, loaded.vae)):
        dtypes = {name: tensor.dtype for name, tensor in a.state_dict().items()}
        assert dtypes == {name: tensor.dtype for name, tensor in b.state_dict().items()}
    assert built.dit.vid_out_ada.parameters().__next__().dtype == torch.float32
    assert built.dit.vid_in.parameters().__next__().dtype == torch.bfloat16


def test_upscale_with_the_tiny_model_says_the_notice_once_and_warns_of_nothing(tmp_path):
    Image.new("RGB", (12, 8), (40, 90, 200)).save(tmp_path / "in.png")
    run = subprocess.run(
        [*CLI, "upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", "tiny",
         "--device", "cpu", "--dtype", "bf16", "--seed", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    assert CAST_WARNING not in output
    assert [line for line in output.splitlines() if RANDOM_WEIGHTS_NOTICE in line] == [
        f"note: {RANDOM_WEIGHTS_NOTICE}"
    ]


def test_serve_with_the_tiny_model_says_the_notice_once_and_warns_of_nothing(tmp_path):
    """The real `serve`, up to its worker's "model ready" line (every start-up message is out by then)."""
    server = subprocess.Popen(
        [*CLI, "serve", "--model", "tiny", "--port", "0", "--device", "cpu", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in server.stdout:
            lines.append(line.rstrip("\n"))
            if "model ready" in line:
                break
        else:
            pytest.fail(f"the server exited with {server.wait()} before its model was ready:\n" + "\n".join(lines))
    finally:
        server.send_signal(signal.SIGINT)
        lines += server.communicate(timeout=60)[0].splitlines()
    assert not [line for line in lines if CAST_WARNING in line]
    notices = [line for line in lines if RANDOM_WEIGHTS_NOTICE in line]
    assert len(notices) == 1 and notices[0].startswith("seedvr-local serve: tiny test model"), notices
