"""A cached answer (gateway.cache.answer): assembled only from complete answers, rendered in
either wire format with fresh ids, and stored in a form that trusts nothing it reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.cache.answer import CachedAnswer

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def chat_json(**extra: Any) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": 1,
            "model": "upstream-name",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Paris is the capital."},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            **extra,
        }
    ).encode()


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    events = b"".join(b"data: " + json.dumps(chunk).encode() + b"\n\n" for chunk in chunks)
    return events + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> Any:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1,
            "model": "upstream-name", "choices": [choice], **extra}  # fmt: skip


STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Paris is"}),
    chunk({"content": " the capital."}),
    chunk(finish="stop"),
    {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "choices": [],
     "usage": USAGE},
)  # fmt: skip


def events_of(body: bytes) -> list[Any]:
    assert body.endswith(b"data: [DONE]\n\n")
    return [json.loads(line[6:]) for line in body.split(b"\n\n") if line.startswith(b"data: {")]


def test_a_json_answer_is_rendered_with_a_fresh_id_and_the_public_model() -> None:
    answer = CachedAnswer.from_json("chat", chat_json())
    assert answer is not None
    assert answer.tokens == (7, 3)
    first, second = (json.loads(answer.json_body("public")) for _ in range(2))
    assert first["model"] == "public"
    assert first["object"] == "chat.completion"
    assert first["id"] != second["id"]
    assert first["id"].startswith("chatcmpl-")
    assert first["id"] != "chatcmpl-upstream"
    assert first["choices"][0]["message"]["content"] == "Paris is the capital."
    assert first["usage"] == USAGE


def test_a_stream_replays_its_own_events_with_fresh_ids() -> None:
    answer = CachedAnswer.from_stream("chat", STREAM)
    assert answer is not None
    events = events_of(answer.stream_body("public", include_usage=False))
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Paris is"},
                      {"content": " the capital."}, {}]  # fmt: skip
    assert {event["model"] for event in events} == {"public"}
    assert len({event["id"] for event in events}) == 1
    assert events[0]["id"] != "chatcmpl-up"
    assert all("usage" not in event for event in events)  # not asked for


def test_a_streams_usage_is_replayed_only_when_asked_for() -> None:
    answer = CachedAnswer.from_stream("chat", STREAM)
    assert answer is not None
    events = events_of(answer.stream_body("public", include_usage=True))
    assert events[-1]["usage"] == USAGE
    assert events[-1]["choices"] == []


def test_a_stream_becomes_a_json_answer_and_a_json_answer_a_stream() -> None:
    streamed = CachedAnswer.from_stream("chat", STREAM)
    unary = CachedAnswer.from_json("chat", chat_json())
    assert streamed is not None
    assert unary is not None
    as_json = json.loads(streamed.json_body("public"))
    assert as_json["choices"][0]["message"] == {"role": "assistant",
                                                "content": "Paris is the capital."}  # fmt: skip
    assert as_json["choices"][0]["finish_reason"] == "stop"
    events = events_of(unary.stream_body("public", include_usage=True))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Paris is the capital."
    assert events[0]["object"] == "chat.completion.chunk"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]] == [None, "stop"]
    assert events[-1]["usage"] == USAGE


def test_tool_calls_split_across_events_are_assembled() -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    stream = sse(
        chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chunk(finish="tool_calls"),
    )
    answer = CachedAnswer.from_stream("chat", stream)
    assert answer is not None
    message = json.loads(answer.json_body("m"))["choices"][0]["message"]
    assert message["tool_calls"] == [{"type": "function", "id": "call_1",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]  # fmt: skip
    # and back as a stream, from the JSON form
    unary = CachedAnswer.from_json("chat", answer.json_body("m"))
    assert unary is not None
    delta = events_of(unary.stream_body("m", include_usage=False))[0]["choices"][0]["delta"]
    assert delta["tool_calls"][0]["index"] == 0
    assert delta["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


def test_completions_text_is_assembled_and_rendered() -> None:
    def text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        return {"id": "cmpl-up", "object": "text_completion", "created": 1, "model": "x",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]}  # fmt: skip

    answer = CachedAnswer.from_stream("text", sse(text_chunk(" one"), text_chunk(" two", "length")))
    assert answer is not None
    body = json.loads(answer.json_body("m"))
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == " one two"
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(
            sse(chunk({"content": "Paris"}), chunk(finish="stop"), done=False), id="no-done"
        ),
        pytest.param(sse(chunk({"content": "Paris"})), id="no-finish-reason"),
        pytest.param(sse(chunk({"content": "Par"}), {"error": {"message": "x"}}), id="error"),
        pytest.param(sse(), id="empty"),
        pytest.param(b"data: {not json\n\ndata: [DONE]\n\n", id="garbage"),
    ],
)
def test_an_incomplete_stream_is_no_answer(stream: bytes) -> None:
    assert CachedAnswer.from_stream("chat", stream) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"error": {"message": "bad"}}', id="error-object"),
        pytest.param(b'{"choices": []}', id="no-choices"),
        pytest.param(
            b'{"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": null}]}',
            id="unfinished",
        ),
        pytest.param(b"[]", id="not-an-object"),
    ],
)
def test_an_incomplete_json_answer_is_no_answer(payload: bytes) -> None:
    assert CachedAnswer.from_json("chat", payload) is None


def test_the_stored_form_round_trips_and_rejects_what_it_did_not_write() -> None:
    answer = CachedAnswer.from_stream("chat", STREAM)
    assert answer is not None
    stored = answer.to_bytes()
    again = CachedAnswer.from_bytes(stored)
    assert again is not None
    assert again.size == len(stored) == answer.size
    assert again.stream_body("m", include_usage=True).count(b"data: ") == 6
    for junk in (b"", b"\x80\x04pickle", b'{"v": 2}', b'{"v": 1, "kind": "chat"}',
                 b'{"v": 1, "kind": "exec", "choices": [{}]}',
                 b'{"v": 1, "kind": "chat", "choices": [1]}'):  # fmt: skip
        assert CachedAnswer.from_bytes(junk) is None
