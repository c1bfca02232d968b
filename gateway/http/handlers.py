"""The OpenAI-compatible endpoints. Each handler validates what the gateway needs, records on
the request's Exchange what it acquires (the route, the admission), and hands it to
gateway.upstream.forward for the tries; the Exchange's exit gives everything back."""

from __future__ import annotations

from aiohttp import web

from actors.auth.actor import Principal
from actors.auth.keys import Endpoint
from actors.limiter.local import LimitSpec
from actors.router.actor import ListModels, ModelEntry, Route, RouteDecision, UnknownModel
from actors.router.rules import RequestTraits, estimate_prompt_tokens, prefix_key
from gateway.http import caching
from gateway.http.asks import ask
from gateway.http.auth import allowed_models, authenticate, require_model
from gateway.http.body import later_continue, read_body
from gateway.http.errors import InvalidRequest, NotFound
from gateway.http.guarding import guard_request
from gateway.http.limiter import subjects_of
from gateway.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from gateway.http.state import STATE, GatewayState
from gateway.upstream.attempt import UpstreamCall
from gateway.upstream.exchange import EXCHANGE, Exchange
from gateway.upstream.failures import CONTEXT_LENGTH_EXCEEDED
from gateway.upstream.forward import forward
from gateway.upstream.transcript import Transcript

NO_LIMITS = LimitSpec()


NO_FALLBACK_HEADER = "x-citadel-no-fallback"
_JSON_FORMATS = frozenset({"json_object", "json_schema"})


def allows_fallback(request: web.Request) -> bool:
    return request.headers.get(NO_FALLBACK_HEADER, "").lower() not in ("1", "true", "yes")


def traits_of(
    request: web.Request,
    body: ChatCompletionRequest | CompletionRequest,
    *,
    affinity: bool,
    allowed: frozenset[str] | None,
) -> RequestTraits:
    """What routing may look at, extracted once from the validated body. The prefix hash is
    computed only when some model uses prefix affinity."""
    key: int | None = None
    has_tools = json_mode = False
    if isinstance(body, ChatCompletionRequest):
        prompt_tokens, text = estimate_prompt_tokens(body.messages)
        budget = body.output_budget
        if affinity:
            key = prefix_key(body.messages)
        has_tools = bool(body.tools or body.functions)
        response_format = body.response_format
        json_mode = response_format is not None and response_format.type in _JSON_FORMATS
    else:
        prompt_tokens, text = estimate_prompt_tokens(None, body.prompt)
        budget = body.max_tokens
    return RequestTraits(
        prompt_tokens=prompt_tokens,
        max_tokens=budget,
        has_tools=has_tools,
        json_mode=json_mode,
        text=text,
        headers=request.headers,
        metadata=body.metadata or {},
        allow_fallback=allows_fallback(request),
        prefix_key=key,
        allowed=allowed,
    )


