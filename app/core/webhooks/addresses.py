"""Where a webhook may be delivered: by default never to loopback, link-local, private or
otherwise special addresses (SSRF). The check is on the resolved addresses, and the
delivery connects to the address that was checked, so a name that resolves differently
a moment later (DNS rebinding) gains nothing."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

__all__ = ["Refused", "Target", "resolve_target", "public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """The URL may not be delivered to (its address, or it does not resolve)."""


class Target:
    """A checked destination: the URL to connect to (host replaced by the address) and
    the original host for the ``Host`` header and TLS (SNI, certificate check)."""

    def __init__(self, url: str, connect_url: str, host: str, host_header: str) -> None:
        self.url = url
        self.connect_url = connect_url
        self.host = host
        self.host_header = host_header


def public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (an IPv4-mapped IPv6 address
    is judged as the IPv4 one)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve_target(url: str, allow_private: bool = False) -> Target:
    """Resolve ``url``'s host and pick the address to connect to. Raises :class:`Refused`
    when it does not resolve, or (unless ``allow_private``) when any address it resolves
    to is not public: one bad answer is enough to refuse, whichever would be used."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https"):
        raise Refused("not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"the host does not resolve ({type(exc).__name__})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise Refused("the host does not resolve")
    if not allow_private:
        bad = [a for a in addresses if not public_address(a)]
        if bad:
            raise Refused(f"address {bad[0]} is not public (DDPM_WEBHOOK_ALLOW_PRIVATE)")
    ip = addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{literal}:{port}"
    connect_url = parts._replace(netloc=netloc).geturl()
    default_port = parts.port is None
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    return Target(url, connect_url, host, host_header)
