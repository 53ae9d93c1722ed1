"""A data: URI that cannot be an input is refused at submit, over HTTP, with the 422 its result would give: the
same body as the run endpoint answers for it, which fetches and decodes. Only the URI's header, its base64 and
the first bytes are looked at: a file that starts like an image but is broken is found when the job runs."""

from __future__ import annotations

import base64

import pytest

from tests.server.helpers import data_uri, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"
SUBMIT_VIDEO = "/queue/fal-ai/seedvr/upscale/video"
RESULT = "/queue/fal-ai/seedvr/requests/{}"


@pytest.mark.parametrize(
    "image_url, error_type, says",
    [
        ("data:image/png;base64,!!!notbase64", "file_download_error", "not valid base64: the character '!'"),
        ("data:image/png;base64", "file_download_error", "no ','"),
        (data_uri(b"just some text, valid base64 of it"), "image_load_error", "not an image in a supported format"),
        ("data:image/png;base64,", "image_load_error", "the image is empty (0 bytes)"),
        ("data:text/plain,hello%20world", "image_load_error", "not an image in a supported format"),
    ],
)
@pytest.mark.parametrize("path", ["upscale/image", "upscale/image/seamless"])
def test_submit_refuses_what_the_result_would_refuse(client, engine, image_url, error_type, says, path):
    submitted = client.post(f"/queue/fal-ai/seedvr/{path}", json={"image_url": image_url})
    assert submitted.status_code == 422, submitted.text
    [error] = submitted.json()["detail"]
    assert error["loc"] == ["body", "image_url"] and error["type"] == error_type and says in error["msg"]
    assert "request_id" not in submitted.json()
    ran = client.post(f"/fal-ai/seedvr/{path}", json={"image_url": image_url})  # fetched and decoded: the result's
    assert (ran.status_code, ran.json()) == (422, submitted.json())
    assert engine.calls == []


def test_submit_refuses_a_data_uri_over_the_download_limit(make_client):
    with make_client(max_download_bytes=1000) as client:
        submitted = client.post(SUBMIT, json={"image_url": data_uri(png_bytes(64, 64) + b"\0" * 2000)})
    assert submitted.status_code == 422
    [error] = submitted.json()["detail"]
    assert error["type"] == "file_too_large" and "1,000 bytes" in error["msg"]


@pytest.mark.parametrize("encode", [base64.b64encode, lambda data: base64.urlsafe_b64encode(data).rstrip(b"=")])
def test_submit_takes_an_image_in_either_base64_alphabet_and_it_runs(client, encode):
    image_url = f"data:image/png;base64,{encode(png_bytes(30, 20)).decode()}"
    submitted = client.post(SUBMIT, json={"image_url": image_url})
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    wait_status(client, request_id)
    assert client.get(RESULT.format(request_id)).json()["image"]["width"] == 60


def test_an_image_broken_after_its_first_bytes_is_found_when_the_job_runs(client):
    """The cheap check stops at the signature: a PNG cut short is queued, and its result is the 422."""
    submitted = client.post(SUBMIT, json={"image_url": data_uri(png_bytes()[:40])})
    assert submitted.status_code == 200
    request_id = submitted.json()["request_id"]
    wait_status(client, request_id)
    result = client.get(RESULT.format(request_id))
    assert result.status_code == 422 and result.json()["detail"][0]["type"] == "image_load_error"


def test_a_video_data_uri_is_refused_for_its_base64_only(client):
    """Video containers are many: their bytes are judged by the decoder when the job runs."""
    refused = client.post(SUBMIT_VIDEO, json={"video_url": "data:video/mp4;base64,@@@"})
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "video_url"] and error["type"] == "file_download_error"
    assert client.post(SUBMIT_VIDEO, json={"video_url": data_uri(b"not judged here", "video/mp4")}).status_code == 200
