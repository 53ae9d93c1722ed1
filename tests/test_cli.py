"""`seedvr-local` end to end with the tiny bundle, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local.cli import main


def _write_png(path, width, height, mode="RGB"):
    rng = np.random.default_rng(0)
    channels = len(mode)
    Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode).save(path)
    return path


def test_rgba_png_is_upscaled_to_an_rgba_png(tmp_path, tiny_bundle):
    source = _write_png(tmp_path / "in.png", 50, 37, "RGBA")
    target = tmp_path / "out.png"
    code = subprocess.run(
        [sys.executable, "-m", "seedvr_local.cli", "upscale", str(source), "-o", str(target),
         "--weights-dir", str(tiny_bundle), "--upscale-factor", "2", "--seed", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert code.returncode == 0, code.stderr
    with Image.open(target) as out:
        assert out.format == "PNG" and out.mode == "RGBA" and out.size == (100, 74)


def test_directory_input_writes_a_sibling_folder(tmp_path, tiny_bundle, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    _write_png(folder / "a.png", 20, 16)
    _write_png(folder / "b.png", 16, 24)
    (folder / "notes.txt").write_text("not an image")
    assert main(["upscale", str(folder), "--weights-dir", str(tiny_bundle), "--output-format", "jpg",
                 "--target-resolution", "720p", "--seed", "2"]) == 0
    out = tmp_path / "photos_upscaled"
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg"]
    assert Image.open(out / "a.jpg").size == (900, 720)  # 20x16 scaled by 720/16
    assert Image.open(out / "b.jpg").size == (720, 1080)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, w: ["upscale", str(d / "missing.png"), "-o", str(d / "o.png"), "--weights-dir", str(w)],
         "no such file"),
        (lambda d, w: ["upscale", str(d / "garbage.png"), "-o", str(d / "o.png"), "--weights-dir", str(w)],
         "garbage.png"),
        (lambda d, w: ["upscale", str(d / "ok.png"), "-o", str(d / "o.png"), "--weights-dir", str(w),
                       "--upscale-factor", "0"], "upscale_factor"),
        (lambda d, w: ["upscale", str(d / "ok.png"), "-o", str(d / "o.png"), "--weights-dir", str(d / "nowhere")],
         "nowhere"),
        (lambda d, w: ["upscale", str(d / "ok.png"), "-o", str(d / "o.xyz"), "--weights-dir", str(w)],
         "extension"),
        pytest.param(lambda d, w: ["upscale", str(d / "ok.png"), "-o", str(d / "o.png"), "--weights-dir", str(w),
                                   "--kernels", "triton"], "--kernels triton needs",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="triton can run here")),
    ],
)
def test_bad_input_is_one_line_on_stderr(tmp_path, tiny_bundle, capsys, make_args, message):
    (tmp_path / "garbage.png").write_bytes(b"definitely not a png")
    _write_png(tmp_path / "ok.png", 8, 8)
    assert main(make_args(tmp_path, tiny_bundle)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seedvr-local: error:") and message in err[0], err
    assert not (tmp_path / "o.png").exists()


def test_download_offline_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "--model", "3b", "--dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seedvr-local: error:" in err[0]


def test_tiny_model_needs_nothing_beside_the_clone(tmp_path, monkeypatch):
    """`--model tiny` builds its model in memory: no weights directory, no models home, a note that it is noise."""
    monkeypatch.setenv("SEEDVR_HOME", str(tmp_path / "empty-home"))
    source = _write_png(tmp_path / "in.png", 24, 16)
    target = tmp_path / "out.webp"
    done = subprocess.run(
        [sys.executable, "-m", "seedvr_local.cli", "upscale", str(source), "-o", str(target), "--model", "tiny",
         "--seed", "5", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "random weights: output is noise" in done.stderr
    with Image.open(target) as out:
        assert out.format == "WEBP" and out.size == (48, 32)
    assert not (tmp_path / "empty-home").exists()
