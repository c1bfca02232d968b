"""What real model servers showed (tests/real), on the mock service that learnt each quirk:
request ids, blame for failures a request causes, validation at the edge, the context window,
usage a server never reports, stream outcomes recorded truthfully, and backend kinds."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from actors.backend.actor import BackendStats, GetStats
from actors.backend.breaker import BreakerSettings
from actors.backend.probe import HealthSettings
from actors.router.actor import RoutingSettings
from actors.router.balancer import Policy
from gateway.mock.faults import Fault
from gateway.process.observability import BufferedLineLogger
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, deployment, until
from tests.gateway.test_metrics import scrape

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
TIMEOUT = aiohttp.ClientTimeout(total=30)
# A breaker that would open at the second failure in a row: any failure wrongly blamed on a
# replica shows at once.
TOUCHY = BreakerSettings(consecutive_failures=2, ejection=60.0)
PY = {"flavor": "llama-cpp-python", "ttft": 0.0}


async def stats(gw: Deployment, index: int, model: str = "m") -> BackendStats:
    ref = gw.state.system.lookup(f"root/backends/{model}#{index}")
    result: BackendStats = await ref.ask(GetStats())
    return result


async def post(
    http: aiohttp.ClientSession,
    gw: Deployment,
    body: dict[str, Any],
    path: str = "chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any] | bytes]:
    async with http.post(
        f"{gw.url}/v1/{path}", json=body, headers={**AUTH, **(headers or {})}
    ) as response:
        raw = await response.read()
        if response.content_type == "application/json":
            return response.status, json.loads(raw)
        return response.status, raw


async def test_no_client_request_id_reaches_a_server_that_accepts_only_uuids(
    http: aiohttp.ClientSession,
) -> None:
    """llama-cpp-python answers a non-UUID X-Request-ID with a bare 400: every request
    failed in front of it. The client keeps its own id; the server gets a UUID."""
    async with deployment([ModelPlan("m", mock=PY)]) as gw:
        for sent in ("req-123", "a" * 128, None):
            headers = {"X-Request-ID": sent} if sent else {}
            async with http.post(
                gw.url + "/v1/chat/completions",
                json={"model": "m", "messages": HELLO},
                headers={**AUTH, **headers},
            ) as response:
                assert response.status == 200, await response.text()
                echoed = response.headers["x-request-id"]
            upstream = gw.mocks["m"][0].state.request_ids[-1]
            assert upstream is not None
            assert uuid.UUID(upstream).version == 4
            assert echoed == (sent or upstream)


@pytest.mark.parametrize(("mode", "expected"), [("forward", "req-123"), ("none", None)])
async def test_a_backend_may_forward_the_clients_id_or_none(
    http: aiohttp.ClientSession, mode: str, expected: str | None
) -> None:
    async with deployment([ModelPlan("m", backend={"request_id": mode})]) as gw:
        status, _ = await post(
            http, gw, {"model": "m", "messages": HELLO}, headers={"X-Request-ID": "req-123"}
        )
        assert status == 200
        assert gw.mocks["m"][0].state.request_ids[-1] == expected


MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"top_k": "x"}, "top_k"),
    ({"stop": 5}, "stop"),
    ({"seed": "abc"}, "seed"),
    ({"logit_bias": {"abc": "x"}}, "logit_bias.abc"),
    ({"logit_bias": {"abc": 5}}, "logit_bias"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"temperature": "0.5"}, "temperature"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"logprobs": 3}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"user": 7}, "user"),
    ({"metadata": {"a": 1}}, "metadata.a"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
]


@pytest.mark.parametrize(("extra", "param"), MALFORMED)
async def test_every_standard_field_is_checked_at_the_edge(
    http: aiohttp.ClientSession, extra: dict[str, Any], param: str
) -> None:
    async with deployment([ModelPlan("m", mock=PY)]) as gw:
        status, body = await post(http, gw, {"model": "m", "messages": HELLO, **extra})
        assert status == 400
        assert isinstance(body, dict)
        assert body["error"]["type"] == "invalid_request_error"
        assert (body["error"]["param"] or "").startswith(param), body
        assert gw.mocks["m"][0].state.stats.requests == 0  # never reached the server


async def test_unknown_extra_fields_still_pass_and_valid_typed_ones_too(
    http: aiohttp.ClientSession,
) -> None:
    async with deployment([ModelPlan("m")]) as gw:
        extra = {
            "top_k": 40,
            "stop": ["\n"],
            "seed": 7,
            "logit_bias": {"50256": -100},
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}}},
            "guided_choice": ["yes", "no"],
            "metadata": {"team": "search"},
        }
        status, _ = await post(http, gw, {"model": "m", "messages": HELLO, **extra})
        assert status == 200
        assert gw.mocks["m"][0].state.stats.last_body["guided_choice"] == ["yes", "no"]


async def test_a_storm_of_requests_that_make_servers_fail_ejects_no_replica(
    http: aiohttp.ClientSession,
) -> None:
    """Embeddings to a chat-only llama-cpp-python model get a 500 from every replica, the
    same one: the request's fault. A breaker that opens at two failures stays closed."""
    plan = ModelPlan("m", replicas=2, mock=PY, breaker=TOUCHY, backend={"kind": "vllm"})
    async with deployment([plan]) as gw:
        for _ in range(20):
            status, body = await post(http, gw, {"model": "m", "input": "x"}, "embeddings")
            assert status == 502
            assert isinstance(body, dict)
            assert "the same way" in body["error"]["message"]
        for index in (0, 1):
            replica = await stats(gw, index)
            assert replica.circuit == "closed"
            assert replica.failures == 0
            assert replica.in_flight == 0
        # Retried once each, never more.
        assert sum(mock.state.stats.requests for mock in gw.mocks["m"]) == 40
        status, _ = await post(http, gw, {"model": "m", "messages": HELLO})
        assert status == 200
        async with http.get(gw.url + "/health/ready") as ready:
            assert ready.status == 200


