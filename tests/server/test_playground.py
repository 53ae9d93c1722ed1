"""The playground page (GET / and /playground), over HTTP: served from this server with every asset it names,
and kept out of the API document. tests/server/test_playground_browser.py runs it in a browser."""

from __future__ import annotations

import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

import pytest

from seedvr_local.server.routers.playground import ASSETS_URL, PAGE_PATHS
from tests.server.helpers import EXTERNAL_URL, page_assets

ROOT = Path(__file__).resolve().parents[2]
PLAYGROUND_DIR = ROOT / "server" / "playground"



@pytest.mark.parametrize("page", PAGE_PATHS)
def test_the_page_and_every_asset_it_names_come_from_this_server(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    urls = page_assets(response.text)
    scripts = [url for url in urls if url.endswith(".js")]
    assert scripts and any(url.endswith(".css") for url in urls)
    for url in urls:
        # relative to the page, so the page also works where a reverse proxy serves the server under a path
        assert not url.startswith("/") and "://" not in url, url
        asset = client.get(urljoin(f"http://testserver{page}", url))
        assert asset.status_code == 200 and asset.content, url
        if url.endswith((".js", ".css")):  # what could load more (an SVG's xmlns is a name, not a fetch)
            assert not EXTERNAL_URL.findall(asset.text), (url, EXTERNAL_URL.findall(asset.text))
    assert not EXTERNAL_URL.findall(response.text)


def test_head_answers_like_get(client):
    assert client.head("/playground").status_code == 200


def test_the_playground_is_not_in_the_api_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path in PAGE_PATHS or path.startswith(ASSETS_URL)]


def test_every_playground_file_ships_in_the_package():
    """The wheel holds server/playground/ through pyproject's package-data; a file it misses would 404 on an
    installed server while every test from the checkout passes."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        patterns = tomllib.load(file)["tool"]["setuptools"]["package-data"]["seedvr_local.server"]
    files = [path.relative_to(PLAYGROUND_DIR.parent).as_posix() for path in PLAYGROUND_DIR.rglob("*") if path.is_file()]
    assert "playground/index.html" in files
    assert [name for name in files if not any(PurePosixPath(name).match(pattern) for pattern in patterns)] == []
