"""API keys: their format, their scopes and the check of a presented secret (the whole path,
from an HTTP header to a refusal, is in tests/gateway/test_keys.py and test_scopes.py)."""

from __future__ import annotations

import hashlib
import re

import pytest
from pydantic import ValidationError

from actors.auth.keys import (
    PREFIX,
    KeyRecord,
    KeyScopes,
    hash_secret,
    new_key,
    secret_matches,
    split_key,
)
from actors.limiter.local import LimitSpec

KEY_ID = "0123456789ab"
SECRET = "s" * 43


def test_a_new_key_is_its_id_and_a_secret_whose_hash_alone_is_kept() -> None:
    key_id, key, stored = new_key()
    assert re.fullmatch(r"[0-9a-f]{12}", key_id)
    assert key.startswith(f"{PREFIX}{key_id}-")
    parts = split_key(key)
    assert parts is not None
    assert parts[0] == key_id
    assert len(parts[1]) == 43  # 32 random bytes, URL-safe base64
    assert stored == hashlib.sha256(parts[1].encode()).hexdigest()
    assert stored not in key
    assert new_key()[1] != key


def test_hash_secret_is_the_sha256_hex_of_the_secret() -> None:
    assert hash_secret("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    "key",
    [
        f"sk-citadel-{KEY_ID}-{'s' * 19}",  # a secret too short
        f"sk-citadel-{KEY_ID}-{'s' * 129}",  # too long
        f"sk-citadel-{KEY_ID.upper()}-{SECRET}",  # the id in capitals
        f"sk-citadel-{KEY_ID[:11]}-{SECRET}",  # the id one digit short
        f"sk-citadel-{KEY_ID}-{SECRET}!",  # a character outside the alphabet
        f"sk-citadel-{KEY_ID}-{SECRET}\n",  # a trailing newline
        f" sk-citadel-{KEY_ID}-{SECRET}",  # a leading space
        f"sk-other-{KEY_ID}-{SECRET}",
        "",
    ],
)
def test_a_malformed_key_does_not_split(key: str) -> None:
    assert split_key(key) is None


def test_a_well_formed_key_splits_at_the_bounds_of_its_secret() -> None:
    for secret in ("a" * 20, "A-_9" * 32):
        assert split_key(f"sk-citadel-{KEY_ID}-{secret}") == (KEY_ID, secret)


def test_a_secret_matches_its_hash_only() -> None:
    stored = hash_secret(SECRET)
    assert secret_matches(SECRET, stored)
    assert not secret_matches(SECRET + "x", stored)
    assert not secret_matches(SECRET, None)  # an unknown id never matches
    assert not secret_matches("citadel-no-such-key", None)  # not even the dummy's secret


def test_scopes_by_default_allow_every_model_and_endpoint_without_limits() -> None:
    scopes = KeyScopes()
    assert scopes.allows_model("anything")
    assert scopes.allows_endpoint("embeddings")
    assert scopes.limits == LimitSpec()
    assert not scopes.expired()
    assert not scopes.admin


def test_a_scoped_key_allows_what_it_names_by_either_id() -> None:
    scopes = KeyScopes(models=("phi", "fast"), endpoints=("chat.completions",))
    assert scopes.allows_model("phi")
    assert scopes.allows_model("fast", "mixtral")  # the id the client sent
    assert scopes.allows_model("alias", "phi")  # the model that serves it
    assert not scopes.allows_model("mixtral")
    assert not scopes.allows_model()
    assert scopes.allows_endpoint("chat.completions")
    assert not scopes.allows_endpoint("completions")


def test_an_admin_key_calls_no_model_unless_its_models_are_given() -> None:
    assert not KeyScopes.model_validate({"admin": True}).allows_model("phi")
    assert KeyScopes.model_validate({"admin": True, "models": ["phi"]}).allows_model("phi")
    assert KeyScopes.model_validate({"admin": False}).allows_model("phi")


def test_the_limits_are_the_keys_own() -> None:
    scopes = KeyScopes(rpm=10, tpm=2000, max_concurrent=3)
    assert scopes.limits == LimitSpec(rpm=10, tpm=2000, max_concurrent=3)


def test_a_key_expires_at_its_time_not_before() -> None:
    scopes = KeyScopes(expires_at=1000.0)
    assert not scopes.expired(999.9)
    assert scopes.expired(1000.0)
    assert scopes.expired()  # the clock's now is long after 1970
    assert not KeyScopes(expires_at=4e9).expired()


@pytest.mark.parametrize(
    "scopes",
    [{"rpm": 0}, {"rpm": "5"}, {"tpm": 1.5}, {"admin": "yes"}, {"expires_at": float("inf")}],
)
def test_scopes_refuse_what_is_not_strictly_valid(scopes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        KeyScopes.model_validate(scopes)


def test_a_record_checks_its_id_and_hash_and_never_shows_the_hash() -> None:
    stored = hash_secret(SECRET)
    record = KeyRecord(id=KEY_ID, secret_sha256=stored, created_at=5.0)
    shown = record.public()
    assert shown["id"] == KEY_ID
    assert shown["prefix"] == f"sk-citadel-{KEY_ID}-"
    assert (shown["created_at"], shown["revoked_at"], shown["source"]) == (5.0, None, "store")
    assert shown["models"] == ("*",)
    assert stored not in repr(shown)
    for bad in ({"id": "0123456789AB"}, {"id": "0123456789a"}, {"id": KEY_ID + "\n"}):
        with pytest.raises(ValidationError, match="12 lowercase hex digits"):
            KeyRecord(**{"secret_sha256": stored, **bad})
    for bad_hash in (stored.upper(), stored[:63], stored + "0"):
        with pytest.raises(ValidationError, match="64 lowercase hex digits"):
            KeyRecord(id=KEY_ID, secret_sha256=bad_hash)
