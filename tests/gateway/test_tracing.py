"""OpenTelemetry traces against a real OTLP/HTTP receiver (an HTTP server here that decodes
the exported protobuf): the span tree of a streamed request with one failed try and one retry
is exactly as documented; the client's traceparent is the parent and the model service gets
the try's; the trace id is in the request's log lines and, when asked, in a header; an
unreachable collector costs the requests nothing but a counter."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from gateway.mock.faults import Fault
from gateway.process.config import LoggingSettings
from gateway.process.observability import BufferedLineLogger
from gateway.process.server import start_server
from gateway.tracing.settings import TracingSettings
from tests.gateway.harness import (
    API_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)
from tests.gateway.redis_harness import free_port
from tests.gateway.test_metrics import scrape

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "trace me"}]


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it is sent, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []

    async def handle(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(service, span) for span in scope_spans.spans]
        return web.Response(content_type="application/x-protobuf")

    def of(self, trace_id: str) -> list[Span]:
        return [span for _, span in self.spans if span.trace_id.hex() == trace_id]


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.handle)
    server = await start_server(app, "127.0.0.1", 0)
    try:
        yield found, f"{server.url}/v1/traces"
    finally:
        await server.close()


def traced(endpoint: str, **extra: Any) -> TracingSettings:
    return TracingSettings(enabled=True, endpoint=endpoint, export_interval=0.05, **extra)


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute in span.attributes:
        value = attribute.value
        out[attribute.key] = (
            value.string_value if value.HasField("string_value")
            else value.int_value if value.HasField("int_value")
            else value.bool_value
        )  # fmt: skip
    return out


async def streamed(gw: Deployment, traceparent: str) -> str:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S,
        default_headers={"traceparent": traceparent},
    ) as client:  # fmt: skip
        stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def spans_of(found: Receiver, trace_id: str) -> list[Span]:
    """The trace's spans, once its request span has come: it ends last (after its steps and
    tries), and spans are exported in the order they end."""
    async with asyncio.timeout(10):
        while not any(  # noqa: ASYNC110 - another thread exports
            span.kind == Span.SPAN_KIND_SERVER for span in found.of(trace_id)
        ):
            await asyncio.sleep(0.02)
    return found.of(trace_id)


async def test_a_streamed_request_with_a_failed_try_and_a_retry_is_one_span_tree(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    plans = [ModelPlan("m", replicas=2, mock={"ttft": 0.0})]
    async with receiver() as (found, endpoint), deployment(
        plans, tracing=traced(endpoint), logging=LoggingSettings(access_log=True)
    ) as gw:  # fmt: skip
        first = gw.mocks["m"][0].state
        for _ in range(30):  # until the failing replica is the one tried first
            first.set_fault(Fault(mode="error", status=503, count=1))
            trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
            assert await streamed(gw, f"00-{trace_id}-{parent}-01")
            spans = await spans_of(found, trace_id)
            if sum(span.name.startswith("upstream ") for span in spans) == 2:
                break
        else:
            raise AssertionError("the failing replica was never tried first")
        upstream_traceparent = gw.mocks["m"][1].state.stats.last_headers["traceparent"]
    by_name = {span.name: span for span in spans}
    root = by_name["POST /v1/chat/completions"]
    assert root.parent_span_id.hex() == parent  # the client's span is the parent
    assert root.kind == Span.SPAN_KIND_SERVER
    assert sorted(span.name for span in spans if span.parent_span_id == root.span_id) == [
        "admit", "authenticate", "route", "upstream m#0", "upstream m#1"
    ]  # fmt: skip
    assert len(spans) == 6  # the root and its five children, nothing else
    failed, retried = by_name["upstream m#0"], by_name["upstream m#1"]
    assert failed.kind == retried.kind == Span.SPAN_KIND_CLIENT
    assert attributes(failed)["citadel.outcome"] == "upstream_error"
    assert attributes(failed)["http.response.status_code"] == 503
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert attributes(retried)["citadel.outcome"] == "ok"
    assert attributes(retried)["citadel.retry_reason"] == "upstream_error"
    assert attributes(retried)["citadel.try"] == 2
    assert [event.name for event in retried.events] == ["gen_ai.first_token", "stream.end"]
    assert failed.end_time_unix_nano <= retried.start_time_unix_nano
    assert [event.name for event in root.events] == ["gen_ai.first_token"]
    root_attributes = attributes(root)
    assert root_attributes["http.response.status_code"] == 200
    assert root_attributes["gen_ai.operation.name"] == "chat"
    assert root_attributes["gen_ai.request.model"] == "m"
    assert root_attributes["gen_ai.response.model"] == "m"
    assert root_attributes["gen_ai.usage.output_tokens"] > 0
    # The model service was sent the retried try's own span as its parent.
    assert upstream_traceparent == f"00-{trace_id}-{retried.span_id.hex()}-01"
    production_logging.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line[:1] == "{"]
    mine = [line for line in lines if line.get("trace_id") == trace_id]
    assert {line["event"] for line in mine} >= {"request", "request_retried"}


async def test_the_trace_id_header_on_request_and_unsampled_traces_still_propagate() -> None:
    plans = [ModelPlan("m", mock={"ttft": 0.0})]
    async with receiver() as (found, endpoint), deployment(
        plans, tracing=traced(endpoint, sampling_ratio=0.0)
    ) as gw:  # fmt: skip
        async with openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=CHAT, extra_headers={"x-citadel-trace": "true"}
            )
            trace_id = raw.headers["x-citadel-trace-id"]
            plain = await client.chat.completions.with_raw_response.create(model="m", messages=CHAT)
            assert "x-citadel-trace-id" not in plain.headers
        sent = gw.mocks["m"][0].state.stats.last_headers["traceparent"]
        flags = int(sent.rsplit("-", 1)[1], 16)
        assert flags & 1 == 0  # not sampled, and the model service is told so
        await asyncio.sleep(0.3)
        assert found.of(trace_id) == []
    assert len(trace_id) == 32


async def test_an_unreachable_collector_costs_nothing_but_a_counter() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/v1/traces"
    plans = [ModelPlan("m", mock={"ttft": 0.0})]
    async with deployment(plans, tracing=traced(nowhere, export_timeout=0.5)) as gw:
        async with openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
        ) as client:
            for _ in range(5):
                await client.chat.completions.create(model="m", messages=CHAT)
        async with asyncio.timeout(10):
            while True:
                exported = {
                    dict(labels)["result"]: value
                    for (name, labels), value in (await scrape(gw)).items()
                    if name == "citadel_trace_exports_total"
                }
                if exported.get("failed", 0) >= 1:
                    break
                await asyncio.sleep(0.1)
    assert exported.get("ok", 0) == 0


async def test_probes_and_scrapes_are_not_traced() -> None:
    plans = [ModelPlan("m", mock={"ttft": 0.0})]
    async with receiver() as (found, endpoint), deployment(plans, tracing=traced(endpoint)) as gw:
        async with bounded_client() as http:
            for path in ("/health/live", "/health/ready", "/metrics"):
                async with http.get(gw.url + path) as response:
                    assert response.status == 200
        async with openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
        ) as client:
            await client.chat.completions.create(model="m", messages=CHAT)
        async with asyncio.timeout(10):
            while not found.spans:  # noqa: ASYNC110 - another thread exports
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    assert {span.name for _, span in found.spans} >= {"POST /v1/chat/completions"}
    assert not [s for _, s in found.spans if s.name.startswith("GET ")]


async def test_each_access_line_carries_its_own_request_s_trace_id(
    production_logging: BufferedLineLogger, capfd: pytest.CaptureFixture[str]
) -> None:
    """The exits' records are written a loop turn later, many at once
    (gateway.upstream.exits): each line still in its own request's context, and a probe's
    (untraced) with no trace id, not a neighbour's."""
    plans = [ModelPlan("m", mock={"ttft": 0.0})]
    sent = {f"traced-{i}-{secrets.token_hex(4)}": secrets.token_hex(16) for i in range(24)}
    probes = {f"probe-{i}-{secrets.token_hex(4)}" for i in range(12)}
    logging = LoggingSettings(access_log=True)
    async with (
        receiver() as (_, endpoint),
        deployment(plans, tracing=traced(endpoint), logging=logging) as gw,
        openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=READ_TIMEOUT_S
        ) as client,
        bounded_client() as http,
    ):

        async def chat(request_id: str, trace_id: str) -> None:
            traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
            headers = {"traceparent": traceparent, "x-request-id": request_id}
            await client.chat.completions.create(model="m", messages=CHAT, extra_headers=headers)

        async def probe(request_id: str) -> None:
            headers = {"x-request-id": request_id}
            async with http.get(gw.url + "/health/live", headers=headers) as response:
                assert response.status == 200

        await asyncio.gather(
            *(chat(request_id, trace_id) for request_id, trace_id in sent.items()),
            *(probe(request_id) for request_id in probes),
        )
    production_logging.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line[:1] == "{"]
    access = {line["request_id"]: line for line in lines if line.get("event") == "request"}
    assert {rid: access[rid].get("trace_id") for rid in sent} == sent
    assert [access[rid].get("trace_id") for rid in probes] == [None] * len(probes)
