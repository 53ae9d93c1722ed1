"""Image files in and out: bytes -> RGB(+alpha) tensors, and tensors -> PNG/JPEG/WebP bytes.

Decoding is for untrusted uploads: only common raster formats are opened, the pixel count is checked
from the header before any pixel is decoded, and every failure is an `ImageError` with a one-line
message. Whatever the file's mode (greyscale, palette, CMYK, 16-bit, with or without alpha) the result
is an RGB float tensor in [0, 1], upright (EXIF orientation applied), plus the alpha channel if any.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from seedvr_local.png import encode_png
from seedvr_local.preprocess import resize_bicubic_antialias, resize_periodic

# Formats read from uploads. Pillow can open many more, some through external programs (EPS runs
# Ghostscript) or rarely audited parsers, which untrusted input should not reach.
_READABLE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "AVIF")

_EXIF_ORIENTATION = 0x0112

# Output formats: Pillow's name, the MIME type, and whether the format can carry alpha.
_WRITABLE_FORMATS = {
    "png": ("PNG", "image/png", True),
    "jpg": ("JPEG", "image/jpeg", False),
    "jpeg": ("JPEG", "image/jpeg", False),
    "webp": ("WEBP", "image/webp", True),
}


class ImageError(ValueError):
    """An image that cannot be used; the message is one line meant for the user."""


class InvalidImageError(ImageError):
    """The bytes are not a readable image."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed."""


@dataclass
class DecodedImage:
    rgb: torch.Tensor  # [3, H, W] float32 in [0, 1]
    alpha: torch.Tensor | None  # [1, H, W] float32 in [0, 1], None when the image has no transparency
    width: int
    height: int
    format: str | None  # Pillow's format name ("PNG", "JPEG", ...), None for an in-memory image


def decode_image(data: bytes, max_pixels: int | None = None) -> DecodedImage:
    """Decode image file bytes; refuses more than `max_pixels` pixels before decoding any.

    Raises `InvalidImageError` for anything that is not a readable image and `ImageTooLargeError` for an
    image over the limit (or over Pillow's own decompression-bomb limit).
    """
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    image = _open(data, max_pixels)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} ({width * height:,} pixels), more than the limit of {max_pixels:,} pixels"
        )
    planes = _guarded(lambda: _decode_png16(data, image) or _planes(image))
    return _decoded(*planes, _orientation(image), image.format)


def from_pil(image: Image.Image) -> DecodedImage:
    """A Pillow image (any mode) as a `DecodedImage`, with its EXIF orientation applied.

    16-bit RGB(A) files opened by the caller arrive here already reduced to 8 bits by Pillow; pass the
    file's bytes to `decode_image` to keep their full precision.
    """
    return _decoded(*_guarded(lambda: _planes(image)), _orientation(image), image.format)


def to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """`[3, H, W]` (float in [0, 1] or uint8) and optional `[1, H, W]` alpha -> an RGB or RGBA image."""
    return Image.fromarray(_hwc_pixels(rgb, alpha), "RGBA" if alpha is not None else "RGB")


def _hwc_pixels(rgb: torch.Tensor, alpha: torch.Tensor | None) -> np.ndarray:
    if rgb.dim() != 3 or rgb.shape[0] != 3:
        raise ValueError(f"expected an RGB tensor of shape [3, H, W], got {tuple(rgb.shape)}")
    planes = [to_uint8(rgb)]
    if alpha is not None:
        if tuple(alpha.shape) != (1, *rgb.shape[1:]):
            raise ValueError(f"alpha of shape {tuple(alpha.shape)} does not match the RGB size {tuple(rgb.shape[1:])}")
        planes.append(to_uint8(alpha))
    return (torch.cat(planes) if len(planes) > 1 else planes[0]).permute(1, 2, 0).contiguous().cpu().numpy()


