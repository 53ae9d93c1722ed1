"""8-bit safetensors checkpoints: plain fp8 (numz's `_fp8_e4m3fn` conversions, the "mixed block35" ones), and
ComfyUI's scaled fp8 and int8 files, whose 8-bit weights come with float32 scales.

ComfyUI's layouts (comfy/ops.py, comfy/quant_ops.py):

- legacy scaled fp8: a `scaled_fp8` marker tensor, and per quantised layer `<layer>.scale_weight` (float32,
  a scalar or one per output row) and optionally `<layer>.scale_input`; `weight = fp8 * scale_weight`;
- per-layer quantisation: `<layer>.comfy_quant` (the bytes of a JSON object whose `format` is one of
  `float8_e4m3fn`, `float8_e5m2`, `int8_tensorwise`, `int8_blockwise`, `mxfp8`, `nvfp4`), `<layer>.weight_scale`
  and optional `<layer>.input_scale` / `<layer>.weight_scale_2`; `weight = stored * weight_scale`, the scale a
  scalar, per row, or (int8_blockwise) one per block of the 2-D weight.

mxfp8 and nvfp4 store their block scales in cuBLAS's swizzled tile layout, which ComfyUI's own source does not
spell out (it calls comfy-kitchen's kernels), so they are refused by name rather than guessed at.

The scales and markers are not model weights: `aux_keys` names them, so validation sees the model's own keys.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Mapping

import torch

from seedvr_local.models.quantized import QuantizedTensor

MARKER_KEY = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
AUX_SUFFIXES = (*SCALE_SUFFIXES, ".scale_input", ".input_scale", ".weight_scale_2", ".comfy_quant")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
EIGHT_BIT_DTYPES = (*FP8_DTYPES, torch.int8)
#: ComfyUI per-layer formats read here (weight-only: an input scale is for fp8 matmuls and is not needed).
SUPPORTED_FORMATS = ("float8_e4m3fn", "float8_e5m2", "int8_tensorwise", "int8_blockwise")


class ScaledFormatError(ValueError):
    """A scaled checkpoint whose layout is not supported or not consistent."""


def aux_keys(keys: Iterable[str]) -> set[str]:
    """The keys of scales, input scales, per-layer format records and the marker: not model weights."""
    return {key for key in keys if key == MARKER_KEY or key.endswith(AUX_SUFFIXES)}


def check_formats(layer_formats: Mapping[str, bytes | torch.Tensor], what: str) -> None:
    """Refuse per-layer formats this reader does not decode, naming the first such layer."""
    for key, record in layer_formats.items():
        fmt = _layer_format(record, key, what)
        if fmt not in SUPPORTED_FORMATS:
            layer = key.removesuffix(".comfy_quant")
            raise ScaledFormatError(f"{what}: layer {layer} is stored as {fmt}, which is not supported "
                                    f"(supported: {', '.join(SUPPORTED_FORMATS)}, fp16, bf16, fp32, GGUF)")  # fmt: skip


def fold(
    tensors: dict[str, torch.Tensor],
    dtype_of: Callable[[str], torch.dtype | None],
    *,
    keep_quantized: bool,
    what: str,
) -> dict[str, torch.Tensor]:
    """Stored tensors (official names, as stored, scales included) -> the state_dict: each 8-bit weight with its
    scale becomes a `QuantizedTensor` dequantising to `dtype_of(key)` (float32 for None; kept packed when
    `keep_quantized`, else dequantised now); the scales and markers go. Other tensors pass through unchanged, as
    do unscaled fp8 weights when neither a dtype nor packing is asked for (the file's own values)."""
    aux = aux_keys(tensors)
    check_formats({key: tensors[key] for key in aux if key.endswith(".comfy_quant")}, what)
    state_dict = {}
    for key, tensor in tensors.items():
        if key in aux:
            continue
        scale, compute = _scale_of(tensors, key), dtype_of(key)
        as_stored = scale is None and compute is None and not keep_quantized
        if tensor.dtype in EIGHT_BIT_DTYPES and (tensor.dim() >= 2 or scale is not None) and not as_stored:
            if tensor.dtype == torch.int8 and scale is None:
                raise ScaledFormatError(f"{what}: int8 weight {key} has no scale (.weight_scale or .scale_weight)")
            kind = "int8" if tensor.dtype == torch.int8 else "fp8"
            compute = compute or torch.float32
            packed = QuantizedTensor(tensor, kind, tensor.shape, compute, scale)
            state_dict[key] = packed if keep_quantized else packed.dequantize()
        else:
            state_dict[key] = tensor
    return state_dict


def _scale_of(tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor | None:
    if not key.endswith(".weight"):
        return None
    layer = key.removesuffix(".weight")
    for suffix in SCALE_SUFFIXES:
        scale = tensors.get(layer + suffix)
        if scale is not None:
            return scale.to(torch.float32)
    return None


def _layer_format(record: bytes | torch.Tensor, key: str, what: str) -> str:
    data = bytes(record.to(torch.uint8).flatten().tolist()) if isinstance(record, torch.Tensor) else record
    try:
        fmt = json.loads(data.decode("utf-8")).get("format")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        fmt = None
    if not isinstance(fmt, str):
        raise ScaledFormatError(f"{what}: {key} is not a JSON object with a \"format\"")
    return fmt
