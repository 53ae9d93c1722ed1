"""Image and video quality metrics.

PSNR and SSIM are written here (numpy only), as super-resolution papers compute them: on the luma (Y) of BT.601
studio-swing YCbCr, 16-235 in 8-bit steps, with `crop` pixels (the scale factor) cut from every border; SSIM with
an 11x11 Gaussian window (sigma 1.5) and the constants of Wang et al. 2004. `psnr_rgb` and `ssim_rgb` use the three
RGB planes instead. `tdiff` compares a video's frame-to-frame changes with the reference's: flicker and lost motion
both raise it.

The metrics that need pretrained networks (LPIPS, DISTS, NIQE, MUSIQ, CLIP-IQA) come from pyiqa, which implements
every one the SeedVR2 paper reports, each as its authors published it (torchmetrics lacks DISTS, NIQE and MUSIQ). They
are loaded only from weights already on disk: nothing is downloaded; a metric whose weights or library are missing
is skipped with one line saying why.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: Full-reference metrics written here, and those pyiqa provides.
BUILTIN_METRICS = ("psnr", "ssim", "psnr_rgb", "ssim_rgb")
LIBRARY_METRICS = ("lpips", "dists", "niqe", "musiq", "clipiqa")
#: Per sequence, for videos with references.
VIDEO_METRICS = ("tdiff",)
ALL_METRICS = BUILTIN_METRICS + LIBRARY_METRICS + VIDEO_METRICS
#: What a run measures without --metrics: the SeedVR2 paper's image metrics (the video one is added for videos).
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists", "niqe", "musiq", "clipiqa")
#: Metrics that compare with the HR reference (the others judge the output alone).
FULL_REFERENCE = frozenset({"psnr", "ssim", "psnr_rgb", "ssim_rgb", "lpips", "dists", "tdiff"})
LOWER_IS_BETTER = frozenset({"lpips", "dists", "niqe", "tdiff"})

_PEAK = 255.0
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # 11 taps: the Gaussian truncated at 3.5 sigma, as in Wang et al.'s reference code


def parse_metrics(text: str) -> tuple[str, ...]:
    """`--metrics psnr,ssim,lpips` -> the names, checked; ValueError with one line for an unknown one."""
    names = tuple(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown metric {unknown[0]!r}; choose from {', '.join(ALL_METRICS)}"
                         if unknown else "--metrics: name at least one metric")
    return names


def luma(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [H, W] float64 BT.601 luma in studio swing (16 to 235)."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _planes(rgb: np.ndarray, y_only: bool, crop: int) -> np.ndarray:
    """[C, H, W] float64 planes: the luma alone or the three RGB planes, borders cropped."""
    planes = luma(rgb)[None] if y_only else np.moveaxis(rgb.astype(np.float64), -1, 0)
    if crop:
        planes = planes[:, crop:-crop, crop:-crop]
    if planes.shape[1] < 1 or planes.shape[2] < 1:
        raise ValueError(f"the image is too small for a border crop of {crop} pixels")
    return planes


def psnr(output: np.ndarray, reference: np.ndarray, crop: int = 0, y_only: bool = True) -> float:
    """Peak signal-to-noise ratio in dB (infinite for identical images)."""
    a, b = _planes(output, y_only, crop), _planes(reference, y_only, crop)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(_PEAK**2 / mse)


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    return weights / weights.sum()


def _filter_valid(plane: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The separable window over every position where it fits wholly in the plane (no padding)."""
    taps = len(window)
    rows = np.lib.stride_tricks.sliding_window_view(plane, taps, axis=0) @ window
    return np.lib.stride_tricks.sliding_window_view(rows, taps, axis=1) @ window


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    window = _gaussian_window()
    c1, c2 = (0.01 * _PEAK) ** 2, (0.03 * _PEAK) ** 2
    mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
    var_a = _filter_valid(a * a, window) - mu_a**2
    var_b = _filter_valid(b * b, window) - mu_b**2
    cov = _filter_valid(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(output: np.ndarray, reference: np.ndarray, crop: int = 0, y_only: bool = True) -> float:
    """Structural similarity, the mean over positions where the window fits (and over planes for RGB)."""
    a, b = _planes(output, y_only, crop), _planes(reference, y_only, crop)
    if min(a.shape[1:]) < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"the image is smaller than SSIM's {2 * _SSIM_RADIUS + 1}-pixel window after cropping")
    return float(np.mean([_ssim_plane(pa, pb) for pa, pb in zip(a, b)]))


