"""Reading an untrusted video: check it from its header, count its frames, then decode one frame at a time.

Only common containers and codecs are opened (FFmpeg can open far more, some of which read other files or
URLs, like HLS playlists and concat lists, or go through rarely audited parsers); the same goes for audio
decoders. The frame size is checked from the header before any frame is decoded, so a file declaring a huge size
never allocates it; then every decoded frame is checked again, since a stream may change its frame size after its
first frame (FFmpeg's own `max_pixels` bounds what its decoder allocates meanwhile). The header's frame count and
duration are never trusted: frames are counted by demuxing, and the audio kept is bounded by the video's frames
(writer.py). Every failure is a `VideoError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from seedvr_local.video.errors import InvalidVideoError, VideoTooLargeError

#: FFmpeg demuxers accepted (what fal's playground takes: mp4, mov, m4v, webm, gif; plus mkv and avi).
DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "gif", "avi")
#: Video decoders accepted.
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mjpeg", "prores", "gif", "png")
#: Audio decoders accepted (the first audio stream is copied into the output, or decoded and re-encoded).
AUDIO_CODECS = (
    "aac", "mp3", "mp2", "opus", "vorbis", "flac", "alac", "ac3", "eac3",
    "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_f32le", "pcm_u8",
)  # fmt: skip
#: Largest frame, in pixels, decoded (8K is 33 Mpx): checked from the header, then on every decoded frame.
MAX_INPUT_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class VideoInfo:
    width: int  # as stored; `display_matrix` says how a player turns it
    height: int
    frames: int  # frames the decoder will produce
    time_base: Fraction  # of the frame timestamps
    average_rate: Fraction | None  # frames per second, as the container states it
    duration_s: float | None
    codec: str
    has_alpha: bool
    display_matrix: tuple[int, ...] | None  # FFmpeg's 3x3 display matrix (rotation, flips), None when upright
    audio_codec: str | None  # the first audio stream's codec, None without audio


@dataclass
class SourceFrame:
    pixels: np.ndarray  # [H, W, 3] RGB, or [H, W, 4] RGBA when the video has alpha; uint8
    pts: int | None  # in `VideoInfo.time_base`


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), options={"format_whitelist": ",".join(DEMUXERS)})
    except av.FFmpegError as exc:
        raise InvalidVideoError(
            f"not a readable video (accepted containers: mp4, mov, m4v, webm, mkv, gif, avi): {_one_line(exc)}"
        ) from None


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise InvalidVideoError("the file has no video stream")
    return container.streams.video[0]


def _has_alpha(stream: av.video.stream.VideoStream) -> bool:
    fmt = stream.codec_context.format
    return fmt is not None and any(component.is_alpha for component in fmt.components)


def probe_video(path: str | Path, max_input_pixels: int = MAX_INPUT_PIXELS) -> VideoInfo:
    """The header facts and the exact frame count of a video, after checking it may be decoded at all.

    The frame count comes from demuxing every packet (no decoding): containers like WebM and GIF do not state
    it, and an MP4's sample count includes frames that its edit list hides."""
    with _open(path) as container:
        stream = _video_stream(container)
        codec = stream.codec_context.name
        if codec not in VIDEO_CODECS:
            raise InvalidVideoError(f"unsupported video codec {codec!r} (supported: {', '.join(VIDEO_CODECS)})")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise InvalidVideoError(f"the video stream declares no frame size ({width}x{height})")
        if width * height > max_input_pixels:
            raise VideoTooLargeError(
                f"the video's frames are {width}x{height} ({width * height / 1e6:.1f} Mpx); "
                f"the largest allowed is {max_input_pixels / 1e6:.1f} Mpx"
            )
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        if audio is not None and audio not in AUDIO_CODECS:
            raise InvalidVideoError(f"unsupported audio codec {audio!r} (supported: {', '.join(AUDIO_CODECS)})")
        duration = float(container.duration / av.time_base) if container.duration else None
        info = dict(
            width=width, height=height, time_base=Fraction(stream.time_base), codec=codec, has_alpha=_has_alpha(stream),
            average_rate=Fraction(stream.average_rate) if stream.average_rate else None, duration_s=duration,
            audio_codec=audio,
        )  # fmt: skip
        frames = 0
        try:
            for packet in container.demux(stream):
                frames += packet.size > 0 and not packet.is_discard
        except av.FFmpegError as exc:
            raise InvalidVideoError(f"the video is damaged or truncated: {_one_line(exc)}") from None
    if frames == 0:
        raise InvalidVideoError("the video has no frames")
    matrix = _first_display_matrix(path, (width, height), max_input_pixels)
    return VideoInfo(frames=frames, display_matrix=matrix, **info)


