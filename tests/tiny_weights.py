"""The built-in tiny model (`seedvr_local.weights.tiny`) written out as a weights directory, for the tests that
need a directory on disk (`--weights-dir`, the loaders, the benchmarks): nothing beside the clone is needed."""

from __future__ import annotations

from pathlib import Path

import torch

from seedvr_local.weights.bundle import NEG_EMB_FILE
from seedvr_local.weights.tiny import build_tiny_models
from tests.compact_weights import write_weights_dir

DIT_FILE = "seedvr2_ema_3b.safetensors"
VAE_FILE = "ema_vae.safetensors"
NEG_EMB_TOKENS = 10  # another length than the positive embedding's, as in the released embeddings


def write_tiny_weights_dir(root: Path) -> Path:
    """`root` holding config.json (the tiny architecture, the file names), the DiT (its RoPE buffers included,
    as the official files hold them) and the VAE in float32 safetensors under their official names, `pos_emb.pt`
    (the tiny model's) and a `neg_emb.pt` of another length."""
    models = build_tiny_models()
    write_weights_dir(
        root, DIT_FILE, VAE_FILE, models.pos_emb, dict(models.dit.state_dict()), dict(models.vae.state_dict())
    )
    negative = torch.randn(NEG_EMB_TOKENS, models.pos_emb.shape[1], generator=torch.Generator().manual_seed(1))
    torch.save(negative, root / NEG_EMB_FILE)
    return root
