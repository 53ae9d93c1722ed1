"""Encoding restored frames into fal's output formats as they are produced, with the source's audio.

The video keeps the source's timestamps (so its frame rate, variable or not, and its duration), its display
matrix (rotation, flips) and is tagged BT.709 (the RGB -> YUV conversion uses that matrix, limited range). The
first audio stream is copied packet by packet when the container takes its codec, else re-encoded (AAC for
MP4/MOV, Opus for WebM); GIF has none. Audio is interleaved with the video as it is written, so neither is
ever held whole in memory, and it ends with the video: audio past the last frame (a file whose audio track is far
longer than its frames) is dropped, so the output's length follows the frames, not what the audio track claims.

GIF: each frame gets its own palette of up to `max_colors` colours made from that frame (FFmpeg's palettegen
in single-frame mode, then paletteuse with dithering), which needs no pass over the whole video first.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from seedvr_local.video.formats import OutputFormat

#: BT.709 colour tags (ITU-T H.273 code points) for primaries, transfer and matrix; limited ("MPEG") range.
BT709 = 1
LIMITED_RANGE = 1
#: GIF frame delays are in hundredths of a second.
GIF_TIME_BASE = Fraction(1, 100)


def padded_size(width: int, height: int, fmt: OutputFormat) -> tuple[int, int]:
    """(width, height) rounded up to what the format's encoder needs."""
    multiple = fmt.size_multiple
    return width + (-width) % multiple, height + (-height) % multiple


class VideoWriter:
    """Writes frames of one size to `path` in `fmt`. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        path: str | Path,
        fmt: OutputFormat,
        settings: dict[str, str],
        size: tuple[int, int],
        time_base: Fraction,
        rate: Fraction | None,
        alpha: bool = False,
        display_matrix: tuple[int, ...] | None = None,
        audio_from: str | Path | None = None,
    ):
        self.fmt = fmt
        self.size = size
        self.padded = padded_size(*size, fmt)
        self.alpha = alpha and fmt.alpha_pixel_format is not None
        self.time_base = time_base
        self.rate = rate
        self._last_pts: int | None = None
        self.container = av.open(str(path), "w", format=fmt.container, container_options=fmt.container_options)
        try:
            self._gif = _GifPalette(self.padded, time_base, settings) if fmt.codec == "gif" else None
            self.stream = self._add_video_stream(settings, rate, display_matrix)
            self.audio = _AudioTrack.open(audio_from, self.container, fmt) if audio_from is not None else None
        except BaseException:
            self.container.close()
            raise

    def _add_video_stream(self, settings, rate, display_matrix) -> av.video.stream.VideoStream:
        fmt = self.fmt
        gif = self._gif is not None
        stream = self.container.add_stream(fmt.codec, rate=rate, options={} if gif else settings)
        stream.width, stream.height = self.padded
        stream.pix_fmt = fmt.alpha_pixel_format if self.alpha else fmt.pixel_format
        stream.time_base = GIF_TIME_BASE if gif else self.time_base
        stream.codec_context.time_base = stream.time_base
        if not gif:
            context = stream.codec_context
            context.color_primaries = context.color_trc = context.colorspace = BT709
            context.color_range = LIMITED_RANGE
        if display_matrix is not None:
            stream.set_display_matrix(list(display_matrix))
        return stream

    def write(self, pixels: np.ndarray, pts: int) -> None:
        """One frame, `[H, W, 3]` RGB or `[H, W, 4]` RGBA uint8 at `size`; `pts` in `time_base`, increasing."""
        height, width = pixels.shape[:2]
        if (width, height) != self.size:
            raise ValueError(f"frame is {width}x{height}, the writer was opened for {self.size[0]}x{self.size[1]}")
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # a muxer refuses repeated timestamps; keep the order
        self._last_pts = pts
        pad_w, pad_h = self.padded[0] - width, self.padded[1] - height
        if pad_w or pad_h:
            pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        if not self.alpha:
            pixels = pixels[..., :3]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgba" if self.alpha else "rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        frames = self._gif.convert(frame) if self._gif is not None else [self._to_yuv(frame)]
        for out in frames:
            self._encode(out)
        if self.audio is not None:
            self.audio.write_until(float(pts * self.time_base))

    def _to_yuv(self, frame: av.VideoFrame) -> av.VideoFrame:
        out = frame.reformat(
            format=self.stream.pix_fmt, dst_colorspace="itu709", dst_color_range=LIMITED_RANGE,
            dst_color_trc=BT709, dst_color_primaries=BT709,
        )  # fmt: skip
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def _encode(self, frame: av.VideoFrame | None) -> None:
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        try:
            if self._gif is not None:
                for out in self._gif.convert(None):
                    self._encode(out)
            self._encode(None)
            if self.audio is not None:
                self.audio.write_until(self._video_end_s())
                self.audio.finish()
        finally:
            self.abort()

    def _video_end_s(self) -> float:
        """When the video ends: its last frame's time plus one frame at the average rate (0 without frames)."""
        if self._last_pts is None:
            return 0.0
        frame_s = float(1 / self.rate) if self.rate else 0.0
        return float(self._last_pts * self.time_base) + frame_s

    def abort(self) -> None:
        """Close the files without finishing (after an error: the output is unusable)."""
        if self.audio is not None:
            self.audio.source.close()
        self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _GifPalette:
    """RGB frames -> palettised frames, each with its own palette (palettegen stats_mode=single, paletteuse new=1)."""

    def __init__(self, size: tuple[int, int], time_base: Fraction, settings: dict[str, str]):
        self.time_base = time_base
        self.graph = av.filter.Graph()
        width, height = size
        source = self.graph.add_buffer(width=width, height=height, format="rgb24", time_base=time_base)
        split = self.graph.add("split")
        palette = self.graph.add("palettegen", f"max_colors={settings['max_colors']}:stats_mode=single:reserve_transparent=0")
        use = self.graph.add("paletteuse", f"dither={settings['dither']}:new=1")
        self.sink = self.graph.add("buffersink")
        source.link_to(split)
        split.link_to(palette, 0, 0)
        split.link_to(use, 1, 0)
        palette.link_to(use, 0, 1)
        use.link_to(self.sink)
        self.graph.configure()
        self._last_pts: int | None = None

    def convert(self, frame: av.VideoFrame | None) -> Iterator[av.VideoFrame]:
        """Push one frame (None: the end) and return the palettised frames now ready, in GIF time units."""
        self.graph.push(frame)
        out = []
        while True:
            try:
                done = self.sink.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            # GIF delays are whole hundredths of a second: round, but keep every frame (at least 1/100 apart)
            pts = round(done.pts * self.time_base / GIF_TIME_BASE)
            pts = pts if self._last_pts is None else max(pts, self._last_pts + 1)
            self._last_pts = pts
            done.pts, done.time_base = pts, GIF_TIME_BASE
            out.append(done)
        return iter(out)


