"""The gateway's configuration: one YAML file, validated by pydantic at start-up.

Errors name the offending key and the line it is on, e.g.
`gateway.yaml:14: models[0].backends[0].url: must be an http:// or https:// URL with a host`.
The settings each actor needs live with that actor (actors.router.actor.ModelSettings,
actors.backend.actor.BackendSettings); this module composes them.
"""

from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from actors.auth.actor import AuthSources
from actors.auth.keys import KeyRecord, KeyScopes
from actors.ledger.actor import LedgerSettings
from actors.limiter.actor import LimiterSettings
from actors.router.actor import ModelSettings, RouterSettings
from actors.router.rules import VirtualModelSettings
from gateway.cache.settings import CachePolicy, CacheSettings
from gateway.guardrails.settings import Policy
from gateway.tracing.settings import TracingSettings

CONFIG_ENV = "CITADEL_CONFIG"


class ConfigError(Exception):
    """The configuration is invalid; the message says where and why, one problem a line."""


class ConfiguredKey(BaseModel):
    """A key kept in the configuration by its id and the SHA-256 of its secret only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    secret_sha256: str
    scopes: KeyScopes = KeyScopes()

    def record(self) -> KeyRecord:
        return KeyRecord(
            id=self.id, secret_sha256=self.secret_sha256, scopes=self.scopes, source="config"
        )


class AuthSettings(BaseModel):
    """API keys the gateway accepts. No keys and no key store mean no authentication (a
    warning is logged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_keys: tuple[str, ...] = Field((), description="plain keys with every model scope")
    admin_keys: tuple[str, ...] = Field(
        (), description="keys for /admin/* only; never accepted on the model endpoints"
    )
    keys: tuple[ConfiguredKey, ...] = Field((), description="hashed keys with their scopes")
    key_store: str | None = Field(
        None,
        description="managed keys: a SQLite file, or a postgresql:// URL shared by a fleet",
    )
    failure_limit: int = Field(20, ge=1, description="failed attempts per address per minute")
    cache_ttl: float = Field(
        1.0, gt=0, le=60, description="seconds a key store lookup is cached (revocation delay)"
    )

    @model_validator(mode="after")
    def _ids_unique(self) -> AuthSettings:
        ids = [key.id for key in self.keys]
        if len(ids) != len(set(ids)):
            raise ValueError("auth.keys: each id may appear once")
        for key in self.keys:
            key.record()  # id and hash format
        return self

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _long_enough(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if len(key) < 12 or any(c.isspace() for c in key):
                raise ValueError("each API key needs at least 12 characters and no spaces")
        return keys


class LimitSettings(LimiterSettings):
    """Request size, and where rate-limit state lives (limits themselves are per key and
    per model)."""

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body")
    default_max_tokens: int = Field(
        256, ge=1, description="completion tokens charged up front when max_tokens is not sent"
    )
    budget_timezone: str = Field(
        "UTC", description="the time zone of budgets' calendar periods (an IANA name)"
    )

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ValueError, KeyError, OSError):
            message = f"unknown time zone {zone!r} (an IANA name, e.g. Europe/Paris)"
            raise ValueError(message) from None
        return zone


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = True
    log_prompts: bool = Field(
        False, description="log each prompt and completion, truncated (off: never logged)"
    )
    prompt_log_chars: int = Field(500, ge=0, le=100_000, description="how much of each is kept")


class MetricsSettings(BaseModel):
    """Where Prometheus scrapes /metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_main_port: bool = Field(True, description="serve /metrics on the API port too")
    allow: tuple[str, ...] = Field(
        ("127.0.0.1/32", "::1/128"),
        description="networks that may read /metrics on the API port (CIDR)",
    )
    listen: str | None = Field(
        None, description='a separate "host:port" for scrapers, open to whoever reaches it'
    )

    @field_validator("allow")
    @classmethod
    def _networks(cls, allow: tuple[str, ...]) -> tuple[str, ...]:
        return _cidrs(allow)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str | None) -> str | None:
        if listen is not None:
            _split_listen(listen)
        return listen


def _cidrs(networks: tuple[str, ...]) -> tuple[str, ...]:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not a network (CIDR)") from None
    return networks


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError('must be "host:port", e.g. "0.0.0.0:8000"')
    return host.strip("[]"), int(port)


class ConnectionSettings(BaseModel):
    """What one client connection may hold: a connection is a file descriptor, and any client
    can open many and send nothing, or a byte a second."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idle_timeout: float = Field(
        15.0,
        gt=0,
        description="seconds a connection may stay without a complete request: silent, "
        "trickling its headers, or idle between requests (then it is closed)",
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds a request's body may take to arrive in full (else 408)"
    )
    max_connections: int = Field(
        10_000, ge=1, description="open client connections per process (more get a 503)"
    )
    max_connections_per_client: int = Field(
        1_000,
        ge=1,
        description="open connections from one address (behind a load balancer, its address)",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="networks (CIDR) of the load balancers in front: from these, the client's "
        "address is read from X-Forwarded-For / Forwarded (for the failure throttle and logs)",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        return _cidrs(networks)

    @cached_property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


class GatewayModel(ModelSettings):
    """A model as the gateway's edge sees it: the router's settings, and what only the edge
    uses (the response cache's policy)."""

    cache: CachePolicy | None = Field(
        None, description="which of its requests are cached (default: cache.default)"
    )
    guardrails: tuple[str, ...] = Field((), description="the guardrail policies it applies")


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "0.0.0.0:8000"
    models: tuple[GatewayModel, ...] = Field(min_length=1)
    virtual_models: tuple[VirtualModelSettings, ...] = ()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    connections: ConnectionSettings = ConnectionSettings()
    shutdown_grace: float = Field(30.0, ge=0, description="seconds in-flight requests may finish")
    workers: int = Field(1, ge=1, le=256, description="gateway processes sharing the port")
    usage: LedgerSettings | None = Field(
        None, description="the usage ledger (SQLite, or PostgreSQL for a fleet)"
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings, description="OpenTelemetry traces (off by default)"
    )
    instance: str | None = Field(
        None,
        max_length=128,
        description="this gateway's name in a fleet's shared records (default: host:pid)",
    )
    cache: CacheSettings = Field(CacheSettings(), description="the response cache")
    guardrails: tuple[Policy, ...] = Field((), description="named guardrail policies")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        _split_listen(listen)
        return listen

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    def auth_sources(self) -> AuthSources:
        """AuthActor's key sources (the key store ref is the tree's to add)."""
        auth = self.auth
        return AuthSources(
            plain_keys=auth.api_keys,
            admin_keys=auth.admin_keys,
            records=tuple(key.record() for key in auth.keys),
            failure_limit=auth.failure_limit,
            cache_ttl=auth.cache_ttl,
            has_store=auth.key_store is not None,
        )

    @model_validator(mode="after")
    def _guardrails_exist(self) -> GatewayConfig:
        names = [policy.name for policy in self.guardrails]
        if len(names) != len(set(names)):
            raise ValueError("guardrails: each policy name may appear once")
        for model in self.models:
            for name in model.guardrails:
                if name not in names:
                    raise ValueError(f"models: {model.name}: no guardrail policy named {name!r}")
        return self

    @model_validator(mode="after")
    def _embedding_models_exist(self) -> GatewayConfig:
        """A semantic cache embeds with one of the gateway's own models."""
        known = {name for m in self.models for name in (m.name, *m.aliases)}
        for model in self.models:
            policy = model.cache or self.cache.default
            semantic = policy.semantic if policy.enabled else None
            if semantic is not None and semantic.embedding_model not in known:
                raise ValueError(
                    f"models: {model.name}: cache.semantic.embedding_model "
                    f"{semantic.embedding_model!r} is not a configured model"
                )
        return self

    def router_settings(self) -> RouterSettings:
        return RouterSettings(models=self.models, virtual_models=self.virtual_models)


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the configuration must be a mapping of settings")
    try:
        config = GatewayConfig.model_validate(data)
        config.router_settings()  # cross-model checks (unique ids and aliases)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = tuple(error["loc"])
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line else source
            key = _dotted(loc) or "(top level)"
            lines.append(f"{where}: {key}: {str(error['msg']).removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
    return config


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """`path`, else $CITADEL_CONFIG."""
    if path is None:
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"no configuration file given (use --config or ${CONFIG_ENV})")
    return Path(path)


def warnings_of(config: GatewayConfig) -> list[str]:
    """Valid but probably not what was meant: said by check-config and at start."""
    warnings = []
    if config.workers > 1 and config.limits.redis_url is None:
        warnings.append(
            f"workers: {config.workers} without limits.redis_url: each worker keeps its own "
            "rate-limit state, so a key may get up to that many times its limits"
        )
    auth = config.auth
    if not (auth.api_keys or auth.keys or auth.key_store):
        warnings.append("no API keys and no key store: the model endpoints accept any caller")
    return warnings


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Load from `path`, else from $CITADEL_CONFIG."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(file))


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out


def _line_of(node: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest YAML node on the error's path."""
    line = None
    for item in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode) and isinstance(item, str):
            node = next((v for k, v in node.value if k.value == item), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(item, int):
            node = node.value[item] if item < len(node.value) else None
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line
