"""The wire-format pieces: request validation, SSE framing, model-name rewriting."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http.errors import InvalidRequest
from gateway.http.schemas import ChatCompletionRequest, CompletionRequest, parse_request
from gateway.upstream import sse
from gateway.upstream.failures import upstream_message
from gateway.upstream.rewrite import request_body, response_rewriter


def chat(**fields: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": "true"}, "stream"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"top_p": 1.5}, "top_p"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            "messages[0].content[0].type",
        ),
        ({"stream_options": {"include_usage": True}}, None),
    ],
)
def test_invalid_fields_name_the_param(fields: dict[str, object], param: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(ChatCompletionRequest, chat(**fields))
    assert caught.value.param == param


def test_valid_request_keeps_unknown_fields() -> None:
    parsed = parse_request(ChatCompletionRequest, chat(top_k=5, guided_regex="a+", stream=True))
    assert parsed.stream is True
    assert parsed.top_k == 5  # a server extra the gateway types (it is forwarded as sent)
    assert parsed.model_extra == {"guided_regex": "a+"}
    prompt = parse_request(CompletionRequest, b'{"model": "m", "prompt": [1, 2, 3]}')
    assert prompt.prompt == [1, 2, 3]


def test_request_body_is_untouched_unless_the_name_differs() -> None:
    raw = b'{"model":"a", "top_k": 3,  "x": {"y": [1.50]}}'
    assert request_body(raw, "a", "a") is raw
    assert request_body(raw, "a", "org/A") == b'{"model":"org/A", "top_k": 3,  "x": {"y": [1.50]}}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["model", "a", 'm\\"x', "messages"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "messages", "top_k", "meta"]), json_values, max_size=4),
    st.sampled_from(["phi", "org/Phi-3", "caf\u00e9"]),
    st.booleans(),
)
def test_request_rewrite_changes_only_the_top_level_model(
    others: dict[str, object], sent: str, spaced: bool
) -> None:
    body = {**others, "model": sent}
    separators = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps(body, separators=separators).encode()
    out = request_body(raw, sent, "upstream/Name-7B")
    assert json.loads(out) == {**others, "model": "upstream/Name-7B"}


def test_request_rewrite_splices_without_touching_other_bytes() -> None:
    raw = b'{"model" : "phi",  "x": {"model": "phi"}, "n": 1.50}'
    assert (
        request_body(raw, "phi", "org/P") == b'{"model":"org/P",  "x": {"model": "phi"}, "n": 1.50}'
    )
    duplicate = b'{"model": "phi", "model": "phi"}'
    assert json.loads(request_body(duplicate, "phi", "org/P")) == {"model": "org/P"}
    escaped = b'{"model": "\\u0070hi"}'
    assert json.loads(request_body(escaped, "phi", "org/P")) == {"model": "org/P"}


def test_response_rewriter_only_touches_the_model_key() -> None:
    rewrite = response_rewriter("org/A-7B", "a")
    data = (
        b'{"model": "org/A-7B", "choices": [{"text": "the \\"model\\": \\"org/A-7B\\" said"}],'
        b'"x":{"model":"org/A-7B"}}'
    )
    out = json.loads(rewrite(data))
    assert out["model"] == "a"
    assert out["x"]["model"] == "a"
    assert out["choices"][0]["text"] == 'the "model": "org/A-7B" said'
    assert response_rewriter("same", "same")(data) is data


@given(st.lists(st.integers(0, 2000), max_size=6))
def test_framer_yields_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    stream = b"".join(f'data: {{"i": {i}}}\n\n'.encode() for i in range(20)) + sse.DONE
    framer = sse.EventFramer()
    out = b""
    previous = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += framer.feed(stream[previous:cut])
        previous = cut
    assert out == stream
    assert framer.pending == b""


def test_framer_handles_crlf() -> None:
    framer = sse.EventFramer()
    assert framer.feed(b"data: 1\r\n\r\ndata: 2\r\n") == b"data: 1\n\n"
    assert framer.feed(b"\r\n") == b"data: 2\n\n"


def test_errors_inside_a_stream_are_found() -> None:
    assert sse.find_error(b'data: {"choices": []}\n\n') is None
    assert sse.find_error(b'data: {"error": {"message": "x"}}\n\n') == {"message": "x"}
    found = sse.find_error(b'data: {"object":"error","message":"y"}\n\n')
    assert found is not None
    assert found["message"] == "y"
    # Generated text that mentions "error" in a string is not an error.
    assert sse.find_error(b'data: {"choices": [{"delta": {"content": "\\"error\\""}}]}\n\n') is None


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        ({"message": "This model's maximum context length is 4096 tokens."}, True),
        ({"message": "Traceback (most recent call last):\n File x"}, False),
        ({"message": "failed in /usr/lib/python3/site-packages/vllm/x.py"}, False),
        ({"message": "x" * 1000}, False),
        ({"detail": "Not Found"}, True),
        ({"message": 42}, False),
    ],
)
def test_only_safe_upstream_messages_are_shown(error: dict[str, object], shown: bool) -> None:
    assert (upstream_message(error) is not None) is shown


def test_usage_is_read_from_the_bytes_and_only_from_the_usage_object() -> None:
    from gateway.upstream.tokens import usage_of

    answer = (
        b'{"choices": [{"message": {"content": "say \\"prompt_tokens\\": 99"}}],'
        b' "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}}'
    )
    assert usage_of(answer) == (12, 34)
    assert usage_of(b'data: {"choices": [], "usage": null}\n\n') is None
    assert usage_of(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n') is None
