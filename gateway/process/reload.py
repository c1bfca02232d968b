"""Reloading the configuration in a running gateway (SIGHUP, POST /admin/reload).

A reload re-reads the file, validates it, and applies it without dropping a connection:

1. replicas that are new (or whose settings changed) start as new BackendActors;
2. the router switches to the new models, replicas and routing in one message, so each
   request is routed wholly by the old or wholly by the new configuration;
3. keys, limits and logging switch for the next request;
4. replicas that are gone stop taking requests at once and are stopped once the requests
   and streams they are serving have ended (or the shutdown grace period has passed).

An invalid file changes nothing: the reason is logged and returned. Settings that only a
restart can change (the listening sockets, worker count, the log format) keep their running
values, and the reload says which ones were ignored.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from actors.auth.actor import UseSources
from actors.backend.actor import AwaitDrained
from actors.kernel import (
    ActorDead,
    ActorError,
    AskTimeout,
    StartChild,
    TerminateChild,
    ask_settled,
)
from actors.router.actor import Reconfigure
from actors.tree import BACKENDS, TreeLayout
from gateway.http.state import GatewayState
from gateway.process.config import ConfigError, GatewayConfig, load_config

log = structlog.get_logger("gateway.process.reload")

# Settings a reload cannot change in a running process: (section, field) or (field,).
RESTART_ONLY: tuple[tuple[str, ...], ...] = (
    ("listen",),
    ("workers",),
    ("metrics", "listen"),
    ("metrics", "on_main_port"),
    ("limits", "max_body_bytes"),
    ("limits", "redis_url"),
    ("limits", "redis_failure"),
    ("limits", "redis_timeout"),
    ("limits", "lease_ttl"),
    ("auth", "key_store"),
    ("usage",),
    ("cache", "backend"),
    ("cache", "redis_url"),
    ("cache", "max_entries"),
    ("cache", "max_bytes"),
    ("cache", "vectors"),
    ("logging", "level"),
    ("logging", "format"),
    ("connections", "idle_timeout"),
    ("connections", "max_connections"),
    ("connections", "max_connections_per_client"),
)
# A retired replica's requests may still be routed to it for the time between a route and
# its lease (microseconds); it stops no sooner than this after the router has switched.
RETIRE_SETTLE = 0.5
ASK_TIMEOUT = 10.0


class ReloadRejected(Exception):
    """The new configuration was not applied; the message says why."""


@dataclass(frozen=True, slots=True)
class ReloadReport:
    added: tuple[str, ...]  # replicas started
    retired: tuple[str, ...]  # replicas draining, then stopped
    models: tuple[str, ...]
    ignored: tuple[str, ...]  # restart-only settings that differ, kept as running

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "reloaded",
            "added_replicas": list(self.added),
            "retired_replicas": list(self.retired),
            "models": list(self.models),
            "needs_restart": list(self.ignored),
        }


def _get(config: GatewayConfig, path: tuple[str, ...]) -> object:
    value: object = config
    for part in path:
        value = getattr(value, part, None)
    return value


def keep_restart_only(
    running: GatewayConfig, new: GatewayConfig
) -> tuple[GatewayConfig, list[str]]:
    """`new` with the restart-only settings of `running`, and the names of those that differ."""
    ignored = [".".join(p) for p in RESTART_ONLY if _get(running, p) != _get(new, p)]
    data = new.model_dump()
    for path in RESTART_ONLY:
        if len(path) == 1:
            if path[0] in data:
                data[path[0]] = _get(running, path)
        else:
            data[path[0]][path[1]] = _get(running, path)
    return GatewayConfig.model_validate(data), ignored


async def reload_from_file(state: GatewayState) -> ReloadReport:
    if state.config_path is None:
        raise ReloadRejected("the gateway was not started from a configuration file")
    try:
        config = await asyncio.to_thread(load_config, state.config_path)
    except ConfigError as exc:
        log.error("config_reload_rejected", reason=str(exc), path=state.config_path)
        raise ReloadRejected(str(exc)) from None
    return await apply_config(state, config)


async def apply_config(state: GatewayState, new: GatewayConfig) -> ReloadReport:
    async with state.reloading:
        config, ignored = keep_restart_only(state.config, new)
        previous = state.layout.current
        layout = TreeLayout.next(config.router_settings(), previous)
        added, retired = layout.added_since(previous), layout.retired_since(previous)
        backends = state.system.lookup(BACKENDS)
        started: list[str] = []
        try:
            for name in added:
                await backends.ask(StartChild(layout.backend_spec(name)), timeout=ASK_TIMEOUT)
                started.append(name)
            state.layout.use(layout=layout)  # a restarted supervisor rebuilds this layout
            await state.router.ask(
                Reconfigure(layout.settings, layout.names, layout.loads), timeout=ASK_TIMEOUT
            )
        except ActorError as exc:
            state.layout.use(layout=previous)
            for name in started:
                await _terminate(state, name)
            log.error("config_reload_rejected", reason=f"applying failed: {exc!r}")
            raise ReloadRejected(f"the new configuration could not be applied: {exc}") from exc
        sources = config.auth_sources()
        state.layout.use(auth=sources)
        await state.auth.ask(UseSources(sources), timeout=ASK_TIMEOUT)
        state.use(config)
        if retired:
            state.in_background(_retire(state, retired, previous, config.shutdown_grace))
        report = ReloadReport(
            tuple(added), tuple(retired), tuple(m.name for m in config.models), tuple(ignored)
        )
        log.info("config_reloaded", **report.as_dict())
        if ignored:
            log.warning("config_reload_needs_restart", settings=ignored)
        return report


async def _retire(state: GatewayState, names: list[str], layout: TreeLayout, grace: float) -> None:
    """Stop retired replicas once nothing is in flight on them (or the grace has passed),
    each as soon as its BackendActor says it is drained."""
    await asyncio.sleep(RETIRE_SETTLE)  # requests routed before the switch take their leases
    deadline = time.monotonic() + grace
    await asyncio.gather(*(_retire_one(state, name, layout, deadline) for name in names))


async def _retire_one(state: GatewayState, name: str, layout: TreeLayout, deadline: float) -> None:
    try:
        replica = state.system.lookup(f"{BACKENDS}/{name}")
        await ask_settled(replica, AwaitDrained(), timeout=max(0.0, deadline - time.monotonic()))
    except AskTimeout:
        log.warning(
            "replica_retired_with_requests", backend=name, in_flight=layout.loads[name].in_flight
        )
    except (ActorDead, LookupError):
        pass  # gone already: nothing to drain
    else:
        log.info("replica_retired", backend=name)
    await _terminate(state, name)


async def _terminate(state: GatewayState, name: str) -> None:
    try:
        await state.system.lookup(BACKENDS).ask(TerminateChild(name), timeout=ASK_TIMEOUT)
    except (ActorDead, AskTimeout, LookupError) as exc:
        log.warning("replica_stop_failed", backend=name, error=repr(exc))