async def _route(
    state: GatewayState, exchange: Exchange, traits: RequestTraits, call: UpstreamCall
) -> RouteDecision:
    """The model and replicas for the request, recorded on its exchange (the router counts
    it in flight until the exchange's exit)."""
    try:
        with exchange.step("route"):
            decision = await ask(state.router, Route(call.sent_model, traits), "router")
    except UnknownModel:
        raise NotFound(
            f"The model '{call.sent_model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        ) from None
    exchange.routed(decision, call)
    return decision


async def _forward(
    request: web.Request,
    exchange: Exchange,
    traits: RequestTraits,
    call: UpstreamCall,
    principal: Principal,
    tokens: tuple[int, int],
) -> web.StreamResponse:
    """Route and forward the request within the key's scopes and limits, charging `tokens`
    (prompt estimate, completion budget) up front."""
    state = request.app[STATE]
    decision = await _route(state, exchange, traits, call)
    require_model(call.sent_model, decision.model, traits.allowed, state)
    del traits  # routing's, not kept for the answer's time (the prompt's text is in it)
    refuse_unservable(decision, call)
    model_limits = state.model_limits.get(decision.model, NO_LIMITS)
    subjects = subjects_of(principal, decision.model, model_limits, state.budget_clock)
    key_policies = principal.scopes.guardrails
    body = None  # the request's JSON, once something on the way needs it
    if key_policies or decision.model in state.guards:
        body = guard_request(state, exchange, decision.model, key_policies)
    cache_plan = caching.plan(state, request, exchange, decision, body)
    del body
    if cache_plan is not None:
        return await caching.serve(request, exchange, cache_plan, subjects, tokens)
    await exchange.admit(subjects, *tokens)
    return await forward(request, exchange)


def refuse_unservable(decision: RouteDecision, call: UpstreamCall) -> None:
    """400 for what the chosen model cannot do, before any replica spends time on it: a
    prompt over its context window (llama-cpp-python answers one with an empty stream), or
    several choices from servers that silently return one."""
    if call.prompt_estimate > decision.context_window:
        part = call.prompt_param
        raise InvalidRequest(
            f"This model's maximum context length is {decision.context_window} tokens. "
            f"However, your {part} resulted in about {call.prompt_estimate} tokens. Please "
            f"reduce the length of the {part}.",
            param=part,
            code=CONTEXT_LENGTH_EXCEEDED,
        )
    if call.n > 1 and not decision.supports_n:
        raise InvalidRequest(
            f"The model '{decision.model}' does not support n > 1: ask for one choice per request.",
            param="n",
            code="unsupported_value",
        )


async def _generate(
    request: web.Request,
    schema: type[ChatCompletionRequest | CompletionRequest],
    path: str,
    endpoint: Endpoint,
) -> web.StreamResponse:
    state = request.app[STATE]
    exchange = request[EXCHANGE]
    # Before reading a body from a stranger.
    with exchange.step("authenticate"):
        principal = await authenticate(state, request, endpoint)
    exchange.key_id = principal.key_id
    raw = await read_body(request)
    body = parse_request(schema, raw)
    exchange.model = body.model
    allowed = allowed_models(principal, state.canonical)
    traits = traits_of(request, body, affinity=state.prefix_affinity, allowed=allowed)
    call = UpstreamCall(
        path,
        raw,
        body.model,
        body.stream,
        exchange.request_id,
        exchange.upstream_id,
        hide_usage=body.stream and not body.include_usage,
        add_usage=body.include_usage,
        prompt_estimate=traits.prompt_tokens,
        n=body.n,
    )
    if state.config.logging.log_prompts:
        exchange.transcript = Transcript(traits.text)
    budget = traits.max_tokens or state.config.limits.default_max_tokens
    tokens = (traits.prompt_tokens, budget)
    # Not held for the answer's time (a stream's lasts minutes, thousands at once): the
    # request lives on as `raw`, in the call.
    del body
    return await _forward(request, exchange, traits, call, principal, tokens)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(
        request, ChatCompletionRequest, "/v1/chat/completions", "chat.completions"
    )


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, CompletionRequest, "/v1/completions", "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    exchange = request[EXCHANGE]
    principal = await authenticate(state, request, "embeddings")
    exchange.key_id = principal.key_id
    raw = await read_body(request)
    body = parse_request(EmbeddingRequest, raw)
    exchange.model = body.model
    allowed = allowed_models(principal, state.canonical)
    traits = RequestTraits(allow_fallback=allows_fallback(request), allowed=allowed)
    call = UpstreamCall(
        "/v1/embeddings", raw, body.model, False, exchange.request_id, exchange.upstream_id
    )
    tokens = (len(raw) // 4 + 1, 0)
    return await _forward(request, exchange, traits, call, principal, tokens)


def _model_object(entry: ModelEntry, created: int) -> dict[str, object]:
    return {"id": entry.id, "object": "model", "created": created, "owned_by": entry.owned_by}


async def _visible_models(request: web.Request) -> tuple[GatewayState, list[ModelEntry]]:
    """The model ids the caller's key may use."""
    state = request.app[STATE]
    principal = await authenticate(state, request, "models")
    entries = await ask(state.router, ListModels(), "router")
    allows = principal.scopes.allows_model
    return state, [entry for entry in entries if allows(entry.id, entry.canonical)]


async def list_models(request: web.Request) -> web.Response:
    state, entries = await _visible_models(request)
    data = [_model_object(entry, state.started) for entry in entries]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state, entries = await _visible_models(request)
    model_id = request.match_info["model"]
    for entry in entries:
        if entry.id == model_id:
            return web.json_response(_model_object(entry, state.started))
    raise NotFound(
        f"The model '{model_id}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def add_routes(app: web.Application) -> None:
    for path, handler in (
        ("/v1/chat/completions", chat_completions),
        ("/v1/completions", completions),
        ("/v1/embeddings", embeddings),
    ):
        app.router.add_post(path, handler, expect_handler=later_continue)
    app.router.add_get("/v1/models", list_models)
    # Model ids may contain "/" (e.g. "mistralai/Mixtral-8x7B"), as in OpenAI's API.
    app.router.add_get("/v1/models/{model:.+}", get_model)
