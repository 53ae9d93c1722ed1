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

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedURLError(ValueError):
    """A URL this server refuses to contact; the message says why, in one line."""


def is_public_address(ip: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local (cloud metadata), shared, reserved..."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
    return ip.is_global and not ip.is_multicast and not ip.is_unspecified


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
