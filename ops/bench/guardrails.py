"""What the guardrails cost: the built-in detectors over a prompt, the default policy set on a
non-streaming request and answer, and on a stream (CPU per event, and time to first token).

    python -m ops.bench.guardrails [--calls 5000] [--streams 200]

The default policy set: every built-in detector, `redact`, on input and output (the most any
operator can ask of the built-ins; fewer rules cost less).

1. Every detector over 2 KB of text: prose, text full of numbers, text full of matches.
2. A non-streaming request: the request's texts checked (its JSON parsed, as the edge does
   once for the guardrails and the cache) for a 2 KB prompt; the answer's texts checked for a
   2 KB answer.
3. A stream, in the process: the stream guard's CPU per event over the events of a 2 KB
   answer, a token (about 4 characters) per event, as vLLM sends them.
4. A stream over HTTP: a mock model service sending 32 tokens 20 ms apart (50 events/s), and
   two gateways in front of it, with and without the policy set: time to the first event and
   to the first text (the window holds a word until the next event shows where it ends: it
   may be an e-mail address's start), p50 and p99, and the process's CPU time per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable

import aiohttp
import uvloop

from gateway.guardrails.answers import StreamGuard, check_answer
from gateway.guardrails.detectors import find_all
from gateway.guardrails.engine import check_input, guard_of
from gateway.guardrails.settings import DETECTORS, Policy, Rule
from gateway.mock.server import MockSettings, create_mock_app
from gateway.process.config import GatewayConfig
from gateway.process.server import start_gateway, start_server

PROSE = "The quarterly figures were steady across 4 regions; see the notes in section 3. "
NUMBERS = "Order 1234 shipped on 2026-12-02 to 10.0.0.7, invoice 998877 for 42.50 EUR. "
PII = (
    "Reach ada@example.com or +44 20 7946 0958; card 4111 1111 1111 1111, IBAN "
    "DE89 3704 0044 0532 0130 00, host 10.0.0.7. "
)
DEFAULT_SET = Policy(
    name="default",
    rules=tuple(
        Rule(id=name, detector=name, direction="both", action="redact") for name in DETECTORS
    ),
)


def sample(unit: str, size: int = 2048) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def per_call(calls: int, work: Callable[[], object]) -> float:
    """µs per call, the best of three runs (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def detectors(calls: int) -> None:
    print("\n| 2 KB of | matches | µs per call |\n|---|---:|---:|")
    for name, unit in (("prose", PROSE), ("numbers", NUMBERS), ("PII", PII)):
        text = sample(unit)
        cost = per_call(calls, lambda text=text: find_all(text))  # type: ignore[misc]
        print(f"| {name} | {len(find_all(text))} | {cost:.1f} |")


def requests(calls: int) -> None:
    guard = guard_of((DEFAULT_SET,), ("default",))
    print("\n| the default set on | 2 KB of | µs per request |\n|---|---|---:|")
    for name, unit in (("prose", PROSE), ("PII", PII)):
        raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": sample(unit)}]})
        cost = per_call(calls, lambda raw=raw: check_input(json.loads(raw), guard.input))  # type: ignore[misc]
        print(f"| a request (parse + check) | {name} | {cost:.1f} |")
        answer = json.dumps(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": sample(unit)},
                          "finish_reason": "stop"}]}
        ).encode()  # fmt: skip
        cost = per_call(calls, lambda answer=answer: check_answer(answer, guard.output))  # type: ignore[misc]
        print(f"| an answer | {name} | {cost:.1f} |")


def chunk(content: str) -> bytes:
    body = {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None,
                     "finish_reason": None}],
    }  # fmt: skip
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def stream_cpu(rounds: int) -> None:
    guard = guard_of((DEFAULT_SET,), ("default",))
    print("\n| a stream of | events | µs per event | held at most (characters) |")
    print("|---|---:|---:|---:|")
    for name, unit in (("prose", PROSE), ("PII", PII)):
        text = sample(unit)
        events = [chunk(text[i : i + 4]) for i in range(0, len(text), 4)]
        held = 0

        def run(events: list[bytes] = events) -> None:
            nonlocal held
            stream = StreamGuard(guard.output)
            for event in events:
                stream.feed(event)
                held = max(held, stream.held)
            stream.feed(b"data: [DONE]\n\n")

        cost = per_call(max(1, rounds), run) / len(events)
        print(f"| 2 KB of {name} | {len(events)} | {cost:.1f} | {held} |")


async def http_streams(count: int) -> None:
    mock = await start_server(
        create_mock_app(MockSettings(model="m", ttft=0.0, tokens_per_s=50, length=32)),
        "127.0.0.1",
        0,
    )
    results = {}
    try:
        for guarded in (False, True):
            config = GatewayConfig.model_validate(
                {
                    "listen": "127.0.0.1:0",
                    "logging": {"access_log": False},
                    "guardrails": [DEFAULT_SET.model_dump(mode="json")] if guarded else [],
                    "models": [
                        {
                            "name": "m",
                            "backends": [{"url": mock.url}],
                            "guardrails": ["default"] if guarded else [],
                        }
                    ],
                }
            )
            gateway = await start_gateway(config)
            try:
                results[guarded] = await _streams(gateway.url, count)
            finally:
                await gateway.close()
    finally:
        await mock.close()
    print(
        "\n| gateway | first event p50 / p90 / p99 (ms) | first text p50 / p90 / p99 (ms) | "
        "CPU per event (µs) |\n|---|---|---|---:|"
    )
    base_cpu = results[False][2]
    for guarded, (first, token, cpu) in results.items():
        name = "with the default set" if guarded else "without guardrails"
        extra = "" if not guarded else f" (+{cpu - base_cpu:.1f})"
        print(
            f"| {name} | {_p(first, 50):.1f} / {_p(first, 90):.1f} / {_p(first, 99):.1f} | "
            f"{_p(token, 50):.1f} / {_p(token, 90):.1f} / {_p(token, 99):.1f} | {cpu:.1f}{extra} |"
        )


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if q < 100 else max(values) * 1000


async def _streams(url: str, count: int) -> tuple[list[float], list[float], float]:
    """`count` streams, 10 at a time: time to the first event and to the first text (not
    only white space), and the process's CPU time per event relayed."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    first: list[float] = []
    token: list[float] = []
    events = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def one() -> None:
            nonlocal events
            started = time.perf_counter()
            seen_event = seen_token = False
            async with http.post(f"{url}/v1/chat/completions", json=body) as response:
                async for line in response.content:
                    if not line.startswith(b"data: {"):
                        continue
                    events += 1
                    if not seen_event:
                        first.append(time.perf_counter() - started)
                        seen_event = True
                    if not seen_token:
                        choices = json.loads(line[6:]).get("choices") or [{}]
                        if ((choices[0].get("delta") or {}).get("content") or "").strip():
                            token.append(time.perf_counter() - started)
                            seen_token = True

        await asyncio.gather(*(one() for _ in range(10)))  # warm-up
        first.clear()
        token.clear()
        events = 0
        cpu = time.process_time()
        for _ in range(count // 10):
            await asyncio.gather(*(one() for _ in range(10)))
        cpu = time.process_time() - cpu
    return first, token, cpu / max(1, events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    detectors(args.calls)
    requests(args.calls)
    stream_cpu(max(1, args.calls // 100))
    uvloop.run(http_streams(args.streams))


if __name__ == "__main__":
    main()
