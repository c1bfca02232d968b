"""Requests aiohttp's HTTP parser refuses, sent over raw sockets as an attacker would: the
key they carry never reaches the log or the answer, the answer is OpenAI-shaped JSON, and
what anyone can make the gateway log is bounded."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.process.observability import BufferedLineLogger
from tests.gateway.harness import API_KEY, Deployment, ModelPlan, deployment

# A key with no recognisable shape: only never logging it keeps it out of the log, since no
# redaction pattern can find it.
PLAIN_KEY = "plainkeyofnoshape7f3a9c21e5d8"


def attacks(key: str) -> list[bytes]:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
    k = key.encode()
    controls = (b"\x00", b"\x01", b"\x0b", b"\x7f")
    return [
        *(head + b"Authorization: Bearer " + k + c + b"\r\n\r\n" for c in controls),
        head + b"api-key: " + k + b"\x01\r\n\r\n",
        head + b"Authorization: Bearer\r\n " + k + b"\r\n\r\n",  # an obs-fold
        head + b"Authorization: Bearer " + k + b"A" * 9000 + b"\r\n\r\n",  # over 8190 bytes
        b"GET /v1/models?" + k + b"\x01=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]  # fmt: skip


async def exchange(gw: Deployment, raw: bytes) -> bytes:
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw)
        async with asyncio.timeout(10):
            return await reader.read()  # the gateway closes after an error: read to EOF
    finally:
        writer.close()


async def test_a_refused_request_never_puts_its_key_in_the_log_or_the_answer(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    async with deployment([ModelPlan("m")], api_keys=(API_KEY, PLAIN_KEY)) as gw:
        sent = 0
        for key in (API_KEY, PLAIN_KEY):
            for raw in attacks(key):
                answer = await exchange(gw, raw)
                sent += 1
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.split(b" ")[1] == b"400", answer[:200]
                assert b"application/json" in head
                assert key.encode() not in answer
                error = json.loads(body)["error"]
                assert error["code"] == "invalid_http_request"
                assert error["type"] == "invalid_request_error"
    production_logging.flush()
    out, err = capfd.readouterr()
    for key in (API_KEY, PLAIN_KEY):
        assert key not in out
        assert key not in err
    assert "Traceback" not in out + err
    refused = [json.loads(line) for line in out.splitlines() if "http_request_refused" in line]
    assert len(refused) == sent  # one line each, well within the budget
    assert {line["reason"] for line in refused} <= {
        "BadHttpMessage", "InvalidHeader", "LineTooLong", "BadStatusLine", "InvalidURLError",
        "BadHttpMethod", "TransferEncodingError", "ContentLengthError",
    }  # fmt: skip
    assert err == ""  # nothing bypasses the pipeline onto stderr


async def test_what_anyone_can_make_the_gateway_log_is_bounded(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    bad = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Junk: a\x01\r\n\r\n"
    async with deployment([ModelPlan("m")]) as gw:
        started = asyncio.get_running_loop().time()
        for _ in range(200):
            assert (await exchange(gw, bad)).split(b" ")[1] == b"400"
        elapsed = asyncio.get_running_loop().time() - started
    production_logging.flush()
    out = capfd.readouterr().out
    refused = [json.loads(line) for line in out.splitlines() if "http_request_refused" in line]
    assert len(refused) <= 20 + 5 * elapsed + 1  # the budget: a burst of 20, then 5 a second
    assert len(refused) < 200


@pytest.mark.parametrize(
    ("encoding", "status", "code"),
    [
        ("gzip", 400, "invalid_content_encoding"),
        ("deflate", 400, "invalid_content_encoding"),
        ("br", 415, "unsupported_content_encoding"),
        ("zstd", 415, "unsupported_content_encoding"),
        ("x-anything", 415, "unsupported_content_encoding"),
    ],
)
async def test_a_body_not_in_its_declared_encoding_is_a_client_error(
    encoding: str, status: int, code: str
) -> None:
    body = b"this is not compressed"
    async with deployment([ModelPlan("m")]) as gw:
        answer = await exchange(
            gw,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Type: application/json"
            b"\r\nContent-Encoding: "
            + encoding.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body,
        )
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), answer[:300]
    assert json.loads(payload)["error"]["code"] == code


async def test_100_continue_comes_only_after_the_key_and_the_declared_size_are_checked() -> None:
    """A stranger declaring a 10 GB body was invited to send it."""
    start = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    expect = b"Expect: 100-continue\r\n\r\n"
    auth = b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
    async with deployment([ModelPlan("m")]) as gw:
        no_key = await exchange(gw, start + b"Content-Length: 10000000000\r\n" + expect)
        assert no_key.startswith(b"HTTP/1.1 401"), no_key[:100]
        too_big = await exchange(gw, start + auth + b"Content-Length: 10000000000\r\n" + expect)
        assert too_big.startswith(b"HTTP/1.1 413"), too_big[:100]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            length = b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n"
            writer.write(start + auth + length + expect)
            async with asyncio.timeout(10):
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(body)
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
