"""What a web page or a URL can reach: private-network CORS only for named origins, /metrics behind a key, and the
outgoing-URL guard refusing every special-purpose address range, IPv6 forms that embed an IPv4 address included."""

from __future__ import annotations

import ipaddress

import pytest

from seedvr_local.server.netguard import BlockedURLError, NetGuard, is_public_address
from tests.hostile.tools import serve_settings

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Private-Network": "true",
}
SUBMIT = "/queue/fal-ai/seedvr/upscale/image"


@pytest.mark.parametrize("store", ["sqlite"])
def test_private_network_access_only_for_origins_named_with_cors_origin(make_client):
    with make_client() as client:  # the default: any origin, no private-network access
        anyone = client.options(SUBMIT, headers={**PREFLIGHT, "Origin": "https://attacker.example"})
    assert anyone.status_code == 400 and "access-control-allow-private-network" not in anyone.headers
    with make_client() as client:  # the same page without private-network access: allowed, as before
        public = client.options(
            SUBMIT, headers={"Access-Control-Request-Method": "POST", "Origin": "https://a.example"}
        )
    assert public.status_code == 200 and public.headers["access-control-allow-origin"] == "*"
    with make_client(cors_origins=("https://app.example",)) as client:
        named = client.options(SUBMIT, headers={**PREFLIGHT, "Origin": "https://app.example"})
        other = client.options(SUBMIT, headers={**PREFLIGHT, "Origin": "https://attacker.example"})
    assert named.status_code == 200 and named.headers["access-control-allow-private-network"] == "true"
    # another origin's preflight fails (a browser sends nothing after a preflight that is not a 2xx)
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("store", ["sqlite"])
@pytest.mark.parametrize(
    "settings_given, refused, allowed",
    [
        ({}, [], [None]),  # key-less: open by design
        ({"metrics_key": "scrape"}, [None, "Bearer other"], ["Bearer scrape", "Key scrape"]),
        ({"api_keys": ("user", "admin"), "admin_keys": ("admin",)}, [None, "Key user"], ["Key admin", "Bearer admin"]),
        ({"api_keys": ("user",)}, [None, "Key nobody"], ["Key user"]),
        ({"api_keys": ("user",), "metrics_key": "scrape"}, ["Key user"], ["Bearer scrape"]),
    ],
)
def test_metrics_need_the_metrics_key_or_an_admin_key(make_client, settings_given, refused, allowed):
    with make_client(**settings_given) as client:
        for credentials in refused:
            response = client.get("/metrics", headers={"Authorization": credentials} if credentials else {})
            assert response.status_code == 401, (credentials, response.text)
            assert "seedvr" not in response.text  # no series leaked with the refusal
        for credentials in allowed:
            response = client.get("/metrics", headers={"Authorization": credentials} if credentials else {})
            assert response.status_code == 200 and "seedvr_queue" in response.text, (credentials, response.text)


#: Every range the guard refuses, written out here from the IANA special-purpose registries (not read from the
#: product), with what it is.
BLOCKED = {
    "0.0.0.0/8": "this network",
    "10.0.0.0/8": "private",
    "100.64.0.0/10": "shared address space (carrier-grade NAT)",
    "127.0.0.0/8": "loopback",
    "169.254.0.0/16": "link-local (cloud metadata)",
    "172.16.0.0/12": "private",
    "192.0.0.0/24": "IETF protocol assignments",
    "192.0.2.0/24": "documentation",
    "192.31.196.0/24": "AS112",
    "192.52.193.0/24": "AMT",
    "192.88.99.0/24": "6to4 relay anycast",
    "192.168.0.0/16": "private",
    "192.175.48.0/24": "AS112 direct delegation",
    "198.18.0.0/15": "benchmarking",
    "198.51.100.0/24": "documentation",
    "203.0.113.0/24": "documentation",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved, and broadcast",
    "::/96": "unspecified, loopback, IPv4-compatible ::a.b.c.d",
    "::ffff:0:0:0/96": "IPv4-translated",
    "64:ff9b:1::/48": "local-use NAT64 (RFC 8215)",
    "100::/64": "discard-only",
    "2001::/23": "IETF protocol assignments (Teredo, benchmarking, ORCHID)",
    "2001:db8::/32": "documentation",
    "2620:4f:8000::/48": "AS112 direct delegation",
    "3fff::/20": "documentation",
    "5f00::/16": "SRv6 SIDs",
    "fc00::/7": "unique local",
    "fe80::/10": "link-local",
    "fec0::/10": "site-local (deprecated)",
    "ff00::/8": "multicast",
}
#: IPv6 forms that stand for an IPv4 address: as blocked as the IPv4 address, as open as a public one.
EMBEDDING = {
    "::ffff:{}": "IPv4-mapped",
    "64:ff9b::{}": "NAT64 well-known prefix",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:81c::200e", "::ffff:8.8.8.8",
          "64:ff9b::8.8.8.8", "2002:808:808::1"]  # fmt: skip


def _samples(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list:
    return [network[0], network[network.num_addresses // 2], network[-1]]


@pytest.mark.parametrize("network", BLOCKED)
def test_every_special_purpose_range_is_refused(network):
    for ip in _samples(ipaddress.ip_network(network)):
        assert not is_public_address(ip), f"{ip} ({BLOCKED[network]})"
        if ip.version == 4:
            for form, what in EMBEDDING.items():
                assert not is_public_address(ipaddress.ip_address(form.format(ip))), f"{what} of {ip}"
            sixtofour = ipaddress.ip_address(f"2002:{int(ip) >> 16:x}:{int(ip) & 0xFFFF:x}::1")
            assert not is_public_address(sixtofour), f"6to4 of {ip}"


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", ["http://[64:ff9b:1::a00:1]/", "http://[::127.0.0.1]/", "http://[::a9fe:a9fe]/",
                                 "http://[64:ff9b::7f00:1]:8080/x", "http://[::ffff:169.254.169.254]/"])  # fmt: skip
def test_urls_naming_such_addresses_are_refused(url):
    with pytest.raises(BlockedURLError, match="private, loopback, link-local or reserved"):
        NetGuard().prepare(url)


def test_a_name_resolving_to_such_an_address_is_refused():
    guard = NetGuard(resolver=lambda host, port: ["2606:4700:4700::1111", "64:ff9b:1::c0a8:101"])
    with pytest.raises(BlockedURLError, match="64:ff9b:1::c0a8:101"):
        guard.prepare("https://mixed.example/hook")


def test_the_metrics_key_comes_from_its_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("SEEDVR_METRICS_KEY", raising=False)
    assert serve_settings().metrics_key is None
    assert serve_settings("--metrics-key", "scrape").metrics_key == "scrape"
    monkeypatch.setenv("SEEDVR_METRICS_KEY", " from-env ")
    assert serve_settings().metrics_key == "from-env"
