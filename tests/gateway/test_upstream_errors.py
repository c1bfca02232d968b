"""What an upstream's failure becomes for the client and for the replica's record, and the
stream framing decisions around it: exact, without servers (the same cases over sockets are
in test_errors.py, test_model_servers.py and test_promises.py)."""

from __future__ import annotations

import json

import pytest

from actors.backend.actor import Outcome
from gateway.http.errors import InvalidRequest, ServiceUnavailable, UpstreamFailed, UpstreamTimeout
from gateway.upstream import sse
from gateway.upstream.failures import (
    CONTEXT_LENGTH_EXCEEDED,
    blame_of,
    error_object,
    from_error_event,
    from_status,
    signature,
)
from gateway.upstream.rewrite import request_body, with_stream_usage

RENAME = ("/models/phi-3.gguf", "phi-3-mini")


def body(**error: object) -> bytes:
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"error": {"message": "m"}}', {"message": "m"}),
        (b'{"error": "plain"}', {"message": "plain"}),
        (b'{"object": "error", "message": "m"}', {"object": "error", "message": "m"}),
        (b'{"detail": "d"}', {"detail": "d"}),
        (b'{"error": 5}', None),
        (b'{"choices": []}', None),
        (b"[1]", None),
        (b"<html>", None),
    ],
)
def test_error_object_knows_the_shapes_servers_use(
    payload: bytes, expected: dict[str, object] | None
) -> None:
    assert error_object(payload) == expected


@pytest.mark.parametrize("status", [400, 422])
def test_a_400_or_422_is_the_requests_fault_with_the_public_name(status: int) -> None:
    error, outcome = from_status(
        status, body(message="bad value for /models/phi-3.gguf", code="bad_x", param="x"), RENAME
    )
    assert outcome is Outcome.REJECTED
    assert isinstance(error, InvalidRequest)
    assert (error.message, error.code, error.param) == ("bad value for phi-3-mini", "bad_x", "x")


def test_unsafe_codes_and_params_are_not_relayed() -> None:
    error, _ = from_status(400, body(message="no", code="Bad Code\n", param="x; rm"), RENAME)
    assert (error.code, error.param) == ("upstream_rejected", None)
    error, _ = from_status(400, body(code="ok_code\n", param="p\n"), RENAME)
    assert (error.code, error.param) == ("upstream_rejected", None)
    error, _ = from_status(400, b"", RENAME)
    assert (error.message, error.code) == (
        "The model service rejected the request.",
        "upstream_rejected",
    )


@pytest.mark.parametrize(
    "error",
    [
        {"type": "exceed_context_size_error", "message": "too long"},
        {"code": "context_length_exceeded"},
        {"message": "This model's maximum context length is 2048 tokens"},
        {"message": "Requested tokens (3000) exceed context window of 2048"},
        {"message": "Input validation error: `inputs` must have less than 2048 tokens"},
    ],
)
def test_a_context_overflow_is_named_as_openai_names_it(error: dict[str, object]) -> None:
    rejected, outcome = from_status(400, body(**error), RENAME)
    assert outcome is Outcome.REJECTED
    assert (rejected.code, rejected.param) == (CONTEXT_LENGTH_EXCEEDED, "messages")
    assert rejected.message == error.get(
        "message", "The prompt does not fit the model's context window."
    )


def test_a_context_overflow_keeps_a_safe_param() -> None:
    error, _ = from_status(400, body(code=CONTEXT_LENGTH_EXCEEDED, param="prompt"), RENAME)
    assert error.param == "prompt"


def test_413_and_501_are_the_requests_fault() -> None:
    error, outcome = from_status(413, b"", RENAME)
    assert (type(error), outcome) == (InvalidRequest, Outcome.REJECTED)
    assert error.message == "The request is too large for the model service."
    error, outcome = from_status(501, b"", RENAME)
    assert (type(error), outcome, error.code) == (
        InvalidRequest,
        Outcome.REJECTED,
        "unsupported_endpoint",
    )


def test_a_429_is_the_replicas_and_says_when_to_retry() -> None:
    error, outcome = from_status(429, b"", RENAME)
    assert isinstance(error, ServiceUnavailable)
    assert outcome is Outcome.UPSTREAM_ERROR
    assert (error.code, error.headers) == ("upstream_overloaded", {"Retry-After": "1"})


