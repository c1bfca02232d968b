"""What the SQLite-backed actors share: opening a database for one writer thread and many
readers, and a pykka actor that owns one store on its thread."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from actors.kernel import BridgedThreadingActor


def connect(path: str | Path, *, timeout: float) -> sqlite3.Connection:
    """Autocommit (transactions are explicit), WAL (readers never block the writer), and
    synchronous=NORMAL (a committed transaction survives a crash of the process).

    Key hashes and usage are for the gateway's user alone: a directory it creates is 0700,
    a file 0600 (SQLite gives its -wal and -shm files the database file's mode)."""
    file = Path(path)
    if not file.parent.exists():
        file.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(file, os.O_RDWR | os.O_CREAT, 0o600))
    db = sqlite3.connect(str(file), timeout=timeout, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


class StoreActor(BridgedThreadingActor, Generic[S]):
    """Owns one store on its own pykka thread: SQLite connections belong to their thread."""

    def __init__(self, open_store: Callable[[], S]) -> None:
        super().__init__()
        self._open_store = open_store
        self._store: S | None = None

    @property
    def store(self) -> S:
        assert self._store is not None, "used before on_start"
        return self._store

    def on_start(self) -> None:
        self._store = self._open_store()

    def on_stop(self) -> None:
        super().on_stop()
        if self._store is not None:
            self._store.close()
