"""Colour fixes: give the restored frames back the colours of the input (spec 1.9, 1.10).

The model restores detail well but drifts in colour. Each fix takes the restored frames (`content`)
and the model's input frames (`style`), both `[N, C, H, W]` in [-1, 1] with frames as the batch, and
returns `content` recoloured after `style`. Everything is computed in float32 and returned in the
content's dtype.

- `wavelet`: the official fix (StableSR's wavelet reconstruction): content's high frequencies plus the
  style's low frequencies.
- `wavelet_numz`: the same as numz's ComfyUI port computes it (radius cap, clamp); kept for parity.
- `adain`: per-frame, per-channel mean and standard deviation of the style.
- `lab`: numz's CIELAB variant: wavelet, then histogram matching of a*, b* and a bit of L*.

With `periodic=True` (a tileable image) the blurs wrap around the frame instead of replicating its border, so a
result that tiles stays tileable; the statistics of `adain` and `lab` cover the whole frame and need no change.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from seedvr_local.options import COLOR_FIXES as COLOR_FIX_METHODS  # the methods `apply_color_fix` accepts
from seedvr_local.preprocess import wrap_pad

WAVELET_LEVELS = 5

# 3x3 binomial kernel: a cheap Gaussian; dilated by 1, 2, 4, ... it blurs over ever larger scales.
_BLUR_KERNEL = (
    (1.0, 2.0, 1.0),
    (2.0, 4.0, 2.0),
    (1.0, 2.0, 1.0),
)


def _check_pair(content: torch.Tensor, style: torch.Tensor) -> None:
    if content.dim() != 4:
        raise ValueError(f"colour fix expects [N, C, H, W] frames, got shape {tuple(content.shape)}")
    if content.shape != style.shape:
        raise ValueError(
            f"colour fix needs content and style of one shape, got {tuple(content.shape)} and {tuple(style.shape)}"
        )


def _blur(x: torch.Tensor, radius: int, periodic: bool = False) -> torch.Tensor:
    """Depthwise binomial blur with taps `radius` pixels apart; the border is extended by replication, or, when
    `periodic`, by the opposite side."""
    channels = x.shape[1]
    kernel = torch.tensor(_BLUR_KERNEL, dtype=x.dtype, device=x.device) / 16.0
    kernel = kernel.expand(channels, 1, 3, 3)
    if periodic:
        padded = wrap_pad(x, radius, radius)
    else:
        padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=radius)


def _wavelet_low_frequency(x: torch.Tensor, radii: list[int], periodic: bool) -> torch.Tensor:
    """What is left after blurring with each radius in turn: the colour and illumination."""
    for radius in radii:
        x = _blur(x, radius, periodic)
    return x


def _wavelet_transfer(content: torch.Tensor, style: torch.Tensor, radii: list[int], periodic: bool) -> torch.Tensor:
    content, style = content.float(), style.to(device=content.device, dtype=torch.float32)
    # The high band is the sum of the differences between successive blur levels, i.e. the content
    # minus its last level; swapping that last level for the style's recolours the content.
    low = _wavelet_low_frequency
    return content - low(content, radii, periodic) + low(style, radii, periodic)


def wavelet_reconstruction(
    content: torch.Tensor, style: torch.Tensor, levels: int = WAVELET_LEVELS, periodic: bool = False
) -> torch.Tensor:
    """The official colour fix (StableSR): content's high frequencies plus style's low frequencies.

    Blur radii 1, 2, 4, ..., 2**(levels-1) with replicate padding, no clamp. Any channel count.
    """
    _check_pair(content, style)
    radii = [2**i for i in range(levels)]
    return _wavelet_transfer(content, style, radii, periodic).to(content.dtype)


def wavelet_reconstruction_numz(
    content: torch.Tensor, style: torch.Tensor, levels: int = WAVELET_LEVELS, periodic: bool = False
) -> torch.Tensor:
    """numz's variant: radii capped at max(1, min(H, W) // 8) and the result clamped to [-1, 1]."""
    _check_pair(content, style)
    cap = max(1, min(content.shape[-2:]) // 8)
    radii = [min(2**i, cap) for i in range(levels)]
    return _wavelet_transfer(content, style, radii, periodic).clamp(-1.0, 1.0).to(content.dtype)


def _mean_std(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame and channel over H*W; unbiased variance, as StableSR's `calc_mean_std`."""
    flat = x.flatten(2)
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2, correction=1) + eps).sqrt()
    return mean[..., None, None], std[..., None, None]


