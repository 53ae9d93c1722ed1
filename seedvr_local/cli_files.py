"""Which files an `upscale` run reads and writes: shared by the image and the video command, torch-free."""

from __future__ import annotations

from pathlib import Path

#: Inputs read as images (a .gif is a video when it is animated).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
#: Containers read as videos (`seedvr_local.video.source` opens these); a .gif is a video when it is animated.
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}


def is_video(path: Path) -> bool:
    """A file to restore as a video: by its extension, and for a GIF, by having more than one frame."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    if suffix != ".gif":
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except (OSError, UnidentifiedImageError):
        return False  # the image path says what is wrong with it


def refuse_overwriting(jobs: list[tuple[Path, Path, str]], overwrite: bool) -> None:
    """Before any model loads: no output replaces its own input, and none replaces a file unless `overwrite`."""
    for source, target, _ in jobs:
        if target.exists() and target.resolve() == source.resolve():
            raise ValueError(f"{target}: the output would replace its input; give another -o")
    existing = [target for _, target, _ in jobs if target.exists()]
    if existing and not overwrite:
        names = ", ".join(str(t) for t in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{names} already exist{'s' if len(existing) == 1 else ''}: pass --overwrite to replace")
