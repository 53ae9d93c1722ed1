"""Reading untrusted videos and writing fal's output formats, without the model: PyAV checks what a player sees."""

from __future__ import annotations

import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from seedvr_local.video import InvalidVideoError, VideoTooLargeError, output_format, probe_video
from seedvr_local.video.formats import OUTPUT_FORMATS, OUTPUT_QUALITIES, OUTPUT_WRITE_MODES
from seedvr_local.video.samples import make_video, pattern
from seedvr_local.video.source import decode_frames
from seedvr_local.video.writer import VideoWriter
from tests.video_helpers import read_video


def test_output_formats_by_fal_name_and_short_name():
    assert [f.fal_name for f in OUTPUT_FORMATS] == ["X264 (.mp4)", "VP9 (.webm)", "PRORES4444 (.mov)", "GIF (.gif)"]
    for fmt in OUTPUT_FORMATS:
        assert output_format(fmt.fal_name) is fmt and output_format(fmt.name) is fmt
        assert set(fmt.quality) == set(OUTPUT_QUALITIES) and set(fmt.write_mode) == set(OUTPUT_WRITE_MODES)
    with pytest.raises(ValueError, match="output_format must be one of .*X264 \\(.mp4\\)"):
        output_format("H265 (.mp4)")
    with pytest.raises(ValueError, match="output_quality"):
        OUTPUT_FORMATS[0].encoder_settings("best", "fast")


def test_probe_reads_the_header_and_counts_frames(tmp_path):
    info = probe_video(make_video(tmp_path / "in.webm", 33, 17, frames=7, fps=10, audio="libopus"))
    assert (info.width, info.height, info.frames, info.codec) == (33, 17, 7, "vp9")
    assert info.average_rate == 10 and info.audio_codec == "opus" and info.display_matrix is None
    rotated = probe_video(make_video(tmp_path / "rot.mp4", rotation=90, audio=None))
    assert rotated.display_matrix is not None and rotated.audio_codec is None


def _gif_header(width: int, height: int) -> bytes:
    """A GIF declaring a `width` x `height` screen that holds one 1x1 pixel."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0x80) + b"\x00\x00\x00\xff\xff\xff"
    return b"GIF89a" + screen + image + b"\x02\x02\x44\x01\x00\x3b"


def test_bad_inputs_are_one_line_value_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    whole = make_video(tmp_path / "whole.mp4", frames=9).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 2])
    unsupported = make_video(tmp_path / "lossless.mkv", audio=None)  # FFV1: not a codec we decode
    empty = tmp_path / "empty.mov"
    with av.open(str(empty), "w") as container:  # a header, no frames
        stream = container.add_stream("prores_ks", rate=12)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv444p10le"
        container.start_encoding()
    cases = [(text, "not a readable video"), (truncated, "not a readable video"),
             (unsupported, "unsupported video codec 'ffv1'"), (empty, "no video stream")]  # fmt: skip
    for path, message in cases:
        with pytest.raises(InvalidVideoError, match=message) as error:
            probe_video(path)
        assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_huge_declared_frames_are_refused_from_the_header(tmp_path):
    huge = tmp_path / "huge.gif"
    huge.write_bytes(_gif_header(16000, 16000))  # 1 GB of RGBA if it were decoded
    with pytest.raises(VideoTooLargeError, match="16000x16000 .*largest allowed is 67.1 Mpx"):
        probe_video(huge)
    with pytest.raises(VideoTooLargeError, match="largest allowed is 0.0 Mpx"):
        probe_video(make_video(tmp_path / "small.mp4", audio=None), max_input_pixels=100)


def _write(path, fmt_name, frames, size=(33, 17), source=None, rate=Fraction(12), time_base=Fraction(1, 12), times=None, **kw):
    fmt = output_format(fmt_name)
    with VideoWriter(path, fmt, fmt.encoder_settings("high", "fast"), size, time_base, rate, audio_from=source, **kw) as writer:
        for index, frame in enumerate(frames):
            writer.write(frame, times[index] if times is not None else index)
    return read_video(path)


@pytest.mark.parametrize("name, codec, audio", [("mp4", "h264", "aac"), ("webm", "vp9", "opus"), ("mov", "prores", "aac")])
def test_formats_keep_rate_duration_and_audio_pad_odd_sizes_and_tag_bt709(tmp_path, name, codec, audio):
    source = make_video(tmp_path / "src.mp4", 32, 24, frames=12, fps=12, audio="aac")
    frames = [pattern(i, 33, 17) for i in range(12)]
    out = _write(tmp_path / f"out.{name}", name, frames, source=source)
    assert (out["codec"], out["width"], out["height"], out["frames"]) == (codec, 34, 18, 12)
    assert out["average_rate"] == 12 and out["colorspace"] == 1  # BT.709
    assert out["audio"] == audio
    assert out["audio_seconds"] == pytest.approx(1.0, abs=1 / 12)  # 12 frames at 12 fps
    assert out["times"] == pytest.approx([i / 12 for i in range(12)], abs=1e-3)


def test_audio_is_copied_when_the_container_takes_it_else_reencoded(tmp_path):
    opus_source = make_video(tmp_path / "src.webm", frames=6, audio="libopus")
    assert _write(tmp_path / "copy.mp4", "mp4", [pattern(i, 33, 17) for i in range(6)], source=opus_source)["audio"] == "opus"
    assert _write(tmp_path / "none.gif", "gif", [pattern(i, 33, 17) for i in range(6)], source=opus_source)["audio"] is None


def test_variable_frame_rate_and_rotation_are_kept(tmp_path):
    times_ms = [0, 50, 200, 250, 500, 550, 600]
    frames = [pattern(i, 32, 24) for i in range(len(times_ms))]
    rotation = (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)  # 90 degrees, as FFmpeg stores it
    out = _write(tmp_path / "vfr.mp4", "mp4", frames, size=(32, 24), time_base=Fraction(1, 1000), rate=None,
                 times=times_ms, display_matrix=rotation)  # fmt: skip
    assert out["times"] == pytest.approx([t / 1000 for t in times_ms], abs=1e-3)
    assert out["rotation"] == 90


def test_gif_gets_a_palette_made_from_its_frames(tmp_path):
    # Smooth gradients: through a fixed 3-3-2 palette (FFmpeg's rgb8) these frames are off by 21 levels on average
    frames = [pattern(i, 64, 48) for i in range(4)]
    out = _write(tmp_path / "out.gif", "gif", frames, size=(64, 48))
    assert out["codec"] == "gif" and out["frames"] == 4 and (out["width"], out["height"]) == (64, 48)
    decoded = [f.pixels for f in decode_frames(tmp_path / "out.gif", alpha=False)]
    error = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded, frames)])
    assert error < 8.0, error


def test_prores_4444_keeps_alpha(tmp_path):
    frames = [pattern(i, 32, 24, alpha=True) for i in range(3)]
    _write(tmp_path / "alpha.mov", "mov", frames, size=(32, 24), alpha=True)
    decoded = [f.pixels for f in decode_frames(tmp_path / "alpha.mov", alpha=True)]
    assert len(decoded) == 3 and decoded[0].shape == (24, 32, 4)
    assert np.abs(decoded[0][..., 3].astype(int) - frames[0][..., 3]).max() <= 1
