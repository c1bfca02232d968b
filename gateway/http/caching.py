"""The response cache at the edge: after routing (the served model is part of the key),
before admission and any lease.

    plan     whether the request is cacheable: the served model's policy, the request's
             determinism, the client's Cache-Control (`no-cache`: skip the lookup and refresh
             the entry; `no-store`: neither read nor write)
    serve    a hit answered in the request's wire format, or the request forwarded as usual
             and its complete answer stored; identical misses wait for the first one's answer

The answer says which: `x-citadel-cache: hit | miss | bypass`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from actors.limiter.local import Subject
from actors.router.actor import RouteDecision
from gateway.cache.answer import CachedAnswer, Kind
from gateway.cache.capture import StreamCapture
from gateway.cache.fingerprint import fingerprint, is_deterministic, namespace_of
from gateway.cache.question import question_of
from gateway.cache.semantic import SemanticPlan
from gateway.cache.store import ResponseCache
from gateway.http.state import STATE, GatewayState
from gateway.upstream.exchange import Exchange
from gateway.upstream.forward import forward
from gateway.upstream.headers import put_exchange_headers
from gateway.upstream.relay import SSE_HEADERS

HIT, MISS, BYPASS = "hit", "miss", "bypass"
_KINDS: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "text"}


@dataclass(frozen=True, slots=True)
class CachePlan:
    key: str  # the tenant's namespace and the request's fingerprint
    model: str  # the served model, public name
    kind: Kind
    ttl: float
    read: bool  # look it up (not under no-cache)
    semantic: SemanticPlan | None = None  # similar questions too, after an exact miss


def plan(
    state: GatewayState,
    request: web.Request,
    exchange: Exchange,
    decision: RouteDecision,
    parsed: dict[str, Any] | None = None,
) -> CachePlan | None:
    """The request's cache plan, or None when the cache is not involved (then, for a model
    with a cache, the answer says `bypass`). `parsed`: the request's JSON when the edge
    already has it (the guardrails parsed it), so it is not parsed twice."""
    policy = state.cache_policies.get(decision.model)
    if policy is None or not policy.enabled or state.cache is None:
        return None
    _, call = exchange.route
    kind = _KINDS.get(call.path)
    if kind is None:
        return None  # embeddings: not cached
    directives = _cache_control(request)
    body = parsed if parsed is not None else _body(call.raw)
    if (
        "no-store" in directives
        or body is None
        or (policy.requests == "deterministic" and not is_deterministic(body))
    ):
        _bypass(state, exchange, decision.model)
        return None
    namespace = namespace_of(exchange.key_id, shared=policy.namespace == "shared")
    # What is stored is the answer as the output rules let it out: under other rules (a key's
    # own, a reload), another entry.
    guarded = f"{exchange.guard.output_digest}:" if exchange.guard is not None else ""
    key = f"{namespace}:{guarded}{fingerprint(body, call.path, decision.model)}"
    ttl = policy.ttl or state.config.cache.ttl
    semantic = None
    if policy.semantic is not None and kind == "chat":
        with_system = policy.semantic.embed == "system_and_question"
        question = question_of(body, policy.semantic.max_turns, with_system=with_system)
        if question is not None:
            text, rest = question
            embedder = policy.semantic.embedding_model
            partition = (
                f"{namespace}:{embedder}:{guarded}{fingerprint(rest, call.path, decision.model)}"
            )
            semantic = SemanticPlan(partition, text, policy.semantic)
    read = "no-cache" not in directives
    return CachePlan(key, decision.model, kind, ttl, read, semantic)


async def serve(
    request: web.Request,
    exchange: Exchange,
    plan: CachePlan,
    subjects: tuple[Subject, ...],
    tokens: tuple[int, int],
) -> web.StreamResponse:
    """Answer from the cache, or forward the request and store its complete answer."""
    state = request.app[STATE]
    cache = state.cache
    assert cache is not None  # plan() returns no plan without one
    metrics = cache.metrics
    leads = False
    vector = None
    if plan.read:
        found = await cache.get(plan.key)
        if isinstance(found, CachedAnswer):
            metrics.lookups.labels(plan.model, HIT).inc()
            return await _answer(request, exchange, plan, found, subjects, tokens)
        if found is None and plan.semantic is not None:
            similar = await cache.semantic.find(state.router, plan.model, plan.semantic)
            vector = similar.vector
            if similar.match is not None:
                answer = await cache.get(similar.match.key)
                if isinstance(answer, CachedAnswer):
                    metrics.lookups.labels(plan.model, HIT).inc()
                    metrics.semantic.labels(plan.model, HIT).inc()
                    exchange.cache_similarity = similar.match.similarity
                    return await _answer(request, exchange, plan, answer, subjects, tokens)
                metrics.semantic.labels(plan.model, MISS).inc()  # its answer expired
        if found is not None:  # unavailable: as if uncached
            metrics.lookups.labels(plan.model, "unavailable").inc()
            _bypass(state, exchange, None)
            await exchange.admit(subjects, *tokens)
            return await forward(request, exchange)
        if cache.settings.coalesce:
            flight = cache.follow(plan.key)
            if flight is not None:
                answer = await _wait(flight, cache.settings.coalesce_wait)
                if answer is not None:
                    metrics.lookups.labels(plan.model, HIT).inc()
                    metrics.coalesced.labels(plan.model).inc()
                    return await _answer(request, exchange, plan, answer, subjects, tokens)
            else:
                leads = True
    metrics.lookups.labels(plan.model, MISS if plan.read else BYPASS).inc()
    exchange.cache_status = MISS if plan.read else BYPASS
    try:
        await exchange.admit(subjects, *tokens)
        _, call = exchange.route
        capture = None
        if call.stream:
            capture = exchange.capture = StreamCapture(plan.kind, cache.settings.max_entry_bytes)
        response = await forward(request, exchange)
        # A complete answer only: the try ended OK (a stream reached [DONE], no error event
        # and no cut; the assembly checks the same again, from the bytes), and no output
        # rule withheld it. It is assembled and stored after this returns, off the request's
        # path.
        if exchange.answered and exchange.output_blocked is None:
            payload = response.body if isinstance(response, web.Response) else None
            cache.later(_store_answer(cache, plan, payload, capture, vector, leads=leads))
            leads = False  # its followers hear from the store
        return response
    finally:
        if leads:
            cache.landed(plan.key, None)


def _store_answer(
    cache: ResponseCache,
    plan: CachePlan,
    payload: object,
    capture: StreamCapture | None,
    vector: list[float] | None,
    *,
    leads: bool,
) -> Callable[[], None]:
    """The answer assembled from a stream's events or a JSON body, given to the requests
    waiting for it, stored, and its question indexed for the semantic cache."""

    def store() -> None:
        answer = None
        if capture is not None:
            answer = capture.answer()
        elif isinstance(payload, bytes):
            answer = CachedAnswer.from_json(plan.kind, payload)
        if leads:
            cache.landed(plan.key, answer)
        if answer is None:
            return
        cache.put(plan.key, answer, plan.ttl, plan.model)
        if vector is not None and plan.semantic is not None:
            cache.semantic.remember(plan.model, plan.semantic, vector, plan.key, plan.ttl)

    return store


async def _answer(
    request: web.Request,
    exchange: Exchange,
    plan: CachePlan,
    answer: CachedAnswer,
    subjects: tuple[Subject, ...],
    tokens: tuple[int, int],
) -> web.StreamResponse:
    """A hit: admitted like any request (it counts against requests per minute, and against
    tokens only with cache.charge_hits), answered in the request's own format."""
    state = request.app[STATE]
    charged = state.config.cache.charge_hits
    await exchange.admit(subjects, *(tokens if charged else (0, 0)))
    exchange.answered_from_cache(answer.tokens, charged=charged)
    _, call = exchange.route
    headers = {
        "x-request-id": exchange.request_id,
        "x-citadel-model": plan.model,
        "x-citadel-backend": "cache",
    }
    if not call.stream:
        return web.Response(
            body=answer.json_body(plan.model), content_type="application/json", headers=headers
        )
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    put_exchange_headers(exchange, request, response)
    await response.prepare(request)
    exchange.first_byte_at = time.perf_counter()
    await response.write(answer.stream_body(plan.model, include_usage=call.add_usage))
    await response.write_eof()
    return response


async def _wait(flight: asyncio.Future[CachedAnswer | None], timeout: float) -> CachedAnswer | None:
    """The leader's answer, or None if it had none or took longer than `timeout` (then this
    request goes upstream itself). Shielded: a follower that leaves cancels nothing."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(flight)
    except TimeoutError:
        return None


def _bypass(state: GatewayState, exchange: Exchange, model: str | None) -> None:
    exchange.cache_status = BYPASS
    if model is not None and state.cache is not None:
        state.cache.metrics.lookups.labels(model, BYPASS).inc()


def _cache_control(request: web.Request) -> frozenset[str]:
    value = request.headers.get("cache-control")
    if not value:
        return frozenset()
    return frozenset(part.strip().lower() for part in value.split(",")[:16])


def _body(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
