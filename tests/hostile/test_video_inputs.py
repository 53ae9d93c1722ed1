"""Videos made to get past the limits: frames that grow after the first, audio far longer than the frames, an audio
codec outside the allowlist. Each is refused with a 422 `video_load_error` (or bounded), never a 500, and never
decoded whole at the size it grew to."""

from __future__ import annotations

import re

import av
import httpx
import pytest

from seedvr_local.video.samples import AUDIO_RATE, make_video, pattern
from tests.hostile.tools import png_mov
from tests.server.helpers import FakeEngine, data_uri, wait_status
from tests.video_helpers import read_video

SUBMIT = "/queue/fal-ai/seedvr/upscale/video"
REQUESTS = "/queue/fal-ai/seedvr/requests"
LIMIT = 10_000  # --max-input-pixels: the first frame (64x64 = 4,096 pixels) is within it


def _run(client, path, **input) -> tuple[int, dict]:
    """Submit the video (as a data URI), wait for it, return the result's status and body."""
    submitted = client.post(SUBMIT, json={"video_url": data_uri(path.read_bytes(), "video/quicktime"), **input})
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    wait_status(client, request_id, timeout=60)
    result = client.get(f"{REQUESTS}/{request_id}")
    return result.status_code, result.json()


@pytest.mark.parametrize("store", ["sqlite"])
@pytest.mark.parametrize(
    "later, said, why",
    [
        ((200, 200), "1 is 200x200", "larger than the limit, below FFmpeg's own cap: the frame check refuses it"),
        ((1024, 1024), r"\d+ cannot be decoded", "far larger: FFmpeg's max_pixels refuses to allocate it"),
        ((32, 32), "1 is 32x32", "within the limit but not the declared size"),
    ],
)
def test_frames_that_change_size_after_the_first_are_a_422_naming_the_frame_and_the_limit(
    make_client, tmp_path, later, said, why
):
    video = png_mov(tmp_path / "grows.mov", [(64, 64)] + [later] * 4)
    with make_client(FakeEngine(), max_input_pixels=LIMIT) as client:
        status, body = _run(client, video, upscale_factor=1)
    assert status == 422, (why, body)
    error = body["detail"][0]
    assert error["type"] == "video_load_error" and error["loc"] == ["body", "video_url"], why
    # the frame counted from 0 (FFmpeg's threads may report a refused frame a little late: its number is about)
    assert re.search(f"frame {said}", error["msg"]) and f"{LIMIT:,} pixels" in error["msg"], (why, error["msg"])


@pytest.mark.parametrize("store", ["sqlite"])
def test_a_video_whose_frames_keep_their_size_still_passes(make_client, tmp_path):
    video = png_mov(tmp_path / "steady.mov", [(64, 64)] * 5)
    with make_client(FakeEngine(), max_input_pixels=LIMIT) as client:
        status, body = _run(client, video, upscale_factor=1)
        assert status == 200, body
        out = tmp_path / "out.mp4"
        out.write_bytes(client.get(httpx.URL(body["video"]["url"]).path).content)
    assert read_video(out)["frames"] == 5


def _long_audio_video(path, frames: int, fps: int, audio_seconds: float):
    """`frames` frames of video and an AAC track of `audio_seconds`: a container whose audio claims a far longer
    duration than its frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_RATE)
        audio.layout = "mono"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(index, 32, 32), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        silence = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.sample_rate = AUDIO_RATE
        for start in range(0, int(audio_seconds * AUDIO_RATE), 1024):
            silence.pts = start
            container.mux(audio.encode(silence))
        container.mux(audio.encode(None))
    return path


@pytest.mark.parametrize("store", ["sqlite"])
def test_audio_longer_than_the_frames_is_cut_at_the_end_of_the_video(make_client, tmp_path):
    video = _long_audio_video(tmp_path / "long-audio.mp4", frames=3, fps=10, audio_seconds=30)
    assert read_video(video)["audio_seconds"] > 29
    with make_client(FakeEngine()) as client:
        status, body = _run(client, video, upscale_factor=1)
        assert status == 200, body
        out = tmp_path / "out.mp4"
        out.write_bytes(client.get(httpx.URL(body["video"]["url"]).path).content)
    seen = read_video(out)
    assert seen["frames"] == 3
    # 3 frames at 10 fps end at 0.3 s; AAC frames are 1024 samples (21 ms): one more may start before the end
    assert seen["audio_seconds"] <= 0.3 + 2 * 1024 / AUDIO_RATE, seen["audio_seconds"]


@pytest.mark.parametrize("store", ["sqlite"])
def test_an_audio_codec_outside_the_allowlist_is_a_422(make_client, tmp_path):
    video = make_video(tmp_path / "alaw.mov", 32, 24, frames=3, audio="pcm_alaw")
    with make_client(FakeEngine()) as client:
        status, body = _run(client, video, upscale_factor=1)
    assert status == 422, body
    error = body["detail"][0]
    assert error["type"] == "video_load_error" and "unsupported audio codec 'pcm_alaw'" in error["msg"]

