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


def gguf_weights_dir(
    root: Path, tiny_weights, types: list[str], *, vae_types: list[str] | None = None
) -> tuple[Path, Path]:
    """A weights dir with the DiT (and the VAE when `vae_types`) as GGUF, and its float32 oracle dir."""
    dit, vae, pos_emb = tiny_weights
    quant, oracle = root / "gguf", root / "float32"
    quant.mkdir(parents=True)
    dit_oracle, _ = write_gguf(quant / "seedvr2_ema_3b-test.gguf", dit, types)
    vae_file, vae_oracle = "ema_vae.safetensors", vae
    if vae_types:
        vae_file = "ema_vae-test.gguf"
        vae_oracle, _ = write_gguf(quant / vae_file, vae, vae_types, seed=1, prefix="")
    write_weights_dir(quant, "seedvr2_ema_3b-test.gguf", vae_file, pos_emb, vae=None if vae_types else vae)
    write_weights_dir(oracle, "dit.safetensors", "vae.safetensors", pos_emb, dit_oracle, vae_oracle)
    return quant, oracle


def _fp8_scaled(weight: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    amax = weight.abs().amax(dim=1, keepdim=True) if per_row else weight.abs().max()
    scale = (amax / 448).float().clamp_min(1e-12)
    return (weight / scale).to(torch.float8_e4m3fn), scale.reshape(-1) if per_row else scale.reshape(())


def _int8_scaled(weight: torch.Tensor, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if block is None:
        scale = (weight.abs().max() / 127).float()
        return (weight / scale).round().clamp(-127, 127).to(torch.int8), scale
    rows, cols = block
    blocks = weight.reshape(weight.shape[0] // rows, rows, weight.shape[1] // cols, cols)
    scale = (blocks.abs().amax(dim=(1, 3)) / 127).float().clamp_min(1e-12)
    q = (blocks / scale[:, None, :, None]).round().clamp(-127, 127).to(torch.int8).reshape(weight.shape)
    return q, scale


def eight_bit_files(dit: dict[str, torch.Tensor], layout: str) -> tuple[dict, dict]:
    """(the file's tensors, the oracle state_dict: the same weights as float32 by the layout's formula)."""
    stored, oracle = {}, {}
    for key, weight in dit.items():
        eligible = key.endswith(".weight") and weight.dim() == 2
        if not eligible:
            stored[key] = oracle[key] = weight
            continue
        layer = key.removesuffix(".weight")
        if layout == "fp8":  # numz's conversion: fp8 values, no scale
            stored[key] = weight.to(torch.float8_e4m3fn)
            oracle[key] = stored[key].float()
        elif layout in ("comfy_fp8", "legacy_fp8"):
            q, scale = _fp8_scaled(weight, per_row=layout == "legacy_fp8")
            stored[key] = q
            stored[layer + (".weight_scale" if layout == "comfy_fp8" else ".scale_weight")] = scale
            if layout == "comfy_fp8":
                stored[layer + ".comfy_quant"] = format_record("float8_e4m3fn")
                stored[layer + ".input_scale"] = torch.tensor(1.0)
            oracle[key] = q.float() * (scale[:, None] if scale.dim() else scale)
        else:  # int8_tensorwise / int8_blockwise
            whole_blocks = weight.shape[0] % 8 == 0 and weight.shape[1] % 8 == 0
            block = (8, 8) if layout == "int8_blockwise" and whole_blocks else None
            q, scale = _int8_scaled(weight, block)
            stored[key], stored[layer + ".weight_scale"] = q, scale
            stored[layer + ".comfy_quant"] = format_record("int8_blockwise" if block else "int8_tensorwise")
            expand = scale.repeat_interleave(8, 0).repeat_interleave(8, 1) if block else scale
            oracle[key] = q.float() * expand
    if layout == "legacy_fp8":  # as ComfyUI writes them: the model's keys prefixed, the marker not
        stored = {"model.diffusion_model." + key: value for key, value in stored.items()}
        stored["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return stored, oracle


def format_record(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
