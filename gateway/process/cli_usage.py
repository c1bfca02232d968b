"""`citadel-gateway usage`: the usage ledger summarised, from the shell (reads the SQLite
file directly; safe while the gateway writes, in WAL mode)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time

import asyncpg

from actors.ledger.pgstore import BlockingPgLedger
from actors.ledger.store import SUMMARY_COLUMNS, LedgerStore
from actors.postgres.schema import is_postgres
from gateway.http.admin_usage import parse_groups
from gateway.process.config import ConfigError, load_config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = commands.add_parser("usage", help="summarise the usage ledger")
    usage.add_argument(
        "--db", help="the ledger: a file or a postgresql:// URL (default: usage.path)"
    )
    usage.add_argument("--config", help="configuration file (default: $CITADEL_CONFIG)")
    usage.add_argument("--by", default="key,model", help="key, model, backend and/or day")
    usage.add_argument("--hours", type=float, help="only the last N hours")
    usage.add_argument("--json", action="store_true", help="one JSON object per line")
    usage.add_argument("--csv", action="store_true", help="CSV with a header row")


def run(args: argparse.Namespace) -> int:
    try:
        by = parse_groups(args.by)
        if args.db:
            path = args.db
        else:
            ledger = load_config(args.config).usage
            if ledger is None:
                print("no usage ledger: pass --db or set usage.path", file=sys.stderr)
                return 2
            path = ledger.path
    except (ConfigError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        store = BlockingPgLedger(path) if is_postgres(path) else LedgerStore(path)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot open the ledger: {exc}", file=sys.stderr)
        return 1
    try:
        since = time.time() - args.hours * 3600 if args.hours else None
        rows = store.summary(by, since)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=[*by, *SUMMARY_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
        return 0
    columns = [*by, "requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors"]
    table = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for line in table:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))
    return 0