def encode_image(rgb: torch.Tensor, alpha: torch.Tensor | None, fmt: str, quality: int = 95) -> bytes:
    """Encode as "png", "jpg"/"jpeg" or "webp". PNG and WebP keep the alpha channel; JPEG drops it.

    `quality` (1-100) applies to JPEG and WebP; PNG is lossless.
    """
    pil_format, _, keeps_alpha = _writable(fmt)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    if pil_format == "PNG":
        # zlib level 1 on every core (seedvr_local/png.py): PIL's one-core encoder took longer than the whole
        # DiT step on the GPU server (benchmarks/RESULTS.md).
        return encode_png(_hwc_pixels(rgb, alpha), level=1)
    image = to_pil(rgb, alpha if keeps_alpha else None)
    options: dict = {}
    if pil_format == "JPEG":
        # 4:4:4: the default 4:2:0 would halve the chroma resolution that the upscale just restored.
        options = {"quality": quality, "subsampling": 0}
    elif pil_format == "WEBP":
        # exact: keep the colour under transparent pixels (the model restored it too) instead of
        # letting the encoder replace it.
        options = {"quality": quality, "exact": True}
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=pil_format, **options)
    except (OSError, ValueError) as exc:  # e.g. WebP is limited to 16383 pixels a side
        size = f"{image.width}x{image.height}"
        raise ValueError(f"cannot encode a {size} image as {pil_format}: {_one_line(exc)}") from exc
    return buffer.getvalue()


def content_type_for(fmt: str) -> str:
    """The MIME type of an output format ("png", "jpg", "jpeg", "webp")."""
    return _writable(fmt)[1]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> uint8, rounding half to even (as the official script); uint8 passes through."""
    if x.dtype == torch.uint8:
        return x
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


def upscale_alpha(alpha: torch.Tensor, size: tuple[int, int], periodic: bool = False) -> torch.Tensor:
    """Resize a `[1, H, W]` alpha channel to `size = (H', W')` for the model's RGB output (as a tileable image's
    when `periodic`)."""
    resize = resize_periodic if periodic else resize_bicubic_antialias
    return resize(alpha.float(), size).clamp(0, 1)


def _writable(fmt: str) -> tuple[str, str, bool]:
    spec = _WRITABLE_FORMATS.get(fmt.lower().lstrip("."))
    if spec is None:
        raise ValueError(f"unsupported output format {fmt!r}; use one of: {', '.join(_WRITABLE_FORMATS)}")
    return spec


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _open(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Open (parse the header of) image bytes; no pixel is decoded yet.

    Pillow refuses a header of more than twice its `MAX_IMAGE_PIXELS` before anyone sees the size; when
    the caller has a lower limit of its own, that is the limit the refusal quotes.
    """
    Image.init()
    formats = [name for name in _READABLE_FORMATS if name in Image.OPEN]
    with warnings.catch_warnings():
        # Pillow warns between its bomb limit and twice it; the caller's `max_pixels` is the real limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=formats)
        except Image.DecompressionBombError as exc:
            if max_pixels is not None and max_pixels <= 2 * Image.MAX_IMAGE_PIXELS:
                raise ImageTooLargeError(f"the image has more pixels than the limit of {max_pixels:,}") from exc
            raise ImageTooLargeError(f"the image is too large to decode safely: {_one_line(exc)}") from exc
        except Image.UnidentifiedImageError as exc:
            raise InvalidImageError(f"the data is not an image in a supported format ({', '.join(formats)})") from exc
        except Exception as exc:
            raise InvalidImageError(f"the image header is corrupt: {_one_line(exc)}") from exc


Planes = tuple[np.ndarray, np.ndarray | None]  # [H, W, 3] RGB and [H, W] alpha, float32 in [0, 1]


def _guarded(decode: Callable[[], Planes]) -> Planes:
    """Run a pixel decode, turning whatever Pillow raises into an `ImageError`."""
    try:
        return decode()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is too large to decode safely: {_one_line(exc)}") from exc
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, zlib.error, ...)
        raise InvalidImageError(f"the image data is corrupt or truncated: {_one_line(exc)}") from exc


def _from_uint8(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) / 255.0


