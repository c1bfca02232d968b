"""The optional Presidio detector (gateway.guardrails.presidio), with Presidio's own pattern
recognizers over a blank spaCy pipeline (no model download: the machine has no internet):
typed placeholders, whole texts and streams split at every position, and a configuration
that names it where it is not installed refused with the way to install it."""

from __future__ import annotations

import pytest
import spacy

from gateway.guardrails import presidio
from gateway.guardrails.engine import Findings, compile_rule, scan
from gateway.guardrails.presidio import PresidioEngines
from gateway.guardrails.settings import Policy, PresidioDetector, Rule
from gateway.guardrails.window import SlidingWindow
from gateway.mock.server import ECHO_SEPARATOR as CUT
from gateway.process.config import LoggingSettings
from tests.gateway.harness import ModelPlan, deployment
from tests.gateway.test_guardrails import hits, sdk, user

SSN, WALLET = "536-90-4399", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"


@pytest.fixture(scope="module")
def blank_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("spacy-blank-en")
    spacy.blank("en").to_disk(path)
    return str(path)


@pytest.fixture(scope="module")
def engines() -> PresidioEngines:
    return PresidioEngines()


def rule(model: str, **extra: object) -> Rule:
    detector = PresidioDetector(entities=("US_SSN", "CRYPTO"), model=model, score_threshold=0.3)
    return Rule.model_validate({"id": "pii", "presidio": detector, "action": "redact", **extra})


def test_presidio_finds_what_the_built_ins_do_not_with_typed_placeholders(
    blank_model: str, engines: PresidioEngines
) -> None:
    compiled = compile_rule(rule(blank_model), engines)
    text = f"SSN {SSN}, wallet {WALLET}, ticket 536-90."
    findings = Findings()
    assert scan(text, (compiled,), findings) == "SSN [US_SSN], wallet [CRYPTO], ticket 536-90."
    assert list(findings.fired) == ["pii"]
    named = compile_rule(rule(blank_model, placeholder="[GONE]"), engines)
    assert scan(text, (named,), Findings()).count("[GONE]") == 2


def test_presidio_in_a_stream_at_every_split_holds_its_window(
    blank_model: str, engines: PresidioEngines
) -> None:
    compiled = compile_rule(rule(blank_model, direction="output"), engines)
    text = f"Your SSN is {SSN} and nothing else matters here."
    expected = scan(text, (compiled,), Findings())
    for cut in range(len(text) + 1):
        window, findings = SlidingWindow((compiled,)), Findings()
        out = window.push(text[:cut], findings) + window.push(text[cut:], findings)
        assert window.held <= 32 + len(SSN)  # its window, or a match reaching into it
        assert out + window.flush(findings) == expected, cut


def test_a_presidio_rule_where_presidio_is_missing_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presidio, "installed", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'citadel-gateway\[presidio\]'"):
        PresidioDetector(entities=("PERSON",))


async def test_presidio_rules_through_the_gateway_in_and_out(blank_model: str) -> None:
    detector = PresidioDetector(entities=("US_SSN",), model=blank_model, score_threshold=0.3)
    policy = Policy(
        name="presidio",
        rules=(Rule(id="ssn", presidio=detector, direction="both", action="redact"),),
    )
    plans = [ModelPlan("m", guardrails=("presidio",), mock={"ttft": 0.0, "echo": True})]
    async with (
        deployment(plans, guardrails=(policy,), logging=LoggingSettings(access_log=False)) as gw,
        sdk(gw) as client,
    ):
        reply = await client.chat.completions.create(model="m", messages=user(f"SSN {SSN}."))
        assert reply.choices[0].message.content == "SSN [US_SSN]."
        assert SSN not in str(gw.mocks["m"][0].state.stats.last_body)
        stream = await client.chat.completions.create(
            model="m", messages=user(f"ok{CUT} then"), stream=True
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == (
            "ok then"
        )
        assert (await hits(gw)) == {("ssn", "redact"): 1.0}
