"""`seedvr-local` end to end with the tiny bundle, and its one-line errors."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local.cli import build_parser, main


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
    (folder / "raw").mkdir()
    assert main(["upscale", str(folder), "--weights-dir", str(tiny_bundle), "--output-format", "jpg",
                 "--target-resolution", "720p", "--seed", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "skipped notes.txt: not an image or video file" in err and "skipped raw: a directory (not searched)" in err
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


def _options(parser: argparse.ArgumentParser):
    """(command, option) for every option of every command, the shared ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from ((f"{command} {name}", option) for name, option in _options(sub))
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield action.option_strings[-1], action


RANGE = re.compile(r"\d(\.\d+)? to \d|\d or more")


def test_every_option_has_help_with_its_range_or_choices():
    parser = build_parser()
    options = list(_options(parser))
    assert len(options) > 30  # every command's options were found
    for name, option in options:
        assert option.help, f"{name} has no help text"
        if option.choices is not None:
            # argparse lists them ({a,b,c}) unless a metavar hides them; then the help must name every one
            listed = option.metavar is None or all(str(choice) in option.help for choice in option.choices)
            assert listed, f"{name} hides its choices"
        elif option.type in (int, float):
            assert RANGE.search(option.help), f"{name} does not say its range: {option.help!r}"
    upscale = parser._subparsers._group_actions[0].choices["upscale"].format_help()
    assert "{wavelet,adain,lab,none}" in upscale and "1 to 10" in " ".join(upscale.split())


def _upscale(*argv: str) -> int:
    return main(["upscale", *argv, "--model", "tiny", "--device", "cpu", "--seed", "3"])


def test_a_file_without_output_is_upscaled_beside_it_and_never_overwritten(tmp_path, capsys):
    source = _write_png(tmp_path / "photo.jpg", 12, 10)
    assert _upscale(str(source)) == 0
    target = tmp_path / "photo_upscaled.jpg"
    with Image.open(target) as out:
        assert out.format == "JPEG" and out.size == (24, 20)
    capsys.readouterr()

    target.write_bytes(b"the user's own file")
    assert _upscale(str(source)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists: pass --overwrite" in err[0] and str(target) in err[0], err
    assert target.read_bytes() == b"the user's own file"

    assert _upscale(str(source), "--overwrite") == 0
    with Image.open(target) as out:
        assert out.format == "JPEG"


def test_seamless_flag_runs_the_seamless_upscale(tmp_path):
    from seedvr_local.upscaler import Upscaler, UpscaleOptions

    source = _write_png(tmp_path / "texture.png", 12, 10)
    assert _upscale(str(source), "--seamless", "-o", str(tmp_path / "out.png")) == 0
    with Image.open(tmp_path / "out.png") as out, Image.open(source) as image:
        got = np.asarray(out.convert("RGB"))
        upscaler = Upscaler.tiny(device="cpu")
        expected = np.asarray(upscaler.upscale(image, UpscaleOptions(seed=3, seamless=True)).image)
        plain = np.asarray(upscaler.upscale(image, UpscaleOptions(seed=3)).image)
    assert np.array_equal(got, expected) and not np.array_equal(got, plain)


def test_an_input_no_format_writes_gets_a_png_beside_it(tmp_path):
    source = tmp_path / "scan.bmp"
    Image.new("RGB", (8, 8), "red").save(source)
    assert _upscale(str(source)) == 0
    assert Image.open(tmp_path / "scan_upscaled.png").size == (16, 16)
    assert _upscale(str(source), "--output-format", "webp") == 0
    assert Image.open(tmp_path / "scan_upscaled.webp").format == "WEBP"


def test_existing_outputs_of_a_directory_run_are_not_replaced(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in "abcd":
        _write_png(folder / f"{name}.png", 8, 8)
    out = tmp_path / "photos_upscaled"
    out.mkdir()
    for name in "abcd":
        (out / f"{name}.png").write_text("kept")
    assert _upscale(str(folder)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "and 1 more already exist: pass --overwrite" in err[0], err
    assert all((out / f"{name}.png").read_text() == "kept" for name in "abcd")


def test_the_output_never_replaces_its_input(tmp_path, capsys):
    source = _write_png(tmp_path / "in.png", 8, 8)
    assert _upscale(str(source), "-o", str(source), "--overwrite") == 2
    assert "would replace its input" in capsys.readouterr().err
    assert Image.open(source).size == (8, 8)
