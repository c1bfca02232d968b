"""A request's one exit (gateway.upstream.exchange): whatever the outcome, every effect of
the request's end happens exactly once, and says what happened.

Each case sends one request through a gateway with two replicas, a key with limits and a
usage ledger, then checks each effect at its source: the replicas' leases (none left, none
released twice, the right verdict), the router's in-flight and retry counts (back to zero,
no end without a start), the limiter's settlement (one, with the tokens really used), the
ledger's record (one, with the recorded status) and the request metric (one, in the right
status class).
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from structlog.testing import capture_logs

from actors.auth.keys import KeyScopes, new_key
from actors.backend.actor import BackendStats, GetStats
from actors.backend.breaker import BreakerSettings
from actors.backend.settings import BackendTimeouts
from actors.ledger.actor import LedgerSettings
from actors.router.actor import RoutingSettings
from actors.router.balancer import Policy
from actors.tree import LIMITER, ROUTER
from gateway.mock.faults import Fault
from gateway.process.config import AuthSettings, ConfiguredKey, LoggingSettings
from gateway.upstream import exchange as exchange_module
from gateway.upstream.exchange import _uuid4
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
    until,
)
from tests.gateway.test_ledger import rows

KEY_ID, KEY, SECRET_SHA256 = new_key()
SCOPES = KeyScopes(tpm=1_000_000, max_concurrent=10)
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "hello"}]
# Round robin: the first request goes to m#0, whose fault the case sets.
ROUTING = RoutingSettings(policy=Policy.WEIGHTED_ROUND_ROBIN)
NEVER_OPEN = BreakerSettings(consecutive_failures=10_000, minimum_requests=10_000)
QUICK = BackendTimeouts(connect=1.0, first_byte=0.5, idle=1.0, total=10.0)

Client = Callable[[aiohttp.ClientSession, str], Awaitable[tuple[int, bytes]]]


async def unary(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    body = {"model": "m", "messages": HELLO}
    async with http.post(url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        return response.status, await response.read()


async def stream_to_the_end(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    body = {"model": "m", "messages": HELLO, "stream": True}
    async with http.post(url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        return response.status, await response.read()


async def close_after_done(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """As the SDKs do: read up to [DONE] and drop the connection at once."""
    body = {
        "model": "m",
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        received = b""
        while b"data: [DONE]" not in received:
            chunk = await response.content.readany()
            assert chunk, "the stream ended before [DONE]"
            received += chunk
        response.close()
        return response.status, received


async def leave_after_first_event(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    body = {"model": "m", "messages": HELLO, "stream": True}
    async with http.post(url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        first = await response.content.readany()
        response.close()
        return response.status, first


@dataclass(frozen=True)
class Case:
    client: Client
    faults: tuple[Fault | None, Fault | None] = (None, None)
    mock: dict[str, Any] = field(default_factory=dict)
    answered: int = 200  # the status the client sees
    recorded: int = 200  # the status the ledger and metrics record
    verdicts: tuple[tuple[int, int], tuple[int, int]] = ((1, 0), (0, 0))  # (served, failed)
    tokens: str = "reported"  # what the limiter is settled with: reported, some, none
    tries: int = 1


CASES = {
    "success": Case(unary),
    "upstream 4xx": Case(
        unary, (Fault(mode="error", status=400), None), answered=400, recorded=400, tokens="none"
    ),
    "5xx then a retry": Case(
        unary,
        (Fault(mode="error", status=503), None),
        verdicts=((0, 1), (1, 0)),
        tries=2,  # a retry the budget granted
    ),
    "reset on both replicas": Case(
        unary,
        (Fault(mode="reset"), Fault(mode="reset")),
        answered=502,
        recorded=502,
        verdicts=((0, 1), (0, 1)),
        tokens="none",
        tries=2,  # a free retry: the replica was gone
    ),
    "timeout on both replicas": Case(
        unary,
        (Fault(mode="hang"), Fault(mode="hang")),
        answered=504,
        recorded=504,
        verdicts=((0, 1), (0, 1)),
        tokens="none",
        tries=2,  # a retry the budget granted
    ),
    "client gone mid-stream": Case(
        leave_after_first_event,
        mock={"length": 400, "tokens_per_s": 100},
        recorded=499,
        verdicts=((0, 0), (0, 0)),  # a client leaving says nothing about the replica
        tokens="some",
    ),
    "stream cut after its first byte": Case(
        stream_to_the_end,
        (Fault(mode="cut", after_chunks=3), None),
        recorded=502,
        verdicts=((0, 1), (0, 0)),
        tokens="some",
    ),
    "stream complete, client closing after [DONE]": Case(close_after_done),
}


async def stats(gw: Deployment, index: int) -> BackendStats:
    result: BackendStats = await gw.state.system.lookup(f"root/backends/m#{index}").ask(GetStats())
    return result


async def scrape(http: aiohttp.ClientSession, gw: Deployment, name: str) -> list[Sample]:
    """The samples of one metric, as a scrape of /metrics reads them."""
    async with http.get(gw.url + "/metrics") as response:
        text = await response.text()
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def requests_metric(http: aiohttp.ClientSession, gw: Deployment) -> dict[str, float]:
    """citadel_requests_total by status class, summed over models, backends and endpoints."""
    counts: dict[str, float] = {}
    for sample in await scrape(http, gw, "citadel_requests_total"):
        status = sample.labels["status"]
        counts[status] = counts.get(status, 0.0) + sample.value
    return counts


async def retries_metric(http: aiohttp.ClientSession, gw: Deployment) -> float:
    return sum(sample.value for sample in await scrape(http, gw, "citadel_retries_total"))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_every_effect_of_a_request_s_end_happens_once(case: Case, tmp_path: Path) -> None:
    ledger = tmp_path / "usage.sqlite3"
    plan = ModelPlan(
        "m", replicas=2, routing=ROUTING, breaker=NEVER_OPEN, timeouts=QUICK, mock=case.mock
    )
    auth = AuthSettings(
        admin_keys=(ADMIN_KEY,),
        keys=(ConfiguredKey(id=KEY_ID, secret_sha256=SECRET_SHA256, scopes=SCOPES),),
    )
    usage = LedgerSettings(path=str(ledger), flush_interval=0.05)
    async with bounded_client() as http:
        async with deployment([plan], auth=auth, usage=usage) as gw:
            for mock, fault in zip(gw.mocks["m"], case.faults, strict=True):
                if fault is not None:
                    mock.state.set_fault(fault)
            status, body = await case.client(http, gw.url)
            assert status == case.answered, body[:300]
            limiter = gw.state.system.lookup(LIMITER)
            router = gw.state.system.lookup(ROUTER)
            # The request's exit runs in the gateway's task for it, which may outlive the
            # client's side of the connection: wait for its settlement, then check it all.
            await until(lambda: limiter.snapshot().details["settled"] >= 1, passes=5_000_000)
            # The lease: none left, none released twice, and the verdict the outcome earns.
            for index, (served, failed) in enumerate(case.verdicts):
                replica = await stats(gw, index)
                assert replica.in_flight == 0, replica
                assert replica.stray_releases == 0, replica
                assert (replica.served, replica.failures) == (served, failed), replica
            # The route and the retry grant: ended once each.
            routing = router.snapshot().details
            assert routing["models"]["m"]["in_flight"] == 0
            assert routing["models"]["m"]["retrying"] == 0
            assert routing["unmatched_ends"] == 0
            # The limiter: settled once, the slot freed, the tokens the request used.
            limits = limiter.snapshot().details
            assert (limits["admitted"], limits["settled"]) == (1, 1)
            assert limits["in_flight"] == {}
            # The metric: one request, in the class it was recorded with.
            recorded_class = "499" if case.recorded == 499 else f"{case.recorded // 100}xx"
            assert await requests_metric(http, gw) == {recorded_class: 1.0}
            assert await retries_metric(http, gw) == case.tries - 1
        # The ledger's record, flushed by the gateway's stop: one, as recorded.
        records = rows(ledger)
        assert len(records) == 1
        record = records[0]
        assert record["status"] == case.recorded
        used = limits["tokens_used"]
        if case.tokens == "reported":
            assert record["prompt_tokens"] > 0
            assert record["completion_tokens"] > 0
            assert used == record["prompt_tokens"] + record["completion_tokens"]
        elif case.tokens == "some":
            assert used > 0  # the prompt's estimate and what was relayed before the end
        else:
            assert used == 0  # no completion, no charge


def test_the_gateways_own_ids_are_uuid4s_spelled_as_uuid_spells_them() -> None:
    seen = set()
    for _ in range(2000):
        own = _uuid4()
        parsed = uuid.UUID(own)
        assert str(parsed) == own  # lower-case hex, dashes where uuid puts them
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        seen.add(own)
    assert len(seen) == 2000


def raw_chat_request() -> bytes:
    """A unary chat completion with the harness's key, as bytes for a raw socket."""
    body = json.dumps({"model": "m", "messages": HELLO}).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json"
        b"\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