@pytest.mark.parametrize("status", [408, 504])
def test_upstream_timeouts_are_timeouts(status: int) -> None:
    error, outcome = from_status(status, b"", RENAME)
    assert (type(error), outcome) == (UpstreamTimeout, Outcome.TIMEOUT)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (500, Outcome.SUSPECT),
        (401, Outcome.SUSPECT),
        (404, Outcome.SUSPECT),
        (499, Outcome.SUSPECT),
        (502, Outcome.UPSTREAM_ERROR),
        (503, Outcome.UPSTREAM_ERROR),
        (507, Outcome.UPSTREAM_ERROR),
    ],
)
def test_other_failures_are_suspect_or_the_replicas(status: int, outcome: Outcome) -> None:
    error, judged = from_status(status, body(message="secret internals"), RENAME)
    assert judged is outcome
    assert isinstance(error, UpstreamFailed)
    assert error.message == (
        f"The model service failed (HTTP {status}) while processing the request."
    )


def test_what_identifies_a_failure_is_its_status_and_first_512_bytes() -> None:
    assert signature(500, b"x" * 600) == (500, b"x" * 512)
    assert blame_of(InvalidRequest("no"), b"y" * 600) == (Outcome.REJECTED, (200, b"y" * 512))
    assert blame_of(UpstreamFailed("no"), b"z") == (Outcome.SUSPECT, (200, b"z"))


def test_an_error_inside_a_stream() -> None:
    rejected = from_error_event({"code": 400, "message": "bad /models/phi-3.gguf"}, RENAME)
    assert isinstance(rejected, InvalidRequest)
    assert rejected.message == "bad phi-3-mini"
    for error in ({"code": "422"}, {"type": "BadRequestError"}):
        assert isinstance(from_error_event(error, RENAME), InvalidRequest)
    failed = from_error_event({"code": 500, "message": "oom"}, RENAME)
    assert (type(failed), failed.message) == (UpstreamFailed, "oom")
    silent = from_error_event({"code": 500}, RENAME)
    assert silent.message == "The model service reported an error during generation."


def test_done_is_found_at_the_end_only_and_removed_once() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"data: [DONE]\\n\\n"}}]}\n\n'
    assert not sse.is_done(chunk)
    assert sse.is_done(chunk + b"data: [DONE]\n\n")
    assert sse.is_done(chunk + b"data:[DONE]\n\n")
    assert sse.without_done(chunk + b"data: [DONE]\n\n") == chunk
    assert sse.without_done(chunk + b"data:[DONE]\n\n") == chunk
    assert sse.without_done(chunk) == chunk


def test_an_error_event_is_one_compact_data_line() -> None:
    assert sse.error_event({"error": {"message": "x y", "code": None}}) == (
        b'data: {"error":{"message":"x y","code":null}}\n\n'
    )


def test_the_usage_report_is_dropped_and_nothing_else() -> None:
    text = b'data: {"choices":[{"delta":{"content":"\\"usage\\""}}]}'
    usage = b'data: {"choices": [ ],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    assert sse.drop_usage_events(text + b"\n\n" + usage + b"\n\n") == text + b"\n\n"
    assert sse.drop_usage_events(usage + b"\n\n" + text + b"\n\n") == text + b"\n\n"
    assert sse.drop_usage_events(text + b"\n\n") == text + b"\n\n"
    no_usage = b'data: {"choices":[],"usage":null}\n\n'
    assert sse.drop_usage_events(no_usage) == no_usage  # no token counts: kept


def test_a_stream_asks_for_its_usage_whatever_the_client_said() -> None:
    def options(raw: bytes) -> object:
        return json.loads(with_stream_usage(raw))["stream_options"]

    assert options(b'{"model":"m"}') == {"include_usage": True}
    assert json.loads(with_stream_usage(b' {"model":"m"}'))["model"] == "m"
    assert options(b'{"stream_options":{"include_usage":false,"x":1}}') == {
        "include_usage": True,
        "x": 1,
    }
    assert options(b'{"stream_options":null}') == {"include_usage": True}
    raw = with_stream_usage('{"stream_options":{},"content":"é"}'.encode())
    assert "é".encode() in raw  # not escaped: the body keeps its size and bytes
    assert b" " not in raw


def test_fixed_messages_for_what_the_upstream_cannot_say() -> None:
    assert from_status(501, b"", RENAME)[0].message == "The model does not support this endpoint."
    overloaded = from_status(429, body(message="queue full"), RENAME)[0]
    assert overloaded.message == "The model service is overloaded. Retry shortly."
    assert from_status(504, b"", RENAME)[0].message == "The model service timed out."


