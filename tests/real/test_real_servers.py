"""The gateway in front of real model servers (llama-cpp-python's and llama.cpp's
llama-server, serving SmolLM2-135M), with the official SDK as the client: what a new user
tried first, what an attacker's malformed requests did to the replicas, and what a crash or
a departing client does."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from actors.backend.actor import BackendStats, GetStats
from gateway.http.state import STATE
from gateway.process.server import RunningServer, start_gateway
from ops.real_servers.processes import RealServer, start
from tests.gateway.test_metrics import samples
from tests.real.conftest import KEY, LIMITED_KEY, Fleet, gateway_config, model

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
MODELS = ("smol-py", "smol-cpp")
TIMEOUT = aiohttp.ClientTimeout(total=120)
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def client(gateway: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=120
    ) as sdk:
        yield sdk


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def replicas(gateway: RunningServer) -> list[BackendStats]:
    state = gateway.runner.app[STATE]
    found = []
    for name in state.layout.current.replicas:
        found.append(await state.system.lookup(f"root/backends/{name}").ask(GetStats()))
    return found


@pytest.mark.parametrize("name", MODELS)
async def test_sdk_chat_answers_and_streams_with_public_names_and_usage(
    client: openai.AsyncOpenAI, name: str
) -> None:
    """Every request failed in front of llama-cpp-python: the gateway's request id is not a
    UUID, and that server refuses any other. A client's own id must not break it either."""
    answer = await client.chat.completions.create(
        model=name, messages=HELLO, max_tokens=8, extra_headers={"X-Request-ID": "req-123"}
    )
    assert answer.model == name
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    stream = await client.chat.completions.create(
        model=name,
        messages=HELLO,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Request-ID": "req-124"},
    )
    chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {name}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens > 0
    assert usage.prompt_tokens > 0


