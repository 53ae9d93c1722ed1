"""Reading checkpoint files: `.pth`/`.pt` (torch.save state_dicts), `.safetensors` and `.gguf`.

Every reader returns the official key names: wrapper prefixes some converters add (``model.diffusion_model.``,
``module.``, ...) are stripped, and the VAE's deprecated diffusers attention names
(``mid_block.attentions.0.query`` ...) become the current ones (``to_q`` ...). `read_shapes` reads only the
metadata, so a 30 GB file is validated before its data is touched; `read_state_dict` reads the tensors and
casts floating-point ones (fp32, fp16, bf16, fp8 e4m3fn/e5m2) to the requested dtype one at a time.

Compact weights (GGUF blocks, see `weights.gguf_reader`; 8-bit fp8/int8 weights and their scales, see
`weights.scaled`) are dequantised on reading, or with `keep_quantized=True` stay packed as
`models.quantized.QuantizedTensor`s that dequantise per layer at use.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open

from seedvr_local.models.quantized import QuantizedTensor
from seedvr_local.models.vae import current_attention_key
from seedvr_local.weights import scaled
from seedvr_local.weights.gguf_reader import (
    GGUF_SUFFIXES,
    GGUFFormatError,
    gguf_shapes,
    gguf_types,
    read_gguf_state_dict,
)
from seedvr_local.weights.manifest import Shape

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
CHECKPOINT_SUFFIXES = PTH_SUFFIXES + SAFETENSORS_SUFFIXES + GGUF_SUFFIXES

#: Prefixes that wrappers put in front of every key (ComfyUI/GGUF exports, DataParallel, torch.compile).
WRAPPER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "_orig_mod.")
#: Dict keys under which some tools nest the state_dict.
NESTED_STATE_DICT_KEYS = ("state_dict", "model", "module", "ema")

#: The persistent RoPE frequency buffers. Files may store them lossily (fp8), so their values are never
#: used: the models compute their own in fp32. The keys are accepted, and may be absent.
ROPE_FREQS_SUFFIX = "rope.rope.freqs"


class CheckpointFormatError(ValueError):
    """A file that is not a readable state_dict checkpoint."""


def is_rope_freqs(key: str) -> bool:
    return key.endswith(ROPE_FREQS_SUFFIX)


def read_shapes(path: str | Path) -> dict[str, Shape]:
    """Key -> shape of every tensor in the file, without reading the tensor data (official key names)."""
    path = Path(path)
    if _is_gguf(path):
        return _rename(_gguf(gguf_shapes, path))
    if _is_safetensors(path):
        with _open_safetensors(path) as file:
            keys = list(file.keys())
            formats = {key: file.get_tensor(key) for key in keys if key.endswith(".comfy_quant")}
            shapes = {key: tuple(file.get_slice(key).get_shape()) for key in keys}
    else:
        # mmap: the tensors stay on disk; only the pickled metadata is read.
        tensors = _load_pth(path)
        formats = {key: tensor for key, tensor in tensors.items() if key.endswith(".comfy_quant")}
        shapes = {key: tuple(tensor.shape) for key, tensor in tensors.items()}
    _check_scaled_formats(formats, path)
    aux = scaled.aux_keys(shapes)  # scales and format records are not model weights
    return _rename({key: shape for key, shape in shapes.items() if key not in aux})


def read_dtypes(path: str | Path) -> dict[str, torch.dtype | str]:
    """Key -> stored dtype (a GGML type name such as "Q4_K" for GGUF files) of every tensor in the file, without
    reading the tensor data."""
    path = Path(path)
    if _is_gguf(path):
        return _rename(_gguf(gguf_types, path))
    if _is_safetensors(path):
        with _open_safetensors(path) as file:
            dtypes = {key: _SAFETENSORS_DTYPES.get(file.get_slice(key).get_dtype()) for key in file.keys()}
    else:
        dtypes = {key: tensor.dtype for key, tensor in _load_pth(path).items()}
    return _rename(dtypes)


def read_state_dict(
    path: str | Path,
    dtype: torch.dtype | None = None,
    *,
    skip: Callable[[str], bool] | None = None,
    float32: Callable[[str], bool] | None = None,
    keep_quantized: bool = False,
) -> dict[str, torch.Tensor]:
    """The file's tensors on the CPU with official key names.

    Floating-point tensors are cast to `dtype` (None keeps the stored dtypes, fp8 included) as each one is
    read, so peak memory stays near the size of the result; those for which `float32(official_key)` is true
    to float32 instead (a model's `_keep_in_fp32_modules`). Keys for which `skip(official_key)` is true are
    not read. Compact weights (GGUF blocks, scaled 8-bit weights) are dequantised to that dtype (float32
    without one), or with `keep_quantized` stay packed and dequantise to it at use.
    """

    def target(key: str) -> torch.dtype | None:
        return torch.float32 if dtype is not None and float32 and float32(key) else dtype

    path = Path(path)
    if _is_gguf(path):
        return _gguf(read_gguf_state_dict, path, _official_names, target, skip=skip, keep_quantized=keep_quantized)
    if _is_safetensors(path):
        with _open_safetensors(path) as file:
            stored = _read_cast(_official_names(file.keys()), file.get_tensor, target, skip)
    else:
        tensors = _load_pth(path)
        stored = _read_cast(_official_names(tensors.keys()), tensors.__getitem__, target, skip)
    if not any(_kept_raw(tensor, key) for key, tensor in stored.items()):
        return stored
    try:
        folded = scaled.fold(stored, target, keep_quantized=keep_quantized, what=str(path))
    except scaled.ScaledFormatError as exc:
        raise CheckpointFormatError(str(exc)) from None
    return {key: t if isinstance(t, QuantizedTensor) else _cast(t, target(key)) for key, t in folded.items()}


def _kept_raw(tensor: torch.Tensor, key: str) -> bool:
    """Tensors `_read_cast` keeps as stored, for `scaled.fold`: 8-bit ones, scales, format records."""
    return tensor.dtype in scaled.EIGHT_BIT_DTYPES or bool(scaled.aux_keys([key]))


def _read_cast(
    names: dict[str, str],
    get: Callable[[str], torch.Tensor],
    target: Callable[[str], torch.dtype | None],
    skip: Callable[[str], bool] | None,
) -> dict[str, torch.Tensor]:
    """Read each tensor and cast it at once (peak memory: the result plus one tensor), except 8-bit weights and
    scales, which `scaled.fold` pairs up (an 8-bit weight means something only with its scale)."""
    result = {}
    for old, new in names.items():
        if skip and skip(new):
            continue
        tensor = get(old)
        result[new] = tensor if _kept_raw(tensor, new) else _cast(tensor, target(new))
    return result


def _check_scaled_formats(formats: dict[str, torch.Tensor], path: Path) -> None:
    try:
        scaled.check_formats(formats, str(path))
    except scaled.ScaledFormatError as exc:
        raise CheckpointFormatError(str(exc)) from None


def _gguf(function: Callable, path: Path, *args, **kwargs):
    """A gguf_reader function, with its format errors as this module's."""
    try:
        return function(path, *args, **kwargs)
    except GGUFFormatError as exc:
        raise CheckpointFormatError(str(exc)) from None


def official_key_names(keys: Iterable[str]) -> dict[str, str]:
    """Stored key -> official key: wrapper prefixes stripped, deprecated VAE attention names renamed."""
    return _official_names(keys)


def strip_wrapper_prefixes(keys: Iterable[str]) -> dict[str, str]:
    """Stored key -> key without the wrapper prefixes shared by every key (applied repeatedly)."""
    names = {key: key for key in keys}
    changed = True
    while changed and names:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(new.startswith(prefix) for new in names.values()):
                names = {old: new[len(prefix) :] for old, new in names.items()}
                changed = True
    return names


def _official_names(keys: Iterable[str]) -> dict[str, str]:
    keys = list(keys)
    # ComfyUI's scaled-fp8 marker sits outside the model's prefix: it must not keep the prefix from being stripped.
    markers = {key: key for key in keys if key == scaled.MARKER_KEY}
    names = strip_wrapper_prefixes(key for key in keys if key not in markers)
    renamed = _rename_deprecated_attention(list(names.values()))
    return {**{old: renamed[new] for old, new in names.items()}, **markers}


def _rename(by_stored_key: dict[str, object]) -> dict:
    names = _official_names(by_stored_key)
    return {names[key]: value for key, value in by_stored_key.items()}


def _rename_deprecated_attention(keys: list[str]) -> dict[str, str]:
    """key -> current key for the VAE's old diffusers attention names (the VAE module's rule); other keys map to
    themselves."""
    mapping = {key: current_attention_key(key) for key in keys}
    if len(set(mapping.values())) != len(keys):
        raise CheckpointFormatError("the VAE checkpoint holds both the old and the new name of an attention weight")
    return mapping


#: Tensors read from a file are copied unless their data starts on this boundary (bytes).
ALIGNMENT = 64


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(dtype)
    if tensor.data_ptr() % ALIGNMENT:
        # safetensors hands out views of the memory-mapped file at whatever offset a tensor has there (fp8 and
        # fp16 neighbours leave fp32 data even 3 bytes off). CPU kernels pick code paths by alignment, so such
        # views are slow and give results that differ in the last bits from an aligned copy of the same values.
        return tensor.clone()
    return tensor


def _is_gguf(path: Path) -> bool:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path.suffix in GGUF_SUFFIXES


def _is_safetensors(path: Path) -> bool:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return True
    if path.suffix in PTH_SUFFIXES:
        return False
    raise CheckpointFormatError(
        f"{path}: unknown checkpoint format {path.suffix!r} (expected {', '.join(CHECKPOINT_SUFFIXES)})"
    )


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Files written with the legacy (pre-zip) torch.save format cannot be memory-mapped.
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long and generic; the line naming what failed is the useful one.
        detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line), "")
        if "Unsupported global" in detail:
            raise CheckpointFormatError(
                f"{path}: holds Python objects other than tensors, which are not loaded for safety ({detail})"
            ) from None
        detail = detail or "unpickling failed"
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    return _as_state_dict(path, loaded)


def _as_state_dict(path: Path, loaded: object) -> dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        for key in NESTED_STATE_DICT_KEYS:
            if isinstance(loaded.get(key), dict):
                return _as_state_dict(path, loaded[key])
    if not isinstance(loaded, dict):
        raise CheckpointFormatError(f"{path}: holds a {type(loaded).__name__}, not a state_dict")
    others = [str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise CheckpointFormatError(f"{path}: entries that are not tensors: {', '.join(others[:5])}")
    return loaded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
