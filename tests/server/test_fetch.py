"""image_url downloads: SSRF refusals (after DNS, on every redirect), limits, and what is allowed."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from seedvr_local.server.netguard import BlockedURLError, NetGuard
from tests.server.helpers import LocalHTTP, allow_loopback_only, png_bytes

RUN = "/fal-ai/seedvr/upscale/image"


def _error(response) -> dict:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "image_url"]
    return error


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/a.png",
        "http://localhost/a.png",
        "http://[::1]/a.png",
        "http://10.1.2.3/a.png",
        "http://192.168.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/",
    ],
)
def test_private_addresses_are_refused_without_connecting(client, url):
    error = _error(client.post(RUN, json={"image_url": url}))
    assert error["type"] == "file_download_error"
    assert "refused" in error["msg"] and "--allow-private-urls" in error["msg"]


def test_names_are_checked_after_resolution():
    guard = NetGuard(resolver=lambda host, port: ["93.184.216.34", "10.0.0.7"])  # one public, one private answer
    with pytest.raises(BlockedURLError, match="10.0.0.7"):
        guard.prepare("https://images.example.com/a.png")
    pinned = NetGuard(resolver=lambda host, port: ["93.184.216.34"]).prepare(
        "https://images.example.com:8443/a.png?x=1"
    )
    # the connection goes to the checked address; the name stays for Host and TLS
    assert str(pinned.url) == "https://93.184.216.34:8443/a.png?x=1"
    assert pinned.headers == {"Host": "images.example.com:8443"}
    assert pinned.extensions == {"sni_hostname": "images.example.com"}


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "http:///nohost"])
def test_only_http_urls(url):
    with pytest.raises(BlockedURLError):
        NetGuard(resolver=lambda host, port: ["93.184.216.34"]).prepare(url)


def test_redirect_to_a_private_address_is_refused(make_client):
    # 127.0.0.1 plays a public server here; 127.0.0.2 (also this machine) plays the private one.
    with LocalHTTP() as inner, LocalHTTP() as outer:
        inner.routes["/secret.png"] = (200, {"Content-Type": "image/png"}, png_bytes())
        outer.routes["/a.png"] = (302, {"Location": f"http://127.0.0.2:{inner.port}/secret.png"}, b"")
        with make_client(guard=allow_loopback_only()) as client:
            error = _error(client.post(RUN, json={"image_url": f"{outer.url}/a.png"}))
        assert "127.0.0.2" in error["msg"]
        assert inner.requests == []


def test_download_follows_public_redirects(make_client):
    with LocalHTTP() as server:
        server.routes["/start"] = (301, {"Location": "/next"}, b"")
        server.routes["/next"] = (307, {"Location": f"{server.url}/img.png"}, b"")
        server.routes["/img.png"] = (200, {"Content-Type": "image/png"}, png_bytes(10, 10))
        with make_client(guard=allow_loopback_only()) as client:
            response = client.post(RUN, json={"image_url": f"{server.url}/start"})
        assert response.status_code == 200 and response.json()["image"]["width"] == 20
        assert server.requests[0][2]["User-Agent"].startswith("seedvr-local")


def test_redirect_loops_are_cut(make_client):
    with LocalHTTP() as server:
        server.routes["/loop"] = (302, {"Location": "/loop"}, b"")
        with make_client(guard=allow_loopback_only(), max_redirects=3) as client:
            error = _error(client.post(RUN, json={"image_url": f"{server.url}/loop"}))
        assert "redirects" in error["msg"] and len(server.requests) == 4


@pytest.mark.parametrize("status", [404, 403, 500])
def test_http_errors_are_422(make_client, status):
    with LocalHTTP({"/a.png": (status, {}, b"no")}) as server:
        with make_client(allow_private_urls=True) as client:
            error = _error(client.post(RUN, json={"image_url": f"{server.url}/a.png"}))
    assert f"HTTP {status}" in error["msg"] and error["type"] == "file_download_error"


def test_size_cap_on_download(make_client):
    big = b"\0" * 50_000
    with LocalHTTP({"/declared.png": (200, {}, big)}) as server:
        with make_client(allow_private_urls=True, max_download_bytes=10_000) as client:
            error = _error(client.post(RUN, json={"image_url": f"{server.url}/declared.png"}))
    assert error["type"] == "file_too_large"


def test_size_cap_without_content_length(make_client):
    def chunked(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(20):
            handler.wfile.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    with LocalHTTP({"/stream.png": chunked}) as server:
        with make_client(allow_private_urls=True, max_download_bytes=10_000) as client:
            error = _error(client.post(RUN, json={"image_url": f"{server.url}/stream.png"}))
    assert error["type"] == "file_too_large"


def test_slow_download_times_out(make_client):
    """The server answers only after the test is over (or after 60 s): without the download timeout the request
    would wait for it and succeed, so a "timed out" error shows the timeout cut it short, with no timing here."""
    release = threading.Event()

    def slow(handler):
        release.wait(60)
        return 200, {}, png_bytes()

    with LocalHTTP({"/slow.png": slow}) as server:
        try:
            with make_client(allow_private_urls=True, download_timeout_s=0.5) as client:
                error = _error(client.post(RUN, json={"image_url": f"{server.url}/slow.png"}))
        finally:
            release.set()
    assert "timed out" in error["msg"]


def test_allow_private_urls_lets_loopback_through(make_client):
    with LocalHTTP({"/a.png": (200, {"Content-Type": "image/png"}, png_bytes())}) as server:
        with make_client(allow_private_urls=True) as client:
            assert client.post(RUN, json={"image_url": f"{server.url}/a.png"}).status_code == 200


def test_unresolvable_host_is_422(client, network_attempts):
    """The lookup fails as DNS would answer for an unknown name (tests/conftest.py refuses every lookup of a name
    that is not this machine, so no real DNS is asked)."""
    error = _error(client.post(RUN, json={"image_url": "http://no-such-host.invalid/a.png"}))
    assert "resolve" in error["msg"] and network_attempts == ["no-such-host.invalid"]


def test_policy_basics():
    from seedvr_local.server.netguard import is_public_address

    assert is_public_address(ipaddress.ip_address("93.184.216.34"))
    assert not is_public_address(ipaddress.ip_address("64:ff9b::a00:1"))  # NAT64 of 10.0.0.1
