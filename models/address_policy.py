"""Which addresses a user's media URL may reach: public unicast only.

Numeric hosts are parsed here rather than handed to the resolver, because the C resolver accepts
spellings (``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``) that mean loopback.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)

# Ranges named for the error message; anything else not globally routable is refused too.
_NAMED = [
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("10.0.0.0/8"), "private"),
    (ipaddress.ip_network("172.16.0.0/12"), "private"),
    (ipaddress.ip_network("192.168.0.0/16"), "private"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local (cloud metadata)"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("100.64.0.0/10"), "carrier-grade NAT"),
    (ipaddress.ip_network("fc00::/7"), "unique-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
    (ipaddress.ip_network("0.0.0.0/8"), "unspecified"),
    (ipaddress.ip_network("::/128"), "unspecified"),
    (ipaddress.ip_network("240.0.0.0/4"), "reserved"),
]


def literal_address(host: str) -> IPAddress | None:
    """The address a numeric host names, or None for a hostname.

    Raises ValueError for a numeric host in any spelling other than the canonical one.
    """
    bare = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    labels = bare.split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels if label) and any(labels):
        raise ValueError(f"{host!r} is a numeric address in a non-standard spelling")
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why the fetcher may not connect to ``address``, or None when it may."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address is judged by that address too.
        for embedded in (address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]):
            if embedded:
                candidates.append(embedded)
        if address in ipaddress.ip_network("::ffff:0:0/96") or address in ipaddress.ip_network("64:ff9b::/96"):
            candidates.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for candidate in candidates:
        for network, name in _NAMED:
            if candidate.version == network.version and candidate in network:
                return f"{address} is a {name} address"
        if not candidate.is_global or candidate.is_multicast or candidate.is_reserved:
            return f"{address} is not a public address"
    return None
