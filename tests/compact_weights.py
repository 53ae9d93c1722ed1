"""Test checkpoints in compact formats, made from the built-in tiny model's weights.

GGUF files are written with llama.cpp's own `gguf.GGUFWriter` in ComfyUI-GGUF's layout (the
`model.diffusion_model.` prefix, `comfy.gguf.orig_shape.<name>` for tensors stored reshaped); Q8_0/Q4_0/... blocks
come from gguf-py's own quantiser, K-quant blocks are built here (random packed integers under sane fp16
scales). Each writer returns the oracle: the same weights dequantised by gguf-py (`gguf.quants.dequantize`),
as float32, which `write_weights_dir` can save as an ordinary safetensors weights directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file

from seedvr_local.weights.tiny import build_tiny_models, tiny_dit_config, tiny_vae_config

QUANTIZER_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf-py quantises these itself
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
PREFIX = "model.diffusion_model."


def tiny_state_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """The built-in tiny model's DiT and VAE state_dicts (float32, without the RoPE buffers) and text embedding."""
    models = build_tiny_models()
    dit = {k: v for k, v in models.dit.state_dict().items() if not k.endswith("rope.rope.freqs")}
    return dit, dict(models.vae.state_dict()), models.pos_emb


def k_quant_blocks(type_name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Valid `type_name` blocks: random packed integers and sub-block scales, super-block scales of a small
    size (so the weights have a sensible magnitude, ~0.01-0.1)."""
    qtype = gguf.GGMLQuantizationType[type_name]
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    scale = rng.uniform(2e-4, 2e-3, (n_blocks, 1)).astype(np.float16).view(np.uint8)
    # Where each type keeps its fp16 super-block scale(s).
    offsets = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[type_name]
    for offset in offsets:
        blocks[:, offset : offset + 2] = scale
    return blocks


def quantized_blocks(values: np.ndarray, type_name: str, rng: np.random.Generator) -> np.ndarray:
    """`values` (rows of whole blocks) as `type_name` blocks in their byte shape."""
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name in QUANTIZER_TYPES:
        return quantize(values.astype(np.float32), qtype)
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    blocks = k_quant_blocks(type_name, values.size // block_size, rng)
    return blocks.reshape(*values.shape[:-1], -1)


def write_gguf(
    path: Path, state_dict: dict[str, torch.Tensor], types: list[str], *, seed: int = 0, prefix: str = PREFIX
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Write `state_dict` as a ComfyUI-GGUF style file: every tensor of 2+ dims whose size allows it is quantised,
    taking the `types` in turn; the rest is F32 (1-D) or F16. Tensors whose last dim is not a multiple of the
    block are stored as rows of one block with their logical shape in `comfy.gguf.orig_shape.<name>`.

    Returns the oracle state_dict (float32, what the file holds, dequantised by gguf-py) and key -> stored type.
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch="seedvr2")
    oracle, stored_types = {}, {}
    turn = 0
    for key, tensor in state_dict.items():
        values = tensor.detach().float().numpy()
        name = prefix + key
        type_name = types[turn % len(types)] if values.ndim >= 2 else "F32"
        block_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0] if type_name != "F32" else 1
        if type_name != "F32" and values.size % block_size:
            type_name = "F16"
        if type_name in ("F32", "F16"):
            stored = values.astype(np.float32 if type_name == "F32" else np.float16)
            writer.add_tensor(name, stored)
            oracle[key] = torch.from_numpy(stored.astype(np.float32))
        else:
            turn += 1
            rows = values if values.shape[-1] % block_size == 0 else values.reshape(-1, block_size)
            if rows.shape != values.shape:
                writer.add_array(f"comfy.gguf.orig_shape.{name}", list(values.shape))
            blocks = quantized_blocks(rows, type_name, rng)
            qtype = gguf.GGMLQuantizationType[type_name]
            writer.add_tensor(name, blocks, raw_dtype=qtype)
            oracle[key] = torch.from_numpy(dequantize(blocks, qtype).reshape(values.shape).copy())
        stored_types[key] = type_name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return oracle, stored_types


def write_weights_dir(
    directory: Path, dit_file: str, vae_file: str, pos_emb: torch.Tensor, dit: dict | None = None, vae: dict | None = None
) -> Path:
    """A weights directory for the tiny architecture: its config.json naming the files, the text embedding, and
    `dit`/`vae` saved as float32 safetensors when given (else the caller wrote those files)."""
    directory.mkdir(parents=True, exist_ok=True)
    if dit is not None:
        save_file({k: v.contiguous() for k, v in dit.items()}, directory / dit_file)
    if vae is not None:
        save_file({k: v.contiguous() for k, v in vae.items()}, directory / vae_file)
    torch.save(pos_emb.clone(), directory / "pos_emb.pt")
    config = {
        "dit_variant": "3b",
        "dit": tiny_dit_config().to_dict(),
        "vae": tiny_vae_config().to_dict(),
        "files": {"dit": dit_file, "vae": vae_file},
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory
