"""Outgoing requests to client-chosen URLs (image_url, webhooks) without server-side request forgery.

Unless private URLs are allowed, the host is resolved here, every address it resolves to must be a
public one, and the connection goes to that checked address (the original name kept for the Host
header and TLS), so a DNS answer that changes between check and connect cannot redirect it.
Redirects are followed by the callers hop by hop, each hop checked again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
Resolver = Callable[[str, int], list[str]]

#: IPv6 addresses that embed an IPv4 address, and where it sits: such an address is as public as the IPv4 one.
_EMBEDDING_V4 = (
    (ipaddress.ip_network("::ffff:0:0/96"), 0),  # IPv4-mapped
    (ipaddress.ip_network("64:ff9b::/96"), 0),  # NAT64, well-known prefix (RFC 6052)
    (ipaddress.ip_network("2002::/16"), 80),  # 6to4 (RFC 3056): the IPv4 address follows the prefix
)
#: The only IPv6 range with global unicast addresses (RFC 4291); anything outside it (but the embedding ranges
#: above) is refused: loopback, IPv4-compatible ::a.b.c.d, local-use NAT64 64:ff9b:1::/48, unique-local, link-local,
#: multicast, discard, SRv6 SIDs...
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")

#: Every range refused, as written out in the registries (IANA's special-purpose address registries, RFC 6890 and
#: its updates): what a policy must never reach, whatever Python's `is_global` says in the version at hand.
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        # IPv4
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.31.196.0/24", "192.52.193.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "192.175.48.0/24", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        # IPv6 outside 2000::/3 (refused by that rule too)
        "::/96",  # unspecified, loopback, and IPv4-compatible ::a.b.c.d (deprecated, RFC 4291)
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765)
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
        "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
        # IPv6 inside 2000::/3
        "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID...
        "2001:db8::/32", "3fff::/20",  # documentation (RFC 3849, RFC 9637)
        "2620:4f:8000::/48",  # AS112 direct delegation
    )
)  # fmt: skip


class BlockedURLError(ValueError):
    """A URL this server refuses to contact; the message says why, in one line."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address stands for."""
    for network, shift in _EMBEDDING_V4:
        if ip in network:
            return ipaddress.IPv4Address((int(ip) >> shift) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Globally routable unicast: in none of BLOCKED_NETWORKS (loopback, private, link-local like cloud metadata,
    shared, reserved, documentation...); an IPv6 address in 2000::/3, or one standing for a public IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(embedded)
        if ip not in _GLOBAL_UNICAST_V6:
            return False
    elif not ip.is_global:  # belt and braces: the registry as this Python knows it
        return False
    return not any(ip in network for network in BLOCKED_NETWORKS if network.version == ip.version)


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedURLError(f"cannot resolve host {host!r}: {exc}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass
class OutgoingRequest:
    """Where to send a request for `url`: maybe a checked IP, with the name for Host and TLS."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict = field(default_factory=dict)


@dataclass
class NetGuard:
    allow_private: bool = False
    policy: AddressPolicy = is_public_address
    resolver: Resolver = system_resolver

    def prepare(self, url: str | httpx.URL) -> OutgoingRequest:
        """Check a URL and say where to connect; raises `BlockedURLError`."""
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else url
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise BlockedURLError(f"not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise BlockedURLError(f"only http and https URLs can be fetched, not {parsed.scheme or 'a relative'} URL")
        host = parsed.host
        if not host:
            raise BlockedURLError("the URL has no host")
        if self.allow_private:
            return OutgoingRequest(parsed)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = self.resolver(host, port)
        if not addresses:
            raise BlockedURLError(f"host {host!r} has no address")
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not self.policy(ip):
                raise BlockedURLError(
                    f"{host} resolves to {ip}, a private, loopback, link-local or reserved address "
                    "(start the server with --allow-private-urls to allow it)"
                )
        if _is_ip_literal(host):
            return OutgoingRequest(parsed)
        pinned_ip = addresses[0].split("%", 1)[0]
        netloc = host if parsed.port is None else f"{host}:{parsed.port}"
        return OutgoingRequest(
            parsed.copy_with(host=pinned_ip),
            headers={"Host": netloc},
            extensions={"sni_hostname": host} if parsed.scheme == "https" else {},
        )


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
