"""The stated degradation that makes a low-resolution input from a high-resolution image (HR-only datasets).

In this order, each step optional but the downscale: Gaussian blur, bicubic downscale by the scale factor,
Gaussian noise, JPEG compression. The noise is drawn from a generator seeded per item, so a rerun makes the same
inputs. Every parameter goes into report.json.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Degradation:
    scale: int
    blur_sigma: float = 0.0  # Gaussian blur before downscaling, in HR pixels; 0: none
    noise_sigma: float = 0.0  # Gaussian noise after downscaling, in 8-bit levels; 0: none
    jpeg_quality: int | None = None  # JPEG compression last, 1-95; None: none
    seed: int = 0

    def check(self) -> None:
        if self.scale < 1:
            raise ValueError(f"--scale must be at least 1, got {self.scale}")
        if self.blur_sigma < 0 or self.noise_sigma < 0:
            raise ValueError("--degrade-blur and --degrade-noise must be 0 or more")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"--degrade-jpeg must be between 1 and 95, got {self.jpeg_quality}")

    def describe(self) -> dict:
        return {"downscale": "bicubic (Pillow)", **asdict(self)}

    def hr_crop(self, width: int, height: int) -> tuple[int, int]:
        """The HR size used: cropped down to a multiple of the scale, so LR x scale is exactly the HR."""
        return width - width % self.scale, height - height % self.scale

    def apply(self, hr: Image.Image, item: str) -> Image.Image:
        """The LR input for the HR image `hr` (already cropped by `hr_crop`) of item `item`."""
        image = hr.convert("RGB")
        if self.blur_sigma > 0:
            image = image.filter(ImageFilter.GaussianBlur(self.blur_sigma))
        image = image.resize((image.width // self.scale, image.height // self.scale), Image.BICUBIC)
        if self.noise_sigma > 0:
            digest = hashlib.sha256(f"{self.seed}:{item}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            pixels = np.asarray(image, dtype=np.float64)
            pixels = pixels + rng.normal(0.0, self.noise_sigma, pixels.shape)
            image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
        if self.jpeg_quality is not None:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=self.jpeg_quality)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image
