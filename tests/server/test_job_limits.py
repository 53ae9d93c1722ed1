"""A job runs under the limits of the API process that accepted it, whichever worker runs it: the limits travel
with the job (settings.JOB_LIMITS), so a worker started with other settings cannot refuse what the API accepted,
nor run what it would refuse."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from seedvr_local.cli import build_parser
from seedvr_local.server import create_app
from seedvr_local.server.settings import JOB_LIMITS
from seedvr_local.server.worker_process import open_worker
from tests.server.helpers import FakeEngine, data_uri, png_bytes, wait_status, wait_until

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


@pytest.mark.parametrize("api_pixels, worker_pixels", [(100, 10**9), (10**9, 100)])
def test_the_worker_applies_the_limits_the_api_was_started_with(settings, api_pixels, worker_pixels):
    settings.worker_in_process = False
    settings.max_input_pixels = api_pixels
    worker_settings = dataclasses.replace(settings, max_input_pixels=worker_pixels)
    with TestClient(create_app(settings, lambda: None)) as client:
        worker = open_worker(worker_settings, "cpu", FakeEngine, FakeEngine.description)
        worker.start()
        try:
            wait_until(lambda: client.get("/readyz").status_code == 200, "the worker ready")
            request_id = client.post(SUBMIT, json={"image_url": data_uri(png_bytes(20, 20))}).json()["request_id"]
            wait_status(client, request_id)
            result = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}")
        finally:
            worker.stop(10)
            worker.jobs.db.close()
    if api_pixels < 20 * 20:  # refused, naming the API's limit
        assert result.status_code == 422
        [error] = result.json()["detail"]
        assert error["type"] == "image_too_large" and error["ctx"] == {"max_pixels": api_pixels}
    else:
        assert result.status_code == 200 and result.json()["image"]["width"] == 40


def test_serve_flags_set_every_job_limit_and_worker_has_none():
    from seedvr_local.server.cli import settings_from_args

    flags = {
        "max_input_pixels": "1000", "max_output_pixels": "2000", "max_video_frames": "30",
        "max_video_pixel_frames": "40000", "max_video_clip_frames": "9", "max_sync_result_bytes": "50000",
        "max_storage_bytes": "60000",
    }  # fmt: skip
    assert set(flags) == set(JOB_LIMITS)
    argv = [item for name, v in flags.items() for item in (f"--{name.replace('_', '-')}", v)]
    settings = settings_from_args(build_parser().parse_args(["serve", "--model", "tiny", *argv]))
    assert settings.job_limits() == {name: int(v) for name, v in flags.items()}
    worker_flags = build_parser()._subparsers._group_actions[0].choices["worker"]._option_string_actions
    assert not [flag for flag in worker_flags if flag.startswith("--max-")]


def test_a_clip_length_that_is_not_4n_plus_1_is_refused():
    from seedvr_local.server.cli import settings_from_args

    with pytest.raises(ValueError, match="--max-video-clip-frames: clip_frames must be 4n\\+1"):
        settings_from_args(build_parser().parse_args(["serve", "--model", "tiny", "--max-video-clip-frames", "8"]))