class TemporalDifference:
    """Mean absolute difference, on the luma, between the output's and the reference's change from each frame to
    the next: 0 when the output moves (and flickers) exactly as the reference does. Fed a frame pair at a time."""

    def __init__(self):
        self.previous: tuple[np.ndarray, np.ndarray] | None = None
        self.total = 0.0
        self.steps = 0

    def add(self, output: np.ndarray, reference: np.ndarray) -> None:
        current = luma(output), luma(reference)
        if self.previous is not None:
            moved, expected = current[0] - self.previous[0], current[1] - self.previous[1]
            self.total += float(np.mean(np.abs(moved - expected)))
            self.steps += 1
        self.previous = current

    def value(self) -> float | None:
        """None for a single frame."""
        return self.total / self.steps if self.steps else None


#: A metric ready to use: (output, reference or None) -> value.
ImageMetric = Callable[[np.ndarray, "np.ndarray | None"], float]


def builtin_metric(name: str, crop: int) -> ImageMetric:
    y_only = not name.endswith("_rgb")
    function = psnr if name.startswith("psnr") else ssim
    return lambda output, reference: function(output, reference, crop=crop, y_only=y_only)


@dataclass
class Skipped:
    """A metric that cannot run here, and the line that says why."""

    name: str
    reason: str

    def line(self) -> str:
        return f"skipped metric {self.name}: {self.reason}"


class MetricError(ValueError):
    """A metric that cannot measure one image; the others still do."""


class _NotOnDisk(Exception):
    """A pretrained metric asked to download a file."""


@contextlib.contextmanager
def _offline(weights_dir: Path | None):
    """While a pyiqa metric is built: its caches point at `weights_dir` (when given), Hugging Face is offline,
    and any download through torch.hub raises instead of reaching the network."""
    saved = {key: os.environ.get(key) for key in ("TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if weights_dir is not None:
        os.environ["TORCH_HOME"] = str(weights_dir)
        os.environ["HF_HOME"] = str(weights_dir / "huggingface")
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch.hub

    original = torch.hub.download_url_to_file

    def refuse(url, *args, **kwargs):
        raise _NotOnDisk(f"its weights are not on disk ({os.path.basename(str(url))})")

    # pyiqa and torchvision import the function by name: replace every module's reference to it
    patched = [(module, name) for module in list(sys.modules.values()) for name in ("download_url_to_file",)
               if getattr(module, name, None) is original]
    for module, name in patched:
        setattr(module, name, refuse)
    try:
        yield
    finally:
        for module, name in patched:
            setattr(module, name, original)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def library_metric(name: str, device: str, weights_dir: Path | None) -> ImageMetric | Skipped:
    """pyiqa's `name`, built from weights on disk only; a `Skipped` when the library or the weights are missing."""
    hint = "pass --metric-weights DIR holding them, or fill pyiqa's cache once on a machine online"
    try:
        with _offline(weights_dir):
            try:
                import pyiqa
            except ImportError:
                return Skipped(name, "pyiqa is not installed (pip install 'seedvr-local[eval]')")
            # imported after the patch is set up would miss it: patch again now that pyiqa's modules are loaded
            with _offline(weights_dir):
                model = pyiqa.create_metric(name, device=device, as_loss=False)
    except _NotOnDisk as exc:
        return Skipped(name, f"{exc}; {hint}")
    except Exception as exc:  # a library's own failure to load (offline Hugging Face, a corrupt file) skips it
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return Skipped(name, f"could not be loaded offline ({reason[:160]}); {hint}")

    import torch

    def measure(output: np.ndarray, reference: np.ndarray | None) -> float:
        def tensor(rgb: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255).to(device)

        try:
            with torch.no_grad():
                if name in FULL_REFERENCE:
                    return float(model(tensor(output), tensor(reference)).item())
                return float(model(tensor(output)).item())
        except Exception as exc:  # the library's limits (an image too small for NIQE's patches, say)
            raise MetricError(f"{name}: {' '.join(str(exc).split())[:200] or type(exc).__name__}") from None

    return measure