def test_a_relayed_message_is_short_and_at_most_two_lines() -> None:
    def relayed(message: str) -> str | None:
        return from_status(400, body(message=message), RENAME)[0].message

    fallback = "The model service rejected the request."
    assert relayed("x" * 400) == "x" * 400
    assert relayed("x" * 401) == fallback
    assert relayed("one\ntwo") == "one\ntwo"
    assert relayed("one\ntwo\nthree") == fallback


def test_an_error_event_keeps_its_code_and_param_when_it_is_the_requests() -> None:
    rejected = from_error_event({"code": "400", "param": "top_k", "message": "bad"}, RENAME)
    assert (type(rejected), rejected.param) == (InvalidRequest, "top_k")
    assert isinstance(from_error_event({"code": 422}, RENAME), InvalidRequest)
    assert isinstance(from_error_event({"code": 423}, RENAME), UpstreamFailed)


def test_the_framer_passes_whole_events_and_holds_partial_ones() -> None:
    framer = sse.EventFramer()
    assert framer.feed(b"data: 1\n\n") == b"data: 1\n\n"
    assert framer.feed(b"data: 2\n") == b""  # unfinished: held
    assert framer.pending == b"data: 2\n"
    assert framer.feed(b"\ndata: 3") == b"data: 2\n\n"
    assert framer.feed(b"\n\n") == b"data: 3\n\n"
    assert framer.pending == b""
    assert framer.feed(b"\n\ndata: 4\n\n") == b"\n\ndata: 4\n\n"  # a blank line at the start
    assert framer.feed(b"\n\ndata: 7") == b"\n\n"  # the only blank line, at the start
    assert framer.pending == b"data: 7"
    mixed = sse.EventFramer()
    assert mixed.feed(b"a: 1\r\n\r\nb: 2\n\n") == b"a: 1\n\nb: 2\n\n"
    crlf = sse.EventFramer()
    assert crlf.feed(b"data: 5\r\n\r\n") == b"data: 5\n\n"  # CRLF servers, normalised
    assert crlf.feed(b"data: 6\r\n") == b""
    assert crlf.feed(b"\r\n") == b"data: 6\n\n"


def test_find_error_reads_every_data_line() -> None:
    assert sse.find_error(b'data: {"choices":[]}\n\n') is None
    events = (
        b': a comment with error"\n'
        b'event: x\ndata: [1, "error"]\ndata: {"error" nope}\n'
        b'data: {"choices": [], "note": "error\\""}\n'
        b'data:{"error": "plain words"}\n\n'
    )
    assert sse.find_error(events) == {"message": "plain words"}
    assert sse.find_error(b'data: {"object": "error", "message": "m"}\n\n') == {
        "object": "error",
        "message": "m",
    }
    assert sse.find_error(b'data: {"error": {"code": 500}}\n\n') == {"code": 500}
    assert sse.find_error(b'data: {"error": 5, "object": "chunk"}\n\n') is None


def test_the_usage_report_needs_both_usage_and_no_choices_to_be_dropped() -> None:
    chunk = b'data: {"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}\n\n'
    assert sse.drop_usage_events(chunk) == chunk
    empty = b'data: {"choices":[]}\n\n'
    assert sse.drop_usage_events(empty) == empty


def test_a_rewritten_body_is_compact_utf8_json() -> None:
    escaped = b'{"m\\u006fdel": "phi", "text": "caf\xc3\xa9", "a": [1, 2]}'
    assert request_body(escaped, "phi", "org/é") == (
        '{"model":"org/é","text":"café","a":[1,2]}'.encode()
    )
    spliced = request_body(b'{"model": "phi", "n": 1}', "phi", "org/é")
    assert spliced == '{"model":"org/é", "n": 1}'.encode()


def test_the_model_key_is_found_at_the_top_level_only() -> None:
    nested = b'{"a": [{"model": "phi"}], "b": {"c": ["]"]}, "model": "phi"}'
    assert request_body(nested, "phi", "X") == (
        b'{"a": [{"model": "phi"}], "b": {"c": ["]"]}, "model":"X"}'
    )
    closed = b'{"a": {}, "b": [], "model": "phi"}'
    assert request_body(closed, "phi", "X") == b'{"a": {}, "b": [], "model":"X"}'
    listed = b'{"a": [[1], {"x": "{"}], "model": "phi"}'
    assert request_body(listed, "phi", "X") == b'{"a": [[1], {"x": "{"}], "model":"X"}'


def test_stream_usage_goes_into_the_outer_object() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"{"}]}'
    assert json.loads(with_stream_usage(raw)) == {
        "stream_options": {"include_usage": True},
        **json.loads(raw),
    }
