"""/healthz, /readyz, /metrics and the OpenAPI document."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from seedvr_local.server import create_app
from tests.server.helpers import FakeEngine, data_uri, png_bytes, wait_status


def test_readyz_waits_for_the_model(settings):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return FakeEngine()

    with TestClient(create_app(settings, slow_load)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        # requests are accepted while the model loads, and run once it is there
        request_id = client.post(
            "/queue/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(png_bytes())}
        ).json()["request_id"]
        assert "seedvr_model_loaded 0" in client.get("/metrics").text
        release.set()
        wait_status(client, request_id)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": FakeEngine.description}


def test_readyz_carries_the_models_notice(settings):
    engine = FakeEngine()
    engine.notice = "random weights: output is noise"
    with TestClient(create_app(settings, lambda: engine)) as client:
        client.post("/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(png_bytes())})  # loads it
        ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["notice"] == "random weights: output is noise"


def test_openapi_version_is_the_packages():
    from importlib.metadata import version

    from seedvr_local.server.settings import ServerSettings

    app = create_app(ServerSettings(), lambda: FakeEngine())
    assert app.version == version("seedvr-local")


def test_the_api_document_introduces_the_image_and_the_video_endpoint(client):
    info = client.get("/openapi.json").json()["info"]
    for path in ("fal-ai/seedvr/upscale/image", "fal-ai/seedvr/upscale/video"):
        assert path in info["summary"] and f"`POST /queue/{path}`" in info["description"]


def test_metrics_count_outcomes_phases_and_megapixels(client):
    client.post("/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(png_bytes(100, 100))})
    client.post("/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(b"junk")})
    # A PNG cut short: submit accepts it (it starts like an image), the decode fails.
    queued = client.post("/queue/fal-ai/seedvr/upscale/image", json={"image_url": data_uri(png_bytes()[:40])})
    request_id = queued.json()["request_id"]
    wait_status(client, request_id)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['seedvr_jobs_total{outcome="ok"}'] == 1
    assert values['seedvr_jobs_total{outcome="invalid"}'] == 2
    assert values["seedvr_queue_depth"] == 0 and values["seedvr_model_loaded"] == 1
    assert values["seedvr_megapixels_processed_total"] == 0.04  # one 200x200 output
    for phase in ("download", "decode", "dit", "vae_decode", "save"):
        assert values[f'seedvr_phase_seconds_count{{phase="{phase}"}}'] >= 1


def test_openapi_documents_the_fal_models(client):
    spec = client.get("/openapi.json").json()
    run = spec["paths"]["/fal-ai/seedvr/upscale/image"]["post"]
    schema = run["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["image_url"]
    assert set(schema["properties"]) == {
        "image_url",
        "upscale_mode",
        "upscale_factor",
        "target_resolution",
        "seed",
        "noise_scale",
        "output_format",
        "sync_mode",
    }
    assert schema["properties"]["output_format"]["enum"] == ["png", "jpg", "webp"]
    output = spec["components"]["schemas"]["SeedVRImageOutput"]
    assert set(output["properties"]) == {"image", "seed"}
    assert set(spec["components"]["schemas"]["Image"]["properties"]) == {
        "url",
        "content_type",
        "file_name",
        "file_size",
        "width",
        "height",
    }
    assert "/queue/fal-ai/seedvr/requests/{request_id}/status" in spec["paths"]
    assert client.get("/docs").status_code == 200
