"""Input guardrails with the official SDK: a model's policy blocks, redacts or logs what its
rules match in the prompt, before anything reaches the model service; the rule's id is
counted and logged, never the text it matched."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from actors.auth.keys import KeyScopes, new_key
from actors.ledger.actor import LedgerSettings
from gateway.guardrails.settings import InputLimits, Policy, Rule
from gateway.process.config import (
    AuthSettings,
    ConfigError,
    ConfiguredKey,
    LoggingSettings,
    parse_config,
)
from gateway.process.observability import BufferedLineLogger
from tests.gateway.harness import (
    ADMIN_KEY,
    API_KEY,
    READ_TIMEOUT_S,
    Deployment,
    ModelPlan,
    bounded_client,
    deployment,
)
from tests.gateway.test_ledger import rows
from tests.gateway.test_metrics import scrape

POLICY = Policy(
    name="pii",
    rules=(
        Rule(id="no-cards", detector="payment_card", action="block"),
        Rule(id="emails", detector="email", action="redact"),
        Rule(id="code-names", words=("bluebird", "nightjar"), action="redact"),
        Rule(id="tickets", regex=r"TICKET-\d{4}", action="log"),
    ),
)
EMAIL = "ada.lovelace@example.com"
STRICT_KEY, GHOST_KEY = new_key(), new_key()  # keys with their own policies


@asynccontextmanager
async def guarded(
    logging: LoggingSettings | None = None, usage: LedgerSettings | None = None
) -> AsyncIterator[Deployment]:
    plans = [ModelPlan("m", guardrails=("pii",), mock={"ttft": 0.0}), ModelPlan("open")]
    async with deployment(plans, guardrails=(POLICY,), logging=logging, usage=usage) as gw:
        yield gw


@asynccontextmanager
async def sdk(gw: Deployment, key: str = API_KEY) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=READ_TIMEOUT_S
    ) as client:
        yield client


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def sent_upstream(gw: Deployment, model: str = "m") -> str:
    body = gw.mocks[model][0].state.stats.last_body
    return json.dumps(body)


async def hits(gw: Deployment) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["rule"], dict(labels)["action"]): value
        for (name, labels), value in (await scrape(gw)).items()
        if name == "citadel_guardrail_hits_total"
    }


async def test_a_block_rule_refuses_the_request_before_the_model_sees_it() -> None:
    async with guarded() as gw, sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="m", messages=user("my card is 4111 1111 1111 1111, charge it")
            )
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["code"] == "content_policy_violation"
        assert "no-cards" in error["message"]
        assert "4111" not in json.dumps(error)
        assert gw.mocks["m"][0].state.stats.requests == 0
        assert (await hits(gw)) == {("no-cards", "block"): 1.0}


async def test_redact_rules_rewrite_the_prompt_and_the_rest_goes_through() -> None:
    async with guarded() as gw, sdk(gw) as client:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "Project Bluebird is confidential."},
            {"role": "user", "content": [{"type": "text", "text": f"Mail {EMAIL} today."}]},
        ]
        reply = await client.chat.completions.create(model="m", messages=messages)
        assert reply.choices[0].message.content
        upstream = sent_upstream(gw)
        assert EMAIL not in upstream
        assert "Bluebird" not in upstream
        assert "Mail [EMAIL] today." in upstream
        assert "Project [REDACTED] is confidential." in upstream
        assert (await hits(gw)) == {("emails", "redact"): 1.0, ("code-names", "redact"): 1.0}


async def test_a_log_rule_forwards_unchanged_and_logs_only_the_rule_id(
    capfd: pytest.CaptureFixture[str], production_logging: BufferedLineLogger
) -> None:
    async with guarded(LoggingSettings(access_log=True)) as gw, sdk(gw) as client:
        await client.chat.completions.create(
            model="m", messages=user("Status of TICKET-4242?"),
            extra_headers={"X-Request-ID": "guarded-1"},
        )  # fmt: skip
        assert "TICKET-4242" in sent_upstream(gw)
        assert (await hits(gw)) == {("tickets", "log"): 1.0}
    production_logging.flush()
    out = capfd.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line[:1] == "{"]
    access = next(line for line in lines if line.get("request_id") == "guarded-1")
    assert access["guardrails"] == ["tickets"]
    assert any(line.get("event") == "guardrail_fired" for line in lines)
    assert "TICKET-4242" not in out  # the rule's id, never what it matched


async def test_completions_and_embeddings_are_guarded_and_other_models_are_not() -> None:
    async with guarded() as gw, sdk(gw) as client:
        await client.completions.create(model="m", prompt=f"Write to {EMAIL}")
        assert EMAIL not in sent_upstream(gw)
        await client.embeddings.create(model="m", input=[f"{EMAIL}", "plain"])
        assert EMAIL not in sent_upstream(gw)
        await client.chat.completions.create(model="open", messages=user(f"Mail {EMAIL}"))
        assert EMAIL in sent_upstream(gw, "open")


def test_a_model_may_only_name_policies_that_exist() -> None:
    text = """
models:
  - name: m
    backends: [{url: "http://127.0.0.1:9"}]
    guardrails: [missing]
