"""`seedvr-local upscale` with videos: outputs, formats, directories, progress and one-line errors (tiny model)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from seedvr_local.cli import main
from seedvr_local.cli_video import _Progress
from seedvr_local.video.samples import make_video
from tests.video_helpers import read_video

TINY = ["--model", "tiny", "--seed", "3"]


def test_a_video_is_upscaled_with_the_options_given(tmp_path, capsys):
    source = make_video(tmp_path / "in.mp4", 24, 20, frames=9, audio="aac")
    target = tmp_path / "out.webm"
    argv = ["upscale", str(source), "-o", str(target), *TINY, "--upscale-factor", "1.5", "--clip-frames", "5",
            "--clip-overlap", "2", "--output-quality", "low", "--output-write-mode", "fast"]  # fmt: skip
    assert main(argv) == 0
    out = read_video(target)
    assert (out["codec"], out["width"], out["height"], out["frames"], out["audio"]) == ("vp9", 36, 30, 9, "opus")
    err = capsys.readouterr().err
    assert "24x20 -> 36x30, 9 frames in 3 clip(s) of 5 (seed 3)" in err
    # not a terminal: plain lines, the last one at the end of the video
    assert "[1/1] in.mp4: 9/9 frames, " in err and " fps, 0:00 left" in err and "\r" not in err
    assert f"-> {target}" in err


def test_fals_format_names_and_the_default_output_beside_the_input(tmp_path):
    source = make_video(tmp_path / "clip.mov", 16, 16, frames=5, audio=None)
    assert main(["upscale", str(source), *TINY, "--output-format", "GIF (.gif)", "--clip-frames", "5"]) == 0
    out = read_video(tmp_path / "clip_upscaled.gif")
    assert (out["codec"], out["width"], out["frames"]) == ("gif", 32, 5)
    # without a format, the input's own container when fal writes it
    assert main(["upscale", str(source), *TINY, "--clip-frames", "5"]) == 0
    assert read_video(tmp_path / "clip_upscaled.mov")["codec"] == "prores"


def test_the_clip_length_comes_from_the_memory_planner_unless_given(tmp_path, capsys):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=11, audio=None)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.mp4"), *TINY]) == 0
    # the tiny model fits a clip longer than the video at 32x32: one clip of all 11 frames
    assert "11 frames in 1 clip(s) of 11" in capsys.readouterr().err


def test_an_animated_gif_is_a_video_and_a_still_one_an_image(tmp_path):
    animated = make_video(tmp_path / "moving.gif", 16, 16, frames=5, audio=None)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "still.gif")
    assert main(["upscale", str(animated), *TINY, "--clip-frames", "5"]) == 0
    assert read_video(tmp_path / "moving_upscaled.gif")["frames"] == 5
    assert main(["upscale", str(tmp_path / "still.gif"), "-o", str(tmp_path / "still.png"), *TINY]) == 0
    assert Image.open(tmp_path / "still.png").size == (16, 16)


def test_a_directory_upscales_its_videos_and_its_images(tmp_path, capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    make_video(folder / "a.webm", 16, 16, frames=5, audio=None)
    make_video(folder / "b.mp4", 16, 12, frames=5, audio=None)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(folder / "c.png")
    (folder / "broken.mkv").write_bytes(b"not a video")
    assert main(["upscale", str(folder), *TINY, "--clip-frames", "5"]) == 2  # the broken video is counted
    out = tmp_path / "shots_upscaled"
    assert sorted(p.name for p in out.iterdir()) == ["a.webm", "b.mp4", "c.png"]
    assert read_video(out / "b.mp4")["height"] == 24
    err = capsys.readouterr().err
    assert "broken.mkv: skipped: not a readable video" in err
    assert err.strip().splitlines()[-1] == "seedvr-local: error: 1 of 3 videos were skipped (see above)"


def test_two_cpu_devices_restore_one_video(tmp_path, capsys):
    source = make_video(tmp_path / "in.mp4", 16, 16, frames=9, audio=None)
    argv = ["upscale", str(source), "-o", str(tmp_path / "out.mp4"), *TINY, "--clip-frames", "5",
            "--devices", "cpu,cpu"]  # fmt: skip
    assert main(argv) == 0
    assert read_video(tmp_path / "out.mp4")["frames"] == 9
    assert "loaded 2 copies of the model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: [str(d / "garbage.mp4"), "-o", str(d / "o.mp4")], "garbage.mp4: not a readable video"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--clip-frames", "8"], "clip_frames must be 4n+1"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--clip-frames", "5", "--clip-overlap", "5"],
         "overlap must be between 0 and 4"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--clip-overlap", "-1"], "overlap must be at least 0"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.avi")], "unknown video extension"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--output-format", "png"], "png is an image format"),
        (lambda d: [str(d / "ok.png"), "-o", str(d / "o.png"), "--output-format", "mp4"], "mp4 is a video format"),
        (lambda d: [str(d / "ok.png"), "-o", str(d / "o.png"), "--devices", "cpu,cpu"], "--devices is for videos"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--devices", "cpu,,cpu"], "comma-separated"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--devices", "tpu"], "'tpu' is not a device"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--devices", "cpu,cpu", "--device", "cpu"],
         "--device or --devices"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "ok.mp4")], "would replace its input"),
        (lambda d: [str(d / "ok.mp4"), "-o", str(d / "o.mp4"), "--seamless"], "--seamless is for images"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, make_args, message):
    (tmp_path / "garbage.mp4").write_bytes(b"definitely not a video")
    make_video(tmp_path / "ok.mp4", 8, 8, frames=2, audio=None)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert main(["upscale", *make_args(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seedvr-local: error:") and message in err[0], err
    assert not (tmp_path / "o.mp4").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_a_bar_redrawn_in_place():
    stream = _Terminal()
    progress = _Progress("[1/1] in.mp4", stream)
    progress(6, 24, 2.0)
    progress(24, 24, 2.5)  # the last frame is always drawn
    progress.line("done")
    text = stream.getvalue()
    assert text.startswith("\r\033[K[1/1] in.mp4: [######------------------] 6/24 frames, 2.00 fps, 0:09 left")
    assert "[########################] 24/24 frames, 2.50 fps, 0:00 left" in text
    assert text.endswith("\r\033[K[1/1] in.mp4: done\n")


def test_off_a_terminal_progress_is_a_line_per_tenth():
    stream = io.StringIO()
    progress = _Progress("v.mp4", stream)
    for done in range(1, 101):
        progress(done, 100, 4.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and lines[0] == "v.mp4: 10/100 frames, 4.00 fps, 0:22 left"
    assert lines[-1] == "v.mp4: 100/100 frames, 4.00 fps, 0:00 left"
