"""`citadel-gateway keys create|list|revoke|rotate`: the key store from the shell.

The store is the one named by `--db` (a SQLite file, or a postgresql:// URL), else the
configuration's `auth.key_store` (from `--config` or $CITADEL_CONFIG). A running gateway sees
a change within `auth.cache_ttl` (SQLite), or at once (PostgreSQL: every gateway LISTENs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
from pydantic import ValidationError

from actors.auth.keys import KeyRecord, KeyScopes
from actors.auth.pgstore import BlockingPgKeyStore
from actors.auth.store import KeyNotFound, KeyStore
from actors.limiter.budget import Budget
from actors.postgres.schema import is_postgres
from gateway.process.config import ConfigError, load_config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="manage API keys in the key store")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--db", help="the key store: a file or a postgresql:// URL (default: auth.key_store)"
    )
    where.add_argument("--config", help="configuration file (default: $CITADEL_CONFIG)")
    actions = keys.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", parents=[where], help="create a key; prints it once")
    create.add_argument("--name", default="", help="who or what the key is for")
    create.add_argument(
        "--models", help='comma-separated ids, or "*" (the default, but for --admin keys: none)'
    )
    create.add_argument("--endpoints", default="*", help='e.g. "chat.completions,models"')
    create.add_argument("--rpm", type=_positive(int), help="requests per minute")
    create.add_argument("--tpm", type=_positive(int), help="tokens per minute")
    create.add_argument("--max-concurrent", type=_positive(int), help="requests in flight at once")
    create.add_argument(
        "--budget-tokens", type=_positive(int), help="tokens per --budget-period (a budget)"
    )
    create.add_argument(
        "--budget-period", choices=("day", "week", "month"), default="month",
        help="the budget's calendar period (limits.budget_timezone)",
    )  # fmt: skip
    create.add_argument(
        "--expires-in-days", type=_positive(float), help="refused after this many days (> 0)"
    )
    create.add_argument(
        "--guardrails", default="", help="comma-separated guardrail policies for this key"
    )
    create.add_argument("--admin", action="store_true", help="may use /admin/*")

    listing = actions.add_parser("list", parents=[where], help="list keys (never secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")

    for name, text in (("revoke", "revoke a key"), ("rotate", "replace a key, same scopes")):
        action = actions.add_parser(name, parents=[where], help=text)
        action.add_argument("key_id", help="the key's id (12 hex digits)")


Number = TypeVar("Number", int, float)


def _positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse type: a finite number above zero (0 days once made a key that never
    expired)."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    try:
        path = args.db or load_config(args.config).auth.key_store
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if path is None:
        print("no key store: pass --db or set auth.key_store in the configuration", file=sys.stderr)
        return 2
    try:
        store: KeyStore | BlockingPgKeyStore = (
            BlockingPgKeyStore(path) if is_postgres(path) else KeyStore(path)
        )
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot open the key store: {exc}", file=sys.stderr)
        return 1
    try:
        return _act(store, args)
    except KeyNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        store.close()


def _act(store: KeyStore | BlockingPgKeyStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        try:
            given = {"models": tuple(_items(args.models))} if args.models is not None else {}
            scopes = KeyScopes(
                name=args.name,
                endpoints=tuple(_items(args.endpoints)),
                rpm=args.rpm,
                tpm=args.tpm,
                max_concurrent=args.max_concurrent,
                budget=None
                if args.budget_tokens is None
                else Budget(tokens=args.budget_tokens, period=args.budget_period),
                expires_at=None
                if args.expires_in_days is None
                else time.time() + args.expires_in_days * 86400,
                admin=args.admin,
                guardrails=tuple(_items(args.guardrails)),
                **given,
            )
        except ValidationError as exc:
            print(exc, file=sys.stderr)
            return 2
        record, key = store.create(scopes)
        print(key)
        print(f"created key {record.id}; store the key now: it is not shown again", file=sys.stderr)
        return 0
    if args.action == "list":
        for record in store.list(include_revoked=not args.active):
            print(json.dumps(record.public()) if args.json else _line(record))
        return 0
    if args.action == "revoke":
        record = store.revoke(args.key_id)
        print(f"revoked {record.id}")
        return 0
    record, key = store.rotate(args.key_id)
    print(key)
    print(f"key {record.id} replaces {args.key_id}, now revoked", file=sys.stderr)
    return 0


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _line(record: KeyRecord) -> str:
    scopes = record.scopes
    state = "revoked" if record.revoked_at else ("expired" if scopes.expired() else "active")
    limits = " ".join(
        f"{name}={value}"
        for name, value in (
            ("rpm", scopes.rpm), ("tpm", scopes.tpm), ("concurrent", scopes.max_concurrent)
        )
        if value is not None
    )  # fmt: skip
    if scopes.budget is not None:
        limits = f"{limits} budget={scopes.budget.tokens}/{scopes.budget.period}".strip()
    created = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M")
    flags = " admin" if scopes.admin else ""
    return (
        f"{record.id}  {state:<7}  {created}  models={','.join(scopes.models)}  "
        f"{limits}{flags}  {scopes.name}".rstrip()
    )
