"""`fal-ai/seedvr/upscale/image/seamless` over HTTP: its schema as fal publishes it, and its jobs reach the engine as
seamless upscales (the real clients' flows are in test_fal_client.py and test_js_client.py)."""

from __future__ import annotations

from tests.server.helpers import data_uri, png_bytes

SEAMLESS = "fal-ai/seedvr/upscale/image/seamless"
#: fal's published input of the endpoint (@fal-ai/client 1.10.1, `SeedVRSeamlessImageInput`): field -> default.
FAL_DEFAULTS = {
    "image_url": None,
    "upscale_mode": "factor",
    "upscale_factor": 2,
    "target_resolution": "1080p",
    "seed": None,
    "noise_scale": 0.1,
    "output_format": "png",
    "sync_mode": False,
    "enable_safety_checker": True,
}


def test_openapi_documents_the_seamless_endpoint_as_fal_does(client):
    document = client.get("/openapi.json").json()
    for path in (f"/{SEAMLESS}", f"/queue/{SEAMLESS}"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        properties = body["properties"]
        assert set(properties) == set(FAL_DEFAULTS), path
        for field, default in FAL_DEFAULTS.items():
            assert properties[field].get("default") == default, (path, field)
        assert properties["output_format"]["enum"] == ["png", "jpeg", "webp"]
        assert properties["target_resolution"]["enum"] == ["720p", "1080p", "1440p", "2160p"]
        assert (properties["upscale_factor"]["minimum"], properties["upscale_factor"]["maximum"]) == (1, 10)
        assert body["required"] == ["image_url"]
    # the plain endpoint keeps its own spelling
    plain = document["paths"]["/fal-ai/seedvr/upscale/image"]["post"]["requestBody"]["content"]["application/json"]
    assert plain["schema"]["properties"]["output_format"]["enum"] == ["png", "jpg", "webp"]


def test_a_seamless_job_is_a_seamless_upscale_in_jpeg(client, engine):
    image_url = data_uri(png_bytes(24, 16))
    response = client.post(f"/{SEAMLESS}", json={"image_url": image_url, "output_format": "jpeg", "seed": 3})
    assert response.status_code == 200, response.text
    image = response.json()["image"]
    assert (image["content_type"], image["width"], image["height"]) == ("image/jpeg", 48, 32)
    assert image["file_name"].endswith(".jpeg")
    assert client.get(image["url"]).content[:3] == b"\xff\xd8\xff"  # a JPEG
    assert engine.calls[-1][2].seamless

    assert client.post("/fal-ai/seedvr/upscale/image", json={"image_url": image_url}).status_code == 200
    assert not engine.calls[-1][2].seamless


def test_the_image_endpoints_jpg_is_refused_by_the_seamless_one(client):
    response = client.post(f"/queue/{SEAMLESS}", json={"image_url": data_uri(png_bytes(8, 8)), "output_format": "jpg"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "output_format"]
