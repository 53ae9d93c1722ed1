"""Weights kept compact in memory (GGUF blocks, fp8, int8) and dequantised per layer at use.

A `QuantizedTensor` stands in for a model parameter: it has the parameter's logical shape and the model's
compute dtype (so the model code reading `weight.shape` or `weight.dtype` sees what it always did), while its
memory is only the packed data (and scales). Any operation on it (`F.linear`, `F.conv3d`, `weight.sum(dim=2)`
...) first dequantises it to a temporary plain tensor in the compute dtype, so only one layer's weight at a time
exists at full width. Moving it (`module.to(device)`, pinning, `detach`) moves the packed data; casting it
(`module.to(dtype)`) changes only the dtype it dequantises to.

Formats (`kind`):

- a GGML block type ("Q8_0", "Q4_K", ...; `kernels.ggml_reference.QUANTIZED_TYPES`): `qdata` is the uint8
  blocks `(n_blocks, type_size)` of the row-major values;
- "fp8": `qdata` float8 (e4m3fn or e5m2) in the logical shape, times an optional float32 `scale` (a scalar, or
  one per output row);
- "int8": `qdata` int8 in the logical shape, times a float32 `scale`: a scalar, one per output row, or one per
  `(rows/R, cols/C)` block of a 2-D weight.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_map

from seedvr_local.kernels.dequant import dequantize_ggml
from seedvr_local.kernels.ggml_reference import BLOCK_LAYOUTS, QUANTIZED_TYPES

SCALED_KINDS = ("fp8", "int8")
KINDS = QUANTIZED_TYPES + SCALED_KINDS

_aten = torch.ops.aten


class QuantizedTensor(torch.Tensor):
    """A weight stored packed (`qdata`, `scale`), seen by the model as a `shape` tensor of `dtype`."""

    qdata: torch.Tensor
    scale: torch.Tensor | None
    kind: str

    @staticmethod
    def __new__(
        cls,
        qdata: torch.Tensor,
        kind: str,
        shape: Iterable[int],
        dtype: torch.dtype,
        scale: torch.Tensor | None = None,
    ):
        return torch.Tensor._make_wrapper_subclass(
            cls, tuple(shape), dtype=dtype, device=qdata.device, requires_grad=False
        )

    def __init__(
        self,
        qdata: torch.Tensor,
        kind: str,
        shape: Iterable[int],
        dtype: torch.dtype,
        scale: torch.Tensor | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown quantised weight format {kind!r}; known: {', '.join(KINDS)}")
        self.qdata = qdata
        self.kind = kind
        self.scale = scale

    # -- what it holds

    @property
    def storage_bytes(self) -> int:
        """The bytes this weight takes in memory (packed data and scales)."""
        return self.qdata.nbytes + (self.scale.nbytes if self.scale is not None else 0)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The plain tensor of logical shape in `dtype` (default: the compute dtype)."""
        dtype = dtype or self.dtype
        shape = tuple(self.shape)
        if self.kind in QUANTIZED_TYPES:
            return dequantize_ggml(self.qdata, self.kind, dtype).reshape(shape)
        if self.scale is None:
            return self.qdata.to(dtype)
        values = self.qdata.to(torch.float32) * _expand_scale(self.scale, shape)
        return values.to(dtype)

    def __repr__(self) -> str:
        return (f"QuantizedTensor({self.kind}, shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device}, "
                f"{self.storage_bytes} bytes)")  # fmt: skip

    # -- torch integration

    def __tensor_flatten__(self) -> tuple[list[str], dict[str, Any]]:
        inner = ["qdata"] + (["scale"] if self.scale is not None else [])
        return inner, {"kind": self.kind, "shape": tuple(self.shape), "dtype": self.dtype}

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], meta: dict[str, Any], outer_size, outer_stride):
        return QuantizedTensor(inner["qdata"], meta["kind"], meta["shape"], meta["dtype"], inner.get("scale"))

    def _with(self, move, dtype: torch.dtype | None = None) -> "QuantizedTensor":
        scale = move(self.scale) if self.scale is not None else None
        return QuantizedTensor(move(self.qdata), self.kind, self.shape, dtype or self.dtype, scale)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        structural = _STRUCTURAL_OPS.get(func)
        if structural is not None:
            return structural(*args, **kwargs)
        # Every other op computes on the dequantised weight (a temporary: the packed form stays the stored one).
        plain = lambda t: t.dequantize() if isinstance(t, QuantizedTensor) else t  # noqa: E731
        return func(*tree_map(plain, args), **tree_map(plain, kwargs))


def _expand_scale(scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A scale broadcast to `shape`: a scalar, one per output row (`(rows,)` or `(rows, 1)`), or per 2-D block."""
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() == shape[0]:
        return scale.reshape((shape[0],) + (1,) * (len(shape) - 1))
    if scale.dim() == 2 and len(shape) == 2 and shape[0] % scale.shape[0] == 0 and shape[1] % scale.shape[1] == 0:
        rows, cols = shape[0] // scale.shape[0], shape[1] // scale.shape[1]
        return scale.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)
    raise ValueError(f"a scale of shape {tuple(scale.shape)} does not fit a weight of shape {list(shape)}")


def _to_copy(t: QuantizedTensor, *, dtype=None, device=None, non_blocking=False, **_: Any) -> QuantizedTensor:
    # A dtype change is the dtype it dequantises to; a device change moves the packed data.
    target = torch.device(device) if device is not None else t.qdata.device
    return t._with(lambda x: x.to(target, non_blocking=non_blocking), dtype if dtype is not None else None)


_STRUCTURAL_OPS = {
    _aten.detach.default: lambda t: t._with(lambda x: x.detach()),
    _aten.alias.default: lambda t: t._with(lambda x: x),
    _aten.clone.default: lambda t, **_: t._with(lambda x: x.clone()),
    _aten._to_copy.default: _to_copy,
    _aten._pin_memory.default: lambda t, device=None: t._with(lambda x: x.pin_memory()),
    _aten.is_pinned.default: lambda t, device=None: t.qdata.is_pinned(),
}


def ggml_nbytes(shape: Iterable[int], kind: str) -> int:
    """The bytes of a `shape` weight packed as GGML type `kind`."""
    block_size, type_size = BLOCK_LAYOUTS[kind]
    return math.prod(shape) // block_size * type_size


def weight_bytes(module: nn.Module) -> int:
    """The bytes `module`'s parameters and buffers take where they are: packed weights count their packed size."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.storage_bytes if isinstance(tensor, QuantizedTensor) else tensor.nbytes
    return total


def dequant_scratch_bytes(module: nn.Module) -> int:
    """An upper bound of the memory dequantising one of `module`'s packed weights takes at once (the planner's
    scratch): the largest one's float32 values and their copy in the compute dtype, as the PyTorch references
    make them (the Triton kernels write the compute dtype directly; a float32 compute dtype needs no copy)."""
    sizes = [
        t.numel() * (4 + t.element_size())
        for t in module.parameters()
        if isinstance(t, QuantizedTensor)
    ]
    return max(sizes, default=0)


def quantized_kinds(module: nn.Module) -> dict[str, int]:
    """Packed format -> how many of `module`'s weights are stored in it (empty when none is packed)."""
    kinds: dict[str, int] = {}
    for tensor in module.parameters():
        if isinstance(tensor, QuantizedTensor):
            kinds[tensor.kind] = kinds.get(tensor.kind, 0) + 1
    return kinds
