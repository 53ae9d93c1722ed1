"""Test checkpoints in compact formats, made from the built-in tiny model's weights.

GGUF files are written with llama.cpp's own `gguf.GGUFWriter` in ComfyUI-GGUF's layout (the
`model.diffusion_model.` prefix, `comfy.gguf.orig_shape.<name>` for tensors stored reshaped; the writer is
`benchmarks.gguf_files`); Q8_0/Q4_0/... blocks come from gguf-py's own quantiser, K-quant blocks are built here
(random packed integers under sane fp16 scales). `write_gguf` returns the oracle: the same weights dequantised by
gguf-py (`gguf.quants.dequantize`) as float32, which `write_weights_dir` saves as an ordinary weights directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file

from benchmarks import gguf_files
from benchmarks.gguf_files import COMFY_PREFIX, block_size
from seedvr_local.weights.tiny import build_tiny_models, tiny_dit_config, tiny_vae_config

QUANTIZER_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")  # gguf-py quantises these itself
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


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


def write_gguf(
    path: Path, state_dict: dict[str, torch.Tensor], types: list[str], *, seed: int = 0, prefix: str = COMFY_PREFIX
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Write `state_dict` as a ComfyUI-GGUF style file (`benchmarks.gguf_files.write_gguf`), its weight matrices
    taking the `types` in turn: gguf-py's quantiser for the QUANTIZER_TYPES, `k_quant_blocks` for the K types.

    Returns the oracle state_dict (float32: what the file holds, dequantised by gguf-py) and key -> stored type.
    """
    rng = np.random.default_rng(seed)
    turns = iter(range(1 << 30))

    def make_blocks(values: np.ndarray, type_name: str) -> np.ndarray:
        if type_name in QUANTIZER_TYPES:
            return quantize(values.astype(np.float32), gguf.GGMLQuantizationType[type_name])
        blocks = k_quant_blocks(type_name, values.size // block_size(type_name), rng)
        return blocks.reshape(*values.shape[:-1], -1)

    stored = gguf_files.write_gguf(path, state_dict, lambda key, shape: types[next(turns) % len(types)],
                                   make_blocks, prefix=prefix)  # fmt: skip
    oracle = {}
    for key, (type_name, array) in stored.items():
        if type_name not in ("F32", "F16"):
            array = dequantize(array, gguf.GGMLQuantizationType[type_name])
        oracle[key] = torch.from_numpy(array.astype(np.float32).reshape(state_dict[key].shape))
    return oracle, {key: type_name for key, (type_name, _) in stored.items()}


def write_weights_dir(
    directory: Path,
    dit_file: str,
    vae_file: str,
    pos_emb: torch.Tensor,
    dit: dict | None = None,
    vae: dict | None = None,
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
