"""Logging: one filter takes secrets out of every event; lines are batched but never lost."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import time
from typing import Any

import pytest
import structlog

from gateway.process.config import LoggingSettings
from gateway.process.observability import (
    REDACTED,
    BufferedLineLogger,
    IsoTimestamp,
    json_line,
    lean_logger,
    redact_secrets,
)
from tests.gateway.harness import API_KEY, ModelPlan, bounded_client, deployment

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_secrets_are_redacted_wherever_they_appear() -> None:
    event = {
        "event": "upstream_error_body",
        "body": f'{{"detail": "bad key {API_KEY}"}}'.encode(),
        "header": f"Authorization: Bearer {API_KEY}",
        "note": f"api-key: {API_KEY}",
        "authorization": "anything at all",
        "api_key": "x",
        "status": 401,
        "path": "/v1/chat-completions",
    }
    redacted = redact_secrets(None, "warning", dict(event))
    assert API_KEY not in str(redacted)
    assert redacted["authorization"] == REDACTED
    assert redacted["api_key"] == REDACTED
    assert redacted["header"] == f"Authorization: Bearer {REDACTED}"
    assert redacted["status"] == 401
    assert redacted["path"] == "/v1/chat-completions"  # ordinary text is left alone


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: BEARER abcdefgh12345678",  # no dash: the old shortcut skipped it
        "authorization: Bearer abcdefgh12345678",
        "API-KEY: abcdefgh12345678",
        "SK-abcdefgh12345678",
        "s\u212a-abcdefgh12345678",  # the Kelvin sign, which (?i) matches as k
    ],
)
def test_secrets_are_redacted_in_any_case(text: str) -> None:
    redacted = redact_secrets(None, "info", {"detail": text})
    assert "abcdefgh12345678" not in redacted["detail"]
    assert REDACTED in redacted["detail"]


def test_a_key_logged_through_the_real_pipeline_never_reaches_the_output() -> None:
    # The session's logging is the production pipeline; the autouse check after this test
    # scans what was written and fails if the key is there.
    structlog.get_logger("test").warning("careless_event", detail=f"the key was {API_KEY}")


def test_buffered_lines_come_out_in_order_and_errors_flush_at_once() -> None:
    stream = io.StringIO()
    output = BufferedLineLogger(stream, flush_interval=3600)
    output.info("one")  # no event loop here: written at once
    assert stream.getvalue() == "one\n"

    async def in_a_loop() -> None:
        output.info("two")  # buffered: the loop's timer would write it in an hour
        assert stream.getvalue() == "one\n"
        output.error("three")  # an error takes what was waiting along, in order
        assert stream.getvalue() == "one\ntwo\nthree\n"
        output.info("four")
        assert stream.getvalue().count("\n") == 3
        output.flush()  # as atexit does

    asyncio.run(in_a_loop())
    assert stream.getvalue() == "one\ntwo\nthree\nfour\n"


async def test_prompts_and_completions_are_logged_only_when_asked_truncated(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "tell me " + "x" * 100}]}
    settings = LoggingSettings(access_log=False, log_prompts=True, prompt_log_chars=20)
    async with deployment([ModelPlan("m")], logging=settings) as gw, bounded_client() as s:
        for body in (chat, {**chat, "stream": True}):
            async with s.post(gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                await r.read()
    production_logging.flush()
    out = capfd.readouterr().out
    transcripts = [json.loads(line) for line in out.splitlines() if '"transcript"' in line]
    assert len(transcripts) == 2
    for event in transcripts:
        assert event["prompt"] == ("tell me " + "x" * 100)[:20]
        assert len(event["completion"]) == 20  # the mock's 16 tokens, cut to 20 characters
        assert event["truncated"] is True
    assert transcripts[0]["completion"] == transcripts[1]["completion"]  # stream rebuilt

    async with (
        deployment([ModelPlan("m")]) as gw,
        bounded_client() as s,
        s.post(gw.url + "/v1/chat/completions", json=chat, headers=AUTH) as r,
    ):
        await r.read()
    production_logging.flush()
    assert '"transcript"' not in capfd.readouterr().out  # off by default


@pytest.mark.parametrize(
    "now",
    [
        1_733_318_400.123456,  # an ordinary instant
        1_733_318_400.0,  # a whole second: isoformat leaves the fraction out
        1_733_318_400.9999996,  # rounds up into the next second
        1_733_318_459.000001,
    ],
)
def test_timestamps_are_spelled_as_isoformat_spells_them(
    now: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamp = IsoTimestamp()
    monkeypatch.setattr(time, "time", lambda: now - 61.5)  # a line in another second first
    stamp(None, "info", {})
    monkeypatch.setattr(time, "time", lambda: now)
    expected = datetime.datetime.fromtimestamp(round(now, 6), datetime.UTC).isoformat()
    assert stamp(None, "info", {})["timestamp"] == expected.replace("+00:00", "Z")


def test_the_lean_logger_writes_what_structlogs_own_logger_writes() -> None:
    # The gateway's wrapper class skips structlog's dispatch; every line must come out as
    # structlog's filtering logger writes it, whatever the method, level and context.
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        redact_secrets,
        structlog.processors.JSONRenderer(serializer=json_line),
    ]

    def lines(wrapper: type[Any]) -> list[str]:
        written: list[str] = []

        class Collect:
            def __getattr__(self, method: str) -> Any:
                return lambda line: written.append(f"{method} {line}")

        log = structlog.wrap_logger(
            Collect(), processors=processors, wrapper_class=wrapper, context_class=dict
        )
        log.debug("filtered_out", n=1)
        log.info("request", status=200, model=None, key=f"{API_KEY}")
        log.msg("plain")
        log.warning("formatted %s of %d", "one", 2, extra=True)
        log.warn("old_name")
        log.error("failed", reason=f"Bearer {API_KEY}")
        log.critical("down")
        log.fatal("fatal")
        log.log(logging.WARNING, "by_level", via="log")
        log.log(logging.DEBUG, "filtered_too")
        bound = log.bind(worker=2, event_id="x")
        bound.info("bound", worker=3)
        bound.unbind("worker").info("unbound")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("crashed", step="parse")
        return written

    ours = lines(lean_logger(logging.INFO))
    assert ours == lines(structlog.make_filtering_bound_logger(logging.INFO))
    assert len(ours) == 11
    assert not any("filtered" in line for line in ours)
    assert API_KEY not in "".join(ours)
