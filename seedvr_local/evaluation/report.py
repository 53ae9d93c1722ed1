"""The report of a run, from the per-item records on disk: report.json, report.csv, report.md and report.html.

report.json: `{"dataset": {...}, "environment": {...}, "run": {...}, "methods": {"<name>": {"mean": {...},
"per_item": {"<item>": {...}}, "per_frame": {...}, "seconds_per_item": .., ...}}, "paper": {...} | null}`.
report.html stands alone: its charts are inline SVG, its images data URIs, and its Content-Security-Policy lets it
load nothing else.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import platform
import sys
from html import escape
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from seedvr_local.cli_files import VIDEO_SUFFIXES
from seedvr_local.evaluation import plots
from seedvr_local.evaluation.datasets import Dataset, frame_files, read_frames
from seedvr_local.evaluation.metrics import LOWER_IS_BETTER
from seedvr_local.evaluation.paper import paper_values
from seedvr_local.evaluation.runner import load_records, output_path

#: fal's price for SeedVR2 upscales: dollars per output megapixel (per frame for a video).
FAL_USD_PER_MEGAPIXEL = 0.001
#: Side of the square crops shown in the HTML report, in output pixels.
CROP = 192
_PACKAGES = ("seedvr-local", "torch", "numpy", "pillow", "av", "pyiqa")


def environment() -> dict:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "packages": versions}


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(out_dir: Path, dataset: Dataset, method: str, metrics: list[str], failures: dict[str, str]) -> dict:
    records = load_records(out_dir, method, dataset.items)
    info_path = out_dir / "items" / method / "_method.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    seconds = [r["seconds"] for r in records.values()]
    pixels = [r["output_size"][0] * r["output_size"][1] * r["frames"] for r in records.values()]
    peaks = [r["peak_memory_bytes"] for r in records.values() if r.get("peak_memory_bytes")]
    total_mp = sum(pixels) / 1e6
    return {
        **info,
        "mean": {m: _mean(r["metrics"].get(m) for r in records.values()) for m in metrics},
        "per_item": {name: r["metrics"] for name, r in records.items()},
        "per_frame": {name: r["per_frame"] for name, r in records.items() if r.get("per_frame")},
        "metric_errors": {name: r["metric_errors"] for name, r in records.items() if r.get("metric_errors")},
        "items_done": len(records),
        "failed": failures,
        "seconds_per_item": _mean(seconds),
        "output_megapixels_per_second": total_mp / sum(seconds) if seconds and sum(seconds) > 0 else None,
        "peak_memory_mb": max(peaks) / 2**20 if peaks else None,
        "fal_price_usd_per_item": total_mp * FAL_USD_PER_MEGAPIXEL / len(records) if records else None,
        "fal_price_usd_total": total_mp * FAL_USD_PER_MEGAPIXEL,
    }


def build(out_dir: Path, dataset: Dataset, methods: list[str], metrics: list[str], run: dict,
          failures: dict[str, dict[str, str]], skipped_metrics: dict[str, str]) -> dict:
    return {
        "dataset": dataset.describe(),
        "environment": environment(),
        "run": {**run, "metrics": metrics, "skipped_metrics": skipped_metrics},
        "methods": {m: summarize(out_dir, dataset, m, metrics, failures.get(m, {})) for m in methods},
        "paper": paper_values(dataset.name),
    }


def _format(value, metric: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    if metric.startswith("psnr"):
        return f"{value:.2f}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _best(report: dict, metric: str) -> float | None:
    values = [m["mean"].get(metric) for m in report["methods"].values()]
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return None
    return min(values) if metric in LOWER_IS_BETTER else max(values)


_SPEED_COLUMNS = (("s/item", "seconds_per_item", "{:.3f}"), ("MP/s", "output_megapixels_per_second", "{:.3f}"),
                  ("peak MiB", "peak_memory_mb", "{:.0f}"), ("fal $/item", "fal_price_usd_per_item", "{:.3g}"))


def _table_rows(report: dict) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows (text, is the best) of the table: methods down, metrics then speed across."""
    metrics = [m for m in report["run"]["metrics"] if m not in report["run"]["skipped_metrics"]]
    arrows = [f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics]
    header = ["method", *arrows, *(column[0] for column in _SPEED_COLUMNS)]
    rows = []
    for name, method in report["methods"].items():
        row = [(name, False)]
        for metric in metrics:
            value, best = method["mean"].get(metric), _best(report, metric)
            text = _format(value, metric)  # ties as printed are all bold
            row.append((text, value is not None and best is not None and text == _format(best, metric)))
        for _, key, pattern in _SPEED_COLUMNS:
            value = method.get(key)
            row.append(("–" if value is None else pattern.format(value), False))
        rows.append(row)
    return header, rows


