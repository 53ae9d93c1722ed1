"""A dataset folder read into items, whatever its layout.

- `HR/` and `LR/` with the same names: paired (DIV2K, RealSR, DRealSR style);
- `HR/` alone: the LR inputs are made by a stated `Degradation`;
- neither: the folder's own files are the inputs, judged by no-reference metrics only (real-world sets).

In each, an entry is an image file, a video file, or a folder of frames (one per sequence: REDS, UDM10, SPMCS
style); the last two are restored as videos.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from PIL import Image

from seedvr_local.cli_files import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from seedvr_local.evaluation.degradations import Degradation

Layout = Literal["paired", "hr_only", "no_hr"]
#: Frames per second of the lossless videos made from frame folders (only the order of frames matters).
FRAME_FOLDER_RATE = 25


@dataclass(frozen=True)
class Item:
    name: str
    kind: Literal["image", "video"]
    lr: Path | None  # the input as the dataset has it; None when made from `hr` by the degradation
    hr: Path | None  # the reference; None in a no-HR set


@dataclass
class Dataset:
    root: Path
    layout: Layout
    items: list[Item]
    degradation: Degradation | None  # for HR-only sets
    scale: int
    skipped: list[str] = field(default_factory=list)  # one line for each entry that is not an input

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def has_reference(self) -> bool:
        return self.layout != "no_hr"

    @property
    def kinds(self) -> set[str]:
        return {item.kind for item in self.items}

    def describe(self) -> dict:
        return {
            "name": self.name, "path": str(self.root.resolve()), "layout": self.layout, "scale": self.scale,
            "items": len(self.items), "kinds": sorted(self.kinds),
            "degradation": self.degradation.describe() if self.degradation else None,
            "files": self.file_hashes(),
        }  # fmt: skip

    def file_hashes(self) -> dict[str, str]:
        """sha256 of every file an item reads, by its path under the dataset's root."""
        hashes = {}
        for item in self.items:
            for path in (item.lr, item.hr):
                for file in _files_of(path):
                    hashes[str(file.relative_to(self.root))] = _sha256(file)
        return dict(sorted(hashes.items()))


def _files_of(path: Path | None) -> list[Path]:
    if path is None:
        return []
    return frame_files(path) if path.is_dir() else [path]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _entry_kind(path: Path) -> str | None:
    if path.is_dir():
        return "video" if frame_files(path) else None
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "image" if suffix in IMAGE_SUFFIXES else None


def _entries(folder: Path) -> tuple[dict[str, tuple[Path, str]], list[str]]:
    """name (stem, or folder name) -> (path, kind), and a line for each entry that is not an input."""
    found, skipped = {}, []
    for path in sorted(folder.iterdir()):
        kind = _entry_kind(path)
        name = path.name if path.is_dir() else path.stem
        if kind is None:
            skipped.append(f"skipped {path.name}: not an image, a video or a folder of frames")
        elif name in found:
            raise ValueError(f"{folder}: two entries are named {name!r}")
        else:
            found[name] = (path, kind)
    return found, skipped


def open_dataset(root: Path, scale: int, degradation: Degradation, limit: int | None = None) -> Dataset:
    """Read `root`'s layout and items; ValueError with one line for a folder no run could use."""
    if not root.is_dir():
        raise ValueError(f"{root}: not a dataset folder (no such directory)")
    hr_dir, lr_dir = root / "HR", root / "LR"
    if lr_dir.is_dir() and not hr_dir.is_dir():
        raise ValueError(f"{root}: has LR/ but no HR/; put the references in HR/, or the inputs alone in the folder")
    if hr_dir.is_dir():
        references, skipped = _entries(hr_dir)
        if lr_dir.is_dir():
            layout: Layout = "paired"
            inputs, more = _entries(lr_dir)
            skipped += more
            missing = sorted(set(references) - set(inputs))
            if missing:
                raise ValueError(f"{lr_dir}: no input named {missing[0]!r} for HR/{references[missing[0]][0].name}")
            items = [Item(name, kind, inputs[name][0], path) for name, (path, kind) in references.items()]
            mismatched = [item.name for item in items if inputs[item.name][1] != item.kind]
            if mismatched:
                raise ValueError(f"{root}: {mismatched[0]!r} is an image in one of HR/, LR/ and a video in the other")
        else:
            layout = "hr_only"
            items = [Item(name, kind, None, path) for name, (path, kind) in references.items()]
    else:
        layout = "no_hr"
        inputs, skipped = _entries(root)
        items = [Item(name, kind, path, None) for name, (path, kind) in inputs.items()]
    if not items:
        raise ValueError(f"{root}: no images, videos or frame folders to evaluate")
    if limit is not None:
        items = items[:limit]
    return Dataset(root, layout, items, degradation if layout == "hr_only" else None, scale, skipped)


def read_image(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """A video file's or a frame folder's frames, [H, W, 3] uint8 RGB each, decoded one at a time."""
    if path.is_dir():
        yield from (read_image(frame) for frame in frame_files(path))
        return
    from seedvr_local.video.source import decode_frames, probe_video

    info = probe_video(path)
    yield from (frame.pixels[..., :3] for frame in decode_frames(path, info.has_alpha))


def read_frames(path: Path) -> list[np.ndarray]:
    return list(iter_frames(path))


def write_lossless_video(frames: list[np.ndarray], path: Path) -> None:
    """Frames into a QuickTime file of PNG pictures: what the video path reads, with no loss."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), "w", format="mov") as container:
        stream = container.add_stream("png", rate=FRAME_FOLDER_RATE)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "rgb24"
        stream.time_base = Fraction(1, FRAME_FOLDER_RATE)
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = index
            frame.time_base = stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.replace(path)