def _planes(image: Image.Image) -> Planes:
    """Pixels of any Pillow mode as float RGB in [0, 1] and alpha (None when there is none)."""
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG, TIFF): scale from 16 bits, not through Pillow's 8-bit "L".
        values = np.array(image).astype(np.int64)
        grey = np.clip(values, 0, 65535).astype(np.float32) / 65535.0
        alpha = (values != transparency).astype(np.float32) if isinstance(transparency, int) else None
        return np.repeat(grey[..., None], 3, axis=-1), alpha
    if mode == "F":
        grey = np.clip(np.array(image), 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1), None
    if mode == "L" and transparency is None:
        return np.repeat(_from_uint8(np.array(image))[..., None], 3, axis=-1), None
    if mode == "LA":
        pixels = _from_uint8(np.array(image))
        return np.repeat(pixels[..., :1], 3, axis=-1), pixels[..., 1]
    # Palette ("P", "PA"), premultiplied and colour-keyed images: Pillow resolves transparency to RGBA.
    if mode in ("RGBA", "RGBa", "PA", "La") or transparency is not None:
        pixels = _from_uint8(np.array(image.convert("RGBA")))
        return pixels[..., :3], pixels[..., 3]
    # RGB, and CMYK, YCbCr, "1", ... through Pillow's conversion.
    return _from_uint8(np.array(image if mode == "RGB" else image.convert("RGB"))), None


def _decode_png16(data: bytes, image: Image.Image) -> Planes | None:
    """Full-precision pixels of a 16-bit RGB, RGBA or grey+alpha PNG; None for any other image.

    Pillow has no 16-bit colour modes and keeps only the high byte of each sample. Its PNG decoder
    (inflate and unfilter in C) can still be told to unpack other bytes of the same scanlines: the
    scanline layout, hence the unfiltering, depends only on the bits per pixel, which the alternative
    raw modes below share with the file's. So: decode once for the high bytes, once for the low bytes.
    (16-bit greyscale needs none of this: Pillow reads it as "I;16".)
    """
    if image.format != "PNG" or len(image.tile) != 1:
        return None
    rawmode = image.tile[0][3]
    if rawmode in ("RGB;16B", "RGBA;16B"):
        high = _decode_png_as(data, rawmode).astype(np.int64)
        # ";16L" unpacks the second byte of each sample, which in the file's big-endian order is the low one.
        low = _decode_png_as(data, rawmode.replace(";16B", ";16L"))
        values = high * 256 + low
    elif rawmode == "LA;16B":
        # Pillow reads grey+alpha 16-bit into RGBA; plain "RGBA" unpacks the 4 bytes L_hi L_lo A_hi A_lo.
        raw = _decode_png_as(data, "RGBA").astype(np.int64)
        values = raw[..., 0::2] * 256 + raw[..., 1::2]
        values = np.concatenate([np.repeat(values[..., :1], 3, axis=-1), values[..., 1:]], axis=-1)
    else:
        return None
    planes = values.astype(np.float32) / 65535.0
    if planes.shape[-1] == 4:
        return planes[..., :3], planes[..., 3]
    transparency = image.info.get("transparency")
    if isinstance(transparency, tuple) and len(transparency) == 3:  # a colour key, in 16-bit values
        return planes, np.any(values != np.array(transparency), axis=-1).astype(np.float32)
    return planes, None


def _decode_png_as(data: bytes, rawmode: str) -> np.ndarray:
    image = _open(data)
    tile = image.tile[0]
    image.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace") else (*tile[:3], rawmode)]
    image.load()
    return np.array(image)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block should not cost the image, only its rotation
        return 1
    return value if value in range(1, 9) else 1


def _orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn `[C, H, W]` stored pixels upright according to the EXIF orientation tag (1-8)."""
    h, w = -2, -1
    if orientation in (5, 6, 7, 8):  # the stored image is on its side: rows become columns
        x = x.transpose(h, w)
    flips = {2: (w,), 3: (h, w), 4: (h,), 6: (w,), 7: (h, w), 8: (h,)}.get(orientation)
    return x.flip(flips) if flips else x


def _decoded(rgb: np.ndarray, alpha: np.ndarray | None, orientation: int, fmt: str | None) -> DecodedImage:
    rgb_t = _orient(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1), orientation).contiguous()
    alpha_t = None
    if alpha is not None:
        alpha_t = _orient(torch.from_numpy(np.ascontiguousarray(alpha))[None], orientation).contiguous()
    return DecodedImage(rgb=rgb_t, alpha=alpha_t, width=rgb_t.shape[-1], height=rgb_t.shape[-2], format=fmt)