async def test_a_replica_that_fails_what_another_serves_is_blamed(
    http: aiohttp.ClientSession,
) -> None:
    # Round robin: the broken replica keeps being tried first every other request (p2c would
    # soon avoid it, and leave its failures to chance).
    routing = RoutingSettings(policy=Policy.WEIGHTED_ROUND_ROBIN)
    plan = ModelPlan("m", replicas=2, breaker=TOUCHY, routing=routing)
    async with deployment([plan]) as gw:
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=500))
        for _ in range(8):
            status, _ = await post(http, gw, {"model": "m", "messages": HELLO})
            assert status == 200
        broken = await stats(gw, 0)
        assert broken.failures == 2  # judged by the second opinion, then ejected
        assert broken.circuit == "open"
        # The failures did not make its latency estimate grow past the default.
        assert broken.latency_s <= 1.0


async def test_a_single_replica_that_fails_is_blamed_with_no_second_opinion(
    http: aiohttp.ClientSession,
) -> None:
    async with deployment([ModelPlan("m", breaker=TOUCHY)]) as gw:
        gw.mocks["m"][0].state.set_fault(Fault(mode="error", status=500))
        for _ in range(2):
            status, _ = await post(http, gw, {"model": "m", "messages": HELLO})
            assert status == 502
        assert (await stats(gw, 0)).circuit == "open"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_the_window_is_refused_before_any_server_sees_it(
    http: aiohttp.ClientSession, stream: bool
) -> None:
    async with deployment([ModelPlan("m", context_window=100, mock=PY)]) as gw:
        long = [{"role": "user", "content": "word " * 400}]
        status, body = await post(http, gw, {"model": "m", "messages": long, "stream": stream})
        assert status == 400
        assert isinstance(body, dict)
        assert body["error"]["code"] == "context_length_exceeded"
        assert body["error"]["param"] == "messages"
        assert gw.mocks["m"][0].state.stats.requests == 0


