"""Virtual models, context-window fallback and fallback chains, in the RouterActor."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from actors.backend.settings import BackendSettings
from actors.kernel import ActorRef, ActorSystem, ChildSpec, SyncActor
from actors.router.actor import (
    ListModels,
    ModelSettings,
    Route,
    RouteDecision,
    RouterActor,
    RouterSettings,
    UnknownModel,
)
from actors.router.balancer import ReplicaLoad
from actors.router.rules import (
    RequestTraits,
    RoutingRule,
    RuleCondition,
    VirtualModelSettings,
    estimate_prompt_tokens,
    prefix_key,
)


def model(name: str, window: int, **extra: object) -> ModelSettings:
    return ModelSettings.model_validate(
        {
            "name": name,
            "context_window": window,
            "backends": [BackendSettings(url="http://127.0.0.1:1")],
            **extra,
        }
    )


SETTINGS = RouterSettings(
    models=(
        model("small", 4096, fallbacks=("medium",), context_fallback="large"),
        model("medium", 8192),
        model("large", 32768),
    ),
    virtual_models=(
        VirtualModelSettings(
            name="auto",
            candidates=("small", "medium", "large"),
            rules=(
                RoutingRule(name="tools", when=RuleCondition(has_tools=True), prefer=("medium",)),
                RoutingRule(
                    name="code",
                    when=RuleCondition(content_matches=r"\bdef |\bclass "),
                    prefer=("large",),
                ),
                RoutingRule(
                    name="premium",
                    when=RuleCondition(header={"X-Tier": "premium"}),
                    prefer=("large",),
                ),
            ),
        ),
    ),
)


class Nobody(SyncActor):
    """Stands in for a BackendActor: the router only hands out its ref."""


@pytest.fixture
async def router() -> AsyncIterator[tuple[ActorRef, dict[str, ReplicaLoad]]]:
    system = ActorSystem()
    loads = {f"{m.name}#0": ReplicaLoad(f"{m.name}#0") for m in SETTINGS.models}
    for m in SETTINGS.models:
        await system.spawn(ChildSpec(f"{m.name}#0", Nobody))
    ref = await system.spawn(
        ChildSpec("router", lambda: RouterActor(SETTINGS, system.lookup, loads))
    )
    yield ref, loads
    await system.shutdown()


async def route(ref: ActorRef, model_id: str, **traits: object) -> RouteDecision:
    decision: RouteDecision = await ref.ask(Route(model_id, RequestTraits(**traits)))  # type: ignore[arg-type]
    return decision


async def test_auto_picks_the_cheapest_model_that_fits(
    router: tuple[ActorRef, dict[str, ReplicaLoad]],
) -> None:
    ref, _ = router
    assert (await route(ref, "auto", prompt_tokens=100)).model == "small"
    assert (await route(ref, "auto", prompt_tokens=5000)).model == "medium"
    assert (await route(ref, "auto", prompt_tokens=3000, max_tokens=2000)).model == "medium"
    long = await route(ref, "auto", prompt_tokens=20000)
    assert long.model == "large"
    assert long.reason.startswith("auto: default order")


async def test_auto_rules_match_tools_content_and_headers(
    router: tuple[ActorRef, dict[str, ReplicaLoad]],
) -> None:
    ref, _ = router
    tools = await route(ref, "auto", has_tools=True)
    assert (tools.model, tools.reason.split(";")[0]) == ("medium", "auto: rule tools")
    assert (await route(ref, "auto", text="please fix: def f(x):")).model == "large"
    assert (await route(ref, "auto", headers={"x-tier": "premium"})).model == "large"
    assert (await route(ref, "auto", headers={"x-tier": "basic"})).model == "small"


async def test_auto_skips_a_model_with_no_usable_replica(
    router: tuple[ActorRef, dict[str, ReplicaLoad]],
) -> None:
    ref, loads = router
    loads["small#0"].healthy = False
    assert (await route(ref, "auto")).model == "medium"


async def test_context_overflow_goes_to_the_larger_model(
    router: tuple[ActorRef, dict[str, ReplicaLoad]],
) -> None:
    ref, _ = router
    fits = await route(ref, "small", prompt_tokens=1000)
    assert (fits.model, fits.reason) == ("small", "requested")
    overflow = await route(ref, "small", prompt_tokens=6000)
    assert overflow.model == "large"
    assert overflow.reason.startswith("context: ~6000 tokens exceed small's 4096")


async def test_fallback_chain_when_every_replica_is_unusable(
    router: tuple[ActorRef, dict[str, ReplicaLoad]],
) -> None:
    ref, loads = router
    loads["small#0"].blocked_until = 1e12  # circuit open for good
    fallback = await route(ref, "small")
    assert fallback.model == "medium"
    assert fallback.reason == "fallback: no usable replica of small"
    opted_out = await route(ref, "small", allow_fallback=False)
    assert opted_out.model == "small"


async def test_virtual_models_are_listed_and_unknown_ids_refused(
    router: tuple[ActorRef, dict[str, ReplicaLoad]],
) -> None:
    ref, _ = router
    entries = await ref.ask(ListModels())
    assert [e.id for e in entries] == ["small", "medium", "large", "auto"]
    with pytest.raises(UnknownModel):
        await route(ref, "gpt-4o")


def test_settings_refuse_unknown_references_and_smaller_context_fallbacks() -> None:
    with pytest.raises(ValueError, match="not a configured model"):
        RouterSettings(models=(model("a", 4096, fallbacks=("nope",)),))
    with pytest.raises(ValueError, match="larger context window"):
        RouterSettings(models=(model("a", 4096, context_fallback="b"), model("b", 2048)))
    with pytest.raises(ValueError, match="used twice"):
        RouterSettings(
            models=(model("a", 4096),),
            virtual_models=(VirtualModelSettings(name="a", candidates=("a",)),),
        )
    with pytest.raises(ValueError, match="regular expression"):
        RuleCondition(content_matches="(")


def test_prompt_tokens_are_estimated_from_messages_and_prompts() -> None:
    from gateway.http.schemas import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    )
    tokens, text = estimate_prompt_tokens(body.messages)
    assert tokens == 4 + 100
    assert text == "x" * 400
    assert estimate_prompt_tokens(None, [1, 2, 3])[0] == 3


@dataclass
class Message:
    role: str
    content: object


def test_the_affinity_key_is_the_conversations_first_two_messages_on_every_machine() -> None:
    system, first = Message("system", "be brief"), Message("user", "hi")
    key = prefix_key([system, first])
    assert key == prefix_key([system, first, Message("assistant", "hello")])  # later turns
    assert key != prefix_key([system, Message("user", "hi!")])
    assert key != prefix_key([Message("user", "be brief"), first])  # the role counts
    # Role and content are delimited: moving a character across the boundary changes it.
    assert prefix_key([Message("ab", "c")]) != prefix_key([Message("a", "bc")])
    assert prefix_key([Message("u", "a"), Message("u", "b")]) != prefix_key([Message("u", "ab")])
    # Fixed by its construction (BLAKE2b, 8 bytes, big-endian), never Python's hash().
    digest = hashlib.blake2b(b"system\x00be brief\x01user\x00hi\x01", digest_size=8)
    assert key == int.from_bytes(digest.digest(), "big")
    parts = [{"type": "text", "text": "hi"}]
    assert prefix_key([Message("user", parts)]) != prefix_key([Message("user", None)])
    other = [{"type": "text", "text": "bye"}]
    assert prefix_key([Message("user", parts)]) != prefix_key([Message("user", other)])
    assert prefix_key([Message("user", None)]) == int.from_bytes(
        hashlib.blake2b(b"user\x00\x01", digest_size=8).digest(), "big"
    )


def test_estimates_count_every_message_part_and_prompt_form() -> None:
    from gateway.http.schemas import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "a" * 8},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "b" * 8},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                    ],
                },
            ],
        }
    )
    tokens, text = estimate_prompt_tokens(body.messages)
    assert text == "a" * 8 + "\n" + "b" * 8
    assert tokens == 2 * 4 + (17 + 3) // 4
    assert estimate_prompt_tokens(None, "c" * 8) == (2, "c" * 8)
    assert estimate_prompt_tokens(None, ["ab", "cd", 7, [1, 2, 3]]) == (1 + 3 + 2, "ab\ncd")
    assert estimate_prompt_tokens(None, None) == (0, "")


def test_conditions_hold_at_their_bounds_and_all_must_hold() -> None:
    traits = RequestTraits(
        prompt_tokens=100,
        headers={"x-tier": "gold"},
        metadata={"team": "search", "n": 3},
    )
    assert RuleCondition(min_prompt_tokens=100, max_prompt_tokens=100).matches(traits)
    assert not RuleCondition(max_prompt_tokens=99).matches(traits)
    assert not RuleCondition(min_prompt_tokens=101).matches(traits)
    assert RuleCondition(header={"X-Tier": "gold"}).matches(traits)
    assert not RuleCondition(header={"x-tier": "gold", "x-other": "1"}).matches(traits)
    assert RuleCondition(metadata={"team": "search", "n": "3"}).matches(traits)
    assert not RuleCondition(metadata={"team": "ads"}).matches(traits)
    assert not RuleCondition(metadata={"team": "search", "missing": "None"}).matches(traits)
    assert not RuleCondition(metadata={"team": "search", "n": "4"}).matches(traits)
    assert RuleCondition().matches(traits)
    tools = RequestTraits(has_tools=True, json_mode=False, text="Please Translate this")
    assert RuleCondition(has_tools=True, json_mode=False).matches(tools)
    assert not RuleCondition(has_tools=False).matches(tools)
    assert not RuleCondition(json_mode=True).matches(tools)
    assert RuleCondition(content_matches="translate").matches(tools)  # any case
    assert not RuleCondition(content_matches="summar").matches(tools)


def test_traits_permit_only_the_keys_models() -> None:
    assert RequestTraits().permits("anything")
    scoped = RequestTraits(allowed=frozenset({"phi"}))
    assert scoped.permits("phi")
    assert not scoped.permits("mixtral")
    assert RequestTraits(prompt_tokens=10, max_tokens=5).needed_tokens == 15
    assert RequestTraits(prompt_tokens=10).needed_tokens == 10
