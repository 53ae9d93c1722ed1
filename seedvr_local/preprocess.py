"""Input transforms: the official SeedVR2 transform chain and the padding path the product uses.

Two ways to bring an image to a size the model accepts (a multiple of 16 on both sides):

- `official_transform`: what the official inference script does (spec 1.3): resize to a target *area*,
  then centre-crop to a multiple of 16. It throws away up to 15 rows and columns, so it only serves parity.
- `pad_to_multiple` / `crop_to`: what the product does: resize to exactly the requested output size, pad
  to a multiple of 16, restore, and crop the padding off again, so no pixel is lost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The VAE downsamples by 8 and the DiT patches 2x2 on the latent grid.
SIZE_MULTIPLE = 16


def area_resize_hw(height: int, width: int, res_h: int, res_w: int) -> tuple[int, int]:
    """The official `AreaResize` target size: the input's aspect ratio with an area of about res_h*res_w.

    Bit-exact with the official code, so the float expressions and their order are kept: the script
    builds `resolution = sqrt(res_h*res_w)` and AreaResize squares it again, and Python's `round` rounds
    halves to even.
    """
    resolution = (res_h * res_w) ** 0.5
    max_area = resolution**2
    scale = math.sqrt(max_area / (height * width))
    return round(height * scale), round(width * scale)


def resize_bicubic_antialias(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of `[..., C, H, W]` to `size = (H', W')`, antialiased like torchvision's tensor resize.

    torchvision's `resize(BICUBIC, antialias=True)` on tensors is exactly this torch call: the Pillow
    cubic kernel (a = -0.5) whose out-of-image taps are dropped and renormalised, widened when
    downscaling. Plain `mode="bicubic"` (a = -0.75, clamped borders) gives different pixels.
    Half-precision and integer inputs are computed in float32; floating inputs keep their dtype.
    """
    out_h, out_w = int(size[0]), int(size[1])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"cannot resize to {out_h}x{out_w}: both sides must be at least 1")
    if x.dim() < 3:
        raise ValueError(f"expected a [..., C, H, W] tensor, got shape {tuple(x.shape)}")
    lead, (channels, height, width) = x.shape[:-3], x.shape[-3:]
    compute_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    flat = x.reshape(-1, channels, height, width).to(compute_dtype)
    out = F.interpolate(flat, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=True)
    out_dtype = x.dtype if x.is_floating_point() else compute_dtype
    return out.reshape(*lead, channels, out_h, out_w).to(out_dtype)


def _center_crop_box(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of torchvision's `center_crop` to the largest multiple that fits."""
    crop_h, crop_w = height - height % multiple, width - width % multiple
    # torchvision's center_crop rounds the offsets with Python's round (half to even).
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return top, left, crop_h, crop_w


def official_transform(image: torch.Tensor, res_h: int, res_w: int) -> dict[str, torch.Tensor]:
    """The official input transform of `inference_seedvr2_*.py` (spec 1.3) on `[T, C, H, W]` in [0, 1].

    Returns `resized` `[T, C, H', W']` (before the clamp), `cropped` `[T, C, Hc, Wc]` (clamped and
    centre-cropped to multiples of 16) and `normalized` `[C, T, Hc, Wc]` in [-1, 1], the model's input.
    """
    if image.dim() != 4:
        raise ValueError(f"expected a [T, C, H, W] tensor, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    new_h, new_w = area_resize_hw(height, width, res_h, res_w)
    resized = resize_bicubic_antialias(image, (new_h, new_w))
    top, left, crop_h, crop_w = _center_crop_box(new_h, new_w, SIZE_MULTIPLE)
    if crop_h == 0 or crop_w == 0:
        raise ValueError(
            f"a {width}x{height} image resized to {new_w}x{new_h} for res {res_w}x{res_h} "
            f"is smaller than {SIZE_MULTIPLE} pixels on one side"
        )
    # Bicubic overshoots; the official chain clamps before cropping.
    cropped = resized.clamp(0, 1)[..., top : top + crop_h, left : left + crop_w]
    normalized = (cropped * 2 - 1).transpose(0, 1)
    return {"resized": resized, "cropped": cropped, "normalized": normalized}


def _mirror_indices(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of `size` real rows followed by `pad` rows mirrored about the last one (no edge repeat).

    Unlike `F.pad(mode="reflect")` this works for any pad, even one larger than the content: the
    mirror keeps bouncing between both edges, and a single row is simply repeated.
    """
    index = torch.arange(size + pad, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    folded = index % period
    return torch.where(folded < size, folded, period - folded)


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad `[..., H, W]` at the bottom and right to multiples of `multiple`; returns it and the true (H, W).

    The padding mirrors the real content (reflect, without repeating the edge row). Every pixel of the
    padding still influences the real pixels near the border through the VAE convolutions and the DiT's
    window attention, so it should look like more of the same image: a constant (numz pads zeros, which
    is -1, black, after normalising) adds a hard edge and dark colour that the model "restores" into the
    border and that pulls the wavelet colour fix's low frequencies down; replicate smears the last row
    into flat streaks, a texture that is not in natural images. A mirror keeps the local texture and
    colour statistics continuous. Padding only the bottom and right keeps the content at the origin, so
    `crop_to` undoes it with a plain slice.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h:
        x = x.index_select(-2, _mirror_indices(height, pad_h, x.device))
    if pad_w:
        x = x.index_select(-1, _mirror_indices(width, pad_w, x.device))
    return x, (height, width)


def wrap_pad(x: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """`[..., H, W]` with `rows` rows and `columns` columns added on both sides, taken from the opposite side:
    the image as one period of a torus. Any pad works, even one larger than the image."""
    height, width = x.shape[-2:]
    if rows:
        x = x.index_select(-2, torch.arange(-rows, height + rows, device=x.device) % height)
    if columns:
        x = x.index_select(-1, torch.arange(-columns, width + columns, device=x.device) % width)
    return x


def _resize_periodic_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """`resize_bicubic_antialias` of `[..., C, H, W]` along one axis (-2 or -1) of a periodic image.

    The image is wrap padded by whole multiples of `n / gcd(n, size)` input pixels, which the resize maps to whole
    output pixels, so cropping the resized padding off leaves exactly the resize of the infinite periodic image.
    """
    n = x.shape[axis]
    if n == size:
        return x
    unit_in, unit_out = n // math.gcd(n, size), size // math.gcd(n, size)
    reach = math.ceil(2 * max(1.0, n / size)) + 1  # the cubic kernel's support, widened when downscaling
    units = -(-reach // unit_in)
    pad_in, pad_out = units * unit_in, units * unit_out
    padded = wrap_pad(x, pad_in, 0) if axis == -2 else wrap_pad(x, 0, pad_in)
    height, width = padded.shape[-2:]
    out_size = (size + 2 * pad_out, width) if axis == -2 else (height, size + 2 * pad_out)
    out = resize_bicubic_antialias(padded, out_size)
    return out.narrow(axis, pad_out, size)


def resize_periodic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`resize_bicubic_antialias` of a tileable image `[..., C, H, W]` to `size = (H', W')` as one period of a
    torus: the kernel taps that fall off one side read the other side, so the result tiles as the input does."""
    return _resize_periodic_axis(_resize_periodic_axis(x, -2, int(size[0])), -1, int(size[1]))


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`: keep the top-left `size = (H, W)` of `[..., H', W']`."""
    height, width = size
    if height > x.shape[-2] or width > x.shape[-1]:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to a larger size {(height, width)}")
    return x[..., :height, :width]
