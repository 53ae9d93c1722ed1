"""Synthetic videos for the tests and the benchmark, written with PyAV: a moving colour pattern and a sine-wave
audio track, at any size, rate (constant or variable), rotation, container and codec."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SINE_HZ = 440.0
AUDIO_RATE = 48000


def pattern(index: int, width: int, height: int, alpha: bool = False) -> np.ndarray:
    """Frame `index` of a pattern that moves two pixels a frame: diagonal colour bands over a gradient."""
    y, x = np.mgrid[0:height, 0:width]
    phase = (x + y + 2 * index) % 16 < 8
    frame = np.stack(
        [(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), np.where(phase, 220, 40)], axis=-1
    ).astype(np.uint8)
    if alpha:
        frame = np.concatenate([frame, np.where(x < width // 2, 0, 255).astype(np.uint8)[..., None]], axis=-1)
    return frame


def make_video(
    path: Path,
    width: int = 32,
    height: int = 24,
    frames: int = 9,
    fps: int = 12,
    codec: str | None = None,
    audio: str | None = "aac",
    rotation: int | None = None,
    frame_times: list[float] | None = None,
    alpha: bool = False,
) -> Path:
    """Write a test video; the container comes from the suffix. `frame_times` (seconds) makes it variable-rate."""
    suffix = path.suffix.lstrip(".")
    codec = codec or {"mp4": "libx264", "mov": "prores_ks", "webm": "libvpx-vp9", "gif": "gif", "mkv": "ffv1"}[suffix]
    with av.open(str(path), "w") as container:
        time_base = Fraction(1, 1000) if frame_times is not None else Fraction(1, fps)
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = {"libx264": "yuv420p", "libvpx-vp9": "yuv420p", "gif": "rgb8", "ffv1": "yuv444p",
                          "prores_ks": "yuva444p10le" if alpha else "yuv444p10le"}[codec]  # fmt: skip
        stream.time_base = time_base if codec != "gif" else Fraction(1, 100)
        stream.codec_context.time_base = stream.time_base
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream(audio, rate=AUDIO_RATE)
            audio_stream.layout = "mono"
        times = frame_times if frame_times is not None else [i / fps for i in range(frames)]
        for index, seconds in enumerate(times):
            frame = av.VideoFrame.from_ndarray(pattern(index, width, height, alpha), format="rgba" if alpha else "rgb24")
            frame.pts = round(seconds / stream.time_base)
            frame.time_base = stream.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            duration = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1 / fps)
            _write_sine(container, audio_stream, duration)
    return path


def _write_sine(container, stream, seconds: float) -> None:
    samples = round(seconds * AUDIO_RATE)
    chunk = 960
    codec_format = stream.codec_context.format.name
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        t = (np.arange(start, start + n) / AUDIO_RATE).astype(np.float32)
        wave = (0.3 * np.sin(2 * np.pi * SINE_HZ * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, start
        frame = frame if codec_format == "fltp" else av.AudioResampler(format=codec_format, layout="mono", rate=AUDIO_RATE).resample(frame)[0]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
