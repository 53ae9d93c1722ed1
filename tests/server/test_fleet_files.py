"""The file store in an S3-compatible bucket (moto's server on loopback, or $SEEDVR_TEST_S3_URL)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from seedvr_local.server.blobs import S3Blobs, StorageUnavailable
from tests.server.helpers import data_uri, png_bytes, wait_status

SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


@pytest.fixture
def file_store() -> str:
    return "s3"


def test_outputs_and_uploads_live_in_the_bucket(client, settings):
    import boto3

    upload = client.post("/storage/upload/initiate", json={"content_type": "image/png", "file_name": "a.png"}).json()
    assert (
        client.put(
            urlsplit(upload["upload_url"]).path, content=png_bytes(), headers={"content-type": "image/png"}
        ).status_code
        == 200
    )
    request_id = client.post(SUBMIT, json={"image_url": upload["file_url"], "output_format": "png"}).json()[
        "request_id"
    ]
    wait_status(client, request_id)
    output = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").json()["image"]
    served = client.get(urlsplit(output["url"]).path)
    assert served.status_code == 200 and served.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert int(served.headers["content-length"]) == output["file_size"] == len(served.content)

    bucket = urlsplit(settings.storage_url).netloc
    listed = boto3.client("s3", endpoint_url=settings.s3_endpoint_url).list_objects_v2(Bucket=bucket, Prefix="files/")
    assert len(listed.get("Contents", [])) == 2  # the upload and the output
    assert not [p for p in settings.files_dir.iterdir() if p.is_file()]  # nothing on the local disk


def test_presigned_output_urls_point_at_the_bucket(make_client, settings):
    with make_client(storage_public_urls="presigned", presigned_url_ttl_s=600) as client:
        body = {"image_url": data_uri(png_bytes()), "output_format": "png"}
        request_id = client.post(SUBMIT, json=body).json()["request_id"]
        wait_status(client, request_id)
        url = client.get(f"/queue/fal-ai/seedvr/requests/{request_id}").json()["image"]["url"]
    assert url.startswith(settings.s3_endpoint_url) and "Signature" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content[:4] == b"\x89PNG"


def test_a_missing_bucket_is_one_line(s3_bucket, s3_endpoint):
    with pytest.raises(StorageUnavailable, match="no-such-bucket.*does not exist"):
        S3Blobs("s3://no-such-bucket-seedvr/x", s3_endpoint)


def test_serve_with_a_missing_bucket_exits_2_before_loading(tmp_path, s3_bucket, s3_endpoint, capsys, monkeypatch):
    import uvicorn

    from seedvr_local.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    code = main(
        [
            "serve",
            "--model",
            "tiny",
            "--data-dir",
            str(tmp_path),
            "--storage-url",
            "s3://no-such-bucket-seedvr",
            "--s3-endpoint-url",
            s3_endpoint,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