def _first_display_matrix(path: str | Path, size: tuple[int, int], max_pixels: int) -> tuple[int, ...] | None:
    """The display matrix FFmpeg attaches to the first frame (read once: `frame.side_data` holds a reference
    cycle, which would keep every frame's pixels alive until the garbage collector runs)."""
    with _open(path) as container:
        stream = _bounded_video_stream(container, max_pixels)
        try:
            frame = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise _undecodable(0, exc, max_pixels) from None
        if frame is None:
            raise InvalidVideoError("the video has no decodable frames")
        check_frame_size(0, frame.width, frame.height, size, max_pixels)
        return _display_matrix(frame)


def _bounded_video_stream(container: av.container.InputContainer, max_pixels: int) -> av.video.stream.VideoStream:
    """The video stream, its decoder told to refuse frames much larger than `max_pixels` (FFmpeg's `max_pixels`
    counts each row padded to its SIMD alignment, up to 64 pixels more: the margin keeps it from refusing a frame
    within the limit; `check_frame_size` is the exact check)."""
    stream = _video_stream(container)
    stream.codec_context.options = {"max_pixels": str(2 * max_pixels + 64 * 4096)}
    return stream


def check_frame_size(index: int, width: int, height: int, size: tuple[int, int], max_pixels: int) -> None:
    """A decoded frame has the size the header declared, within the limit; else an `InvalidVideoError` naming
    the frame (counted from 0) and the limit (the stream lied about its frames: a damaged or crafted file)."""
    if (width, height) == size and width * height <= max_pixels:
        return
    raise InvalidVideoError(
        f"frame {index} is {width}x{height} ({width * height:,} pixels), not the {size[0]}x{size[1]} the video "
        f"declares; every frame must have the declared size, at most {max_pixels:,} pixels"
    )


def _undecodable(index: int, exc: BaseException, max_pixels: int) -> InvalidVideoError:
    return InvalidVideoError(
        f"frame {index} cannot be decoded (damaged, truncated, or larger than the limit of {max_pixels:,} pixels): "
        f"{_one_line(exc)}"
    )


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return None
    matrix = tuple(int(v) for v in np.frombuffer(bytes(side), dtype=np.int32))
    identity = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    return None if matrix == identity else matrix


def decode_frames(
    path: str | Path, alpha: bool, size: tuple[int, int] | None = None, max_pixels: int = MAX_INPUT_PIXELS
) -> Iterator[SourceFrame]:
    """The frames in presentation order, converted to RGB(A) with the matrix and range the stream is tagged with
    (untagged YUV is read as BT.601, as FFmpeg does). Each frame is checked before it is converted: it must be
    `size` (the probed size; None: the first frame's) and at most `max_pixels`."""
    with _open(path) as container:
        stream = _bounded_video_stream(container, max_pixels)
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                size = size or (frame.width, frame.height)
                check_frame_size(index, frame.width, frame.height, size, max_pixels)
                pixels = frame.to_ndarray(format="rgba" if alpha else "rgb24", src_color_range=frame.color_range)
                yield SourceFrame(pixels, frame.pts)
                index += 1
        except av.FFmpegError as exc:
            raise _undecodable(index, exc, max_pixels) from None
