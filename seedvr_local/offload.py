"""Block swap and model offload: which of the pipeline's weights sit on the device when.

`ModelOffload.apply(level)` places the weights for an `OffloadLevel` (`offload_levels.py`): streamed DiT blocks
and offloaded models keep a host copy (pinned on CUDA, so copies run asynchronously) and point their tensors at it.
During the DiT phase each streamed block is copied to the device just before it runs, on a side stream on CUDA,
and the next streamed block's copy starts as soon as a block starts, so the copy overlaps the computation; after
the block ran its tensors point at the host copy again and the device copy is freed. The VAE (and with `full` the
DiT's other weights) are copied in for their phases (`phase`) the same way.

The mechanism does not depend on the device: on the CPU "host" and "device" are the same memory and the copies
are real copies, so which weights are on the device when (`resident_blocks`) is the same bookkeeping as on CUDA.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from seedvr_local.offload_levels import FULL_OFFLOAD, NO_OFFLOAD, ModelWeights, OffloadLevel, check_offload


@dataclass
class _Group:
    """The tensors of some modules, moved together. `host` holds their host copies while the group is
    offloaded (empty while it lives on the device); `copies` the device copies while it is fetched."""

    name: str
    tensors: list[torch.Tensor]
    host: list[torch.Tensor] = field(default_factory=list)
    copies: list[torch.Tensor] = field(default_factory=list)
    ready: object = None  # a CUDA event the copies are complete at, or None

    @property
    def offloaded(self) -> bool:
        return bool(self.host)

    @property
    def on_device(self) -> bool:
        """Kept on the device, or fetched there for use."""
        return not self.host or bool(self.copies)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)


def _tensors(modules: list[nn.Module], exclude: set[int] = frozenset()) -> list[torch.Tensor]:
    seen, out = set(), []
    for module in modules:
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in seen and id(t) not in exclude:
                seen.add(id(t))
                out.append(t)
    return out


class ModelOffload:
    """Places the DiT's and the VAE's weights of a pipeline between host memory and `device` by offload level.

    Models loaded in host memory for another device start fully offloaded (`FULL_OFFLOAD`), so a model larger
    than the device can load; `apply` then moves onto the device what the level keeps there."""

    def __init__(self, dit: nn.Module, vae: nn.Module, device: torch.device | str):
        self.device = torch.device(device)
        self.host = torch.device("cpu")
        self.pin = self.device.type == "cuda"
        self.level = NO_OFFLOAD
        self.blocks = [_Group(f"blocks.{i}", _tensors([b])) for i, b in enumerate(dit.blocks)]
        in_blocks = {id(t) for g in self.blocks for t in g.tensors}
        self.dit_other = _Group("dit", _tensors([dit], in_blocks))
        self.vae = _Group("vae", _tensors([vae]))
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._streaming = False  # inside the DiT phase: streamed blocks are fetched as they run
        if self.device.type != self.host.type and all(t.device.type == self.host.type for t in self.vae.tensors):
            for group in (*self.blocks, self.dit_other, self.vae):
                self._place(group, offloaded=True)
            self.level = FULL_OFFLOAD
        for i, block in enumerate(dit.blocks):
            block.register_forward_pre_hook(lambda module, args, i=i: self._before_block(i))
            block.register_forward_hook(lambda module, args, out, i=i: self._after_block(i))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def weights(self, dequant_scratch: int = 0) -> ModelWeights:
        """The bytes of each part, as the planner counts them."""
        return ModelWeights(
            tuple(g.nbytes for g in self.blocks), self.dit_other.nbytes, self.vae.nbytes, dequant_scratch,
            host_is_device=self.device.type == self.host.type,
        )  # fmt: skip

    def device_bytes(self) -> int:
        """Bytes of weights on the device now (outside a phase: what the current level keeps there)."""
        if self.device.type == self.host.type:
            return self.weights().total  # the host's memory is the device's: every weight is on it
        groups = (*self.blocks, self.dit_other, self.vae)
        return sum(g.nbytes for g in groups if g.on_device)

    def resident(self) -> dict[str, bool]:
        """Whether each part's weights are on the device now (kept there, or fetched for use): "blocks.<i>",
        "dit" (the DiT's other weights) and "vae"."""
        return {g.name: g.on_device for g in (*self.blocks, self.dit_other, self.vae)}

    def resident_blocks(self) -> list[int]:
        """Indices of the DiT blocks whose weights are on the device now."""
        return [i for i, g in enumerate(self.blocks) if g.on_device]

    # ---- placement

    def apply(self, level: OffloadLevel) -> None:
        """Place the weights for `level`: the last `level.blocks` blocks (and with `models`, the VAE and the DiT's
        other weights) in host memory, everything else on the device."""
        check_offload(level, self.num_blocks)
        streamed = level.swapped(self.num_blocks)
        for i, group in enumerate(self.blocks):
            self._place(group, offloaded=i >= self.num_blocks - streamed)
        self._place(self.dit_other, offloaded=level.models)
        self._place(self.vae, offloaded=level.models)
        self.level = level

    def _place(self, group: _Group, offloaded: bool) -> None:
        if offloaded and not group.offloaded:
            group.host = [self._to_host(t.data) for t in group.tensors]
            for t, host in zip(group.tensors, group.host):
                t.data = host
        elif not offloaded and group.offloaded:
            for t, host in zip(group.tensors, group.host):
                t.data = host.to(self.device, copy=True)
            group.host = []

    def _to_host(self, data: torch.Tensor) -> torch.Tensor:
        host = data.to(self.host, copy=data.device.type != self.host.type)
        return host.pin_memory() if self.pin else host

    # ---- use

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Weights of pipeline phase `name` on the device for its duration: the VAE's for "encode" and "decode",
        the DiT's other weights for "dit", during which streamed blocks are fetched as they run."""
        groups = {"encode": [self.vae], "decode": [self.vae], "dit": [self.dit_other]}.get(name, [])
        groups = [g for g in groups if g.offloaded]
        for g in groups:
            self._fetch(g)
        self._streaming = name == "dit"
        try:
            if self._streaming:
                self._prefetch_after(-1)
            for g in groups:
                self._wait(g)
            yield
        finally:
            self._streaming = False
            for g in (*groups, *self.blocks):
                self._release(g)

    def _before_block(self, i: int) -> None:
        if not self._streaming:
            return
        group = self.blocks[i]
        if group.offloaded:
            self._fetch(group)  # no-op when prefetched
            self._wait(group)
        self._prefetch_after(i)

    def _after_block(self, i: int) -> None:
        if self._streaming:
            self._release(self.blocks[i])

    def _prefetch_after(self, i: int) -> None:
        """Start copying the first streamed block after block `i`, if any."""
        for group in self.blocks[i + 1:]:
            if group.offloaded:
                self._fetch(group)
                return

    def _fetch(self, group: _Group) -> None:
        if group.on_device:  # kept there, or already fetched
            return
        stream = self._stream
        # The side stream does not wait for the computation: the host copies are never written, and memory freed
        # by earlier copies is reused only after the computation that read it (`record_stream` in `_wait`).
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            group.copies = [h.to(self.device, non_blocking=True, copy=True) for h in group.host]
            if stream is not None:
                group.ready = torch.cuda.Event()
                group.ready.record(stream)

    def _wait(self, group: _Group) -> None:
        if not group.copies:
            return
        if group.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(group.ready)
            for copy in group.copies:
                copy.record_stream(current)  # freed only once the computation that reads it is done
            group.ready = None
        for t, copy in zip(group.tensors, group.copies):
            t.data = copy

    def _release(self, group: _Group) -> None:
        if not group.copies:
            return
        for t, host in zip(group.tensors, group.host):
            t.data = host
        group.copies, group.ready = [], None
