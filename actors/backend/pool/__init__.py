"""A replica's connection pool: a lean HTTP/1.1 client for the one request the gateway makes
on its hot path (a POST with a body, its answer read whole or relayed as it arrives).

aiohttp's ClientSession costs ~80 µs of CPU a request at 100 in flight where the least a
keep-alive client can do costs ~8 (`python -m ops.bench.clients`); that difference was a fifth
of the gateway's CPU per request. This client keeps what the gateway relied on (a bounded
pool of keep-alive connections, a connect timeout, one deadline per request, flow control,
every failure as one of four errors) and parses with llhttp (httptools), the parser Node.js
uses, rather than by hand. Health probes keep aiohttp: they are not on the hot path.

    pool.py        UpstreamPool: idle connections, room for new ones, keep-alive expiry
    connection.py  UpstreamConnection: one socket, one request at a time, its parser
    response.py    UpstreamResponse: a status, then the body (read whole or piece by piece)
    errors.py      what can go wrong, as the relay judges a replica by it
"""

from actors.backend.pool.errors import (
    ConnectFailed,
    ConnectionLost,
    MalformedResponse,
    UpstreamClientError,
)
from actors.backend.pool.pool import PoolSettings, UpstreamPool
from actors.backend.pool.response import UpstreamResponse

__all__ = [
    "ConnectFailed",
    "ConnectionLost",
    "MalformedResponse",
    "PoolSettings",
    "UpstreamClientError",
    "UpstreamPool",
    "UpstreamResponse",
]
