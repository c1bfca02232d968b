"""Output guardrails with the official SDK: a model's output rules redact, block or log what
its answers say, whole and streamed; in a stream, a match split across events at any position
is still caught, and only a possible match in progress is held back.

The mock services echo the last message (`echo`), one event per piece between the
separator characters, so a test decides exactly where a stream's events split."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest
import yaml

from actors.auth.keys import KeyScopes, new_key
from actors.ledger.actor import LedgerSettings
from gateway.cache.settings import CachePolicy
from gateway.guardrails.settings import DETECTORS, Policy, Rule
from gateway.mock.server import ECHO_SEPARATOR as CUT
from gateway.process.config import AuthSettings, ConfiguredKey, LoggingSettings
from gateway.process.observability import BufferedLineLogger
from tests.gateway.guardrails.test_detectors import FOUND
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
    mock_service,
)
from tests.gateway.test_guardrails import hits, sdk, user
from tests.gateway.test_ledger import rows
from tests.gateway.test_reload import gateway_from, reload

OUTPUT = Policy(
    name="answers",
    rules=(
        Rule(id="no-keys", detector="api_key", direction="output", action="block"),
        Rule(id="emails", detector="email", direction="both", action="redact"),
        Rule(id="cards", detector="payment_card", direction="output", action="redact"),
        Rule(id="tickets", regex=r"TICKET-\d{4}", direction="output", action="log"),
    ),
)
EMAIL = "grace.hopper@example.org"
CARD = "4111 1111 1111 1111"
SECRET = "sk-citadel-0123456789ab-" + "Zq3" * 12  # the gateway's own key shape
ECHO = {"ttft": 0.0, "echo": True, "tokens_per_s": 10_000}


@asynccontextmanager
async def echoing(
    *,
    usage: LedgerSettings | None = None,
    logging: LoggingSettings | None = None,
    auth: AuthSettings | None = None,
    policies: tuple[Policy, ...] = (OUTPUT,),
    model_policies: tuple[str, ...] = ("answers",),
    cache: CachePolicy | None = None,
) -> AsyncIterator[Deployment]:
    plans = [ModelPlan("m", guardrails=model_policies, mock=ECHO, cache=cache)]
    async with deployment(
        plans, guardrails=policies, usage=usage, logging=logging, auth=auth
    ) as gw:
        yield gw


async def read(
    client: openai.AsyncOpenAI, text: str, pieces: list[str], finishes: list[str]
) -> None:
    """A streamed answer to `text`, its content pieces and finish reasons kept as they come
    (what arrived before an error too)."""
    stream = await client.chat.completions.create(model="m", messages=user(text), stream=True)
    async for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)


async def streamed(client: openai.AsyncOpenAI, text: str) -> tuple[str, list[str]]:
    """The content and the finish reasons of a streamed answer to `text`."""
    pieces: list[str] = []
    finishes: list[str] = []
    await read(client, text, pieces, finishes)
    return "".join(pieces), finishes


async def test_redact_rewrites_a_whole_answer_and_the_rest_is_unchanged() -> None:
    async with echoing() as gw, sdk(gw) as client:
        # The email is an input rule too: it reaches the model (and its echo) redacted.
        said = f"Card {CARD} and {EMAIL}, thanks."
        reply = await client.chat.completions.create(model="m", messages=user(said))
        assert reply.choices[0].message.content == "Card [CARD] and [EMAIL], thanks."
        assert reply.choices[0].finish_reason == "stop"
        text = await client.completions.create(model="m", prompt=f"Pay with {CARD}.")
        assert text.choices[0].text == "Pay with [CARD]."
        assert (await hits(gw)) == {("emails", "redact"): 1.0, ("cards", "redact"): 2.0}


EVERY_DETECTOR = Policy(
    name="every",
    rules=tuple(
        Rule(id=name, detector=name, direction="output", action="redact") for name in DETECTORS
    ),
)


@pytest.mark.parametrize("name", FOUND)
async def test_every_detector_redacts_answers_whole_and_split_mid_match(name: str) -> None:
    async with echoing(policies=(EVERY_DETECTOR,), model_policies=("every",)) as gw:
        detector, examples = FOUND[name]
        async with sdk(gw) as client:
            for example in examples:
                middle = len(example) // 2
                said = f"see {example[:middle]}{CUT}{example[middle:]}{CUT} done"
                expected = f"see {detector.placeholder} done"
                assert (await streamed(client, said))[0] == expected, example
                reply = await client.chat.completions.create(model="m", messages=user(said))
                assert reply.choices[0].message.content == expected, example


async def test_a_card_split_across_events_at_every_position_is_redacted() -> None:
    async with echoing() as gw, sdk(gw) as client:
        for cut in range(1, len(CARD)):
            said = f"Pay with {CARD[:cut]}{CUT}{CARD[cut:]}{CUT}, now."
            assert await streamed(client, said) == ("Pay with [CARD], now.", ["stop"]), cut
        assert (await hits(gw)) == {("cards", "redact"): len(CARD) - 1}


async def test_a_key_split_across_events_at_every_position_stops_the_stream() -> None:
    key = SECRET.replace("sk-citadel", "sk-proj")
    async with echoing() as gw, sdk(gw) as client:
        for cut in range(1, len(key)):
            said = f"Use {key[:cut]}{CUT}{key[cut:]}{CUT} now."
            pieces: list[str] = []
            with pytest.raises(openai.APIError, match="no-keys"):
                await read(client, said, pieces, [])
            assert "".join(pieces) == "Use ", cut  # not one character of the key
        assert (await hits(gw)) == {("no-keys", "block"): len(key) - 1}


async def test_a_stream_holds_back_only_a_possible_match_in_progress() -> None:
    """Prose flows through as it arrives: each event's text is released by the next event,
    but for its last word (which could begin an e-mail address)."""
    async with echoing() as gw, sdk(gw) as client:
        words = ["The ", "weather ", "is ", "sunny ", "today, ", "and ", "mild."]
        stream = await client.chat.completions.create(
            model="m", messages=user(CUT.join(words)), stream=True
        )
        released = [c.choices[0].delta.content async for c in stream if c.choices]
        # The role chunk, then each word released as soon as the next one shows it ended.
        assert "".join(r or "" for r in released) == "".join(words)
        assert [r for r in released if r] == words
        assert gw.mocks["m"][0].state.stats.streams_completed == 1


async def test_block_stops_a_stream_with_content_filter_and_an_error_event(tmp_path: Path) -> None:
    ledger = tmp_path / "usage.db"
    async with echoing(usage=LedgerSettings(path=str(ledger), flush_interval=0.05)) as gw:
        async with sdk(gw) as client:
            said = CUT.join(["Here ", "is ", "the ", "key: ", SECRET[:20], SECRET[20:], " ok"])
            pieces: list[str] = []
            finishes: list[str] = []
            with pytest.raises(openai.APIError) as stopped:
                await read(client, said, pieces, finishes)
            assert "no-keys" in str(stopped.value)
            assert SECRET[:12] not in json.dumps(stopped.value.body)
            assert "".join(pieces) == "Here is the key: "  # nothing of the key
            assert finishes[-1] == "content_filter"
            # The replica did nothing wrong: it serves the next request, as healthy as before.
            again = await client.chat.completions.create(model="m", messages=user("hi there"))
            assert again.choices[0].message.content == "hi there"
        assert (await hits(gw)) == {("no-keys", "block"): 1.0}
    (record, _) = sorted(rows(ledger), key=lambda row: row["ts"])
    assert record["status"] == 200
    assert record["guardrails"] == "no-keys"
    assert record["completion_tokens"] > 0  # what the model spent is recorded


async def test_block_withholds_a_whole_answer_with_content_filter() -> None:
    async with echoing() as gw, sdk(gw) as client:
        reply = await client.chat.completions.create(
            model="m", messages=user(f"The key is {SECRET}.")
        )
        choice = reply.choices[0]
        assert (choice.message.content, choice.finish_reason) == (None, "content_filter")
        assert reply.usage is not None
        assert reply.usage.completion_tokens > 0
        text = await client.completions.create(model="m", prompt=f"key {SECRET}")
        assert (text.choices[0].text, text.choices[0].finish_reason) == ("", "content_filter")


async def test_a_log_rule_counts_output_and_logs_only_the_rule_id(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    logging = LoggingSettings(access_log=True, log_prompts=True)
    async with echoing(logging=logging) as gw, sdk(gw) as client:
        content, _ = await streamed(client, f"Re TICKET-{CUT}4242, {CARD[:7]}{CUT}{CARD[7:]}")
        assert content == "Re TICKET-4242, [CARD]"  # logged, not changed
        assert (await hits(gw)) == {("tickets", "log"): 1.0, ("cards", "redact"): 1.0}
    production_logging.flush()
    out = capfd.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line[:1] == "{"]
    access = next(line for line in lines if line.get("event") == "request")
    assert set(access["guardrails"]) == {"tickets", "cards"}
    transcript = next(line for line in lines if line.get("event") == "transcript")
    assert "[CARD]" in transcript["completion"]
    # Neither the prompt log nor any other line holds what a rule matched, whatever its action.
    assert "TICKET-4242" not in out
    assert CARD not in out, [line for line in out.splitlines() if CARD in line]


NO_IPS = Policy(
    name="no-ips",
    rules=(Rule(id="ips", detector="ip_address", direction="output", action="redact"),),
)


def strict_key() -> tuple[AuthSettings, str]:
    """API_KEY, and a key of its own with the NO_IPS policy (its secret)."""
    key_id, secret, sha = new_key()
    scoped = ConfiguredKey(id=key_id, secret_sha256=sha, scopes=KeyScopes(guardrails=("no-ips",)))
    return AuthSettings(api_keys=(API_KEY,), keys=(scoped,)), secret


async def test_a_keys_own_policy_adds_output_rules_for_that_key_only() -> None:
    auth, secret = strict_key()
    async with echoing(auth=auth, policies=(OUTPUT, NO_IPS)) as gw:
        said = f"Host 10.0.0.7{CUT} up, mail {EMAIL}"
        async with sdk(gw) as plain:
            assert (await streamed(plain, said))[0] == "Host 10.0.0.7 up, mail [EMAIL]"
        async with sdk(gw, secret) as strict:
            assert (await streamed(strict, said))[0] == "Host [IP] up, mail [EMAIL]"


async def test_a_redacted_answer_is_cached_as_sent_and_a_blocked_one_never() -> None:
    async with echoing(cache=CachePolicy(requests="always")) as gw, sdk(gw) as client:
        for _ in range(2):
            reply = await client.chat.completions.create(
                model="m", messages=user(f"card {CARD[:9]}{CUT}{CARD[9:]}")
            )
            assert reply.choices[0].message.content == "card [CARD]"
            content, _ = await streamed(client, f"card {CARD[:9]}{CUT}{CARD[9:]}")
            assert content == "card [CARD]"
        for _ in range(2):
            with pytest.raises(openai.APIError):
                await streamed(client, f"key {SECRET}")
            withheld = await client.chat.completions.create(
                model="m", messages=user(f"the key {SECRET}")
            )
            assert withheld.choices[0].finish_reason == "content_filter"
        mock = gw.mocks["m"][0].state.stats
        assert mock.requests == 5  # the answer once (for both formats), the blocked ones twice


async def test_a_cached_answer_is_only_served_under_the_output_rules_it_passed() -> None:
    """Keys sharing a cache namespace, one with an output policy of its own: an answer the
    other key cached unredacted is not served to it."""
    auth, secret = strict_key()
    shared = CachePolicy(requests="always", namespace="shared")
    async with echoing(auth=auth, policies=(OUTPUT, NO_IPS), cache=shared) as gw:
        said = "Host 10.0.0.7 is up"
        async with sdk(gw) as plain, sdk(gw, secret) as strict:
            for _ in range(2):
                assert (await streamed(plain, said))[0] == said
                assert (await streamed(strict, said))[0] == "Host [IP] is up"
        assert gw.mocks["m"][0].state.stats.requests == 2  # one entry per set of rules


async def test_a_reload_brings_new_output_rules(tmp_path: Path) -> None:
    async with mock_service(model="m", echo=True, ttft=0.0) as mock:
        path = tmp_path / "gateway.yaml"

        def write(policies: list[str]) -> None:
            config = {
                "listen": "127.0.0.1:0",
                "auth": {"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY]},
                "logging": {"access_log": False},
                "guardrails": [json.loads(OUTPUT.model_dump_json())],
                "models": [{"name": "m", "backends": [{"url": mock.url}], "guardrails": policies}],
            }
            path.write_text(yaml.safe_dump(config))

        write([])
        async with (
            gateway_from(path) as server,
            bounded_client() as http,
            openai.AsyncOpenAI(
                base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0,
                timeout=READ_TIMEOUT_S,
            ) as client,
        ):  # fmt: skip
            assert (await streamed(client, f"pay {CARD}"))[0] == f"pay {CARD}"
            write(["answers"])
            await reload(http, server.url)
            assert (await streamed(client, f"pay {CARD}"))[0] == "pay [CARD]"
