"""A bare aiohttp passthrough: the Python ceiling for a proxy on this stack.

No validation, routing, auth or logging: read the body, send it upstream on a pooled
ClientSession, relay the answer (chunk by chunk for streams).

    python -m ops.bench.passthrough --port 18002 --upstream http://127.0.0.1:18001
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
POOL = web.AppKey("pool", int)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    session = request.app[SESSION]
    async with session.post(
        request.app[UPSTREAM] + request.path,
        data=body,
        headers={"Content-Type": "application/json"},
    ) as upstream:
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        return web.Response(
            body=await upstream.read(), status=upstream.status, content_type="application/json"
        )


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    connector = aiohttp.TCPConnector(limit=app[POOL], limit_per_host=0, keepalive_timeout=60)
    app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    yield
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--max-connections", type=int, default=1024, help="the pool's size")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream
    app[POOL] = args.max_connections
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", relay)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
