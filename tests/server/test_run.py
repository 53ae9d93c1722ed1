"""The sync run surface: POST /fal-ai/seedvr/upscale/image and /run/..., and its failures."""

from __future__ import annotations

import base64
import io
import threading

import pytest
from PIL import Image

from tests.server.helpers import FakeEngine, data_uri, png_bomb, png_bytes

RUN = "/fal-ai/seedvr/upscale/image"


@pytest.mark.parametrize("path", [RUN, "/run" + RUN])
def test_run_returns_fal_output_with_a_fetchable_url(client, engine, path):
    response = client.post(path, json={"image_url": data_uri(png_bytes(24, 16)), "seed": 7, "output_format": "png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-fal-request-id"]
    body = response.json()
    assert set(body) == {"image", "seed"} and body["seed"] == 7
    image = body["image"]
    assert set(image) == {"url", "content_type", "file_name", "file_size", "width", "height"}
    assert (image["width"], image["height"], image["content_type"]) == (48, 32, "image/png")
    assert image["url"].startswith("http://testserver/files/") and image["file_name"].endswith(".png")

    stored = client.get(image["url"])
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "image/png"
    assert len(stored.content) == image["file_size"]
    assert Image.open(io.BytesIO(stored.content)).size == (48, 32)
    assert engine.calls[-1][2].seed == 7


@pytest.mark.parametrize(
    "fmt, mime, pil", [("jpg", "image/jpeg", "JPEG"), ("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP")]
)
def test_sync_mode_returns_a_data_uri_and_stores_nothing(client, settings, fmt, mime, pil):
    response = client.post(RUN, json={"image_url": data_uri(png_bytes()), "sync_mode": True, "output_format": fmt})
    image = response.json()["image"]
    prefix = f"data:{mime};base64,"
    assert image["url"].startswith(prefix) and image["content_type"] == mime
    data = base64.b64decode(image["url"][len(prefix) :])
    assert len(data) == image["file_size"]
    assert Image.open(io.BytesIO(data)).format == pil
    assert not [p for p in settings.files_dir.iterdir() if p.is_file()]


def test_target_mode_sets_the_short_side(client):
    response = client.post(
        RUN, json={"image_url": data_uri(png_bytes(30, 20)), "upscale_mode": "target", "target_resolution": "720p"}
    )
    image = response.json()["image"]
    assert (image["width"], image["height"]) == (1080, 720)


def test_options_reach_the_engine(client, engine):
    client.post(RUN, json={"image_url": data_uri(png_bytes()), "upscale_factor": 1.5, "noise_scale": 0.3, "seed": 11})
    _, _, options = engine.calls[-1]
    assert (options.upscale_factor, options.noise_scale, options.seed) == (1.5, 0.3, 11)


def test_invalid_input_is_422_with_detail_list(client):
    response = client.post(RUN, json={"image_url": "https://example.com/x.png", "upscale_factor": 100})
    assert response.status_code == 422
    assert response.headers["x-fal-request-id"]
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "upscale_factor"] and error["type"] == "less_than_equal"


def test_empty_body_is_422_missing_image_url(client):
    response = client.post(RUN, content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image_url"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"image_url": ', b"[]", b"\x00\x01\x02", b"{" * 5000, b'{"image_url": "data:,"}'],
)
def test_garbage_is_a_4xx_never_a_5xx(client, body):
    response = client.post(RUN, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "image_url, error_type",
    [
        (data_uri(b"this is not an image"), "image_load_error"),
        (data_uri(png_bytes()[:40]), "image_load_error"),
        ("data:image/png;base64,@@@not-base64@@@", "file_download_error"),
        ("data:image/png;base64", "file_download_error"),
    ],
)
def test_unreadable_images_are_422_on_image_url(client, image_url, error_type):
    response = client.post(RUN, json={"image_url": image_url})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "image_url"] and error["type"] == error_type and error["msg"]


def test_pixel_bomb_is_refused_before_decoding(make_client, engine):
    bomb = png_bomb(50_000, 50_000)  # 2.5 gigapixels claimed in a few hundred bytes
    with make_client(engine, max_input_pixels=1_000_000) as client:
        response = client.post(RUN, json={"image_url": data_uri(bomb)})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "image_too_large" and error["loc"] == ["body", "image_url"]
    assert not engine.calls


def test_too_large_an_output_is_422_on_the_size_field(make_client, engine):
    with make_client(engine, max_output_pixels=10_000) as client:
        by_factor = client.post(RUN, json={"image_url": data_uri(png_bytes(100, 100)), "upscale_factor": 4})
        by_target = client.post(RUN, json={"image_url": data_uri(png_bytes()), "upscale_mode": "target"})
    assert by_factor.status_code == 422 and by_factor.json()["detail"][0]["loc"] == ["body", "upscale_factor"]
    assert by_target.status_code == 422 and by_target.json()["detail"][0]["loc"] == ["body", "target_resolution"]
    assert by_factor.json()["detail"][0]["type"] == "image_too_large"
    assert not engine.calls


