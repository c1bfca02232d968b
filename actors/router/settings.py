"""The settings of a model group: its replicas, how requests are spread over them and retried,
and the model-level choices (fallbacks, context window, virtual models) that RouterActor makes.
"""

from __future__ import annotations

import re
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.backend.breaker import BreakerSettings
from actors.backend.settings import BackendSettings
from actors.limiter.local import LimitSpec
from actors.router.balancer import BalancerSettings
from actors.router.rules import VirtualModelSettings

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def replica_name(model: str, index: int) -> str:
    """A replica's name, also its actor's: "<model>#<index>", with a "/" of the model id
    (allowed: "org/model-7b") as "%2F", since actor paths are "/"-separated ("%" is never in
    a model id, so no two names meet)."""
    return f"{model.replace('/', '%2F')}#{index}"


class RetryBudgetSettings(BaseModel):
    """Retries in flight for a model may be at most `ratio` of its requests in flight, and
    `min_retries` are always allowed (Envoy's budget_percent and min_retry_concurrency). A
    replica that dies mid-load has its requests retried on the others; an outage of every
    replica cannot multiply the load on them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float = Field(0.2, ge=0, le=1)
    min_retries: int = Field(3, ge=0)


class RoutingSettings(BalancerSettings):
    """How a model's requests are spread over its replicas and retried."""

    max_attempts: int = Field(3, ge=1, description="tries of one request, across replicas")
    deadline: float = Field(600.0, gt=0, description="seconds until the first byte, all tries")
    panic_threshold: float = Field(
        0.5, ge=0, le=1, description="below this share of usable replicas, use all of them"
    )
    retry_budget: RetryBudgetSettings = RetryBudgetSettings()
    prefix_affinity: bool = Field(
        False, description="send requests with the same leading messages to the same replica"
    )
    affinity_load_factor: float = Field(
        1.5, ge=1, description="how far over its fair share a replica may be and keep affinity"
    )
    queue_size: int = Field(
        256, ge=0, description="requests that may wait when every replica is full (0: none)"
    )
    queue_timeout: float = Field(10.0, gt=0, description="seconds a request may wait for room")
    affinity_min_in_flight: int = Field(
        8, ge=1, description="requests in flight a replica may always take and keep affinity"
    )


class ModelSettings(BaseModel):
    """One public model: the id clients send, its aliases, and its replicas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description='the id clients send as "model"')
    aliases: tuple[str, ...] = ()
    context_window: int = Field(4096, ge=1)
    owned_by: str = "citadel"
    backends: tuple[BackendSettings, ...] = Field(min_length=1)
    routing: RoutingSettings = RoutingSettings()
    breaker: BreakerSettings = BreakerSettings()
    fallbacks: tuple[str, ...] = Field(
        (), description="models to use, in order, when none of this one's replicas is usable"
    )
    context_fallback: str | None = Field(
        None, description="a larger-window model for prompts that do not fit this one"
    )
    limits: LimitSpec = Field(
        LimitSpec(), description="limits of the whole model, over every key, to protect it"
    )

    @field_validator("name")
    @classmethod
    def _valid_id(cls, name: str) -> str:
        if not _MODEL_ID.fullmatch(name):
            raise ValueError("must be 1-128 of letters, digits and ._:/@+- (no spaces)")
        return name

    @field_validator("aliases")
    @classmethod
    def _valid_aliases(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not _MODEL_ID.fullmatch(alias):
                raise ValueError(f"alias {alias!r}: 1-128 of letters, digits and ._:/@+-")
        return aliases

    @cached_property
    def supports_n(self) -> bool:
        """Whether every replica honours n > 1 (a request may land on any of them)."""
        return all(backend.profile.supports_n for backend in self.backends)

    def backend_names(self) -> list[str]:
        return [replica_name(self.name, index) for index in range(len(self.backends))]


class RouterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelSettings, ...] = Field(min_length=1)
    virtual_models: tuple[VirtualModelSettings, ...] = ()

    @model_validator(mode="after")
    def _ids_unique_and_references_known(self) -> RouterSettings:
        seen: set[str] = set()
        ids = [(m.name, *m.aliases) for m in self.models] + [(v.name,) for v in self.virtual_models]
        for model_id in (i for group in ids for i in group):
            if model_id in seen:
                raise ValueError(f"model id or alias {model_id!r} is used twice")
            seen.add(model_id)
        windows = {m.name: m.context_window for m in self.models}

        def known(name: str, where: str) -> None:
            if name not in windows:
                raise ValueError(f"{where} names {name!r}, which is not a configured model")

        for model in self.models:
            for fallback in model.fallbacks:
                known(fallback, f"the fallbacks of {model.name}")
            if model.context_fallback is not None:
                known(model.context_fallback, f"the context_fallback of {model.name}")
                if windows[model.context_fallback] <= model.context_window:
                    raise ValueError(
                        f"the context_fallback of {model.name} needs a larger context window"
                    )
        for virtual in self.virtual_models:
            for name in virtual.candidates:
                known(name, f"virtual model {virtual.name}")
            for rule in virtual.rules:
                for name in rule.prefer:
                    known(name, f"rule {rule.name} of {virtual.name}")
        return self
