"""The server restoring with a GGUF weights directory: the same picture (within one uint8 level) as with the
same weights dequantised to float32."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from seedvr_local.server import create_app
from seedvr_local.upscaler import Upscaler
from tests.compact_weights import tiny_state_dicts, write_gguf, write_weights_dir
from tests.server.helpers import data_uri, png_bytes

RUN = "/fal-ai/seedvr/upscale/image"


@pytest.mark.parametrize("store", ["sqlite"])
def test_the_server_restores_from_a_gguf_weights_dir(tmp_path, settings):
    dit, vae, pos_emb = tiny_state_dicts()
    quant = tmp_path / "gguf"
    quant.mkdir()
    dit_oracle, _ = write_gguf(quant / "seedvr2_ema_3b-Q4_K_M.gguf", dit, ["Q4_K", "Q6_K"])
    vae_oracle, _ = write_gguf(quant / "ema_vae-Q8_0.gguf", vae, ["Q8_0"], prefix="")
    write_weights_dir(quant, "seedvr2_ema_3b-Q4_K_M.gguf", "ema_vae-Q8_0.gguf", pos_emb)
    oracle = write_weights_dir(tmp_path / "f32", "dit.safetensors", "vae.safetensors", pos_emb, dit_oracle, vae_oracle)
    request = {"image_url": data_uri(png_bytes(24, 16, color=(30, 120, 220))), "seed": 3, "output_format": "png",
               "sync_mode": True}  # fmt: skip
    pictures = []
    for weights in (quant, oracle):
        with TestClient(create_app(settings, lambda: Upscaler.from_weights_dir(weights, device="cpu"))) as client:
            response = client.post(RUN, json=request)
            assert response.status_code == 200, response.text
            url = response.json()["image"]["url"]
            pictures.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))).astype(int))
    assert pictures[0].shape == (32, 48, 3)
    assert int(np.abs(pictures[0] - pictures[1]).max()) <= 1 and pictures[1].std() > 5
