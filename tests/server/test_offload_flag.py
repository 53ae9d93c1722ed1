"""`serve --offload`: the flag reaches the model, and the image over HTTP is the resident one."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from seedvr_local.cli import build_parser
from seedvr_local.server import create_app
from seedvr_local.server.worker_process import engine_for
from tests.server.helpers import data_uri, png_bytes


def test_serve_offload_flag_gives_the_resident_image_over_http(settings):
    images, levels = {}, []
    for level in ("none", "full"):
        args = build_parser().parse_args(["serve", "--model", "tiny", "--device", "cpu", "--offload", level])
        load, _ = engine_for(args, "cpu")

        def loaded(load=load):
            upscaler = load()
            levels.append(str(upscaler.offload))
            return upscaler

        with TestClient(create_app(settings, loaded)) as client:
            response = client.post("/fal-ai/seedvr/upscale/image", json={
                "image_url": data_uri(png_bytes(24, 16, color=(30, 120, 220))), "seed": 3, "output_format": "png",
            })  # fmt: skip
            assert response.status_code == 200, response.text
            pixels = client.get(response.json()["image"]["url"]).content
            images[level] = np.asarray(Image.open(io.BytesIO(pixels)))
    assert levels == ["none", "full"]
    assert np.array_equal(images["none"], images["full"])
