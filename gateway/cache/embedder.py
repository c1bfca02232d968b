"""Embeddings for the semantic cache, from one of the gateway's own models (one that serves
`/v1/embeddings`), through the same router and replicas as any request.

The embedding call is a sub-request of the request being looked up: it is routed (counted in
flight), takes a lease on a replica and gives both back in its own `finally`, the one place
besides the Exchange that does, because it is not a client's request (no admission, no
ledger record, no access log line of its own). It has a deadline; any failure is None, and
the request goes on as if uncached.
"""

from __future__ import annotations

import json
import math
import time

from actors.backend.actor import AcquireLease, Lease, Outcome, Release
from actors.backend.pool import ConnectFailed, UpstreamClientError
from actors.kernel import ActorDead, ActorRef, AskTimeout, MailboxFull
from actors.router.actor import RequestEnded, Route, UnknownModel

# What asking the router or a replica can raise: a restarting or stopped actor, a full
# mailbox, no answer in time, a model the configuration does not have.
ASK_ERRORS = (ActorDead, MailboxFull, AskTimeout, UnknownModel, TimeoutError)


async def embed(router: ActorRef, model: str, text: str, deadline: float) -> list[float] | None:
    """The unit vector of `text` by `model`, or None (no replica, an error, past
    `deadline` seconds)."""
    started = time.monotonic()
    try:
        decision = await router.ask(Route(model), timeout=deadline)
    except ASK_ERRORS:
        return None
    try:
        for replica in decision.candidates:
            remaining = deadline - (time.monotonic() - started)
            if remaining <= 0:
                return None
            try:
                lease = await replica.ask(AcquireLease(decision.panic), timeout=remaining)
            except ASK_ERRORS:
                continue
            if lease is None:
                continue
            outcome, vector = Outcome.UPSTREAM_ERROR, None
            began = time.monotonic()
            try:
                vector, outcome = await _post(lease, text, remaining)
            finally:
                lease.ref.notify(Release(lease.lease_id, outcome, time.monotonic() - began, None))
            if vector is not None:
                return vector
        return None
    finally:
        router.notify(RequestEnded(decision.model))


async def _post(lease: Lease, text: str, remaining: float) -> tuple[list[float] | None, Outcome]:
    body = json.dumps({"model": lease.upstream_model, "input": text}).encode()
    headers = {**lease.headers, "Content-Type": "application/json"}
    try:
        response = await lease.pool.post("/v1/embeddings", headers, body, remaining)
        try:
            payload = await response.read()
        finally:
            response.release()
        status = response.status
    except TimeoutError:
        return None, Outcome.TIMEOUT
    except ConnectFailed:
        return None, Outcome.CONNECT_ERROR
    except UpstreamClientError:
        return None, Outcome.CONNECTION_LOST
    if status != 200:
        return None, Outcome.REJECTED if 400 <= status < 500 else Outcome.UPSTREAM_ERROR
    vector = _vector_of(payload)
    return vector, Outcome.OK if vector is not None else Outcome.UPSTREAM_ERROR


def _vector_of(payload: bytes) -> list[float] | None:
    """The first embedding of an OpenAI embeddings answer, normalised to unit length."""
    try:
        data = json.loads(payload)["data"][0]["embedding"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(data, list) or not data or not all(type(x) in (int, float) for x in data):
        return None
    norm = math.sqrt(sum(x * x for x in data))
    if not norm or not math.isfinite(norm):
        return None
    return [x / norm for x in data]