def adain_color_fix(
    content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5, periodic: bool = False
) -> torch.Tensor:
    """Adaptive instance normalisation: each frame's channels get the style's mean and deviation (whole-frame
    statistics: the same on a torus)."""
    _check_pair(content, style)
    c, s = content.float(), style.to(device=content.device, dtype=torch.float32)
    c_mean, c_std = _mean_std(c, eps)
    s_mean, s_std = _mean_std(s, eps)
    return ((c - c_mean) / c_std * s_std + s_mean).to(content.dtype)


# sRGB (D65) <-> CIE XYZ, and the D65 white point; the constants numz uses.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_XYZ_TO_RGB = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_LAB_DELTA = 6.0 / 29.0  # where CIELAB's cube root switches to its linear segment
_LAB_KAPPA = (29.0 / 3.0) ** 3


def _mix_channels(matrix: tuple, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix to `[N, 3, H, W]`."""
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,njhw->nihw", m, x)


def _white_point(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_WHITE_D65, dtype=x.dtype, device=x.device)[None, :, None, None]


def _srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """`[N, 3, H, W]` sRGB in [0, 1] -> CIELAB (L*, a*, b*) under D65."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix_channels(_RGB_TO_XYZ, linear) / _white_point(linear)
    f = torch.where(xyz > _LAB_DELTA**3, xyz.pow(1.0 / 3.0), (xyz * _LAB_KAPPA + 16.0) / 116.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def _lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of `_srgb_to_lab`, clamped to [0, 1]."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    xyz = torch.where(f > _LAB_DELTA, f**3, (f * 116.0 - 16.0) / _LAB_KAPPA) * _white_point(f)
    linear = _mix_channels(_XYZ_TO_RGB, xyz)
    rgb = torch.where(linear > 0.0031308, linear.clamp(min=0.0) ** (1.0 / 2.4) * 1.055 - 0.055, linear * 12.92)
    return rgb.clamp(0.0, 1.0)


def _match_histogram(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Give `source` the value distribution of `reference` by rank (quantile mapping), over all elements.

    The k-th smallest source value becomes the reference value at the same quantile,
    `sorted_reference[floor(k * (n_ref - 1) / (n_src - 1))]`, computed in integers so that equal counts
    map rank to rank exactly.
    """
    src = source.flatten()
    ref_sorted = reference.flatten().sort().values
    order = src.argsort()
    n_src, n_ref = src.numel(), ref_sorted.numel()
    if n_src == n_ref:
        matched = ref_sorted
    else:
        ranks = torch.arange(n_src, device=src.device)
        matched = ref_sorted[(ranks * (n_ref - 1)) // max(n_src - 1, 1)]
    out = torch.empty_like(src)
    out[order] = matched
    return out.reshape(source.shape)


def lab_color_fix(
    content: torch.Tensor, style: torch.Tensor, luminance_weight: float = 0.8, periodic: bool = False
) -> torch.Tensor:
    """numz's CIELAB colour transfer: the numz wavelet fix, then histogram matching in CIELAB.

    a* and b* take the style's distribution (over all frames together); L* keeps `luminance_weight` of
    the content's and takes the rest from the matched one, to keep detail. Output clamped to [-1, 1].
    """
    _check_pair(content, style)
    base = wavelet_reconstruction_numz(content.float(), style.float(), periodic=periodic)
    style = style.to(device=content.device, dtype=torch.float32)
    content_lab = _srgb_to_lab(((base + 1) * 0.5).clamp(0, 1))
    style_lab = _srgb_to_lab(((style + 1) * 0.5).clamp(0, 1))
    lightness, a, b = content_lab.unbind(1)
    style_l, style_a, style_b = style_lab.unbind(1)
    matched_l = _match_histogram(lightness, style_l)
    result = torch.stack(
        [
            lightness * luminance_weight + matched_l * (1.0 - luminance_weight),
            _match_histogram(a, style_a),
            _match_histogram(b, style_b),
        ],
        dim=1,
    )
    return (_lab_to_srgb(result) * 2 - 1).to(content.dtype)


def _no_color_fix(content: torch.Tensor, style: torch.Tensor, periodic: bool = False) -> torch.Tensor:
    _check_pair(content, style)
    return content


_METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "wavelet": wavelet_reconstruction,
    "adain": adain_color_fix,
    "lab": lab_color_fix,
    "none": _no_color_fix,
}


def apply_color_fix(method: str, content: torch.Tensor, style: torch.Tensor, periodic: bool = False) -> torch.Tensor:
    """Recolour `content` after `style` (`[N, C, H, W]` in [-1, 1]) with one of `COLOR_FIX_METHODS`; `periodic`:
    the frames are tileable images (see the module docstring)."""
    fix = _METHODS.get(method)
    if fix is None:
        raise ValueError(f"unknown colour fix {method!r}; valid methods: {', '.join(COLOR_FIX_METHODS)}")
    return fix(content, style, periodic=periodic)
