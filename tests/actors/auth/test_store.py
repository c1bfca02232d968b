"""The key store's actor on its own: its pykka thread, a real SQLite file, and what each ask
answers or raises to the asker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pykka
import pytest

from actors.auth.keys import KeyRecord, KeyScopes, secret_matches, split_key
from actors.auth.store import (
    CreateKey,
    KeyNotFound,
    KeyStoreActor,
    ListKeys,
    LookupKey,
    RevokeKey,
    RotateKey,
)
from actors.kernel import ActorRef, ActorSystem, ChildSpec, PykkaHost


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ActorRef]:
    path = tmp_path / "keys.sqlite3"
    system = ActorSystem()
    yield await system.spawn(
        ChildSpec("keystore", lambda: PykkaHost(lambda: KeyStoreActor.start(path)))
    )
    await system.shutdown()
    pykka.ActorRegistry.stop_all()


async def test_a_created_key_is_found_by_its_id_and_its_secret_is_not_stored(
    store: ActorRef,
) -> None:
    record, key = await store.ask(CreateKey(KeyScopes(name="team-a", rpm=60)), timeout=5)
    assert isinstance(record, KeyRecord)
    parts = split_key(key)
    assert parts is not None
    key_id, secret = parts
    assert key_id == record.id
    assert secret not in record.secret_sha256
    found = await store.ask(LookupKey(record.id), timeout=5)
    assert found == record
    assert secret_matches(secret, found.secret_sha256)
    assert await store.ask(LookupKey("0123456789ab"), timeout=5) is None


async def test_revoking_and_rotating_answer_the_asker_and_unknown_ids_raise_to_it(
    store: ActorRef,
) -> None:
    record, old_key = await store.ask(CreateKey(KeyScopes(name="svc", tpm=1000)), timeout=5)
    rotated, new_key = await store.ask(RotateKey(record.id), timeout=5)
    assert new_key != old_key
    assert rotated.id != record.id
    assert rotated.scopes == record.scopes  # a new key with the same scopes
    assert (await store.ask(LookupKey(record.id), timeout=5)).revoked_at is not None
    with pytest.raises(KeyNotFound):  # a revoked key cannot be rotated again
        await store.ask(RotateKey(record.id), timeout=5)
    revoked = await store.ask(RevokeKey(rotated.id), timeout=5)
    assert revoked.revoked_at is not None
    assert await store.ask(ListKeys(include_revoked=False), timeout=5) == []
    with pytest.raises(KeyNotFound):
        await store.ask(RevokeKey("0123456789ab"), timeout=5)
    # The store's actor goes on after an ask it refused (pykka's rule).
    assert {k.id for k in await store.ask(ListKeys(), timeout=5)} == {record.id, rotated.id}
