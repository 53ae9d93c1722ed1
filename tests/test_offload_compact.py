"""Offload with compact weights on the CPU path: a GGUF and an fp8 weights directory restore the same pixels at
every offload level, streamed blocks move packed, and the planner counts their packed bytes and the memory
dequantising one layer takes."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from PIL import Image

from seedvr_local.models.quantized import QuantizedTensor
from seedvr_local.offload_levels import NO_OFFLOAD
from seedvr_local.upscaler import UpscaleOptions, Upscaler
from tests.compact_weights import (
    COMFY_PREFIX,
    eight_bit_files,
    gguf_weights_dir,
    tiny_state_dicts,
    write_weights_dir,
)

LEVELS = ("blocks:2", "full")


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(8).integers(0, 256, (16, 20, 3), dtype=np.uint8))


def _pixels(weights_dir: Path, offload: str) -> torch.Tensor:
    upscaler = Upscaler.from_weights_dir(weights_dir, device="cpu", offload=offload)
    return upscaler.upscale(_image(), UpscaleOptions(seed=6)).pixels


@pytest.fixture(scope="module")
def weights_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compact")
    dit, vae, pos_emb = tiny_state_dicts()
    quant, _ = gguf_weights_dir(root / "gguf", (dit, vae, pos_emb), ["Q8_0", "Q4_K"])
    stored, _ = eight_bit_files(dit, "comfy_fp8")
    fp8 = write_weights_dir(root / "fp8", "dit.safetensors", "vae.safetensors", pos_emb, stored, vae)
    return {"gguf": quant, "fp8": fp8}


@pytest.mark.parametrize("kind", ["gguf", "fp8"])
def test_compact_weights_restore_the_resident_pixels_at_every_offload_level(weights_dirs, kind):
    resident = _pixels(weights_dirs[kind], "none")
    for level in LEVELS:
        assert torch.equal(_pixels(weights_dirs[kind], level), resident), level


@pytest.mark.parametrize("kind", ["gguf", "fp8"])
def test_streamed_blocks_stay_packed_while_moved(weights_dirs, kind):
    upscaler = Upscaler.from_weights_dir(weights_dirs[kind], device="cpu", offload="blocks:2")
    placement = upscaler.pipeline.offload
    block = upscaler.pipeline.dit.blocks[1]  # streamed
    packed = {name: p for name, p in block.named_parameters() if isinstance(p, QuantizedTensor)}
    assert len(packed) >= 4
    host = {name: p.qdata.data_ptr() for name, p in packed.items()}
    seen = []

    def record(module, args):
        group = placement.blocks[1]
        seen.append({
            "copies": [type(c).__name__ for c in group.copies],
            "params": {name: (type(p.data).__name__, p.qdata.dtype, p.qdata.data_ptr()) for name, p in packed.items()},
        })  # fmt: skip

    handle = block.register_forward_pre_hook(record)
    try:
        upscaler.upscale(_image(), UpscaleOptions(seed=6))
    finally:
        handle.remove()
    assert seen
    packed_dtype = torch.uint8 if kind == "gguf" else torch.float8_e4m3fn
    for step in seen:
        assert step["copies"].count("QuantizedTensor") == len(packed)  # moved as their packed data
        for name, (kind_name, dtype, pointer) in step["params"].items():
            assert kind_name == "QuantizedTensor" and dtype == packed_dtype, name
            assert pointer != host[name], name  # the block reads its moved copy
    assert {name: p.qdata.data_ptr() for name, p in packed.items()} == host  # and is back on the host copy after


def _gguf_block_bytes(path: Path, num_blocks: int) -> tuple[list[int], int]:
    """Each DiT block's bytes loaded in float32 from the file itself (packed tensors their blocks, the plain ones 4
    bytes a value), and the largest packed tensor's value count."""
    blocks = [0] * num_blocks
    largest = 0
    for tensor in gguf.GGUFReader(path).tensors:
        name = tensor.name.removeprefix(COMFY_PREFIX)
        plain = tensor.tensor_type.name in ("F32", "F16", "BF16")
        size = int(tensor.n_elements) * 4 if plain else int(tensor.n_bytes)
        largest = largest if plain else max(largest, int(tensor.n_elements))
        head, index, *_ = name.split(".")
        if head == "blocks":
            blocks[int(index)] += size
    return blocks, largest


def test_the_planner_counts_packed_blocks_and_the_dequant_scratch(weights_dirs):
    (path,) = weights_dirs["gguf"].glob("*.gguf")
    blocks, largest = _gguf_block_bytes(path, 3)
    scratch = largest * (4 + 4)  # the reference dequantiser's float32 values and their float32 copy
    offloaded = Upscaler.from_weights_dir(weights_dirs["gguf"], device="cpu", offload="full")
    # plus each block's buffers, which the file does not hold (the RoPE frequencies, computed at load)
    buffers = [sum(b.nbytes for b in block.buffers()) for block in offloaded.pipeline.dit.blocks]
    assert offloaded.planner.weights.block_bytes == tuple(f + b for f, b in zip(blocks, buffers))
    assert sum(blocks) > 3 * sum(buffers)
    assert offloaded.planner.weights.dequant_scratch == scratch
    resident = Upscaler.from_weights_dir(weights_dirs["gguf"], device="cpu", offload="none")
    plan = resident.plan(32, 32)
    assert plan.offload == NO_OFFLOAD
    assert plan.weight_bytes["dit"] == scratch and plan.weight_bytes["encode"] == 0