async def test_an_empty_stream_for_a_prompt_near_the_window_is_the_requests_fault(
    http: aiohttp.ClientSession,
) -> None:
    """llama-cpp-python answers a streamed prompt over its window with a 200 and no body.
    Five in a row once took the only replica offline."""
    plan = ModelPlan(
        "m", context_window=100, mock={**PY, "context_window": 60}, breaker=TOUCHY
    )  # the server's window is smaller than the gateway was told
    async with deployment([plan]) as gw:
        long = [{"role": "user", "content": "word " * 60}]  # ~79 tokens by the estimate
        for _ in range(5):
            status, body = await post(http, gw, {"model": "m", "messages": long, "stream": True})
            assert status == 400
            assert isinstance(body, dict)
            assert body["error"]["code"] == "context_length_exceeded"
        assert (await stats(gw, 0)).circuit == "closed"


async def test_an_upstream_context_error_keeps_its_meaning(http: aiohttp.ClientSession) -> None:
    plan = ModelPlan(
        "m", context_window=1000, mock={"flavor": "llama-server", "context_window": 60}
    )
    async with deployment([plan]) as gw:
        long = [{"role": "user", "content": "word " * 60}]
        status, body = await post(http, gw, {"model": "m", "messages": long})
        assert status == 400
        assert isinstance(body, dict)
        assert body["error"]["code"] == "context_length_exceeded"
        assert body["error"]["param"] == "messages"
        assert "exceeds the available context size" in body["error"]["message"]


async def test_n_above_one_is_refused_where_the_server_would_ignore_it(
    http: aiohttp.ClientSession,
) -> None:
    plan = ModelPlan("m", mock=PY, backend={"kind": "llama-cpp-python"})
    async with deployment([plan]) as gw:
        status, body = await post(http, gw, {"model": "m", "messages": HELLO, "n": 3})
        assert status == 400
        assert isinstance(body, dict)
        assert body["error"]["param"] == "n"
        assert gw.mocks["m"][0].state.stats.requests == 0


async def test_usage_is_counted_when_the_server_reports_none() -> None:
    plan = ModelPlan("m", mock=PY, backend={"kind": "llama-cpp-python"})
    async with (
        deployment([plan]) as gw,
        openai.AsyncOpenAI(
            base_url=f"{gw.url}/v1", api_key=API_KEY, max_retries=0, timeout=30
        ) as client,
    ):
        stream = await client.chat.completions.create(
            model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == 16  # the mock's 16 tokens, one an event
        assert usage.prompt_tokens > 0
        assert chunks[-1].model == "m"
        plain = await client.chat.completions.create(model="m", messages=HELLO, stream=True)
        assert [chunk async for chunk in plain if chunk.usage is not None] == []
        metrics = await scrape(gw)
        completion = (
            "citadel_tokens_total",
            (("key", "static-0"), ("kind", "completion"), ("model", "m"), ("source", "estimated")),
        )
        assert metrics[completion] == 32.0


async def test_a_stream_read_to_its_end_is_a_success_even_if_the_client_closes_at_once() -> None:
    """The SDKs close the connection right after [DONE]; the gateway recorded a quarter of
    such streams as 499. The upstream ends its body a little after [DONE], so the client is
    gone by the time the gateway ends its own."""
    async with deployment([ModelPlan("m", mock={"ttft": 0.0, "linger": 0.05})]) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "m", "messages": HELLO, "stream": True}).encode()
        for _ in range(10):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            seen = b""
            async with asyncio.timeout(10):
                while b"data: [DONE]" not in seen:
                    seen += await reader.read(65536)
            writer.transport.abort()  # gone the moment [DONE] arrived
        metrics = await scrape(gw)
        by_status = {
            dict(labels)["status"]: value
            for (name, labels), value in metrics.items()
            if name == "citadel_requests_total"
        }
        assert by_status == {"2xx": 10.0}


