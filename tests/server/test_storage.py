"""Storage: the JS and Python upload flows, serving files back, and uploads used as image_url."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.server.helpers import FILE_STORES, png_bytes, wait_status

#: Every upload flow against both file stores (the job store is parametrized by the fixtures).
pytestmark = pytest.mark.parametrize("file_store", FILE_STORES)


def _path(url: str) -> str:
    return url.replace("http://testserver", "")


def test_js_single_part_upload_and_use_as_image_url(client):
    initiate = client.post(
        "/storage/upload/initiate",
        params={"storage_type": "fal-cdn-v3"},
        json={"content_type": "image/png", "file_name": "photo.png"},
    )
    assert initiate.status_code == 200
    target = initiate.json()
    assert set(target) == {"upload_url", "file_url"} and target["file_url"].endswith("/photo.png")
    assert target["upload_url"] != target["file_url"]
    assert client.get(_path(target["file_url"])).status_code == 404  # nothing there until the PUT

    data = png_bytes(20, 10)
    put = client.put(_path(target["upload_url"]), content=data, headers={"content-type": "image/png"})
    assert put.status_code == 200
    served = client.get(_path(target["file_url"]))
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"

    # the server reads its own file URL from storage, whatever host the URL names
    for url in (target["file_url"], target["file_url"].replace("testserver", "unreachable.invalid:9")):
        response = client.post("/fal-ai/seedvr/upscale/image", json={"image_url": url})
        assert response.status_code == 200, response.text
        assert response.json()["image"]["width"] == 40


def test_python_fallback_initiate_with_gcs_storage_type(client):
    target = client.post(
        "/storage/upload/initiate",
        params={"storage_type": "gcs"},
        json={"file_name": "upload.bin", "content_type": "image/png"},
    ).json()
    assert (
        client.put(_path(target["upload_url"]), content=b"abc", headers={"authorization": "Key x"}).status_code == 200
    )
    assert client.get(_path(target["file_url"])).content == b"abc"


def test_js_multipart_upload(client):
    target = client.post(
        "/storage/upload/initiate-multipart", json={"content_type": "image/png", "file_name": "big.png"}
    ).json()
    upload = _path(target["upload_url"])
    chunks = [b"a" * 1000, b"b" * 1000, b"c" * 10]
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        response = client.put(f"{upload}/{number}", content=chunk)
        assert response.status_code == 200
        body = response.json()
        assert (
            body["partNumber"] == number and body["etag"].startswith('"') and response.headers["etag"] == body["etag"]
        )
        parts.append(body)
    assert client.post(f"{upload}/complete", json={"parts": list(reversed(parts))}).status_code == 200
    assert client.get(_path(target["file_url"])).content == b"".join(chunks)
    assert client.put(f"{upload}/4", content=b"late").status_code == 400  # already complete


def test_multipart_complete_checks_parts(client):
    upload = _path(client.post("/storage/upload/initiate-multipart", json={}).json()["upload_url"])
    client.put(f"{upload}/1", content=b"one")
    assert client.post(f"{upload}/complete", json={"parts": [{"partNumber": 2, "etag": '"x"'}]}).status_code == 400
    assert client.post(f"{upload}/complete", json={"parts": [{"partNumber": 1, "etag": '"wrong"'}]}).status_code == 400
    assert client.post(f"{upload}/complete", json={"parts": []}).status_code == 400
    assert client.post(f"{upload}/complete", content=b"not json").status_code == 400
    assert client.put(f"{upload}/0", content=b"x").status_code == 422  # part numbers start at 1
    assert client.put(f"{upload}/abc", content=b"x").status_code == 404  # no such URL


def test_python_token_and_files_upload(client):
    token = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}).json()
    assert token["token_type"] == "Bearer" and token["base_url"] == "http://testserver"
    assert token["expires_at"].endswith("+00:00")
    response = client.post(
        "/files/upload",
        content=b"pixels",
        headers={
            "authorization": f"Bearer {token['token']}",
            "content-type": "image/webp",
            "x-fal-file-name": "a b.webp",
        },
    )
    assert response.status_code == 200
    url = response.json()["access_url"]
    assert url.endswith("/a_b.webp")
    served = client.get(_path(url))
    assert served.content == b"pixels" and served.headers["content-type"] == "image/webp"


def test_python_multipart_upload(client):
    start = client.post(
        "/files/upload/multipart", headers={"content-type": "image/png", "x-fal-file-name": "m.png"}
    ).json()
    access = _path(start["access_url"])
    parts = []
    for number, chunk in enumerate([b"x" * 300, b"y" * 7], start=1):
        response = client.put(f"{access}/multipart/{start['uploadId']}/{number}", content=chunk)
        assert response.headers["etag"]
        parts.append({"partNumber": number, "etag": response.headers["etag"]})
    done = client.post(f"{access}/multipart/{start['uploadId']}/complete", json={"parts": parts})
    assert done.status_code == 200 and done.json()["access_url"] == start["access_url"]
    assert client.get(access).content == b"x" * 300 + b"y" * 7


def test_upload_size_limit_is_413(make_client):
    with make_client(max_upload_bytes=100) as client:
        target = client.post("/storage/upload/initiate", json={}).json()
        response = client.put(_path(target["upload_url"]), content=b"z" * 1000)
        assert response.status_code == 413
        assert client.get(_path(target["file_url"])).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/files/..%2F..%2Fseedvr.sqlite3",
        "/files/../seedvr.sqlite3",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/upload-token.key",
        "/files/tmp",
        "/files/parts",
        "/storage/upload/..%2F..%2Fx",
    ],
)
def test_paths_cannot_escape_the_data_dir(client, path):
    response = client.get(path)
    assert response.status_code in (404, 405)
    assert b"SQLite" not in response.content


def test_upload_names_cannot_escape_the_data_dir(client, settings):
    target = client.post("/storage/upload/initiate", json={"file_name": "../../../../tmp/evil.png"}).json()
    assert "/evil.png" in target["file_url"] and ".." not in target["file_url"]
    client.put(_path(target["upload_url"]), content=b"evil")
    inside = {p.resolve() for p in settings.data_dir.rglob("*") if p.is_file()}
    assert all(str(p).startswith(str(settings.data_dir.resolve())) for p in inside)


def test_unknown_upload_tokens_are_404(client):
    assert client.put("/storage/upload/" + "A" * 32, content=b"x").status_code == 404
    assert client.put("/storage/multipart/" + "A" * 32 + "/1", content=b"x").status_code == 404


def test_outputs_are_served_with_their_content_type(client):
    response = client.post(
        "/fal-ai/seedvr/upscale/image",
        json={
            "image_url": "data:image/png;base64," + __import__("base64").b64encode(png_bytes()).decode(),
            "output_format": "webp",
        },
    )
    image = response.json()["image"]
    served = client.get(_path(image["url"]))
    assert served.headers["content-type"] == "image/webp"
    assert len(served.content) == image["file_size"]
    with Image.open(io.BytesIO(served.content)) as decoded:  # the bytes are the image the response describes
        assert decoded.format == "WEBP" and decoded.size == (image["width"], image["height"])
    assert client.head(_path(image["url"])).status_code == 200


def test_uploaded_file_that_is_not_an_image_fails_the_job_cleanly(client):
    target = client.post(
        "/storage/upload/initiate", json={"file_name": "notes.txt", "content_type": "text/plain"}
    ).json()
    client.put(_path(target["upload_url"]), content=b"hello")
    request_id = client.post("/queue/fal-ai/seedvr/upscale/image", json={"image_url": target["file_url"]}).json()[
        "request_id"
    ]
    assert wait_status(client, request_id)["error_type"] == "image_load_error"


def test_unfinished_upload_as_image_url_is_a_clear_422(client):
    target = client.post("/storage/upload/initiate", json={"file_name": "a.png"}).json()
    response = client.post("/fal-ai/seedvr/upscale/image", json={"image_url": target["file_url"]})
    assert response.status_code == 422 and "has not finished" in response.json()["detail"][0]["msg"]
