"""A benchmark run: every method on every item, each result written to disk as soon as it is measured.

`DIR/items/<method>/<item>.json` holds one item's metrics and timing; an item whose file exists is not redone,
so an interrupted run (Ctrl-C, a crash, a failed item) resumes where it stopped. The inputs made for an item
(degraded images, frame folders as lossless videos) are kept in `DIR/inputs/`, the outputs in
`DIR/outputs/<method>/<item>.png` (a folder of frames for a video).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from seedvr_local.evaluation.datasets import (
    Dataset,
    Item,
    iter_frames,
    read_frames,
    read_image,
    write_lossless_video,
)
from seedvr_local.evaluation.metrics import (
    BUILTIN_METRICS,
    FULL_REFERENCE,
    VIDEO_METRICS,
    ImageMetric,
    Skipped,
    TemporalDifference,
    builtin_metric,
    library_metric,
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
    frames: list[np.ndarray]  # the input's frames (small: the output's size over the scale squared)
    references: Callable[[], Iterator[np.ndarray]] | None  # the reference frames, read anew for each method
    size: tuple[int, int]  # the output size asked: input x scale


def _reference_frames(item: Item, crop: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    frames = iter([read_image(item.hr)]) if item.kind == "image" else iter_frames(item.hr)
    for frame in frames:
        yield frame if crop is None else frame[: crop[1], : crop[0]]


def prepare_item(dataset: Dataset, item: Item, out_dir: Path) -> PreparedItem:
    """The input (made by the degradation when the set has HR only), its frames and the reference frames."""
    inputs = out_dir / "inputs"
    references = None if item.hr is None else functools.partial(_reference_frames, item)
    if item.lr is None:  # HR only: the stated degradation makes the input
        degradation = dataset.degradation
        frames, crop = [], None
        for k, frame in enumerate(_reference_frames(item)):
            crop = crop or degradation.hr_crop(frame.shape[1], frame.shape[0])
            picture = Image.fromarray(frame[: crop[1], : crop[0]])
            frames.append(np.asarray(degradation.apply(picture, f"{item.name}:{k}" if k else item.name)))
        references = functools.partial(_reference_frames, item, crop)
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
    return PreparedItem(source, frames, references, size)


def build_metrics(
    names: tuple[str, ...], dataset: Dataset, device: str, weights_dir: Path | None
) -> tuple[dict[str, ImageMetric | type[TemporalDifference]], list[Skipped]]:
    """The metrics of `names` that can run on this dataset here, and those that cannot, each with its reason. A
    video metric is its class, made anew for each sequence."""
    ready, skipped = {}, []
    for name in names:
        if name in FULL_REFERENCE and not dataset.has_reference:
            skipped.append(Skipped(name, "it compares with HR references, and this dataset has none"))
        elif name in VIDEO_METRICS:
            if "video" not in dataset.kinds:
                skipped.append(Skipped(name, "it measures videos, and this dataset has none"))
            else:
                ready[name] = TemporalDifference
        elif name in BUILTIN_METRICS:
            ready[name] = builtin_metric(name, crop=dataset.scale)
        else:
            loaded = library_metric(name, device, weights_dir)
            if isinstance(loaded, Skipped):
                skipped.append(loaded)
            else:
                ready[name] = loaded
    return ready, skipped


class Measurement:
    """An item's metrics, frame by frame as the outputs come: per frame, and their mean per item."""

    def __init__(self, metrics: dict):
        self.image = {n: m for n, m in metrics.items() if n not in VIDEO_METRICS}
        self.video = {n: m() for n, m in metrics.items() if n in VIDEO_METRICS}
        self.values: dict[str, list[float]] = {name: [] for name in self.image}
        self.errors: dict[str, str] = {}
        self.frames = 0

    def add(self, output: np.ndarray, reference: np.ndarray | None) -> None:
        """One frame; an output and a reference of different sizes are compared on their common area."""
        self.frames += 1
        if reference is not None:
            height, width = min(output.shape[0], reference.shape[0]), min(output.shape[1], reference.shape[1])
            output, reference = output[:height, :width], reference[:height, :width]
            for measure in self.video.values():
                measure.add(output, reference)
        for name, metric in self.image.items():
            if name in self.errors:
                continue
            try:
                self.values[name].append(metric(output, reference))
            except ValueError as exc:  # this metric cannot judge this item: the others still do
                self.errors[name] = str(exc)

    def result(self) -> dict:
        values = {name: float(np.mean(v)) for name, v in self.values.items() if name not in self.errors and v}
        values.update({name: m.value() for name, m in self.video.items() if m.value() is not None})
        per_frame = {name: v for name, v in self.values.items() if name not in self.errors} if self.frames > 1 else {}
        return {"metrics": values, "per_frame": per_frame, "metric_errors": self.errors}


class _Outputs:
    """Saves an item's output frames as they come: a PNG for an image, a folder of PNGs for a video."""

    def __init__(self, target: Path, video: bool):
        self.target, self.video, self.count = target, video, 0
        if video:
            shutil.rmtree(target, ignore_errors=True)  # frames left by an interrupted attempt
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)

    def write(self, frame: np.ndarray) -> None:
        Image.fromarray(frame).save(self.target / f"{self.count:06d}.png" if self.video else self.target)
        self.count += 1


def _restore_and_measure(method, prepared: PreparedItem, item: Item, metrics: dict, target: Path) -> dict:
    """Run `method` on the item, saving and measuring each output frame as it comes -> the item's record. Only
    the time spent inside the method counts as its time."""
    outputs = method.restore(prepared.source, prepared.frames, prepared.size, target)
    references = prepared.references() if prepared.references is not None else None
    measurement, saved = Measurement(metrics), _Outputs(target, item.kind == "video")
    seconds, size = 0.0, None
    try:
        while True:
            started = time.perf_counter()
            frame = next(outputs, None)
            seconds += time.perf_counter() - started
            if frame is None:
                break
            reference = next(references, None) if references is not None else None
            if references is not None and reference is None:
                raise ValueError(f"the output has more frames than the reference ({saved.count})")
            size = size or [frame.shape[1], frame.shape[0]]
            saved.write(frame)
            measurement.add(frame, reference)
    finally:
        outputs.close()
    if references is not None and next(references, None) is not None:
        raise ValueError(f"the reference has more frames than the output ({saved.count})")
    if saved.count == 0:
        raise ValueError("the method made no frame")
    return {
        **measurement.result(), "seconds": seconds, "frames": saved.count, "output_size": size,
        "peak_memory_bytes": method.peak_memory_bytes(), "input": str(prepared.source),
    }  # fmt: skip


def run(dataset: Dataset, methods: list[MethodSpec], metrics: dict, out_dir: Path,
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
            target = output_path(out_dir, spec.name, item)
            try:
                record = _restore_and_measure(made[spec.name], prepared, item, metrics, target)
            except ValueError as exc:  # one item's failure (a command's, a too-large input) does not stop the run
                message = " ".join(str(exc).split())
                failures.setdefault(spec.name, {})[item.name] = message
                progress.step(f"{spec.name} {item.name}", f"failed: {message}")
                continue
            record["output"] = str(target.relative_to(out_dir))
            _write_json(item_record(out_dir, spec.name, item.name), record)
            summary = ", ".join([f"{k} {v:.4g}" for k, v in record["metrics"].items()]
                                + [f"{k} not measured ({v})" for k, v in record["metric_errors"].items()])
            progress.step(f"{spec.name} {item.name}", f"{summary or 'done'} ({record['seconds']:.2f}s)")
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
