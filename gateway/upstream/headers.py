"""What a response says about its exchange: the admitted request's `x-ratelimit-*`, what the
response cache did, the trace a client asked to see. Put on every answer just before it is
prepared (a whole one in the edge's `_answer`, a stream's by the relay and the cache), not
through aiohttp's `on_response_prepare` signal: the signal's dispatch cost more than the
headers themselves (2% of the CPU of a request at c=100, py-spy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.upstream.exchange import Exchange

CACHE_HEADER = "x-citadel-cache"
SIMILARITY_HEADER = "x-citadel-cache-similarity"  # a semantic hit's cosine similarity
TRACE_ASKED = "x-citadel-trace"  # a client's "true": the response names its trace
TRACE_ID_HEADER = "x-citadel-trace-id"


def put_exchange_headers(
    exchange: Exchange, request: web.Request, response: web.StreamResponse
) -> None:
    headers = response.headers
    if exchange.rate_headers:
        headers.update(exchange.rate_headers)
    if exchange.trace is not None and request.headers.get(TRACE_ASKED, "").lower() == "true":
        headers[TRACE_ID_HEADER] = exchange.trace.trace_id
    if exchange.cache_status is not None:
        headers[CACHE_HEADER] = exchange.cache_status
        if exchange.cache_similarity is not None:
            headers[SIMILARITY_HEADER] = f"{exchange.cache_similarity:.4f}"
