"""The built-in tiny model (`seedvr_local.weights.tiny`) written out as a weights directory, for the tests that
need a directory on disk (`--weights-dir`, the loaders, the benchmarks): nothing beside the clone is needed."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from seedvr_local.weights.bundle import CONFIG_FILE, NEG_EMB_FILE, POS_EMB_FILE
from seedvr_local.weights.tiny import build_tiny_models, tiny_dit_config, tiny_vae_config

DIT_FILE = "seedvr2_ema_3b.safetensors"
VAE_FILE = "ema_vae.safetensors"
NEG_EMB_TOKENS = 10  # another length than the positive embedding's, as in the released embeddings


def write_tiny_weights_dir(root: Path) -> Path:
    """`root` holding config.json (the tiny architecture under the official field names, and the file names),
    the DiT and VAE checkpoints in float32 safetensors, `pos_emb.pt` (the tiny model's) and a `neg_emb.pt` of
    another length."""
    models = build_tiny_models()
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "dit_variant": "3b",
        "dit": {key: value for key, value in tiny_dit_config().to_dict().items() if key != "variant"},
        "vae": tiny_vae_config().to_dict(),
        "files": {"dit": DIT_FILE, "vae": VAE_FILE, "pos_emb": POS_EMB_FILE, "neg_emb": NEG_EMB_FILE},
    }
    (root / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    save_file({key: t.contiguous() for key, t in models.dit.state_dict().items()}, str(root / DIT_FILE))
    save_file({key: t.contiguous() for key, t in models.vae.state_dict().items()}, str(root / VAE_FILE))
    torch.save(models.pos_emb.clone(), root / POS_EMB_FILE)
    negative = torch.randn(NEG_EMB_TOKENS, models.pos_emb.shape[1], generator=torch.Generator().manual_seed(1))
    torch.save(negative, root / NEG_EMB_FILE)
    return root
