"""Running an aiohttp app on a socket, for the gateway, the mock services and the tests."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from gateway.http.app import create_app
from gateway.http.protocol import ConnectionCaps, GatewayRunner
from gateway.http.state import STATE, GatewayState
from gateway.process import systemd
from gateway.process.config import ConnectionSettings, GatewayConfig
from gateway.process.heap import settle_heap
from gateway.process.reload import ReloadRejected, reload_from_file

log = structlog.get_logger("gateway")

LINGERING_TIME = 1.0
# Seconds before the end of the shutdown grace period at which open streams are ended.
STREAM_END_MARGIN = 1.0


def _end_streams(state: GatewayState) -> None:
    ended = state.streams.end_all()
    if ended:
        log.warning("streams_ended_by_shutdown", streams=ended)


@dataclass
class RunningServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish within the shutdown timeout, then
        run the app's cleanup (which stops the actor tree)."""
        await self.runner.cleanup()


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 30.0,
    reuse_port: bool = False,
    connections: ConnectionSettings | None = None,
) -> RunningServer:
    """Serve `app` on host:port (port 0 picks a free one). Handler cancellation is on: when a
    client disconnects, its handler is cancelled, and so is the upstream request."""
    caps = None
    extra: dict[str, float] = {}
    if connections is not None:
        caps = ConnectionCaps(connections.max_connections, connections.max_connections_per_client)
        extra["keepalive_timeout"] = connections.idle_timeout
    runner = GatewayRunner(
        app,
        caps=caps,
        **extra,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        # A request refused before its body was read closes its connection after reading
        # what follows for this long (aiohttp's default, 10 s, is a gift to slow clients).
        lingering_time=LINGERING_TIME,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_port=reuse_port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return RunningServer(runner, host, int(bound[1]))


async def start_gateway(
    config: GatewayConfig,
    *,
    port: int | None = None,
    config_path: str | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    return await start_server(
        create_app(config, config_path=config_path),
        config.host,
        config.port if port is None else port,
        shutdown_timeout=config.shutdown_grace,
        reuse_port=reuse_port,
        connections=config.connections,
    )


def _reload_on_signal(state: GatewayState) -> None:
    """SIGHUP: reload in the background; a rejected file is logged and changes nothing."""

    async def reload() -> None:
        systemd.notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            await reload_from_file(state)
        except ReloadRejected:
            pass  # logged with its reason
        finally:
            systemd.notify("READY=1")

    state.in_background(reload())


async def run_gateway(
    config: GatewayConfig, *, config_path: str | None = None, reuse_port: bool = False
) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until the actor tree gives up (exit 1); SIGHUP
    reloads `config_path`."""
    server = await start_gateway(config, config_path=config_path, reuse_port=reuse_port)
    return await serve_until_stopped(server, config)


async def serve_until_stopped(server: RunningServer, config: GatewayConfig) -> int:
    """Serve on a started gateway until a signal or the actor tree's end, then close it:
    the exit code is 0 after SIGTERM/SIGINT, 1 when the root supervisor gave up."""
    state = server.runner.app[STATE]
    log.info("gateway_listening", url=server.url)
    settle_heap()
    # MAINPID: the parent of `workers: N` tells its workers apart by it.
    systemd.notify(f"READY=1\nSTATUS=serving on {server.url}\nMAINPID={os.getpid()}")
    interval = systemd.watchdog_interval()
    pinger = asyncio.ensure_future(systemd.watchdog(interval)) if interval else None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_on_signal, state)
    stopped = asyncio.ensure_future(stop.wait())
    tree_exit = asyncio.ensure_future(state.system.wait_exit())
    try:
        done, _ = await asyncio.wait({stopped, tree_exit}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        tree_exit.cancel()
    code = 0 if stopped in done else 1
    if code:
        log.error("gateway_actor_tree_failed")
    loop.remove_signal_handler(signal.SIGHUP)
    log.info("gateway_stopping", in_flight_streams=len(state.streams))
    systemd.notify("STOPPING=1")
    if pinger is not None:
        pinger.cancel()
    # Streams still open shortly before the grace period ends get a clean error event, not
    # the cut that aiohttp's cancellation at the deadline would give them.
    ender = asyncio.get_running_loop().call_later(
        max(0.0, config.shutdown_grace - STREAM_END_MARGIN), _end_streams, state
    )
    try:
        await server.close()
    finally:
        ender.cancel()
    log.info("gateway_stopped", exit_code=code)
    return code
