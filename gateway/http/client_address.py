"""Who the client is, by address: the socket's peer, or, when that peer is a trusted proxy
(`connections.trusted_proxies`), the address the proxies say they received the request from.

X-Forwarded-For is read from the right: each trusted hop vouches for the one before it, and
the first address not in a trusted network is the client. Entries a client wrote itself sit
further left and are never reached. `Forwarded: for=` (RFC 7239) is read the same way when
there is no X-Forwarded-For.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_FOR = re.compile(r'for="?\[?([^\]",;]+)', re.IGNORECASE)


def client_address(request: web.Request, trusted: Sequence[Network]) -> str:
    peer = request.remote or ""
    if not trusted or not _within(peer, trusted):
        return peer
    forwarded = request.headers.get("X-Forwarded-For")
    hops: list[str] = (
        [hop.strip() for hop in forwarded.split(",")]
        if forwarded is not None
        else [str(hop) for hop in _FOR.findall(request.headers.get("Forwarded", ""))]
    )
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return client  # garbage from here on: the last trusted hop's word stops here
        client = hop
        if not _within(hop, trusted):
            return hop
    return client


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
