"""The video endpoint with a real model: `Upscaler.tiny()` (random weights, built in memory), tiny videos."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from seedvr_local.server.video_processing import ClipSizer
from seedvr_local.video.samples import make_video
from seedvr_local.video.source import decode_frames
from tests.server.helpers import FakePlanner, data_uri, wait_status
from tests.video_helpers import read_video

RUN = "/fal-ai/seedvr/upscale/video"


@pytest.fixture(scope="module")
def tiny():
    from seedvr_local.upscaler import Upscaler

    return Upscaler.tiny(device="cpu")


def test_the_tiny_model_restores_a_video_behind_the_run_and_the_queue(settings, tiny, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=5, fps=12, audio="aac")
    body = {"video_url": data_uri(source.read_bytes(), "video/mp4"), "seed": 11, "upscale_factor": 1.5}
    with TestClient(create_app(settings, lambda: tiny)) as client:
        ran = client.post(RUN, json=body)
        assert ran.status_code == 200, ran.text
        first = tmp_path / "first.mp4"
        first.write_bytes(client.get(httpx.URL(ran.json()["video"]["url"]).path).content)
        request_id = client.post("/queue" + RUN, json=body).json()["request_id"]
        status = wait_status(client, request_id, timeout=120, logs=True)
        again = tmp_path / "again.mp4"
        again.write_bytes(client.get(httpx.URL(client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").json()[
            "video"]["url"]).path).content)  # fmt: skip
    out = read_video(first)
    assert (out["codec"], out["width"], out["height"], out["frames"]) == ("h264", 48, 36, 5)
    assert out["average_rate"] == 12 and out["audio"] == "aac"
    assert ran.json()["seed"] == 11
    messages = [entry["message"] for entry in status["logs"]]
    assert any(message.startswith("frames: 5/5 (100%)") for message in messages)
    # the same seed gives the same frames
    frames = [np.stack([frame.pixels for frame in decode_frames(path, alpha=False)]) for path in (first, again)]
    assert np.array_equal(*frames)


def test_clips_are_the_longest_the_planner_fits(tiny):
    assert ClipSizer(FakePlanner(max_clip_frames=11), longest=81)(64, 48) == 9
    assert ClipSizer(FakePlanner(max_clip_frames=None), longest=21)(64, 48) == 21
    sizer = ClipSizer(tiny.planner, longest=81)
    frames = sizer(64, 48)
    assert frames == 81 and sizer.plan.frames == 81  # a tiny model fits any clip at this size
