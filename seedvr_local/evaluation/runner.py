"""A benchmark run: every method on every item, each result written to disk as soon as it is measured.

`DIR/items/<method>/<item>.json` holds one item's metrics and timing; an item whose file exists is not redone,
so an interrupted run (Ctrl-C, a crash, a failed item) resumes where it stopped. The inputs made for an item
(degraded images, frame folders as lossless videos) are kept in `DIR/inputs/`, the outputs in
`DIR/outputs/<method>/<item>.png` (a folder of frames for a video).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from seedvr_local.evaluation.datasets import Dataset, Item, read_frames, read_image, write_lossless_video
from seedvr_local.evaluation.metrics import (
    BUILTIN_METRICS,
    FULL_REFERENCE,
    VIDEO_METRICS,
    ImageMetric,
    Skipped,
    builtin_metric,
    library_metric,
    temporal_difference,
)

#: Seconds between redraws of the progress bar on a terminal.
_REDRAW_S = 0.2


@dataclass
class MethodSpec:
    """A method to run, made only when an item still needs it (so a resumed run whose model items are all done
    does not load the model)."""

    name: str
    make: Callable[[], object]


class ProgressBar:
    """Items done out of all, on stderr: a bar redrawn in place on a terminal, a line per item otherwise."""

    def __init__(self, total: int, stream=None):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()

    def step(self, label: str, message: str) -> None:
        self.done += 1
        if self.tty:
            width = 24
            filled = width * self.done // max(1, self.total)
            elapsed = time.monotonic() - self.started
            print(f"\r\033[K[{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} {label} "
                  f"({elapsed:.0f}s)", end="", file=self.stream, flush=True)
            if self.done == self.total:
                print(file=self.stream)
        else:
            print(f"[{self.done}/{self.total}] {label}: {message}", file=self.stream, flush=True)

    def line(self, message: str) -> None:
        if self.tty:
            print("\r\033[K", end="", file=self.stream)
        print(message, file=self.stream, flush=True)


def _write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a run killed while writing leaves no half file that would count as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


def item_record(out_dir: Path, method: str, item: str) -> Path:
    return out_dir / "items" / method / f"{item}.json"


def output_path(out_dir: Path, method: str, item: Item) -> Path:
    base = out_dir / "outputs" / method
    return base / f"{item.name}.png" if item.kind == "image" else base / item.name


@dataclass
class PreparedItem:
    source: Path  # the file each method reads: the dataset's, or one made in DIR/inputs/
    frames: list[np.ndarray]  # the input's frames
    references: list[np.ndarray] | None
    size: tuple[int, int]  # the output size asked: input x scale


def prepare_item(dataset: Dataset, item: Item, out_dir: Path) -> PreparedItem:
    """The input (made by the degradation when the set has HR only), its frames and the reference frames."""
    inputs = out_dir / "inputs"
    references = None
    if item.hr is not None:
        references = [read_image(item.hr)] if item.kind == "image" else read_frames(item.hr)
    if item.lr is None:  # HR only: the stated degradation makes the input
        degradation = dataset.degradation
        width, height = degradation.hr_crop(references[0].shape[1], references[0].shape[0])
        references = [frame[:height, :width] for frame in references]
        frames = [np.asarray(degradation.apply(Image.fromarray(f), f"{item.name}:{k}" if k else item.name))
                  for k, f in enumerate(references)]
        source = inputs / (f"{item.name}.png" if item.kind == "image" else f"{item.name}.mov")
        if not source.exists():
            if item.kind == "image":
                source.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frames[0]).save(source)
            else:
                write_lossless_video(frames, source)
    elif item.kind == "video" and item.lr.is_dir():  # a frame folder: the video path reads files
        frames = read_frames(item.lr)
        source = inputs / f"{item.name}.mov"
        if not source.exists():
            write_lossless_video(frames, source)
    else:
        source = item.lr
        frames = [read_image(source)] if item.kind == "image" else read_frames(source)
    size = (round(frames[0].shape[1] * dataset.scale), round(frames[0].shape[0] * dataset.scale))
    if references is not None and len(references) != len(frames):
        raise ValueError(f"{item.name}: the input has {len(frames)} frames and the reference {len(references)}")
    return PreparedItem(source, frames, references, size)


def build_metrics(names: tuple[str, ...], dataset: Dataset, device: str, weights_dir: Path | None,
                  say: Callable[[str], None]) -> dict[str, ImageMetric]:
    """The metrics of `names` that can run on this dataset here; one line for each that cannot."""
    ready = {}
    for name in names:
        if name in FULL_REFERENCE and not dataset.has_reference:
            say(Skipped(name, "it compares with HR references, and this dataset has none").line())
        elif name in VIDEO_METRICS:
            if "video" not in dataset.kinds:
                say(Skipped(name, "it measures videos, and this dataset has none").line())
            else:
                ready[name] = temporal_difference
        elif name in BUILTIN_METRICS:
            ready[name] = builtin_metric(name, crop=dataset.scale)
        else:
            loaded = library_metric(name, device, weights_dir)
            if isinstance(loaded, Skipped):
                say(loaded.line())
            else:
                ready[name] = loaded
    return ready


def measure(metrics: dict[str, ImageMetric], outputs: list[np.ndarray], references: list[np.ndarray] | None) -> dict:
    """{"metrics": per item, "per_frame": per metric (videos)}; images compared on their common area."""
    if references is not None:
        height = min(outputs[0].shape[0], references[0].shape[0])
        width = min(outputs[0].shape[1], references[0].shape[1])
        outputs = [frame[:height, :width] for frame in outputs]
        references = [frame[:height, :width] for frame in references]
    values, per_frame, errors = {}, {}, {}
    for name, metric in metrics.items():
        try:
            if name in VIDEO_METRICS:
                if len(outputs) > 1 and references is not None:
                    values[name] = metric(outputs, references)
                continue
            frames = [metric(out, references[k] if references is not None else None) for k, out in enumerate(outputs)]
        except ValueError as exc:  # this metric cannot judge this item: the others still do
            errors[name] = str(exc)
            continue
        values[name] = float(np.mean(frames))
        if len(outputs) > 1:
            per_frame[name] = frames
    return {"metrics": values, "per_frame": per_frame, "metric_errors": errors}


def _save_output(frames: list[np.ndarray], target: Path) -> None:
    if len(frames) == 1 and target.suffix == ".png":
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frames[0]).save(target)
        return
    target.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(target / f"{index:06d}.png")


def run(dataset: Dataset, methods: list[MethodSpec], metrics: dict[str, ImageMetric], out_dir: Path,
        progress: ProgressBar) -> dict[str, dict]:
    """Every method on every item not yet done -> the failures, method -> item -> message."""
    made: dict[str, object] = {}
    failures: dict[str, dict[str, str]] = {}
    for item in dataset.items:
        pending = [spec for spec in methods if not item_record(out_dir, spec.name, item.name).exists()]
        for spec in methods:
            if spec not in pending:
                progress.step(f"{spec.name} {item.name}", "done before")
        if not pending:
            continue
        try:
            prepared = prepare_item(dataset, item, out_dir)
        except ValueError as exc:
            for spec in pending:
                failures.setdefault(spec.name, {})[item.name] = str(exc)
                progress.step(f"{spec.name} {item.name}", f"failed: {exc}")
            continue
        for spec in pending:
            if spec.name not in made:
                made[spec.name] = spec.make()
                _write_method_info(out_dir, spec.name, made[spec.name])
            method = made[spec.name]
            target = output_path(out_dir, spec.name, item)
            try:
                restored = method.restore(prepared.source, prepared.frames, prepared.size, target)
            except ValueError as exc:  # one item's failure (a command's, a too-large input) does not stop the run
                message = " ".join(str(exc).split())
                failures.setdefault(spec.name, {})[item.name] = message
                progress.step(f"{spec.name} {item.name}", f"failed: {message}")
                continue
            _save_output(restored.frames, target)
            measured = measure(metrics, restored.frames, prepared.references)
            height, width = restored.frames[0].shape[:2]
            record = {
                **measured, "seconds": restored.seconds, "frames": len(restored.frames),
                "output_size": [width, height], "peak_memory_bytes": restored.peak_memory_bytes,
                "output": str(target.relative_to(out_dir)), "input": str(prepared.source),
            }  # fmt: skip
            _write_json(item_record(out_dir, spec.name, item.name), record)
            summary = ", ".join([f"{k} {v:.4g}" for k, v in measured["metrics"].items()]
                                + [f"{k} not measured ({v})" for k, v in measured["metric_errors"].items()])
            progress.step(f"{spec.name} {item.name}", f"{summary or 'done'} ({restored.seconds:.2f}s)")
    for name, method in made.items():  # again: the model's tilings are known once it ran
        _write_method_info(out_dir, name, method)
    return failures


def _write_method_info(out_dir: Path, name: str, method) -> None:
    """What the report says of a method (device, dtype, tiling, ...), kept for runs that resume without it."""
    _write_json(out_dir / "items" / name / "_method.json", method.info())


def load_records(out_dir: Path, method: str, items: list[Item]) -> dict[str, dict]:
    records = {}
    for item in items:
        path = item_record(out_dir, method, item.name)
        if path.exists():
            records[item.name] = json.loads(path.read_text())
    return records
