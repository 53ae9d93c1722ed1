"""`fal-ai/seedvr/upscale/video` on the server: fal's schema, every format, progress logs, limits and bad input
(422 before any work), cancel between clips, restarts, webhooks, uploads and data URIs.

The fake engine restores each clip as it is (tests/server/helpers.py: IdentityPipeline), so these tests check
the server and the video library's files, fast; test_video_tiny.py runs the real tiny model.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading

import av
import httpx
import pytest
from fastapi.testclient import TestClient

from seedvr_local.server import ServerSettings, create_app
from seedvr_local.server.jobs import JobStore
from seedvr_local.server.retention import Retention
from seedvr_local.video import OUTPUT_FORMATS
from seedvr_local.video.samples import make_video
from tests.server.helpers import FakeEngine, LocalHTTP, data_uri, open_when_stopping, png_bytes, wait_status, wait_until
from tests.video_helpers import read_video

RUN = "/fal-ai/seedvr/upscale/video"
SUBMIT = "/queue/fal-ai/seedvr/upscale/video"
REQUESTS = "/queue/fal-ai/seedvr/requests"


@pytest.fixture
def clip_engine() -> FakeEngine:
    """Clips of at most 5 frames: a 13-frame video is restored in several."""
    return FakeEngine(max_clip_frames=5)


def _video_uri(path) -> str:
    return data_uri(path.read_bytes(), "video/mp4")


def _local_path(url: str) -> str:
    return httpx.URL(url).path


def _download(client, url: str, tmp_path, name: str):
    response = client.get(_local_path(url))
    assert response.status_code == 200
    path = tmp_path / name
    path.write_bytes(response.content)
    return path, response


def _messages(status: dict) -> list[str]:
    return [entry["message"] for entry in status["logs"]]


def _scratch_files(settings: ServerSettings) -> list[str]:
    return sorted(path.name for path in (settings.files_dir / "tmp").iterdir())


# --- schema ----------------------------------------------------------------------------------------------


def test_the_input_schema_is_fals(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"][RUN]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    fields = body["properties"]
    assert body["required"] == ["video_url"]
    assert fields["output_format"]["enum"] == ["X264 (.mp4)", "VP9 (.webm)", "PRORES4444 (.mov)", "GIF (.gif)"]
    assert fields["output_format"]["default"] == "X264 (.mp4)"
    assert fields["output_quality"]["enum"] == ["low", "medium", "high", "maximum"]
    assert fields["output_quality"]["default"] == "high"
    assert fields["output_write_mode"]["enum"] == ["fast", "balanced", "small"]
    assert fields["output_write_mode"]["default"] == "balanced"
    assert fields["target_resolution"]["default"] == "1080p" and fields["upscale_mode"]["default"] == "factor"
    assert (fields["upscale_factor"]["minimum"], fields["upscale_factor"]["maximum"]) == (1, 10)
    assert (fields["noise_scale"]["minimum"], fields["noise_scale"]["maximum"]) == (0, 1)
    assert schema["paths"][SUBMIT]["post"]["requestBody"] == operation["requestBody"]
    output = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schema["components"]["schemas"][output]["properties"]) == {"video", "seed"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("output_format", "mp4"), ("output_format", "x264 (.mp4)"), ("noise_scale", 1.5), ("upscale_factor", 11),
     ("output_quality", "best"), ("output_write_mode", "slow"), ("video_url", "ftp://example.com/a.mp4")],
)  # fmt: skip
def test_invalid_fields_are_422_at_once(client, clip_engine, field, value):
    body = {"video_url": "https://example.com/a.mp4", field: value}
    for route in (RUN, SUBMIT):
        response = client.post(route, json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", field]
    assert client.post(RUN, json={}).json()["detail"][0]["loc"] == ["body", "video_url"]


# --- outputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS, ids=lambda fmt: fmt.name)
def test_each_format_keeps_frames_rate_and_audio(make_client, clip_engine, tmp_path, fmt):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=9, fps=12, audio="aac")
    with make_client(clip_engine) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source), "seed": 7, "output_format": fmt.fal_name})
        assert response.status_code == 200, response.text
        output = response.json()
        path, served = _download(client, output["video"]["url"], tmp_path, "out" + fmt.extension)
    video = output["video"]
    assert output["seed"] == 7 and set(video) == {"url", "content_type", "file_name", "file_size"}
    assert video["content_type"] == fmt.content_type == served.headers["content-type"]
    assert video["file_name"].endswith(fmt.extension) and video["file_size"] == len(served.content)
    out = read_video(path)
    assert out["frames"] == 9 and (out["width"], out["height"]) == (64, 48)
    assert out["codec"] == {"mp4": "h264", "webm": "vp9", "mov": "prores", "gif": "gif"}[fmt.name]
    if fmt.name != "gif":  # GIF delays are hundredths of a second
        assert out["average_rate"] == 12
    assert out["audio"] == (None if fmt.name == "gif" else {"webm": "opus"}.get(fmt.name, "aac"))
    assert clip_engine.pipeline.clips == [5, 5, 5]  # 9 frames: clips of 5 starting at 0, 3 and 4


def test_sync_mode_returns_the_video_inline_and_stores_nothing(make_client, clip_engine, settings, tmp_path):
    source = make_video(tmp_path / "in.webm", 32, 24, frames=5, audio=None)
    with make_client(clip_engine) as client:
        output = client.post(RUN, json={"video_url": _video_uri(source), "sync_mode": True}).json()
    header, encoded = output["video"]["url"].split(",", 1)
    assert header == "data:video/mp4;base64"
    (tmp_path / "out.mp4").write_bytes(base64.b64decode(encoded))
    assert read_video(tmp_path / "out.mp4")["frames"] == 5
    assert [path.name for path in settings.files_dir.iterdir() if path.is_file()] == []
    assert _scratch_files(settings) == []


def test_an_uploaded_video_is_read_where_it_is_stored(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mov", 32, 24, frames=5, audio="aac")
    with make_client(clip_engine) as client:
        target = client.post(
            "/storage/upload/initiate", json={"content_type": "video/quicktime", "file_name": "in.mov"}
        ).json()
        assert client.put(_local_path(target["upload_url"]), content=source.read_bytes()).status_code == 200
        output = client.post(RUN, json={"video_url": target["file_url"], "upscale_mode": "target",
                                        "target_resolution": "720p"}).json()  # fmt: skip
        path, _ = _download(client, output["video"]["url"], tmp_path, "out.mp4")
    out = read_video(path)
    assert (out["width"], out["height"], out["frames"]) == (960, 720, 5)


# --- progress, logs, events ----------------------------------------------------------------------------------


def test_progress_logs_in_status_and_events(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=13, audio=None)
    with make_client(clip_engine) as client:
        request_id = client.post(SUBMIT, json={"video_url": _video_uri(source)}).json()["request_id"]
        status = wait_status(client, request_id, logs=True)
        with client.stream("GET", f"{REQUESTS}/{request_id}/status/stream", params={"logs": 1}) as stream:
            events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    messages = _messages(status)
    progress = [message for message in messages if message.startswith("frames: ")]
    # one line per clip finished: 13 frames in clips of 5 starting at 0, 3, 6 and 8 (the last one ends on the last
    # frame): frames are final at 3, 6, 8 and 13
    assert [line.split(" ", 2)[1] for line in progress] == ["3/13", "6/13", "8/13", "13/13"]
    assert all("frames/s" in line and "s left" in line for line in progress)
    assert messages[0] == "download: fetching video_url" and messages[-1].startswith("done: 64x48, 13 frames")
    assert any("in 4 clip(s) of at most 5 frames" in message for message in messages)
    assert events[-1]["status"] == "COMPLETED"
    assert [entry["message"] for event in events for entry in event.get("logs") or []] == messages


# --- limits and bad input: 422 before any work ------------------------------------------------------------------


def test_frame_limit(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=9, audio=None)
    with make_client(clip_engine, max_video_frames=8) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source)})
    [error] = response.json()["detail"]
    assert response.status_code == 422 and error["loc"] == ["body", "video_url"]
    assert error["type"] == "video_too_large" and error["ctx"] == {"max_frames": 8}
    assert "9 frames" in error["msg"] and "8" in error["msg"]
    assert clip_engine.pipeline.clips == []


def test_pixel_frame_limit_names_the_longest_video_allowed_at_that_size(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=9, audio=None)
    with make_client(clip_engine, max_video_pixel_frames=64 * 48 * 6) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source)})
        smaller = client.post(RUN, json={"video_url": _video_uri(source), "upscale_factor": 1})
    [error] = response.json()["detail"]
    assert response.status_code == 422 and error["loc"] == ["body", "upscale_factor"]
    assert error["ctx"] == {"max_pixel_frames": 64 * 48 * 6, "max_frames_at_this_size": 6}
    assert "at most 6 frames" in error["msg"]
    assert smaller.status_code == 200  # 32x24 x 9 frames is within the limit
    assert len(clip_engine.pipeline.clips) == 3  # the refused one restored nothing


def test_output_frame_size_limit(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=5, audio=None)
    with make_client(clip_engine, max_output_pixels=64 * 48 - 1) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source)})
    [error] = response.json()["detail"]
    assert response.status_code == 422 and error["ctx"] == {"max_pixels": 64 * 48 - 1}
    assert clip_engine.pipeline.clips == []


def test_declared_frame_size_is_refused_from_the_header(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 64, 48, frames=5, audio=None)
    with make_client(clip_engine, max_input_pixels=64 * 48 - 1) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source)})
    [error] = response.json()["detail"]
    assert response.status_code == 422 and error["type"] == "video_too_large" and "64x48" in error["msg"]
    assert error["ctx"] == {"max_pixels": 64 * 48 - 1}


def test_a_clip_that_does_not_fit_in_memory_is_422(make_client, tmp_path):
    engine = FakeEngine(max_clip_frames=0)  # not even one frame fits
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=5, audio=None)
    with make_client(engine) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source)})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "upscale_factor"]


def _truncated(tmp_path):
    whole = make_video(tmp_path / "whole.mp4", 32, 24, frames=13, audio=None).read_bytes()
    return whole[: len(whole) // 2]


def _unsupported_codec(tmp_path):
    return make_video(tmp_path / "ffv1.mkv", 32, 24, frames=5, audio=None).read_bytes()


def _no_frames(tmp_path):
    empty = tmp_path / "empty.mov"
    with av.open(str(empty), "w") as container:  # a header, no frames
        stream = container.add_stream("prores_ks", rate=12)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv444p10le"
        container.start_encoding()
    return empty.read_bytes()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp_path: png_bytes(), "not a readable video"),
        (lambda tmp_path: b"\x00" * 2048, "not a readable video"),
        (_truncated, "not a readable video"),
        (_unsupported_codec, "unsupported video codec 'ffv1'"),
        (_no_frames, "no video stream"),
    ],
    ids=["an-image", "zeros", "truncated", "ffv1", "no-frames"],
)
def test_unusable_videos_are_422_and_the_queue_goes_on(make_client, clip_engine, tmp_path, settings, make, says):
    good = _video_uri(make_video(tmp_path / "good.mp4", 32, 24, frames=5, audio=None))
    with make_client(clip_engine) as client:
        bad = client.post(SUBMIT, json={"video_url": data_uri(make(tmp_path), "video/mp4")}).json()["request_id"]
        others = [
            client.post(SUBMIT, json={"video_url": good}).json()["request_id"],
            client.post("/queue/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(png_bytes())}).json()[
                "request_id"
            ],
        ]
        failed = wait_status(client, bad)
        result = client.get(f"{REQUESTS}/{bad}")
        done = [wait_status(client, request_id) for request_id in others]
    [error] = result.json()["detail"]
    assert failed["error_type"] == "video_load_error" and result.status_code == 422
    assert error["loc"] == ["body", "video_url"] and says in error["msg"]
    assert str(settings.data_dir) not in error["msg"]  # the server's paths are its own
    assert ["error" in status for status in done] == [False, False]
    assert _scratch_files(settings) == []


def test_a_data_uri_over_the_download_limit_is_refused(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=5, audio=None)
    with make_client(clip_engine, max_download_bytes=100) as client:
        response = client.post(RUN, json={"video_url": _video_uri(source)})
    assert response.status_code in (413, 422)  # the body limit, or the data URI's own
    assert clip_engine.pipeline.clips == []


# --- cancel, restarts -------------------------------------------------------------------------------------------


def test_cancel_stops_between_clips_and_keeps_no_file(make_client, settings, tmp_path):
    engine = FakeEngine(gate=threading.Event(), max_clip_frames=5)
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=13, audio=None)
    with make_client(engine) as client:
        request_id = client.post(SUBMIT, json={"video_url": _video_uri(source)}).json()["request_id"]
        assert engine.entered.wait(10)
        assert client.put(f"{REQUESTS}/{request_id}/cancel").status_code == 202
        engine.gate.set()
        status = wait_status(client, request_id, logs=True)
        result = client.get(f"{REQUESTS}/{request_id}")
    assert status["error_type"] == "client_cancelled" and result.status_code == 499
    assert engine.pipeline.clips == [5]  # the clip running when the cancel came finished; no other started
    assert not any(message.startswith("frames: ") for message in _messages(status))
    assert _scratch_files(settings) == [] and not any(p.is_file() for p in settings.files_dir.iterdir())


class _StopsAtSecondClip(FakeEngine):
    """Waits at its second clip until the gate opens: a run caught with one clip written."""

    def enter_dit(self, seed):
        if len(self.pipeline.clips) == 2:
            super().enter_dit(seed)


@pytest.mark.parametrize("store", ["sqlite"])  # the crash is a copy of the data dir; PostgreSQL is not in it
def test_a_video_interrupted_by_a_crash_runs_again_and_says_so(settings, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=13, audio=None)
    engine = _StopsAtSecondClip(gate=threading.Event(), max_clip_frames=5)
    crashed = tmp_path / "after-crash"
    with TestClient(create_app(settings, lambda: engine)) as client:
        request_id = client.post(SUBMIT, json={"video_url": _video_uri(source)}).json()["request_id"]
        assert engine.entered.wait(10)
        wait_until(lambda: any(m.startswith("frames: 3/13") for m in _messages(wait_status(
            client, request_id, "IN_PROGRESS", logs=True))), "the first clip's frames are logged")  # fmt: skip
        shutil.copytree(settings.data_dir, crashed)  # what the disk holds if the process dies now
        engine.gate.set()

    fresh = FakeEngine(max_clip_frames=5)
    with TestClient(create_app(ServerSettings(data_dir=crashed), lambda: fresh)) as client:
        status = wait_status(client, request_id, logs=True)
        output = client.get(f"{REQUESTS}/{request_id}").json()
        path, _ = _download(client, output["video"]["url"], tmp_path, "out.mp4")
    messages = _messages(status)
    [rerun] = [message for message in messages if message.startswith("rerun: ")]
    assert "after 3/13 frames" in rerun and "from its first frame" in rerun
    assert fresh.pipeline.clips == [5, 5, 5, 5]  # all of it again
    assert read_video(path)["frames"] == 13
    assert _scratch_files(ServerSettings(data_dir=crashed)) == []


def test_a_graceful_shutdown_requeues_the_running_video(settings, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=9, audio=None)
    engine = FakeEngine(gate=threading.Event(), max_clip_frames=5)
    with TestClient(create_app(settings, lambda: engine)) as client:
        request_id = client.post(SUBMIT, json={"video_url": _video_uri(source)}).json()["request_id"]
        assert engine.entered.wait(10)
        open_when_stopping(client.app.state.server.worker, engine.gate)  # stops at the end of its first clip
    assert engine.pipeline.clips == [5]
    fresh = FakeEngine(max_clip_frames=5)
    with TestClient(create_app(settings, lambda: fresh)) as client:
        status = wait_status(client, request_id, logs=True)
        assert client.get(f"{REQUESTS}/{request_id}").status_code == 200
    assert any(m.startswith("rerun: the earlier run was interrupted before any frame") for m in _messages(status))
    assert fresh.pipeline.clips == [5, 5, 5]


# --- webhooks, retention ------------------------------------------------------------------------------------------


def test_webhook_carries_the_video_output(make_client, clip_engine, tmp_path):
    source = make_video(tmp_path / "in.mp4", 32, 24, frames=5, audio=None)
    with LocalHTTP({"/hook": (200, {}, b"")}) as receiver, make_client(clip_engine, allow_private_urls=True) as client:
        request_id = client.post(
            SUBMIT, params={"fal_webhook": f"{receiver.url}/hook"}, json={"video_url": _video_uri(source)}
        ).json()["request_id"]
        [(_, _, _, body)] = receiver.wait_for(1)
        result = client.get(f"{REQUESTS}/{request_id}").json()
    payload = json.loads(body)
    assert payload["status"] == "OK" and payload["payload"] == result and "video" in result


def test_retention_keeps_the_video_of_a_request_not_yet_run(make_client, clip_engine, settings, tmp_path):
    with make_client(clip_engine) as client:
        target = client.post("/storage/upload/initiate", json={"content_type": "video/mp4", "file_name": "a.mp4"})
        file_url = target.json()["file_url"]
        client.put(_local_path(target.json()["upload_url"]), content=b"not yet run")
        state = client.app.state.server
        state.worker.stop(5)  # nothing runs: the request stays queued
        client.post(SUBMIT, json={"video_url": file_url})
        swept = Retention(state.db, state.files, retention_s=1).sweep(now=10**12)
        kept = client.get(_local_path(file_url)).status_code
    assert swept.files == 0 and kept == 200


def test_video_jobs_keep_their_endpoint_in_the_stored_input(make_client, clip_engine):
    with make_client(clip_engine) as client:
        request_id = client.post(SUBMIT, json={"video_url": "data:video/mp4;base64,AAAA"}).json()["request_id"]
        jobs: JobStore = client.app.state.server.jobs
        stored = jobs.get(request_id, with_input=True).input
    assert stored["fal_endpoint"] == "fal-ai/seedvr/upscale/video" and stored["video_url"].startswith("data:video")


def test_the_video_routes_need_the_key(make_client, clip_engine):
    with make_client(clip_engine, api_keys=("k",)) as client:
        refused = [client.post(route, json={"video_url": "data:,"}).status_code for route in (RUN, SUBMIT)]
        accepted = client.post(SUBMIT, json={"video_url": "data:,"}, headers={"Authorization": "Key k"})
    assert refused == [401, 401] and accepted.status_code == 200


def test_serve_flags_set_the_video_limits():
    from seedvr_local.cli import build_parser
    from seedvr_local.server.cli import settings_from_args

    def settings(*flags: str) -> ServerSettings:
        return settings_from_args(build_parser().parse_args(["serve", "--model", "tiny", *flags]))

    default = settings()
    assert (default.max_video_frames, default.max_video_pixel_frames) == (7200, None)  # the documented default
    chosen = settings("--max-video-frames", "600", "--max-video-pixel-frames", "1000000")
    assert (chosen.max_video_frames, chosen.max_video_pixel_frames) == (600, 1_000_000)
    with pytest.raises(ValueError, match="--max-video-frames must be positive"):
        settings("--max-video-frames", "0")