"""
    with pytest.raises(ConfigError, match="no guardrail policy named 'missing'"):
        parse_config(text)


def test_a_rule_has_exactly_one_detector() -> None:
    with pytest.raises(ValueError, match="exactly one of detector, regex, words or presidio"):
        Rule(id="x", detector="email", regex="a")
    with pytest.raises(ValueError, match="unknown detector"):
        Rule(id="x", detector="ssn")
    with pytest.raises(ValueError, match="not a valid regex"):
        Rule(id="x", regex="(")


def test_a_rule_applies_to_input_output_or_both() -> None:
    sides = {d: Rule(id="x", detector="email", direction=d) for d in ("input", "output", "both")}
    assert [(r.on_input, r.on_output) for r in sides.values()] == [
        (True, False), (False, True), (True, True)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="direction"):
        Rule.model_validate({"id": "x", "detector": "email", "direction": "sideways"})


async def test_the_ledger_and_the_admin_api_say_which_rules_are_in_force_and_fired(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "usage.db"
    async with guarded(usage=LedgerSettings(path=str(ledger), flush_interval=0.05)) as gw:
        async with sdk(gw) as client:
            await client.chat.completions.create(
                model="m", messages=user(f"TICKET-1234 for {EMAIL}")
            )
        async with bounded_client() as http:
            url = gw.url + "/admin/guardrails"
            async with http.get(url, headers={"Authorization": f"Bearer {API_KEY}"}) as refused:
                assert refused.status in (401, 403)
            async with http.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
                view = await r.json()
    assert view["models"] == {"m": ["pii"]}
    assert [rule["id"] for rule in view["policies"][0]["rules"]] == [
        "no-cards", "emails", "code-names", "tickets"
    ]  # fmt: skip
    (record,) = rows(ledger)
    assert set(record["guardrails"].split(",")) == {"emails", "tickets"}


LIMITS = Policy(
    name="tight",
    limits=InputLimits(max_prompt_tokens=50, max_messages=3, roles=("system", "user"),
                       tools=("get_weather",)),
)  # fmt: skip


@pytest.mark.parametrize(
    ("params", "rule", "param"),
    [
        ({"messages": user("word " * 300)}, "limits.max_prompt_tokens", "messages"),
        ({"messages": user("a") * 4}, "limits.max_messages", "messages"),
        (
            {"messages": [{"role": "assistant", "content": "I said so."}, *user("Did you?")]},
            "limits.roles",
            "messages",
        ),
        (
            {
                "messages": user("Run it"),
                "tools": [{"type": "function", "function": {"name": "rm_rf", "parameters": {}}}],
            },
            "limits.tools",
            "tools",
        ),
    ],
)
async def test_input_limits_as_policy_refuse_what_is_over_them(
    params: dict[str, Any], rule: str, param: str
) -> None:
    plans = [ModelPlan("m", guardrails=("tight",), mock={"ttft": 0.0})]
    async with deployment(plans, guardrails=(LIMITS,)) as gw, sdk(gw) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="m", **params)
        error = refused.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == ("content_policy_violation", param)
        assert gw.mocks["m"][0].state.stats.requests == 0
        assert (await hits(gw)) == {(rule, "block"): 1.0}
        allowed = await client.chat.completions.create(
            model="m", messages=[{"role": "system", "content": "Be brief."}, *user("Weather?")],
            tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        )  # fmt: skip
        assert allowed.choices


def test_the_strictest_limits_of_several_policies_apply() -> None:
    a = InputLimits(max_prompt_tokens=100, roles=("system", "user", "assistant"))
    b = InputLimits(max_prompt_tokens=50, max_messages=4, roles=("user", "assistant", "tool"))
    both = a.combined(b)
    assert both == InputLimits(max_prompt_tokens=50, max_messages=4, roles=("user", "assistant"))


async def test_a_keys_own_policies_add_to_its_models() -> None:
    strict = Policy(
        name="strict", rules=(Rule(id="no-ips", detector="ip_address", action="block"),)
    )
    scoped = [
        ConfiguredKey(id=key_id, secret_sha256=sha, scopes=KeyScopes(guardrails=policies))
        for (key_id, _, sha), policies in ((STRICT_KEY, ("strict",)), (GHOST_KEY, ("ghost",)))
    ]
    auth = AuthSettings(api_keys=(API_KEY,), keys=tuple(scoped))
    plans = [ModelPlan("m", guardrails=("pii",), mock={"ttft": 0.0})]
    async with deployment(plans, guardrails=(POLICY, strict), auth=auth) as gw:
        text = f"Ping 10.0.0.7 and mail {EMAIL}"
        async with sdk(gw) as plain:  # the model's policy only: redacted, not blocked
            await plain.chat.completions.create(model="m", messages=user(text))
            assert "10.0.0.7" in sent_upstream(gw)
            assert EMAIL not in sent_upstream(gw)
        async with sdk(gw, STRICT_KEY[1]) as strict_client:
            with pytest.raises(openai.BadRequestError, match="no-ips"):
                await strict_client.chat.completions.create(model="m", messages=user(text))
            await strict_client.chat.completions.create(model="m", messages=user(f"Mail {EMAIL}"))
            assert EMAIL not in sent_upstream(gw)  # the model's rules still apply
        async with sdk(gw, GHOST_KEY[1]) as ghost:
            with pytest.raises(openai.PermissionDeniedError, match="ghost"):
                await ghost.chat.completions.create(model="m", messages=user("hello"))
        assert gw.mocks["m"][0].state.stats.requests == 2
