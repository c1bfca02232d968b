"""The `citadel-gateway` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import structlog
import uvloop

from actors.postgres.schema import VERSION, SchemaTooNew, is_postgres, migrate
from gateway.process import cli_keys, cli_usage
from gateway.process.config import ConfigError, GatewayConfig, config_path, load_config, warnings_of
from gateway.process.observability import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citadel-gateway", description="OpenAI-compatible gateway for self-hosted LLMs"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML configuration file (default: $CITADEL_CONFIG)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # workers.py

    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("config", help="YAML configuration file")

    mock = commands.add_parser("mock-backend", help="run a mock vLLM-like model service")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, required=True)
    mock.add_argument("--model", required=True, help="the model name it serves")
    mock.add_argument("--ttft", type=float, default=0.02, help="seconds to the first token")
    mock.add_argument("--tokens-per-s", type=float, default=200.0)
    mock.add_argument("--length", type=int, default=16, help="tokens per answer")

    cli_keys.add_parser(commands)
    cli_usage.add_parser(commands)

    db = commands.add_parser("db", help="the shared PostgreSQL schema")
    db_actions = db.add_subparsers(dest="action", required=True)
    db_migrate = db_actions.add_parser("migrate", help="bring the schema up to date")
    db_migrate.add_argument("--url", help="postgresql://… (default: the config's auth.key_store)")
    db_migrate.add_argument("--config", help="configuration file (default: $CITADEL_CONFIG)")

    demo = commands.add_parser("demo", help="four mock model services and the gateway")
    demo.add_argument("--listen", default="127.0.0.1:8000")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("check-config", "serve"):
        try:
            path = str(config_path(args.config))
            config = load_config(path)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.command == "check-config":
        names = ", ".join(m.name for m in config.models)
        replicas = sum(len(m.backends) for m in config.models)
        print(f"{args.config}: OK ({len(config.models)} models: {names}; {replicas} replicas)")
        for warning in warnings_of(config):
            print(f"{args.config}: warning: {warning}")
        return 0
    if args.command == "serve":
        return _serve(config, path, as_worker=args.worker)
    if args.command == "keys":
        return cli_keys.run(args)
    if args.command == "usage":
        return cli_usage.run(args)
    if args.command == "db":
        return _migrate(args)
    if args.command == "mock-backend":
        configure_logging("info")
        return uvloop.run(_run_mock(args))
    if args.command == "demo":
        configure_logging("info")
        from gateway.process.demo import run_demo

        return uvloop.run(run_demo(args.listen))
    return 2


def _serve(config: GatewayConfig, path: str, *, as_worker: bool) -> int:
    configure_logging(config.logging.level, config.logging.format)
    if as_worker:  # one of `workers: N`, on the port the parent reserved
        from gateway.process.server import run_gateway
        from gateway.process.workers import PORT_ENV, WORKER_ENV

        structlog.contextvars.bind_contextvars(worker=int(os.environ.get(WORKER_ENV, "0")))
        port = int(os.environ.get(PORT_ENV, config.port))
        config = config.model_copy(update={"listen": f"{config.host}:{port}"})
        return uvloop.run(run_gateway(config, config_path=path, reuse_port=True))
    for warning in warnings_of(config):
        structlog.get_logger("gateway").warning("config_warning", warning=warning)
    if (problem := _unusable_store(config)) is not None:
        structlog.get_logger("gateway").error("store_unusable", problem=problem)
        print(problem, file=sys.stderr)
        return 1
    if config.workers > 1:
        from gateway.process.workers import run_workers

        return uvloop.run(run_workers(config, path))
    from gateway.process.server import run_gateway

    return uvloop.run(run_gateway(config, config_path=path))


def _unusable_store(config: GatewayConfig) -> str | None:
    """Why the SQLite key store or ledger cannot be opened, if one cannot: better to refuse to
    start than to serve every store key a 503 (its actor would die at its first breath). (It
    once opened PostgreSQL URLs as SQLite paths, leaving directories named after them.)"""
    from actors.auth.store import KeyStore
    from actors.ledger.store import LedgerStore

    stores: list[tuple[str, str, Callable[[str], Any]]] = []
    if config.auth.key_store is not None:
        stores.append(("key store", config.auth.key_store, KeyStore))
    if config.usage is not None:
        stores.append(("usage ledger", config.usage.path, LedgerStore))
    for what, path, opener in stores:
        if is_postgres(path):
            continue  # PostgreSQL's: checked (and migrated) by the start itself
        try:
            opener(path).close()
        except (OSError, sqlite3.Error) as exc:
            return f"{path}: cannot open the {what}: {exc}"
    return None


async def _run_mock(args: argparse.Namespace) -> int:
    import signal

    from gateway.mock.server import MockSettings, create_mock_app
    from gateway.process.server import start_server

    settings = MockSettings(
        model=args.model, ttft=args.ttft, tokens_per_s=args.tokens_per_s, length=args.length
    )
    server = await start_server(create_mock_app(settings), args.host, args.port)
    print(f"mock model service '{args.model}' on {server.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _migrate(args: argparse.Namespace) -> int:
    """`citadel-gateway db migrate`: the versions applied, or why not."""
    try:
        url = args.url or load_config(args.config).auth.key_store
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not is_postgres(url):
        print("no PostgreSQL: pass --url or set auth.key_store to a postgresql:// URL",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        applied = asyncio.run(migrate(str(url)))
    except SchemaTooNew as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot migrate: {exc}", file=sys.stderr)
        return 1
    print(f"schema at version {VERSION}" + (f" (applied {applied})" if applied else ", up to date"))
    return 0
