"""RouterActor: which replicas may serve a request for a given model id or alias.

It answers `Route(model)` with the model's canonical id and its BackendActors in the order
to try them. This is routing by name with round-robin across replicas; balancing policies,
virtual models and fallbacks build on the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.backend import BackendSettings
from actors.kernel import ActorRef, SyncActor

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


class ModelSettings(BaseModel):
    """One public model: the id clients send, its aliases, and its replicas."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description='the id clients send as "model"')
    aliases: tuple[str, ...] = ()
    context_window: int = Field(4096, ge=1)
    owned_by: str = "citadel"
    backends: tuple[BackendSettings, ...] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _valid_id(cls, name: str) -> str:
        if not _MODEL_ID.match(name):
            raise ValueError("must be 1-128 of letters, digits and ._:/@+- (no spaces)")
        return name

    @field_validator("aliases")
    @classmethod
    def _valid_aliases(cls, aliases: tuple[str, ...]) -> tuple[str, ...]:
        for alias in aliases:
            if not _MODEL_ID.match(alias):
                raise ValueError(f"alias {alias!r}: 1-128 of letters, digits and ._:/@+-")
        return aliases

    def backend_names(self) -> list[str]:
        return [f"{self.name}#{index}" for index in range(len(self.backends))]


class RouterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelSettings, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids_unique(self) -> RouterSettings:
        seen: set[str] = set()
        for model in self.models:
            for model_id in (model.name, *model.aliases):
                if model_id in seen:
                    raise ValueError(f"model id or alias {model_id!r} is used twice")
                seen.add(model_id)
        return self


class UnknownModel(LookupError):
    """The requested model id is neither a configured model nor an alias."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist")
        self.model = model


@dataclass(frozen=True, slots=True)
class Route:
    """Ask: the replicas for this model id or alias, in the order to try them."""

    model: str


@dataclass(frozen=True, slots=True)
class RouteDecision:
    model: str  # the canonical public id
    context_window: int
    candidates: tuple[ActorRef, ...]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    owned_by: str
    canonical: str  # the model an alias points to (itself for a model)


@dataclass(frozen=True, slots=True)
class ListModels:
    """Ask: every model id and alias, each once, in configuration order."""


class RouterActor(SyncActor):
    def __init__(self, settings: RouterSettings, resolve: Callable[[str], ActorRef]) -> None:
        """`resolve` maps a backend name ("mixtral-8x7b#0") to its ref; the backends start
        before the router, so they exist by the time on_start runs."""
        self._settings = settings
        self._resolve = resolve
        self._by_id: dict[str, ModelSettings] = {}
        self._replicas: dict[str, tuple[ActorRef, ...]] = {}
        self._next: dict[str, int] = {}
        self._entries: tuple[ModelEntry, ...] = ()

    async def on_start(self) -> None:
        entries = []
        for model in self._settings.models:
            self._replicas[model.name] = tuple(self._resolve(n) for n in model.backend_names())
            self._next[model.name] = 0
            for model_id in (model.name, *model.aliases):
                self._by_id[model_id] = model
                entries.append(ModelEntry(model_id, model.owned_by, model.name))
        self._entries = tuple(entries)

    def handle(self, message: Any) -> Any:
        match message:
            case Route(model=model_id):
                return self._route(model_id)
            case ListModels():
                return self._entries
            case _:
                return super().handle(message)

    def _route(self, model_id: str) -> RouteDecision:
        model = self._by_id.get(model_id)
        if model is None:
            raise UnknownModel(model_id)
        replicas = self._replicas[model.name]
        start = self._next[model.name]
        self._next[model.name] = (start + 1) % len(replicas)
        ordered = replicas[start:] + replicas[:start]
        return RouteDecision(model.name, model.context_window, ordered)

    def introspect(self) -> dict[str, Any]:
        return {"models": [m.name for m in self._settings.models], "ids": len(self._entries)}
