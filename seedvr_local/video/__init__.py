"""Video restoration: decode, restore in overlapping clips of 4n+1 frames, encode, in bounded memory.

The public API (the CLI and the server use only this)::

    from seedvr_local.video import VideoOptions, VideoRestorer
    result = VideoRestorer(pipeline).restore("in.mp4", "out.mp4", VideoOptions(output_format="mp4", seed=1))

    # the clips of each video on several devices at once, each clip as long as fits on all of them
    with ClipPool(ModelSpec(weights_dir), ["cuda:0", "cuda:1"]) as pool:
        options = VideoOptions(clip_frames=pool.clip_frames, seed=1)
        result = VideoRestorer(clips=pool).restore("in.mp4", "out.mp4", options)

The names load on first use, so that importing a light part (the format table, say) loads neither PyAV nor the
pipeline.
"""

from __future__ import annotations

import importlib

# name -> the module of this package that defines it
_EXPORTS = {
    "ClipRunner": "clips", "LocalClips": "clips", "longest_clip": "clips",
    "ClipPool": "pool", "ModelSpec": "pool",
    "InvalidVideoError": "errors", "VideoError": "errors", "VideoTooLargeError": "errors",
    "OUTPUT_FORMATS": "formats", "OUTPUT_QUALITIES": "formats", "OUTPUT_WRITE_MODES": "formats",
    "OutputFormat": "formats", "output_format": "formats",
    "VideoJob": "restorer", "VideoLimits": "restorer", "VideoOptions": "restorer", "VideoProgress": "restorer",
    "VideoRestorer": "restorer", "VideoResult": "restorer", "clip_seed": "restorer",
    "VideoInfo": "source", "probe_video": "source",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
