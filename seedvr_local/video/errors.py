"""The errors a video job reports to its user: each a ValueError with a one-line message (the CLI exits 2 on
them, the server answers 422)."""

from __future__ import annotations


class VideoError(ValueError):
    """A video that cannot be used as given; the message is one line meant for the user."""


class InvalidVideoError(VideoError):
    """Not a readable video: not a video at all, truncated, no frames, or a codec or container not supported."""


class VideoTooLargeError(VideoError):
    """Larger than a limit (frames, declared frame size, output pixels times frames); the message names the
    largest allowed."""