def write_csv(report: dict, path: Path) -> None:
    metrics = report["run"]["metrics"]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "item", *metrics, "seconds_per_item", "output_megapixels_per_second"])
        for name, method in report["methods"].items():
            writer.writerow([name, "mean", *(method["mean"].get(m, "") for m in metrics),
                             method["seconds_per_item"], method["output_megapixels_per_second"]])
            for item, values in method["per_item"].items():
                writer.writerow([name, item, *(values.get(m, "") for m in metrics), "", ""])


def _paper_lines(report: dict) -> list[str]:
    paper = report.get("paper")
    if not paper:
        return []
    lines = ["", f"## Published values on {paper['dataset']}", "", f"Source: {paper['source']}.", ""]
    if not paper["values"]:
        lines.append("No published values are recorded in this version for this dataset; compare with the paper's "
                     "tables directly.")
        return lines
    metrics = sorted({m for values in paper["values"].values() for m in values})
    lines += ["| model | " + " | ".join(metrics) + " |", "|" + " --- |" * (len(metrics) + 1)]
    for model, values in paper["values"].items():
        lines.append(f"| {model} (paper) | " + " | ".join(_format(values.get(m), m) for m in metrics) + " |")
    return lines


def markdown(report: dict) -> str:
    dataset, run = report["dataset"], report["run"]
    header, rows = _table_rows(report)
    lines = [f"# Evaluation on {dataset['name']}", "",
             f"{dataset['items']} item(s), layout {dataset['layout']}, x{dataset['scale']}, seed {run['seed']}.", ""]
    if dataset.get("degradation"):
        degradation = ", ".join(f"{k} {v}" for k, v in dataset["degradation"].items())
        lines += [f"Inputs made from HR by: {degradation}.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(f"**{text}**" if best else text for text, best in row) + " |")
    for metric, reason in run["skipped_metrics"].items():
        lines += ["", f"Not measured: {metric} ({reason})."]
    failed = {m: f for m, method in report["methods"].items() if (f := method["failed"])}
    for method, items in failed.items():
        lines += ["", f"{method} failed on {len(items)} item(s): " + "; ".join(f"{k}: {v}" for k, v in items.items())]
    for method, items in ((m, e) for m, method in report["methods"].items() if (e := method["metric_errors"])):
        lines += ["", f"{method}: not measured on " + "; ".join(
            f"{item} ({', '.join(errors.values())})" for item, errors in items.items())]
    lines += _paper_lines(report)
    return "\n".join(lines) + "\n"


def _data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _shown_frame(path: Path) -> Path | None:
    """The picture of an output to show: the image, or a video's middle frame."""
    if path.is_file():
        return path
    if path.is_dir():
        frames = frame_files(path)
        return frames[len(frames) // 2] if frames else None
    return None


def _crops(out_dir: Path, dataset: Dataset, report: dict) -> str:
    """Per item, the input (enlarged, nearest) against each method's output on the same centre crop, with a slider."""
    sections = []
    for item in dataset.items:
        shown = {}
        for method in report["methods"]:
            frame = _shown_frame(output_path(out_dir, method, item))
            if frame is not None:
                shown[method] = np.asarray(Image.open(frame).convert("RGB"))
        if not shown:
            continue
        reference = next(iter(shown.values()))
        height, width = reference.shape[:2]
        side = min(CROP, width, height)
        top, left = (height - side) // 2, (width - side) // 2
        record = next((r for m in report["methods"] if (r := _record(out_dir, m, item.name))), None)
        base = _input_picture(record, (width, height))
        crops = {"LR input": base} if base is not None else {}  # a space: no method is named so
        crops.update(shown)
        crops = {name: pixels[top:top + side, left:left + side] for name, pixels in crops.items()
                 if pixels.shape[:2] == (height, width)}
        names = list(crops)
        uris = {name: _data_uri(pixels) for name, pixels in crops.items()}
        options = "".join(f'<option value="{escape(n)}"{" selected" if k == 0 else ""}>{escape(n)}</option>'
                          for k, n in enumerate(names))
        options_right = "".join(f'<option value="{escape(n)}"{" selected" if k == min(1, len(names) - 1) else ""}>'
                                f'{escape(n)}</option>' for k, n in enumerate(names))
        images = "".join(f'<img class="src" data-name="{escape(n)}" src="{uri}" alt="{escape(n)}" hidden>'
                         for n, uri in uris.items())
        sections.append(
            f'<section class="item"><h3>{escape(item.name)}</h3>'
            f'<div class="pick">left <select class="left">{options}</select> right '
            f'<select class="right">{options_right}</select></div>'
            f'<div class="compare" style="width:{side * 2}px;height:{side * 2}px">'
            f'<img class="under" alt="right"><div class="over"><img class="top" alt="left"></div></div>'
            f'<input class="slider" type="range" min="0" max="100" value="50" style="width:{side * 2}px">'
            f'{images}</section>'
        )
    return "".join(sections)


def _record(out_dir: Path, method: str, item: str) -> dict | None:
    path = out_dir / "items" / method / f"{item}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _input_picture(record: dict | None, size: tuple[int, int]) -> np.ndarray | None:
    """The item's input enlarged to the output's size (nearest neighbour: its pixels as they are)."""
    if record is None:
        return None
    source = Path(record["input"])
    try:
        if source.suffix.lower() not in VIDEO_SUFFIXES:
            picture = Image.open(source).convert("RGB")
        else:
            frames = read_frames(source)
            picture = Image.fromarray(frames[len(frames) // 2])
    except (OSError, ValueError):
        return None
    return np.asarray(picture.resize(size, Image.NEAREST))


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.compare{position:relative;overflow:hidden;image-rendering:pixelated}
.compare img{position:absolute;top:0;left:0;width:100%;height:100%}
.over{position:absolute;top:0;left:0;height:100%;width:50%;overflow:hidden}
.over img{width:auto;height:100%}.item{margin:18px 0}
"""

_SCRIPT = """
for (const section of document.querySelectorAll('section.item')) {
  const box = section.querySelector('.compare'), over = section.querySelector('.over');
  const top = section.querySelector('.top'), under = section.querySelector('.under');
  const slider = section.querySelector('.slider');
  const source = name => [...section.querySelectorAll('img.src')].find(i => i.dataset.name === name).src;
  const show = () => {
    top.src = source(section.querySelector('.left').value);
    under.src = source(section.querySelector('.right').value);
    top.style.width = box.clientWidth + 'px';
    over.style.width = slider.value + '%';
  };
  section.querySelectorAll('select').forEach(s => s.addEventListener('change', show));
  slider.addEventListener('input', show);
  show();
}
"""


def html(report: dict, out_dir: Path, dataset: Dataset) -> str:
    header, rows = _table_rows(report)
    table = "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
    for row in rows:
        table += "<tr>" + "".join(f"<td>{'<b>' + escape(t) + '</b>' if best else escape(t)}</td>" for t, best in row)
        table += "</tr>"
    table += "</table>"
    metrics = [m for m in report["run"]["metrics"] if m not in report["run"]["skipped_metrics"]]
    charts = []
    for metric in metrics:
        per_item = {name: [values.get(metric) for values in method["per_item"].values()]
                    for name, method in report["methods"].items()}
        charts.append(plots.distribution(metric, per_item, metric in LOWER_IS_BETTER))
        speed = {name: (method["seconds_per_item"], method["mean"].get(metric))
                 for name, method in report["methods"].items()}
        charts.append(plots.quality_vs_speed(metric, speed, metric in LOWER_IS_BETTER))
    notes = markdown(report).split("\n")
    extra = "".join(f"<p>{escape(line)}</p>" for line in notes if line.startswith(("Not measured", "Inputs made")))
    paper = "".join(f"<p>{escape(line.lstrip('#').strip())}</p>" for line in _paper_lines(report) if line)
    dataset_info = report["dataset"]
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        f"<title>Evaluation on {escape(dataset_info['name'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Evaluation on {escape(dataset_info['name'])}</h1>"
        f"<p>{dataset_info['items']} item(s), layout {escape(dataset_info['layout'])}, x{dataset_info['scale']}, "
        f"seed {report['run']['seed']}.</p>{extra}{table}{paper}"
        f"<h2>Metrics</h2>{''.join(c for c in charts if c)}"
        f"<h2>Items</h2><p>Centre crops; drag the slider to compare the left and the right picture.</p>"
        f"{_crops(out_dir, dataset, report)}<script>{_SCRIPT}</script></body></html>"
    )


def write_all(report: dict, out_dir: Path, dataset: Dataset) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    write_csv(report, out_dir / "report.csv")
    (out_dir / "report.md").write_text(markdown(report))
    (out_dir / "report.html").write_text(html(report, out_dir, dataset))