@pytest.mark.parametrize("name", MODELS)
async def test_sdk_text_completions(client: openai.AsyncOpenAI, name: str) -> None:
    answer = await client.completions.create(model=name, prompt="Once upon a time", max_tokens=8)
    assert answer.model == name
    assert answer.choices[0].text
    stream = await client.completions.create(
        model=name, prompt="Once upon a time", max_tokens=8, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert {chunk.model for chunk in chunks} == {name}
    assert "".join(c.choices[0].text for c in chunks if c.choices)


async def test_models_list_and_auto(client: openai.AsyncOpenAI) -> None:
    listed = {m.id async for m in client.models.list()}
    assert listed == {"smol-py", "smol-cpp", "auto"}
    raw = await client.chat.completions.with_raw_response.create(
        model="auto", messages=HELLO, max_tokens=4
    )
    answer = raw.parse()
    assert answer.model in MODELS
    assert raw.headers["x-citadel-model"] == answer.model


async def test_usage_reaches_the_ledger_and_metrics_reported_or_estimated(
    fleet: Fleet, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """llama-cpp-python never reports a stream's usage: 122 streams went into the ledger as
    0/0 tokens. Now the gateway counts them, and says they are estimates."""
    config = gateway_config(
        [model("smol-py", fleet.python), model("smol-cpp", fleet.cpp)], tmp_path
    )
    server = await start_gateway(config)
    try:
        for name in MODELS:
            body = {"model": name, "messages": HELLO, "max_tokens": 6, "stream": True}
            async with http.post(server.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                assert r.status == 200
                assert b"data: [DONE]" in await r.read()
        async with http.get(server.url + "/metrics") as scraped:
            metrics = samples(await scraped.text())
    finally:
        await server.close()  # flushes the ledger
    completion = {
        labels: value
        for (name, labels), value in metrics.items()
        if name == "citadel_tokens_total" and ("kind", "completion") in labels
    }
    by_model = {
        dict(labels)["model"]: (dict(labels)["source"], v) for labels, v in completion.items()
    }
    assert by_model["smol-py"][0] == "estimated"
    assert by_model["smol-py"][1] > 0
    assert by_model["smol-cpp"][0] == "reported"
    assert by_model["smol-cpp"][1] > 0
    with sqlite3.connect(tmp_path / "usage.db") as db:
        rows = db.execute(
            "SELECT model, prompt_tokens, completion_tokens, usage_estimated, status FROM usage"
        ).fetchall()
    assert sorted((m, e, s) for m, _, _, e, s in rows) == [
        ("smol-cpp", 0, 200),
        ("smol-py", 1, 200),
    ]
    assert all(prompt > 0 and completion > 0 for _, prompt, completion, _, _ in rows)


def malformed_requests() -> list[tuple[str, dict[str, Any]]]:
    """Every kind of bad request that once failed a real server (500s from
    llama-cpp-python, which opened both circuits), for both models."""
    chat = {"messages": HELLO, "max_tokens": 2}
    over = [{"role": "user", "content": "x " * 5000}]
    bodies: list[tuple[str, dict[str, Any]]] = []
    for name in MODELS:
        base = {**chat, "model": name}
        bodies += [
            ("chat/completions", {**base, "top_k": "x"}),
            ("chat/completions", {**base, "stop": 5}),
            ("chat/completions", {**base, "seed": "abc"}),
            ("chat/completions", {**base, "logit_bias": {"abc": "x"}}),
            ("chat/completions", {**base, "response_format": {"type": "json_schema"}}),
            ("chat/completions", {**base, "n": 5}),
            ("chat/completions", {**base, "grammar": 5}),  # an extra the gateway passes on
            ("chat/completions", {**base, "messages": over}),
            ("chat/completions", {**base, "messages": over, "stream": True}),
            ("embeddings", {"model": name, "input": "hello"}),
        ]
    return bodies


async def test_a_storm_of_malformed_requests_ejects_no_replica(
    gateway: RunningServer, http: aiohttp.ClientSession
) -> None:
    kinds = malformed_requests()
    statuses: dict[int, int] = {}
    for index in range(200):
        path, body = kinds[index % len(kinds)]
        async with http.post(f"{gateway.url}/v1/{path}", json=body, headers=AUTH) as response:
            assert response.content_type == "application/json"
            answer = await response.json()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 200:  # a server may accept what it does not know
                assert body.get("grammar") == 5, body
                continue
            message = answer["error"]["message"]
            assert "Traceback" not in message
            assert 'File "' not in message
    assert set(statuses) <= {200, 400, 502}, statuses
    for replica in await replicas(gateway):
        assert replica.circuit == "closed", replica
        assert replica.healthy, replica
    async with http.get(gateway.url + "/health/ready") as ready:
        assert ready.status == 200
    for name in MODELS:  # valid requests succeed at once
        body = {"model": name, "messages": HELLO, "max_tokens": 2}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 200


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("stream", [False, True])
async def test_prompts_over_the_window_are_refused_with_context_length_exceeded(
    gateway: RunningServer, http: aiohttp.ClientSession, name: str, stream: bool
) -> None:
    # Refused at the edge: the estimate alone is over the window.
    long = [{"role": "user", "content": "hello world " * 3000}]
    # Over the window on the server though the estimate fits: ~1,130 estimated tokens,
    # several thousand real ones. The server's own refusal (llama-cpp-python: an empty
    # stream) reaches the client as OpenAI's error.
    emoji = [{"role": "user", "content": "\U0001f600" * 4500}]
    for messages in (long, emoji):
        body = {"model": name, "messages": messages, "max_tokens": 4, "stream": stream}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status == 400
            error = (await r.json())["error"]
            assert error["code"] == "context_length_exceeded", error
            assert error["param"] == "messages"
    for replica in await replicas(gateway):
        assert replica.circuit == "closed"
        assert replica.failures == 0


async def test_refusals_carry_the_rate_limit_headers(
    gateway: RunningServer, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    body = {"model": "smol-cpp", "messages": HELLO, "max_tokens": 2}
    seen = []
    for _ in range(3):
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as r:
            seen.append((r.status, r.headers.get("x-ratelimit-remaining-requests")))
            assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert seen == [(200, "1"), (200, "0"), (429, "0")]


async def _stream_until_first_token(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[aiohttp.ClientResponse, str]:
    response = await http.post(url + "/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200
    async with asyncio.timeout(60):
        while b'"content"' not in await response.content.readline():
            pass
    return response, response.headers["x-citadel-backend"]


async def test_a_replica_killed_under_load_fails_only_streams_past_their_first_byte(
    fleet: Fleet, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    pair = [start(fleet.installed, "llama-cpp", fleet.log_dir, f"doomed{i}") for i in range(2)]
    server = await start_gateway(gateway_config([model("smol-cpp", pair)], tmp_path))
    try:
        # ignore_eos (llama-server's own field, passed through): the model may otherwise say
        # "Hello" and stop before the kill, and a finished stream has nothing left to fail.
        body = {
            "model": "smol-cpp", "messages": HELLO, "max_tokens": 400, "stream": True,
            "ignore_eos": True,
        }  # fmt: skip
        opened = await asyncio.gather(
            *(_stream_until_first_token(http, server.url, body) for _ in range(4))
        )
        doomed_name = opened[0][1]
        doomed = pair[int(doomed_name.rsplit("#", 1)[1])]
        doomed.kill()
        later = [
            asyncio.ensure_future(
                http.post(
                    server.url + "/v1/chat/completions",
                    json={"model": "smol-cpp", "messages": HELLO, "max_tokens": 4},
                    headers=AUTH,
                )
            )
            for _ in range(6)
        ]
        for response, backend in opened:
            async with asyncio.timeout(120):
                rest = await response.content.read()
            response.release()
            if backend == doomed_name:
                assert b'"error"' in rest  # ended with an error event, never silently
            else:
                assert rest.rstrip().endswith(b"data: [DONE]")
        for pending in later:
            response = await pending
            assert response.status == 200, await response.text()
            assert response.headers["x-citadel-backend"] != doomed_name
            response.release()
    finally:
        await server.close()
        for process in pair:
            process.stop()


async def test_a_client_that_leaves_stops_the_generation(
    fleet: Fleet, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    solo: RealServer = fleet.cpp[0]
    server = await start_gateway(gateway_config([model("smol-cpp", [solo])], tmp_path))
    try:
        before = solo.metric("llamacpp:tokens_predicted_total")
        body = {"model": "smol-cpp", "messages": HELLO, "max_tokens": 1500, "stream": True}
        response, _ = await _stream_until_first_token(http, server.url, body)
        response.close()  # the client leaves
        async with asyncio.timeout(20):
            # A real server's gauge offers no event to wait on: polled, within a deadline.
            while solo.metric("llamacpp:requests_processing") > 0:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # would it go on generating, it would show by now
        generated = solo.metric("llamacpp:tokens_predicted_total") - before
        assert generated < 300, generated  # 1,500 were asked for
    finally:
        await server.close()


async def test_the_real_servers_quirks_are_the_mocks(fleet: Fleet) -> None:
    """What the mock's llama-cpp-python flavour imitates, checked on the real one."""
    async with aiohttp.ClientSession(
        timeout=TIMEOUT, connector=aiohttp.TCPConnector(force_close=True)
    ) as http:
        await _check_llama_cpp_python_quirks(http, fleet.python[0].url)


async def _check_llama_cpp_python_quirks(http: aiohttp.ClientSession, real: str) -> None:
    body = {"model": "smol", "messages": HELLO, "max_tokens": 2}
    async with http.post(
        real + "/v1/chat/completions", json=body, headers={"X-Request-ID": "req-1"}
    ) as r:
        assert (r.status, await r.read()) == (400, b"")
    async with http.post(real + "/v1/chat/completions", json={**body, "top_k": "x"}) as r:
        assert r.status == 500
        assert "Traceback" in (await r.text()) or "File" in (await r.text())
    async with http.get(real + "/health") as r:
        assert r.status == 404
    long = {**body, "stream": True, "messages": [{"role": "user", "content": "hello " * 4000}]}
    async with http.post(real + "/v1/chat/completions", json=long) as r:
        assert (r.status, await r.read()) == (200, b"")
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(real + "/v1/chat/completions", json=stream) as r:
        events = [line for line in (await r.read()).split(b"\n") if line.startswith(b"data: {")]
    assert events
    assert not any(b'"usage"' in event and b"prompt_tokens" in event for event in events)
    assert all(json.loads(event[6:])["model"] == "smol" for event in events)