async def test_a_stream_cut_after_its_first_byte_is_recorded_as_a_failure(
    http: aiohttp.ClientSession,
) -> None:
    async with deployment([ModelPlan("m")]) as gw:
        gw.mocks["m"][0].state.set_fault(Fault(mode="cut", after_chunks=2))
        status, raw = await post(http, gw, {"model": "m", "messages": HELLO, "stream": True})
        assert status == 200
        assert isinstance(raw, bytes)
        assert b"ended the stream before it was complete" in raw
        metrics = await scrape(gw)
        key = (
            "citadel_requests_total",
            (
                ("backend", "m#0"),
                ("endpoint", "/v1/chat/completions"),
                ("model", "m"),
                ("status", "5xx"),
            ),
        )
        assert metrics[key] == 1.0


async def test_a_stream_interrupted_without_an_answer_is_reported(
    http: aiohttp.ClientSession,
) -> None:
    """llama-cpp-python with interrupt_requests ends a running stream with [DONE] and no
    finish reason when another request arrives."""
    mock = {**PY, "interrupt_requests": True}
    async with deployment([ModelPlan("m", mock=mock, max_in_flight=8)]) as gw:
        upstream = gw.mocks["m"][0].state
        upstream.token_gate = asyncio.Semaphore(0)
        body = {"model": "m", "messages": HELLO, "stream": True}
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as first:
            assert first.status == 200
            await first.content.readany()  # the role chunk: past the first byte
            second = asyncio.ensure_future(post(http, gw, {"model": "m", "messages": HELLO}))
            await until(lambda: upstream.arrivals == 2)
            upstream.token_gate.release()
            rest = await first.content.read()
            upstream.token_gate = None
            assert (await second)[0] == 200
        assert b"without an answer" in rest
        assert b"[DONE]" not in rest
        metrics = await scrape(gw)
        assert metrics[("citadel_upstream_incomplete_streams_total", (("backend", "m#0"),))] == 1
        assert (await stats(gw, 0)).failures == 0  # not held against the replica


async def test_llama_cpp_python_is_probed_where_it_answers_and_a_failed_probe_says_why(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    probes = HealthSettings(interval=0.02, jitter=0.1, healthy_threshold=1, unhealthy_threshold=1)
    plans = [
        ModelPlan("right", mock=PY, health=probes, backend={"kind": "llama-cpp-python"}),
        ModelPlan("wrong", mock=PY, health=probes),  # probed on /health, which it lacks
    ]
    async with deployment(plans) as gw, asyncio.timeout(30):
        await gw.mocks["right"][0].state.wait_health_checks(3)
        await until(lambda: not gw.state.layout.current.loads["wrong#0"].healthy)
        assert gw.state.layout.current.loads["right#0"].healthy
    production_logging.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line[:1] == "{"]
    unhealthy = [line for line in lines if line.get("event") == "backend_unhealthy"]
    assert unhealthy == [
        {**unhealthy[0], "backend": "wrong#0", "probe": "/health", "failure": "HTTP 404"}
    ]


async def test_429_carries_the_rate_limit_headers(tmp_path: Any) -> None:
    from tests.gateway.test_limits import limited_gateway

    async with (
        limited_gateway(tmp_path, {"rpm": 1}) as (server, _, key),
        aiohttp.ClientSession(timeout=TIMEOUT) as http,
    ):
        body = {"model": "m", "messages": HELLO}
        headers = {"Authorization": f"Bearer {key}"}
        async with http.post(server.url + "/v1/chat/completions", json=body, headers=headers) as ok:
            assert ok.status == 200
        url = server.url + "/v1/chat/completions"
        async with http.post(url, json=body, headers=headers) as refused:
            assert refused.status == 429
            assert refused.headers["x-ratelimit-limit-requests"] == "1"
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
