"""Output rules over streams (gateway.guardrails.window and answers): every detector's
examples split at every position, and one character per event, are caught exactly as in a
whole text; look-alikes pass unchanged; the SSE layer rewrites only the texts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.guardrails.answers import StreamGuard, check_answer
from gateway.guardrails.engine import CompiledRule, Findings, compile_rule, guard_of, scan
from gateway.guardrails.settings import DETECTORS, Policy, Rule
from gateway.guardrails.window import SlidingWindow
from tests.gateway.guardrails.test_detectors import FOUND, NOT_FOUND

EVERY_DETECTOR = tuple(
    compile_rule(Rule(id=name, detector=name, direction="output", action="redact"))
    for name in DETECTORS
)


def streamed(pieces: list[str], rules: tuple[CompiledRule, ...] = EVERY_DETECTOR) -> str:
    window, findings = SlidingWindow(rules), Findings()
    return "".join(window.push(piece, findings) for piece in pieces) + window.flush(findings)


def whole(text: str) -> str:
    return scan(text, EVERY_DETECTOR, Findings())


@pytest.mark.parametrize("name", FOUND)
def test_every_example_split_at_every_position_is_redacted_as_in_a_whole_text(name: str) -> None:
    for example in FOUND[name][1]:
        text = f"Contact: {example}, thanks."
        expected = whole(text)
        assert example not in expected
        for cut in range(len(text) + 1):
            assert streamed([text[:cut], text[cut:]]) == expected, (example, cut)
        assert streamed(list(text)) == expected, example  # a character per event
        first, second = len(text) // 3, 2 * len(text) // 3
        assert streamed([text[:first], text[first:second], text[second:]]) == expected


@pytest.mark.parametrize("name", NOT_FOUND)
def test_look_alikes_split_anywhere_pass_unchanged(name: str) -> None:
    detector = NOT_FOUND[name][0]
    own = (compile_rule(Rule(id="own", detector=detector.name, direction="output")),)
    for example in NOT_FOUND[name][1]:
        text = f"Contact: {example}, thanks."
        for cut in range(len(text) + 1):
            assert streamed([text[:cut], text[cut:]], own) == text, (example, cut)


def test_only_a_possible_match_in_progress_is_held_back() -> None:
    window, findings = SlidingWindow(EVERY_DETECTOR), Findings()
    assert window.push("The answer is ", findings) == "The answer is "
    assert window.push("forty", findings) == ""  # a word: it may be an address's start
    assert window.push("-two. Write to ", findings) == "forty-two. Write to "
    assert window.push("ada@exam", findings) == ""
    assert window.held == len("ada@exam")
    assert window.push("ple.com today", findings) == "[EMAIL] "
    assert window.flush(findings) == "today"
    assert list(findings.fired) == ["email"]


def test_a_word_that_cannot_begin_a_key_is_not_held_for_the_key_detector() -> None:
    keys = (compile_rule(Rule(id="k", detector="api_key", direction="output", action="redact")),)
    window, findings = SlidingWindow(keys), Findings()
    assert window.push("The quick", findings) == "The quick"
    assert window.push(" s", findings) == " "  # "sk-" may follow
    assert window.push("k", findings) == ""
    assert window.push("y is blue", findings) == "sky is blue"


def test_what_is_held_never_outgrows_the_longest_match() -> None:
    window, findings = SlidingWindow(EVERY_DETECTOR), Findings()
    for _ in range(2000):
        window.push("abcdefgh", findings)  # one endless word
    email = next(r for r in EVERY_DETECTOR if r.rule.id == "email").stream[0].max_length
    api_key = next(r for r in EVERY_DETECTOR if r.rule.id == "api_key").stream[0].max_length
    assert window.held <= max(email, api_key)


def test_a_block_rule_is_found_across_events_and_nothing_of_it_released() -> None:
    block = (compile_rule(Rule(id="k", detector="api_key", direction="output", action="block")),)
    key = "sk-proj-" + "abcdEFGH1234" * 4
    for cut in range(1, len(key)):
        window, findings = SlidingWindow(block), Findings()
        released = window.push(f"Use {key[:cut]}", findings) + window.push(key[cut:], findings)
        released += window.push(" now", findings)
        assert findings.blocked is not None
        assert findings.blocked.rule.id == "k"
        assert released == "Use ", cut


def test_a_rule_for_both_directions_is_an_input_and_an_output_rule() -> None:
    policy = Policy(
        name="p",
        rules=tuple(
            Rule(id=side, detector="email", direction=side) for side in ("input", "output", "both")
        ),
    )
    guard = guard_of((policy,), ("p",))
    assert [c.rule.id for c in guard.input] == ["input", "both"]
    assert [c.rule.id for c in guard.output] == ["output", "both"]
    assert guard.output_digest != guard_of((policy,), ()).output_digest


def test_words_and_operator_regexes_work_across_events() -> None:
    rules = (
        compile_rule(Rule(id="w", words=("Bluebird",), direction="output", action="redact")),
        compile_rule(Rule(id="t", regex=r"TICKET-\d{4}", direction="output", action="redact")),
    )
    text = "Project bluebird, see TICKET-1234; not bluebirds."
    for cut in range(len(text) + 1):
        assert streamed([text[:cut], text[cut:]], rules) == (
            "Project [REDACTED], see [REDACTED]; not bluebirds."
        ), cut


# The SSE layer.


def chunk(content: str | None, index: int = 0, finish: str | None = None, **delta: Any) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": index,
                "delta": ({} if content is None else {"content": content}) | delta,
                "finish_reason": finish,
            }
        ],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def events(data: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for event in data.split(b"\n\n")
        for line in event.split(b"\n")
        if line.startswith(b"data: {")
    ]


def content_of(data: bytes, field: str = "content") -> dict[int, str]:
    texts: dict[int, str] = {}
    for event in events(data):
        for choice in event.get("choices", []):
            piece = choice.get("delta", {}).get(field) if "delta" in choice else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + (piece or "")
    return texts


def test_the_stream_guard_rewrites_each_choice_and_field_with_its_own_window() -> None:
    guard = StreamGuard(EVERY_DETECTOR)
    out = guard.feed(chunk("", role="assistant"))
    out += guard.feed(chunk("mail ada@exa") + chunk("card 4111 1111", index=1))
    out += guard.feed(chunk("mple.com") + chunk(" 1111 1111.", index=1, finish="stop"))
    out += guard.feed(
        chunk(None, reasoning_content="think of 10.0.0.") + chunk(None, finish="stop")
    )
    out += guard.feed(b"data: [DONE]\n\n")
    assert content_of(out) == {0: "mail [EMAIL]", 1: "card [CARD]."}
    assert content_of(out, "reasoning_content") == {0: "think of 10.0.0.", 1: ""}
    assert out.endswith(b"data: [DONE]\n\n")
    finishes = [c["finish_reason"] for e in events(out) for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["stop", "stop"]


def test_done_without_a_finish_reason_releases_what_is_held() -> None:
    guard = StreamGuard(EVERY_DETECTOR)
    out = guard.feed(chunk("the last word") + b"data: [DONE]\n\n")
    assert content_of(out) == {0: "the last word"}
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_blocked_stream_ends_with_content_filter_and_an_error_event() -> None:
    block = (compile_rule(Rule(id="k", detector="api_key", direction="output", action="block")),)
    guard = StreamGuard(block)
    out = guard.feed(chunk("key: sk-proj-abcdEFGH1234abcdEFGH12") + chunk("34abcdEFGH1234abcd ok"))
    assert guard.blocked is not None
    *_, last, error = events(out)
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": "content_filter"}]
    assert error["error"]["code"] == "content_filter"
    assert "rule k" in error["error"]["message"]
    assert "abcd" not in json.dumps(events(out))


def test_text_completions_multiline_data_and_other_lines() -> None:
    guard = StreamGuard(EVERY_DETECTOR)
    first = {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": "to a"}]}
    last = {"index": 0, "text": "da@example.com", "finish_reason": "stop"}
    second = {"id": "c", "object": "text_completion", "choices": [last]}
    out = guard.feed(b"event: message\ndata: " + json.dumps(first).encode() + b"\n\n")
    text = json.dumps(second)
    half = text.index('"choices"')
    # Two data lines are one JSON text, joined by a newline (SSE): they are not a way around.
    out += guard.feed(f"data: {text[:half]}\ndata: {text[half:]}\n\n".encode())
    assert out.startswith(b"event: message\n")
    assert content_of(out) == {0: "to [EMAIL]"}
    assert guard.feed(b": keep-alive\n\n") == b": keep-alive\n\n"
    # An event that is no JSON cannot be checked: it is not relayed.
    assert guard.feed(b'data: {"choices": [{"text": "ada@example.com\n"}]}\n\n') == b""


def test_a_whole_answer_is_redacted_or_withheld_per_choice() -> None:
    rules = (
        compile_rule(Rule(id="e", detector="email", direction="output", action="redact")),
        compile_rule(Rule(id="k", detector="api_key", direction="output", action="block")),
    )
    answer = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "to ada@example.com"},
             "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "AKIAIOSFODNN7EXAMPLE",
             "reasoning_content": "the key"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }  # fmt: skip
    verdict = check_answer(json.dumps(answer).encode(), rules)
    assert verdict.body is not None
    rewritten = json.loads(verdict.body)
    first, second = rewritten["choices"]
    assert first["message"]["content"] == "to [EMAIL]"
    assert second["message"] == {"role": "assistant", "content": None}
    assert second["finish_reason"] == "content_filter"
    assert rewritten["usage"] == answer["usage"]
    assert set(verdict.findings.fired) == {"e", "k"}
    assert check_answer(b'{"choices": [{"message": {"content": "fine"}}]}', rules).body is None


def test_events_only_pythons_json_reads_are_checked_and_relayed() -> None:
    """Python servers write -Infinity in logprobs (json.dumps allows it; orjson reads no such
    JSON): such an event is checked and relayed, not dropped as unreadable."""
    guard = StreamGuard(EVERY_DETECTOR)
    event = chunk("mail ada@example.com now", finish="stop").replace(
        b'"finish_reason"', b'"logprobs": {"content": [{"logprob": -Infinity}]}, "finish_reason"'
    )
    out = guard.feed(event + b"data: [DONE]\n\n")
    assert content_of(out) == {0: "mail [EMAIL] now"}
    assert b"-Infinity" in out