class _AudioTrack:
    """The source's first audio stream, written into the output up to a time as the video advances."""

    def __init__(self, source: av.container.InputContainer, stream: av.audio.stream.AudioStream, output, out_stream, copy: bool):
        self.source = source
        self.stream = stream
        self.output = output
        self.out_stream = out_stream
        self.copy = copy
        self.packets = source.demux(stream)
        self.pending: av.Packet | None = None
        self.resampler = None
        if not copy:
            context = out_stream.codec_context
            self.resampler = av.AudioResampler(format=context.format, layout=context.layout, rate=context.sample_rate)

    @classmethod
    def open(cls, path: str | Path, output: av.container.OutputContainer, fmt: OutputFormat) -> "_AudioTrack | None":
        """None when the source has no audio or the format takes none."""
        if fmt.audio_encoder is None:
            return None
        source = av.open(str(path))
        if not source.streams.audio:
            source.close()
            return None
        stream = source.streams.audio[0]
        if stream.codec_context.name in fmt.audio_copy:
            return cls(source, stream, output, output.add_stream_from_template(stream), copy=True)
        encoder = av.Codec(fmt.audio_encoder, "w")
        rate = stream.codec_context.sample_rate
        if encoder.audio_rates and rate not in encoder.audio_rates:
            rate = max(encoder.audio_rates)  # Opus takes 48 kHz and a few lower rates only
        out_stream = output.add_stream(fmt.audio_encoder, rate=rate)
        out_stream.layout = stream.codec_context.layout
        return cls(source, stream, output, out_stream, copy=False)

    def write_until(self, seconds: float) -> None:
        """Write the audio packets that start before `seconds`."""
        while True:
            if self.pending is None:
                self.pending = next(self.packets, None)
                if self.pending is None:
                    return
                if self.pending.dts is None:  # the demuxer's final empty packet
                    self.pending = None
                    continue
            start = self.pending.pts if self.pending.pts is not None else self.pending.dts
            if float(start * self.pending.time_base) > seconds:
                return
            packet, self.pending = self.pending, None
            self._write(packet)

    def finish(self) -> None:
        """Flush what the re-encoder holds; packets not written yet (past the video's end) are dropped."""
        self._flush()

    def _write(self, packet: av.Packet) -> None:
        if self.copy:
            packet.stream = self.out_stream
            self.output.mux(packet)
            return
        for frame in self.stream.codec_context.decode(packet):
            self._encode(frame)

    def _encode(self, frame: av.AudioFrame | None) -> None:
        for resampled in self.resampler.resample(frame):
            for out in self.out_stream.encode(resampled):
                self.output.mux(out)
        if frame is None:
            for out in self.out_stream.encode(None):
                self.output.mux(out)

    def _flush(self) -> None:
        if self.copy:
            return
        for frame in self.stream.codec_context.decode(None):
            self._encode(frame)
        self._encode(None)
