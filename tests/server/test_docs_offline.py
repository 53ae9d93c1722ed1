"""/docs and /redoc work on a host without internet: every asset comes from this server.

The rendering test runs Debian's headless `chromium` with every host name but 127.0.0.1 unresolvable.
It skips where chromium is missing, except in CI (CI=true), where .ci/run installs it: there it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.server.helpers import EXTERNAL_URL, page_assets, FakeEngine, LiveServer

PAGES = ("/docs", "/redoc")



@pytest.mark.parametrize("page", PAGES)
def test_the_page_names_no_external_url_and_its_assets_are_served_here(client, page):
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert not EXTERNAL_URL.findall(response.text), EXTERNAL_URL.findall(response.text)
    urls = page_assets(response.text)
    assert any(url.endswith(".js") for url in urls)
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200 and asset.content, url


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _render_offline(url: str) -> str:
    """The DOM of `url` after its scripts ran, with no host but 127.0.0.1 resolvable."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_swagger_ui_renders_every_operation_offline(settings):
    with LiveServer(settings, FakeEngine) as server:
        document = server.app.openapi()
        dom = _render_offline(f"{server.url}/docs")
    rendered = re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom)
    assert sorted(rendered) == sorted(path for path, ops in document["paths"].items() for _ in ops)


def test_redoc_renders_every_operation_offline(settings):
    with LiveServer(settings, FakeEngine) as server:
        document = server.app.openapi()
        dom = _render_offline(f"{server.url}/redoc")
    rendered = set(re.findall(r"operation/([A-Za-z0-9_]+)", dom))
    assert rendered == {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
