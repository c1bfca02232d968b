"""Nothing a client sends can crash an actor or the process: random bodies, headers and
paths always get a 200 or an OpenAI error body, and the actor tree never restarts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import API_KEY, ModelPlan, bounded_client, deployment

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"])},
        optional={"content": json_values, "tool_call_id": json_values, "name": json_values},
    ),
    max_size=3,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.sampled_from(["m", "alias", "nope", ""]) | json_values},
        optional={
            "messages": messages | json_values,
            "prompt": json_values,
            "input": json_values,
            "stream": json_values,
            "max_tokens": json_values,
            "n": json_values,
            "temperature": json_values,
            "stream_options": json_values,
            "tools": json_values,
            "response_format": json_values,
            "metadata": json_values,
        },
    ),
)
paths = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(st.tuples(paths, bodies, st.booleans()), min_size=1, max_size=25))
def test_random_requests_never_crash_anything(cases: list[tuple[str, Any, bool]]) -> None:
    asyncio.run(run_cases(cases))


async def run_cases(cases: list[tuple[str, Any, bool]]) -> None:
    async with (
        deployment([ModelPlan("m", aliases=("alias",))]) as gw,
        bounded_client() as http,
    ):
        for path, body, raw in cases:
            data = encode(body)
            if raw:  # truncated or mangled bytes, as a broken client would send
                data = data[: len(data) // 2] + b"\xff\x00"
            async with http.post(
                gw.url + path, data=data, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as response:
                payload = await response.read()
                if response.status != 200:
                    assert response.status in (400, 404, 413), (response.status, payload)
                    error = json.loads(payload)["error"]
                    assert set(error) == {"message", "type", "param", "code"}
        for node in [gw.state.root.snapshot()]:
            stack = [node]
            while stack:
                current = stack.pop()
                assert current.restarts == 0, current.path
                assert current.state.value == "running", current.path
                stack.extend(current.children)