def test_size_limits_on_bodies_and_data_uris(make_client):
    with make_client(max_download_bytes=1000) as client:
        too_big_image = client.post(RUN, json={"image_url": data_uri(b"x" * 5000)})
        too_big_body = client.post(RUN, json={"image_url": data_uri(b"x" * 2_000_000)})
    assert too_big_image.status_code == 422 and too_big_image.json()["detail"][0]["type"] == "file_too_large"
    assert too_big_body.status_code == 413 and "detail" in too_big_body.json()


def test_engine_failure_is_a_500_with_a_detail(make_client):
    with make_client(FakeEngine(fail=RuntimeError("CUDA error: device-side assert\nsecond line"))) as client:
        response = client.post(RUN, json={"image_url": data_uri(png_bytes())})
    assert response.status_code == 500
    body = response.json()
    assert body["error_type"] == "runner_server_error" and "device-side assert" in body["detail"]
    assert "second line" not in body["detail"]


def test_model_that_fails_to_load_gives_503(settings):
    from fastapi.testclient import TestClient

    from seedvr_local.server import create_app

    def broken():
        raise FileNotFoundError("ema_vae.pth is missing")

    with TestClient(create_app(settings, broken)) as client:
        response = client.post(RUN, json={"image_url": data_uri(png_bytes())})
        ready = client.get("/readyz")
    assert response.status_code == 503 and "ema_vae.pth is missing" in response.json()["detail"]
    assert ready.status_code == 503 and "ema_vae.pth is missing" in ready.json()["detail"]


def test_sync_runs_share_the_worker_one_at_a_time(make_client):
    engine = FakeEngine(phase_delay=0.01)
    active, peak = [0], [0]
    lock = threading.Lock()
    original = engine.run

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    engine.run = counting
    with make_client(engine) as client:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(client.post(RUN, json={"image_url": data_uri(png_bytes())})))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [r.status_code for r in results] == [200] * 4
    assert peak[0] == 1


def test_unknown_routes_are_fal_shaped_404s(client):
    response = client.post("/fal-ai/seedvr/upscale/audio", json={})
    assert response.status_code == 404 and "detail" in response.json()
    assert response.headers["x-fal-request-id"]


def test_run_timeout_header_gives_user_504(make_client, gated_engine):
    with make_client(gated_engine) as client:
        blocker = threading.Thread(target=lambda: client.post(RUN, json={"image_url": data_uri(png_bytes())}))
        blocker.start()
        assert gated_engine.entered.wait(5)
        response = client.post(RUN, json={"image_url": data_uri(png_bytes())}, headers={"x-fal-request-timeout": "0.3"})
        gated_engine.gate.set()
        blocker.join()
    assert response.status_code == 504
    assert response.headers["x-fal-request-timeout-type"] == "user"
    assert response.json() == {"detail": "Request timed out", "error_type": "request_timeout"}


def test_output_that_cannot_fit_in_memory_is_422(make_client):
    from seedvr_local.memory_planner import MemoryPlanError

    class Planned(FakeEngine):
        def prepare(self, image, options):
            width, height = super().prepare(image, options).output_size
            raise MemoryPlanError(
                f"a {width}x{height} output needs 9 GiB, 4 GiB free; 1024x768 fits", 9, 4, (1024, 768)
            )

    engine = Planned()
    with make_client(engine) as client:
        response = client.post(RUN, json={"image_url": data_uri(png_bytes()), "upscale_factor": 4})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "upscale_factor"] and error["type"] == "image_too_large"
    assert error["ctx"] == {"max_width": 1024, "max_height": 768} and "1024x768 fits" in error["msg"]
    assert not engine.calls


def test_running_out_of_memory_is_503(make_client):
    from seedvr_local.memory_planner import RunOutOfMemoryError

    with make_client(FakeEngine(fail=RunOutOfMemoryError("ran out of memory on cuda for a 96x64 output"))) as client:
        response = client.post(RUN, json={"image_url": data_uri(png_bytes())})
    assert response.status_code == 503 and response.json()["error_type"] == "runner_out_of_memory"


def test_client_that_hangs_up_cancels_its_sync_run(settings):
    import httpx

    from tests.server.helpers import LiveServer, wait_until

    engine = FakeEngine(gate=threading.Event())
    with LiveServer(settings, lambda: engine) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + RUN, json={"image_url": data_uri(png_bytes())}, timeout=0.5)
        assert engine.entered.wait(5)
        [job_id] = [row[0] for row in server.state.db.query("SELECT id FROM jobs")]
        wait_until(lambda: server.state.jobs.is_cancel_requested(job_id), "the server noticed the client leave")
        engine.gate.set()
        wait_until(lambda: server.state.jobs.get(job_id).status == "COMPLETED", "the cancelled job completed")
        assert server.state.jobs.get(job_id).outcome == "cancelled"


def test_output_limit_defaults_to_what_the_model_fits(make_client, engine):
    engine.max_output_pixels = lambda aspect=(1, 1): 150 * 150  # what the memory planner would answer
    with make_client(engine) as client:
        fits = client.post(RUN, json={"image_url": data_uri(png_bytes(70, 70)), "upscale_factor": 2})
        too_big = client.post(RUN, json={"image_url": data_uri(png_bytes(100, 100)), "upscale_factor": 2})
    assert fits.status_code == 200, fits.text
    assert too_big.status_code == 422
    [error] = too_big.json()["detail"]
    assert error["type"] == "image_too_large" and error["ctx"]["max_pixels"] == 150 * 150