class _PeekingAccessLog:
    """Stands in for the access logger: when the exchange writes its line, it looks (without
    reading) at what the client's socket already holds."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.held: list[bytes] = []

    def info(self, event: str, **fields: Any) -> None:
        self.client.setblocking(False)  # a look never waits
        try:
            self.held.append(self.client.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            self.held.append(b"")


async def test_the_answer_reaches_the_client_before_the_exchange_s_bookkeeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settlement, metrics and the access log follow the answer onto the wire: at low load
    their time is time the client would otherwise wait."""
    request = raw_chat_request()
    async with deployment([ModelPlan("m")], logging=LoggingSettings(access_log=True)) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.setblocking(False)
            recorder = _PeekingAccessLog(client)
            monkeypatch.setattr(exchange_module, "access_log", recorder)
            await loop.sock_sendall(client, request)
            answer = b""
            async with asyncio.timeout(10):
                while b'"finish_reason"' not in answer or not answer.endswith(b"}"):
                    chunk = await loop.sock_recv(client, 1 << 16)
                    assert chunk, answer
                    answer += chunk
                await until(lambda: bool(recorder.held))
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert recorder.held == [answer]  # all of it, before the line was written


async def test_a_client_gone_before_its_whole_answer_is_recorded_as_499(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client hangs up while the replica thinks: its answer has nowhere to go, and the
    exchange says so (499), rather than a 200 nobody received."""
    request = raw_chat_request()
    plan = ModelPlan("m", mock={"ttft": 0.3})
    async with deployment([plan], logging=LoggingSettings(access_log=True)) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        lines: list[dict[str, Any]] = []
        monkeypatch.setattr(exchange_module.access_log, "info", lambda _, **kw: lines.append(kw))
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            await writer.drain()
            await until(lambda: gw.mocks["m"][0].state.arrivals > 0, passes=5_000_000)
            writer.transport.abort()  # gone, with the replica still thinking
            await until(lambda: bool(lines), passes=50_000_000)
    assert [line["status"] for line in lines] == [499]


async def test_an_answer_that_cannot_be_sent_is_recorded_as_499_not_as_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client's socket breaks as its whole answer is written (the write raises, as
    aiohttp's does on a connection reset): recorded as a client gone (499), with no server
    error logged and no 500 attempted on the broken connection."""
    write_eof = web.StreamResponse.write_eof
    broken: list[web.StreamResponse] = []

    async def breaking_write_eof(response: web.StreamResponse, data: bytes = b"") -> None:
        if "x-citadel-model" in response.headers and not broken:  # the gateway's answer
            broken.append(response)
            request = response._req
            assert request is not None
            assert request.transport is not None
            request.transport.abort()  # as the peer's reset leaves it
            raise ConnectionResetError("Connection reset by peer")
        await write_eof(response, data)

    monkeypatch.setattr(web.StreamResponse, "write_eof", breaking_write_eof)
    async with deployment([ModelPlan("m")], logging=LoggingSettings(access_log=True)) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        lines: list[dict[str, Any]] = []
        monkeypatch.setattr(exchange_module.access_log, "info", lambda _, **kw: lines.append(kw))
        with capture_logs() as logged:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(raw_chat_request())
                await writer.drain()
                await reader.read()  # to EOF: the gateway closed the broken connection
                writer.close()
                await until(lambda: bool(lines), passes=5_000_000)
    assert broken
    assert [line["status"] for line in lines] == [499]
    assert not [entry for entry in logged if entry["log_level"] in ("error", "warning")]
