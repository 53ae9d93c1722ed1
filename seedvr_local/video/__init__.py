"""Video restoration: decode, restore in overlapping clips of 4n+1 frames, encode, in bounded memory.

The public API (the CLI and the server use only this)::

    from seedvr_local.video import VideoOptions, VideoRestorer
    result = VideoRestorer(pipeline).restore("in.mp4", "out.mp4", VideoOptions(output_format="mp4", seed=1))
"""

from seedvr_local.video.errors import InvalidVideoError, VideoError, VideoTooLargeError
from seedvr_local.video.formats import OUTPUT_FORMATS, OUTPUT_QUALITIES, OUTPUT_WRITE_MODES, OutputFormat, output_format
from seedvr_local.video.restorer import (
    VideoJob,
    VideoLimits,
    VideoOptions,
    VideoProgress,
    VideoRestorer,
    VideoResult,
    clip_seed,
)
from seedvr_local.video.source import VideoInfo, probe_video

__all__ = [
    "InvalidVideoError", "OUTPUT_FORMATS", "OUTPUT_QUALITIES", "OUTPUT_WRITE_MODES", "OutputFormat", "VideoError",
    "VideoInfo", "VideoJob", "VideoLimits", "VideoOptions", "VideoProgress", "VideoRestorer", "VideoResult",
    "VideoTooLargeError", "clip_seed", "output_format", "probe_video",
]  # fmt: skip
